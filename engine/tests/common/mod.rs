//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use scd_engine::sim::SimRng;
use scd_engine::{Event, LockOutcome, LockToken, SessionKey, Shard, Storage};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("scd-engine-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A random session key.
pub fn key(rng: &mut SimRng) -> SessionKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    k[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    SessionKey(k)
}

/// A key made from a small number (readable in failures).
pub fn key_n(n: u64) -> SessionKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k[8..].copy_from_slice(&n.to_le_bytes());
    SessionKey(k)
}

/// Data whose bytes depend on a seed, so a mix-up between versions is visible.
pub fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SimRng::new(seed);
    (0..len).map(|_| r.next_u64() as u8).collect()
}

/// Locks `key` for `owner`, which must be granted at once.
pub fn lock_now<S: Storage>(
    shard: &mut Shard<S>,
    key: SessionKey,
    owner: u64,
    now_ms: u64,
) -> LockToken {
    match shard.lock(
        key,
        scd_engine::OwnerId(owner),
        now_ms,
        now_ms + 1000,
        30_000,
    ) {
        Ok(LockOutcome::Granted(t)) => t,
        other => panic!("lock of {key:?} not granted at once: {other:?}"),
    }
}

/// Collects the events due by `now_ms`.
pub fn events<S: Storage>(shard: &mut Shard<S>, now_ms: u64) -> Vec<Event> {
    let mut out = Vec::new();
    shard.poll_events(now_ms, &mut out);
    out
}
