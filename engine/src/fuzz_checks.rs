//! Property checks shared by the fuzz target `slab_recovery` (`fuzz/`) and the corpus replay
//! test (`engine/tests/corpus.rs`): one source of truth for what recovery must do with any bytes
//! on disk.
//!
//! A check takes arbitrary bytes and panics only if a property of the engine is broken (never
//! because the input is bad): that panic is what the fuzzer reports as a crash.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::constants::CLASS_COUNT;
use crate::shard::{FlushPolicy, Shard, ShardConfig};
use crate::sim::{SimDisk, SimStorage};
use crate::types::{OwnerId, SessionKey};
use crate::{LockOutcome, WriteAck};

/// The clock of the checks (any fixed time: expiry is relative to it).
const NOW_MS: u64 = 1_700_000_000_000;

fn config() -> ShardConfig {
    ShardConfig {
        flush: FlushPolicy::WriteThrough,
        shards: 1,
        ..ShardConfig::default()
    }
}

/// The manifest of an empty one-shard store, made once by the engine itself.
fn manifest() -> Option<Vec<u8>> {
    static MANIFEST: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let (shard, _) = Shard::open_with(SimStorage::new(), &config(), 0, NOW_MS).ok()?;
            shard.storage().clean_image().manifest
        })
        .clone()
}

/// Input: byte 0 picks the size class of the file's name, the rest is the whole content of
/// that slab file in an otherwise valid one-shard store. Properties:
/// - opening never panics and never fails because of the file's content (damage is counted);
/// - every session it serves passes its CRC (reads verify) and every session it reports is
///   readable;
/// - the store then works: a new session is written, read back exactly, and survives a reopen
///   of the clean image.
///
/// Returns how many sessions the file gave back.
pub fn slab_recovery(data: &[u8]) -> u64 {
    let Some((&class, content)) = data.split_first() else {
        return 0;
    };
    let class = usize::from(class) % CLASS_COUNT;
    let name = format!("slab-{class:02}-000000.dat");
    let disk = SimDisk {
        files: BTreeMap::from([(name, content.to_vec())]),
        manifest: manifest(),
    };
    let (mut shard, report) = Shard::open_with(SimStorage::from_disk(disk), &config(), 0, NOW_MS)
        .unwrap_or_else(|e| panic!("a damaged slab file must not stop the store opening: {e}"));
    assert!(report.records_valid <= report.slots_scanned, "{report:?}");
    let recovered = shard.stats().sessions;
    let listed: Vec<SessionKey> = shard.iter(NOW_MS).map(|(k, _)| k).collect();
    assert_eq!(
        listed.len() as u64,
        shard.stats().sessions,
        "every session held must be readable"
    );
    for k in &listed {
        let r = shard.get(k, NOW_MS).expect("a listed session is served");
        assert!(r.data().len() <= config().session_size_max);
    }

    // The store keeps working on top of whatever was recovered.
    let key = SessionKey([0xA5; 16]);
    let token = match shard.lock(key, OwnerId(1), NOW_MS, NOW_MS + 1000, 30_000) {
        Ok(LockOutcome::Granted(t)) => t,
        other => panic!("a free session must be lockable: {other:?}"),
    };
    let blob: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    match shard.put_unlock(key, token, &blob, 600, NOW_MS) {
        Ok(WriteAck::Pending(ticket)) => shard
            .wait_durable(ticket)
            .expect("a write on the simulated disk becomes durable"),
        Ok(WriteAck::Done) => {}
        Err(e) => panic!("writing a new session after recovery failed: {e}"),
    }
    assert_eq!(
        shard.get(&key, NOW_MS).map(|r| r.data().to_vec()),
        Some(blob.clone())
    );
    let image = shard.storage().clean_image();
    let (again, _) = Shard::open_with(SimStorage::from_disk(image), &config(), 0, NOW_MS)
        .unwrap_or_else(|e| panic!("reopening after a write failed: {e}"));
    assert_eq!(
        again.get(&key, NOW_MS).map(|r| r.data().to_vec()),
        Some(blob)
    );
    recovered
}
