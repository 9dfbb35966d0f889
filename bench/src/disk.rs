//! The durability limit: how many 4 KiB (or session-sized) writes per second this disk allows when each must be on
//! disk before it is acknowledged, with one `fdatasync` per write and with group commit (one
//! `fdatasync` for a batch, as scd's write-through does per event-loop pass).
//!
//! The probe overwrites 4 KiB slots at random in a pre-written file on the same file system as
//! scd's data, which is what a slab file write is: no file-size change, so `fdatasync` has only
//! data to flush.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::constants::{DISK_FILE_BYTES, DISK_GROUP, DISK_WRITE_BYTES, HISTOGRAM_NS_MAX};

/// One probe mode's result.
#[derive(Clone, Debug, Serialize)]
pub struct DiskMode {
    pub name: String,
    /// Writes per fdatasync.
    pub group: usize,
    pub writes_per_s: f64,
    /// Latency of one commit (the batch's writes and its fdatasync), µs.
    pub commit_p50_us: f64,
    pub commit_p99_us: f64,
}

/// Both modes.
#[derive(Clone, Debug, Serialize)]
pub struct DiskLimit {
    pub path: String,
    /// Bytes per write: the session size rounded up to whole 4 KiB pages.
    pub write_bytes: usize,
    pub single: DiskMode,
    pub group: DiskMode,
}

/// Runs both modes for `seconds` each in a file under `dir` (removed afterwards), with writes of
/// `size_bytes` rounded up to whole pages, so a 64 KiB run is compared with 64 KiB writes.
pub fn probe(dir: &Path, seconds: f64, size_bytes: usize) -> anyhow::Result<DiskLimit> {
    let write_bytes = size_bytes.div_ceil(DISK_WRITE_BYTES).max(1) * DISK_WRITE_BYTES;
    fs::create_dir_all(dir)?;
    let path = dir.join("disk-probe.bin");
    let result = (|| {
        let file = prepare(&path)?;
        let single = run_mode(&file, 1, seconds, write_bytes)?;
        let group = run_mode(&file, DISK_GROUP, seconds, write_bytes)?;
        Ok(DiskLimit {
            path: path.display().to_string(),
            write_bytes,
            single,
            group,
        })
    })();
    let _ = fs::remove_file(&path);
    result
}

fn prepare(path: &Path) -> anyhow::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0xA5u8; 1 << 20];
    for _ in 0..DISK_FILE_BYTES / chunk.len() as u64 {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(file)
}

fn run_mode(
    file: &File,
    group: usize,
    seconds: f64,
    write_bytes: usize,
) -> anyhow::Result<DiskMode> {
    let mut rng = SmallRng::seed_from_u64(group as u64);
    let mut block = vec![0u8; write_bytes];
    let slots = DISK_FILE_BYTES / write_bytes as u64;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, HISTOGRAM_NS_MAX, 3)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut writes = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        for _ in 0..group {
            rng.fill_bytes(&mut block);
            let slot = rng.random_range(0..slots);
            file.write_all_at(&block, slot * write_bytes as u64)?;
        }
        file.sync_data()?;
        writes += group as u64;
        let _ = hist.record((t.elapsed().as_nanos() as u64).clamp(1, HISTOGRAM_NS_MAX));
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(DiskMode {
        name: if group == 1 {
            "1 write per fdatasync".into()
        } else {
            format!("{group} writes per fdatasync")
        },
        group,
        writes_per_s: writes as f64 / elapsed,
        commit_p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        commit_p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_probe_measures_both_modes_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("scd-bench-disk-{}", std::process::id()));
        let limit = probe(&dir, 0.05, 5000).unwrap();
        assert_eq!(limit.write_bytes, 8192);
        assert!(limit.single.writes_per_s > 0.0);
        assert!(limit.group.writes_per_s > 0.0);
        assert_eq!(limit.group.group, DISK_GROUP);
        assert!(!dir.join("disk-probe.bin").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
