//! Measures what the placement journal costs the cluster thread: an append made durable
//! (write + fdatasync) alone, and 64 appends under one fdatasync (a rejoin's or a sweep's
//! group), in a journal in DIR (default: a temporary folder under the current one).
//!
//! `cargo run --release -p scd --example journal_probe -- [DIR] [COUNT]`
//!
//! Prints p50 / p99 / max of one commit, in µs, for each case.

use std::net::SocketAddr;
use std::time::Instant;

use scd::cluster::Placement;
use scd::cluster::journal::{Entry, Journal};

fn pct(v: &mut [u128], p: f64) -> u128 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).map_or_else(|| ".".to_string(), |s| s.clone());
    let count: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir = tempfile::Builder::new()
        .prefix("journal-probe")
        .tempdir_in(&base)
        .expect("temp dir");
    let (mut j, _) = Journal::open(dir.path()).expect("journal");
    let a: SocketAddr = "10.0.0.1:34567".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:34567".parse().unwrap();
    let mut n: u64 = 0;
    let mut next = || {
        n += 1;
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&n.to_le_bytes());
        Entry::Place(
            h,
            Placement {
                epoch: 2,
                master: Some(b),
                backup: Some(a),
                prev: Some(a),
            },
        )
    };
    for group in [1usize, 64] {
        let mut t = Vec::with_capacity(count / group);
        for _ in 0..(count / group).max(1) {
            for _ in 0..group {
                j.add(next());
            }
            let s = Instant::now();
            j.commit().expect("commit");
            t.push(s.elapsed().as_micros());
        }
        let (p50, p99) = (pct(&mut t, 0.5), pct(&mut t, 0.99));
        println!(
            "{group:>3} records per commit: {} commits, p50 {p50} µs, p99 {p99} µs, max {} µs",
            t.len(),
            t[t.len() - 1]
        );
    }
}
