//! A tiny load loop against a running scd: each thread holds one connection and repeats the PHP
//! session workload (ReadLock, then WriteUnlock of a blob) over its own set of sessions, and the
//! rate of requests is printed at the end. Not a benchmark harness (that is `bench/`): a quick
//! way to see what one node does on this machine.
//!
//! ```sh
//! cargo run --release -p scd --example load -- unix:/path/scd.sock 8 5 4096 1000 session
//! #                 endpoint  threads seconds blob-bytes sessions-per-thread session|exists
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use scd_client::{Client, Endpoint, SessionId};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoint = match args.first().map(String::as_str) {
        Some(s) if s.starts_with("unix:") => Endpoint::Unix(PathBuf::from(&s[5..])),
        Some(s) if s.starts_with("tcp:") => {
            Endpoint::Tcp(s[4..].parse::<SocketAddr>().expect("tcp:IP:PORT"))
        }
        _ => {
            eprintln!(
                "usage: load unix:PATH|tcp:IP:PORT [threads] [seconds] [blob-bytes] \
                 [sessions-per-thread] [session|exists]"
            );
            std::process::exit(2);
        }
    };
    let threads: usize = args.get(1).map_or(8, |s| s.parse().expect("threads"));
    let seconds: u64 = args.get(2).map_or(5, |s| s.parse().expect("seconds"));
    let blob_len: usize = args.get(3).map_or(4096, |s| s.parse().expect("blob bytes"));
    let per_thread: u64 = args
        .get(4)
        .map_or(1000, |s| s.parse().expect("sessions per thread"));
    // "session" (ReadLock + WriteUnlock) or "exists" (the transport alone, no store work).
    let mode = args
        .get(5)
        .cloned()
        .unwrap_or_else(|| "session".to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let endpoint = endpoint.clone();
            let stop = stop.clone();
            let mode = mode.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&endpoint).expect("connect");
                let master = c.server().node;
                let ids: Vec<SessionId> = (0..per_thread)
                    .map(|n| {
                        let mut hash = [0u8; 16];
                        hash[..8].copy_from_slice(
                            &((t as u64) << 32 | n)
                                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                                .to_le_bytes(),
                        );
                        hash[8..].copy_from_slice(&(t as u64).to_le_bytes());
                        SessionId::new(master, None, 1, hash)
                    })
                    .collect();
                let data = vec![0x5Au8; blob_len];
                let mut latencies_us = Vec::with_capacity(1 << 20);
                let mut requests = 0u64;
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[i % ids.len()];
                    i += 1;
                    let t0 = Instant::now();
                    if mode == "exists" {
                        c.exists(id).expect("exists");
                        c.exists(id).expect("exists");
                    } else {
                        let r = c.read_lock(id, 5000, 30_000).expect("read_lock");
                        c.write_unlock(id, r.token, 1440, &data)
                            .expect("write_unlock");
                    }
                    latencies_us.push(t0.elapsed().as_micros() as u64);
                    requests += 2;
                }
                (requests, latencies_us)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut lat = Vec::new();
    for h in handles {
        let (n, l) = h.join().expect("load thread");
        total += n;
        lat.extend(l);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{endpoint}: {threads} connections, {blob_len} B blobs, {seconds} s: {:.0} requests/s ({:.0} lock+write pairs/s); pair latency p50 {} us, p99 {} us",
        total as f64 / seconds as f64,
        total as f64 / 2.0 / seconds as f64,
        pct(0.50),
        pct(0.99)
    );
}
