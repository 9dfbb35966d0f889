//! Measures the ways a write-through record can be made durable on this machine (the choice
//! recorded in docs/storage.md). Usage:
//!   cargo run --release -p scd-engine --example flush_probe -- [DIR]
//! DIR must be on the disk the store will use (default: the current directory).

use scd_engine::sys::probe::{Mechanism, Prep, run};

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let dir = std::path::Path::new(&dir);
    let record_len = 4096 + 48;
    println!(
        "| mechanism | file | records per flush | writes/s | commit p50 µs | commit p99 µs | copy/write µs per record |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let cases = [
        (Mechanism::MmapFdatasync, Prep::Prewritten),
        (Mechanism::MmapUringFsync, Prep::Prewritten),
        (Mechanism::MmapMsync, Prep::Prewritten),
        (Mechanism::PwriteFdatasync, Prep::Prewritten),
        (Mechanism::UringWriteFsync, Prep::Prewritten),
        (Mechanism::MmapFdatasync, Prep::Fallocated),
        (Mechanism::PwriteFdatasync, Prep::Fallocated),
    ];
    for batch in [1usize, 64] {
        for (m, p) in cases {
            let rounds = if batch == 1 { 500 } else { 60 };
            let r = run(dir, m, p, record_len, batch, rounds)?;
            println!(
                "| {:?} | {:?} | {} | {:.0} | {:.0} | {:.0} | {:.2} |",
                r.mechanism,
                r.prep,
                r.batch,
                r.writes_per_s,
                r.commit_p50_us,
                r.commit_p99_us,
                r.write_us
            );
        }
    }
    Ok(())
}
