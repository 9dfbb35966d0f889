//! Recovery speed: fills a store with 4 KiB sessions until its slab files hold about SIZE_MIB
//! MiB, closes it, and times reopening it (every record's CRC checked, index and free lists
//! rebuilt). Usage:
//!   cargo run --release -p scd-engine --example recovery_speed -- [SIZE_MIB] [DIR] [--cold]
//! Defaults: 1024 MiB in the system temp directory. `--cold` drops the page cache before the
//! reopen (needs root), so the scan reads from the disk.

use std::path::PathBuf;
use std::time::Instant;

use scd_engine::{FlushPolicy, LockOutcome, OwnerId, SessionKey, Shard, ShardConfig};

const T0: u64 = 1_700_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cold = args.iter().any(|a| a == "--cold");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--cold").collect();
    let size_mib: u64 = rest.first().map_or(Ok(1024), |s| s.parse())?;
    let base = rest.get(1).map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("scd-recovery-speed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = ShardConfig {
        flush: FlushPolicy::DelayedWrite { interval_ms: 1000 },
        shards: 1,
        ..ShardConfig::default()
    };
    let data = vec![0x42u8; 4096];
    let target = size_mib << 20;
    let fill = Instant::now();
    {
        let (mut s, _) = Shard::open_at(&cfg, &dir, 0, T0)?;
        let mut n: u64 = 0;
        while s.stats().slab_bytes < target {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            k[8..].copy_from_slice(&n.to_le_bytes());
            let key = SessionKey(k);
            let LockOutcome::Granted(t) = s.lock(key, OwnerId(1), T0, T0, 1000)? else {
                return Err("lock not granted".into());
            };
            s.put_unlock(key, t, &data, 86_400, T0)?;
            n += 1;
            if n % 4096 == 0 {
                let mut ev = Vec::new();
                s.flush(T0 + n);
                s.poll_events(T0 + n, &mut ev);
            }
        }
        s.sync()?;
        println!(
            "filled {} sessions, {} MiB of slab files in {:.1} s",
            n,
            s.stats().slab_bytes >> 20,
            fill.elapsed().as_secs_f64()
        );
    }
    if cold {
        std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    }
    let (s, report) = Shard::open_at(&cfg, &dir, 0, T0 + 1000)?;
    println!(
        "recovered {} sessions from {} files, {:.0} MiB, in {:.3} s: {:.0} MB/s, {:.0} sessions/s ({}; damaged {})",
        report.sessions,
        report.files,
        report.bytes_scanned as f64 / (1 << 20) as f64,
        report.elapsed.as_secs_f64(),
        report.mb_per_s(),
        report.sessions_per_s(),
        if cold { "cold cache" } else { "warm cache" },
        report.damaged
    );
    drop(s);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
