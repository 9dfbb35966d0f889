//! Checked-in damaged slab files open with the damage reported and the good sessions kept.
//!
//! The fixtures in `tests/fixtures/` are a clean store of 8 sessions (one 160-byte slot each,
//! the slab file cut after its 8 slots) and copies of it damaged in one way each. They are
//! made by `regenerate_fixtures` (ignored; run it only when the format changes, and say so in
//! docs/storage.md's version history).

mod common;

use std::path::{Path, PathBuf};

use common::{TempDir, blob, key_n, lock_now};
use scd_engine::{FlushPolicy, Shard, ShardConfig};

const T0: u64 = 1_700_000_000_000;
const SESSIONS: u64 = 8;
const DATA_LEN: usize = 100;
const SLOT: usize = 160;
const HEADER_REGION: usize = 4096;
const SLAB: &str = "shard-0000/slab-01-000000.dat";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cfg() -> ShardConfig {
    ShardConfig {
        flush: FlushPolicy::WriteThrough,
        shards: 1,
        ..ShardConfig::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Opens a copy of fixture `case`; returns the recovered sessions' indexes and the report.
fn open_case(case: &str) -> (Vec<u64>, scd_engine::RecoveryReport) {
    let dir = TempDir::new(case);
    copy_dir(&fixtures().join(case), dir.path());
    let (mut s, report) = Shard::open_at(&cfg(), dir.path(), 0, T0).unwrap();
    let mut kept = Vec::new();
    for i in 0..SESSIONS {
        if let Some(r) = s.get(&key_n(i), T0) {
            // A recovered session is always exactly what was written.
            assert_eq!(r.data(), &blob(i, DATA_LEN)[..], "{case}: session {i}");
            kept.push(i);
        }
    }
    // The damaged store keeps working: a new write lands and survives a reopen.
    let k = key_n(1000);
    let t = lock_now(&mut s, k, 1, T0);
    s.put_unlock(k, t, b"after repair", 60, T0).unwrap();
    s.sync().unwrap();
    drop(s);
    let (s, _) = Shard::open_at(&cfg(), dir.path(), 0, T0).unwrap();
    assert_eq!(s.get(&k, T0).unwrap().data(), b"after repair", "{case}");
    for &i in &kept {
        assert!(
            s.get(&key_n(i), T0).is_some(),
            "{case}: session {i} lost after reopen"
        );
    }
    (kept, report)
}

#[test]
fn clean_store_opens_whole() {
    let (kept, r) = open_case("clean");
    assert_eq!(kept, (0..SESSIONS).collect::<Vec<_>>());
    assert_eq!((r.damaged, r.damaged_files, r.sessions), (0, 0, SESSIONS));
}

#[test]
fn bit_flips_are_detected_and_skipped() {
    let (kept, r) = open_case("bitflip");
    assert_eq!(kept, vec![0, 1, 3, 4, 6, 7]);
    assert_eq!(r.damaged, 2);
    assert!(
        r.damage
            .iter()
            .any(|d| d.slot == Some(2) && d.reason.contains("CRC")),
        "{:?}",
        r.damage
    );
    assert!(r.damage.iter().any(|d| d.slot == Some(5)), "{:?}", r.damage);
}

#[test]
fn wrong_magic_is_detected_and_skipped() {
    let (kept, r) = open_case("wrong_magic");
    assert_eq!(kept, vec![0, 1, 2, 4, 5, 6, 7]);
    assert_eq!(r.damaged, 1);
    assert!(
        r.damage
            .iter()
            .any(|d| d.slot == Some(3) && d.reason == "wrong magic"),
        "{:?}",
        r.damage
    );
}

#[test]
fn truncated_file_keeps_whole_slots() {
    let (kept, r) = open_case("truncated");
    assert_eq!(kept, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(r.damaged_files, 1);
    assert!(
        r.damage.iter().any(|d| d.reason.contains("truncated")),
        "{:?}",
        r.damage
    );
}

#[test]
fn damaged_file_header_is_reported_records_kept() {
    let (kept, r) = open_case("bad_header");
    assert_eq!(kept, (0..SESSIONS).collect::<Vec<_>>());
    assert_eq!(r.damaged_files, 1);
    assert!(
        r.damage
            .iter()
            .any(|d| d.slot.is_none() && d.reason.contains("magic")),
        "{:?}",
        r.damage
    );
}

#[test]
fn garbage_slot_and_stub_file_are_skipped() {
    let (kept, r) = open_case("garbage");
    assert_eq!(kept, vec![0, 1, 2, 3, 5, 6, 7]);
    assert_eq!(r.damaged, 1);
    // The stub file (shorter than a header) is reported and left alone.
    assert_eq!(r.damaged_files, 1);
    assert!(
        r.damage.iter().any(|d| d.file.ends_with("000001.dat")),
        "{:?}",
        r.damage
    );
}

/// Rebuilds the fixtures. Run with `cargo test -p scd-engine --test corrupt -- --ignored`.
#[test]
#[ignore]
fn regenerate_fixtures() {
    let root = fixtures();
    let _ = std::fs::remove_dir_all(&root);
    let clean = root.join("clean");
    {
        let (mut s, _) = Shard::open_at(&cfg(), &clean, 0, T0).unwrap();
        for i in 0..SESSIONS {
            let t = lock_now(&mut s, key_n(i), 1, T0);
            s.put_unlock(key_n(i), t, &blob(i, DATA_LEN), u32::MAX, T0)
                .unwrap();
        }
        s.sync().unwrap();
    }
    std::fs::remove_file(clean.join("shard-0000/lock")).unwrap();
    let slab = clean.join(SLAB);
    let mut bytes = std::fs::read(&slab).unwrap();
    bytes.truncate(HEADER_REGION + SESSIONS as usize * SLOT);
    std::fs::write(&slab, &bytes).unwrap();
    let variant = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let dir = root.join(name);
        copy_dir(&clean, &dir);
        let mut b = bytes.clone();
        f(&mut b);
        std::fs::write(dir.join(SLAB), b).unwrap();
    };
    let slot = |i: usize| HEADER_REGION + i * SLOT;
    variant("bitflip", &|b| {
        b[slot(2) + 60] ^= 0x04; // data
        b[slot(5) + 25] ^= 0x80; // version field
    });
    variant("wrong_magic", &|b| {
        b[slot(3)..slot(3) + 4].copy_from_slice(b"XXXX")
    });
    variant("truncated", &|b| b.truncate(slot(6) + 70));
    variant("bad_header", &|b| b[0] = b'Z');
    variant("garbage", &|b| {
        let g = blob(99, SLOT);
        b[slot(4)..slot(4) + SLOT].copy_from_slice(&g);
    });
    std::fs::write(
        root.join("garbage/shard-0000/slab-01-000001.dat"),
        [0xAAu8; 100],
    )
    .unwrap();
}

/// Random bytes, random lengths, random names: opening never fails and never panics, and the
/// valid records planted among the garbage are all found.
#[test]
fn garbage_never_stops_an_open() {
    use scd_engine::sim::{SimDisk, SimRng, SimStorage};
    let (mut damaged, mut kept) = (0, 0);
    for seed in 0..200u64 {
        let mut rng = SimRng::new(seed);
        // A real store with a few sessions, then garbage sprinkled over its files.
        let (mut s, _) = Shard::open_with(SimStorage::new(), &cfg(), 0, T0).unwrap();
        for i in 0..6u64 {
            let t = lock_now(&mut s, key_n(i), 1, T0);
            s.put_unlock(key_n(i), t, &blob(i, 20 + 300 * i as usize), 600, T0)
                .unwrap();
        }
        s.sync().unwrap();
        let mut disk: SimDisk = s.storage().durable_image();
        drop(s);
        let names: Vec<String> = disk.files.keys().cloned().collect();
        for name in &names {
            let f = disk.files.get_mut(name).unwrap();
            for _ in 0..rng.below(40) {
                let at = rng.below(f.len() as u64) as usize;
                let len = (1 + rng.below(300) as usize).min(f.len() - at);
                for b in &mut f[at..at + len] {
                    *b = rng.next_u64() as u8;
                }
            }
            if rng.chance(1, 5) {
                let cut = rng.below(f.len() as u64) as usize;
                f.truncate(cut);
            }
        }
        for j in 0..rng.below(3) {
            let len = rng.below(20_000) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            disk.files.insert(
                format!("slab-{:02}-{:06}.dat", rng.below(70), 900 + j),
                junk,
            );
        }
        let (s, report) = Shard::open_with(SimStorage::from_disk(disk), &cfg(), 0, T0)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        // Whatever survived is exact.
        for i in 0..6u64 {
            if let Some(r) = s.get(&key_n(i), T0) {
                assert_eq!(r.data(), &blob(i, 20 + 300 * i as usize)[..], "seed {seed}");
            }
        }
        assert!(report.sessions <= 6);
        damaged += report.damaged + u64::from(report.damaged_files);
        kept += report.sessions;
    }
    // The garbage did hit records, and good records did survive it.
    assert!(damaged > 100, "{damaged}");
    assert!(kept > 200, "{kept}");
}
