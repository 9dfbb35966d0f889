//! Behaviour of one shard on real files (mmap + io_uring) and on the simulated disk.

mod common;

use common::{TempDir, blob, events, key_n, lock_now};
use scd_engine::sim::SimStorage;
use scd_engine::{
    EngineError, Event, FlushMode, FlushPolicy, ReplicaOutcome, Shard, ShardConfig, WriteAck,
};

const T0: u64 = 1_700_000_000_000;

fn cfg(flush: FlushPolicy) -> ShardConfig {
    ShardConfig {
        flush,
        shards: 1,
        ..ShardConfig::default()
    }
}

fn delayed() -> FlushPolicy {
    FlushPolicy::DelayedWrite { interval_ms: 1000 }
}

#[test]
fn put_get_reopen_on_real_files() {
    let dir = TempDir::new("reopen");
    let c = cfg(delayed());
    {
        let (mut s, report) = Shard::open_at(&c, dir.path(), 0, T0).unwrap();
        assert_eq!(report.sessions, 0);
        for i in 0..200u64 {
            let k = key_n(i);
            let t = lock_now(&mut s, k, 1, T0);
            let ack = s
                .put_unlock(k, t, &blob(i, (i as usize * 37) % 9000), 3600, T0)
                .unwrap();
            assert_eq!(ack, WriteAck::Done);
        }
        let r = s.get(&key_n(7), T0).unwrap();
        assert_eq!(r.data(), &blob(7, 7 * 37)[..]);
        assert!(s.get(&key_n(999), T0).is_none());
        let st = s.stats();
        assert_eq!(st.sessions, 200);
        assert_eq!(st.writes, 200);
        assert_eq!(st.size_smallest, 0);
        assert_eq!(st.size_largest, 199 * 37);
    }
    let (s, report) = Shard::open_at(&c, dir.path(), 0, T0 + 10).unwrap();
    assert_eq!(report.sessions, 200);
    assert_eq!(report.damaged, 0);
    for i in 0..200u64 {
        let r = s.get(&key_n(i), T0 + 10).unwrap();
        assert_eq!(
            r.data(),
            &blob(i, (i as usize * 37) % 9000)[..],
            "session {i}"
        );
        assert_eq!(r.expires_at_ms(), T0 + 3_600_000);
    }
    assert_eq!(s.iter(T0 + 10).count(), 200);
}

fn write_through_durable(mode: FlushMode) {
    let dir = TempDir::new("wt");
    let c = ShardConfig {
        flush_mode: mode,
        ..cfg(FlushPolicy::WriteThrough)
    };
    let (mut s, report) = Shard::open_at(&c, dir.path(), 0, T0).unwrap();
    let expect = if mode == FlushMode::Thread {
        "helper thread"
    } else {
        "io_uring"
    };
    assert!(
        report.flush_mechanism.contains(expect),
        "{}",
        report.flush_mechanism
    );
    assert!(s.completion_fd().is_some());
    let mut tickets = Vec::new();
    for i in 0..10u64 {
        let k = key_n(i);
        let t = lock_now(&mut s, k, 1, T0);
        match s.put_unlock(k, t, &blob(i, 4096), 60, T0).unwrap() {
            WriteAck::Pending(ticket) => tickets.push(ticket),
            WriteAck::Done => panic!("write-through acknowledged before durable"),
        }
    }
    // One pass of the loop: all ten share a flush (group commit).
    s.flush(T0);
    // Nothing left to flush; only the locks' leases are on the clock (under write-through a
    // put_unlock hands its lock on once the write is durable).
    assert_eq!(s.next_deadline_ms(), Some(T0 + 30_000));
    let mut durable = Vec::new();
    while durable.len() < tickets.len() {
        // Block on the completion fd the way the daemon's loop would.
        let fd = s.completion_fd().unwrap();
        assert!(scd_engine::sys::wait_readable(fd, -1).unwrap());
        for e in events(&mut s, T0) {
            if let Event::Durable { ticket } = e {
                durable.push(ticket);
            }
        }
    }
    assert_eq!(durable, tickets);
    assert_eq!(s.stats().flushes, 1);
    assert_eq!(
        s.stats().locks_held,
        0,
        "durable writes hand their locks on"
    );
    // And a blocking wait for a later write.
    let k = key_n(100);
    let t = lock_now(&mut s, k, 1, T0);
    let WriteAck::Pending(ticket) = s.put(k, t, b"x", 60, T0).unwrap() else {
        panic!("not pending")
    };
    s.wait_durable(ticket).unwrap();
    assert_eq!(s.stats().flushes, 2);
}

#[test]
fn write_through_via_io_uring() {
    write_through_durable(FlushMode::Uring);
}

#[test]
fn write_through_via_helper_thread() {
    write_through_durable(FlushMode::Thread);
}

#[test]
fn refuses_too_large_wrong_token_and_unlocked_writes() {
    let c = ShardConfig {
        session_size_max: 1000,
        ..cfg(delayed())
    };
    let (mut s, _) = Shard::open_with(SimStorage::new(), &c, 0, T0).unwrap();
    let k = key_n(1);
    let t = lock_now(&mut s, k, 1, T0);
    assert!(matches!(
        s.put(k, t, &[0u8; 1001], 60, T0),
        Err(EngineError::TooLarge {
            size: 1001,
            max: 1000
        })
    ));
    assert!(s.put(k, t, &[0u8; 1000], 60, T0).is_ok());
    let stale = t;
    s.unlock(k, t, T0).unwrap();
    assert!(matches!(
        s.put(k, stale, b"x", 60, T0),
        Err(EngineError::NotLocked)
    ));
    let t2 = lock_now(&mut s, k, 2, T0);
    assert!(matches!(
        s.put(k, stale, b"x", 60, T0),
        Err(EngineError::WrongToken)
    ));
    assert!(matches!(
        s.touch(k, stale, 60, T0),
        Err(EngineError::WrongToken)
    ));
    assert!(matches!(
        s.destroy(k, None, T0),
        Err(EngineError::WrongToken)
    ));
    assert!(matches!(
        s.unlock(k, stale, T0),
        Err(EngineError::WrongToken)
    ));
    assert_eq!(s.get(&k, T0).unwrap().data(), &[0u8; 1000][..]);
    assert!(s.put_unlock(k, t2, b"ok", 60, T0).is_ok());
    assert_eq!(s.get(&k, T0).unwrap().data(), b"ok");
    // Config limits.
    let bad = ShardConfig {
        session_size_max: 64 << 20,
        ..cfg(delayed())
    };
    assert!(matches!(
        Shard::open_with(SimStorage::new(), &bad, 0, T0),
        Err(EngineError::Config { .. })
    ));
}

#[test]
fn expiry_touch_and_sweep() {
    let (mut s, _) = Shard::open_with(SimStorage::new(), &cfg(delayed()), 0, T0).unwrap();
    for i in 0..50u64 {
        let k = key_n(i);
        let t = lock_now(&mut s, k, 1, T0);
        s.put_unlock(k, t, &blob(i, 100), 10, T0).unwrap();
    }
    // Keep the even ones alive.
    for i in (0..50u64).step_by(2) {
        let k = key_n(i);
        let t = lock_now(&mut s, k, 1, T0 + 5000);
        s.touch(k, t, 10, T0 + 5000).unwrap();
        s.unlock(k, t, T0 + 5000).unwrap();
    }
    let later = T0 + 10_000;
    for i in 0..50u64 {
        assert_eq!(s.exists(&key_n(i), later), i % 2 == 0, "session {i}");
        assert_eq!(s.get(&key_n(i), later).is_some(), i % 2 == 0);
    }
    let t1 = lock_now(&mut s, key_n(1), 1, later);
    assert!(matches!(
        s.touch(key_n(1), t1, 10, later),
        Err(EngineError::NotFound)
    ));
    s.unlock(key_n(1), t1, later).unwrap();
    // Bounded work: each step looks at no more than its budget.
    let mut reclaimed = 0;
    let mut steps = 0;
    while reclaimed < 25 {
        let n = s.expire_step(later, 7);
        assert!(n <= 7);
        reclaimed += n;
        steps += 1;
        assert!(steps < 100_000, "sweep never finished");
    }
    assert_eq!(s.stats().sessions, 25);
    assert_eq!(s.stats().expired, 25);
    assert_eq!(s.expire_step(later, 1_000_000), 0);
}

#[test]
fn destroyed_session_never_comes_back() {
    let dir = TempDir::new("destroy");
    let c = cfg(FlushPolicy::WriteThrough);
    {
        let (mut s, _) = Shard::open_at(&c, dir.path(), 0, T0).unwrap();
        let k = key_n(5);
        // Several versions, so older copies lie in freed slots.
        for v in 0..5u64 {
            let t = lock_now(&mut s, k, 1, T0);
            s.put_unlock(k, t, &blob(v, 300), 3600, T0).unwrap();
            s.sync().unwrap();
        }
        // The last version has a shorter life than the older copies.
        let t = lock_now(&mut s, k, 1, T0);
        s.put_unlock(k, t, b"short", 10, T0).unwrap();
        s.sync().unwrap();
        let t = lock_now(&mut s, k, 1, T0);
        s.destroy(k, Some(t), T0).unwrap();
        s.unlock(k, t, T0).unwrap();
        assert!(s.get(&k, T0).is_none());
    }
    let (mut s, report) = Shard::open_at(&c, dir.path(), 0, T0 + 1).unwrap();
    assert!(s.get(&key_n(5), T0 + 1).is_none());
    assert_eq!(report.sessions, 0);
    assert_eq!(report.tombstones, 1);
    // After the short life, the expired shadow still hides the older, longer-lived copies.
    s.expire_step(T0 + 20_000, 1_000_000);
    drop(s);
    let (s, _) = Shard::open_at(&c, dir.path(), 0, T0 + 20_000).unwrap();
    assert!(s.get(&key_n(5), T0 + 20_000).is_none());
}

#[test]
fn expired_short_life_shadows_older_long_life_copy() {
    let dir = TempDir::new("shadow");
    let c = cfg(FlushPolicy::WriteThrough);
    let k = key_n(9);
    {
        let (mut s, _) = Shard::open_at(&c, dir.path(), 0, T0).unwrap();
        let t = lock_now(&mut s, k, 1, T0);
        s.put(k, t, b"long", 3600, T0).unwrap();
        s.sync().unwrap();
        s.put_unlock(k, t, b"short", 10, T0).unwrap();
        s.sync().unwrap();
        // Expire and reclaim: the record must stay as a shadow.
        s.expire_step(T0 + 11_000, 1_000_000);
        assert!(s.get(&k, T0 + 11_000).is_none());
        // Fill slots so freed ones would be reused if the shadow had been dropped.
        for i in 100..400u64 {
            let kk = key_n(i);
            let t = lock_now(&mut s, kk, 1, T0 + 11_000);
            s.put_unlock(kk, t, b"filler", 3600, T0 + 11_000).unwrap();
        }
        s.sync().unwrap();
    }
    let (s, _) = Shard::open_at(&c, dir.path(), 0, T0 + 12_000).unwrap();
    assert!(s.get(&k, T0 + 12_000).is_none(), "an old copy came back");
}

#[test]
fn shard_count_and_manifest_are_checked() {
    let dir = TempDir::new("manifest");
    let c = ShardConfig {
        shards: 2,
        ..cfg(delayed())
    };
    {
        let (mut s, _) = Shard::open_at(&c, dir.path(), 1, T0).unwrap();
        // A key that routes to shard 1 of 2.
        let k = (0..)
            .map(key_n)
            .find(|k| scd_engine::shard_for(k, 2) == 1)
            .unwrap();
        let t = lock_now(&mut s, k, 1, T0);
        s.put_unlock(k, t, b"x", 60, T0).unwrap();
        // A second opener of the same shard is refused while this one runs.
        assert!(matches!(
            Shard::open_at(&c, dir.path(), 1, T0),
            Err(EngineError::Io { .. })
        ));
    }
    let three = ShardConfig {
        shards: 3,
        ..cfg(delayed())
    };
    assert!(matches!(
        Shard::open_at(&three, dir.path(), 1, T0),
        Err(EngineError::ShardCountMismatch {
            stored: 2,
            configured: 3
        })
    ));
    std::fs::remove_file(dir.path().join("shard-0001/manifest")).unwrap();
    assert!(matches!(
        Shard::open_at(&c, dir.path(), 1, T0),
        Err(EngineError::Manifest { .. })
    ));
}

#[test]
fn lock_tokens_are_never_reissued_across_restarts() {
    let dir = TempDir::new("tokens");
    let c = cfg(delayed());
    let mut seen = std::collections::HashSet::new();
    for round in 0..3 {
        let (mut s, _) = Shard::open_at(&c, dir.path(), 0, T0).unwrap();
        for i in 0..20u64 {
            let t = lock_now(&mut s, key_n(i), round, T0);
            assert!(seen.insert(t.get()), "token {t:?} issued twice");
        }
    }
}

#[test]
fn failed_flush_makes_shard_read_only() {
    for errno in [libc::EIO, libc::ENOSPC] {
        let (mut s, _) =
            Shard::open_with(SimStorage::new(), &cfg(FlushPolicy::WriteThrough), 0, T0).unwrap();
        let k = key_n(1);
        let t = lock_now(&mut s, k, 1, T0);
        let WriteAck::Pending(ok) = s.put(k, t, b"first", 60, T0).unwrap() else {
            panic!()
        };
        s.wait_durable(ok).unwrap();
        s.storage_mut().fail_next_flush(errno);
        let WriteAck::Pending(bad) = s.put(k, t, b"second", 60, T0).unwrap() else {
            panic!()
        };
        s.flush(T0);
        let ev = events(&mut s, T0);
        assert!(!ev.contains(&Event::Durable { ticket: bad }), "{ev:?}");
        assert!(
            ev.iter().any(|e| matches!(e, Event::WriteFailed { ticket, error: EngineError::StorageFailed { .. } } if *ticket == bad)),
            "{ev:?}"
        );
        assert!(matches!(
            s.put(k, t, b"third", 60, T0),
            Err(EngineError::StorageFailed { .. })
        ));
        assert!(matches!(
            s.destroy(k, Some(t), T0),
            Err(EngineError::StorageFailed { .. })
        ));
        assert!(matches!(
            s.wait_durable(bad),
            Err(EngineError::StorageFailed { .. })
        ));
        assert!(s.stats().failed);
        assert!(s.failure().unwrap().contains("failed"));
        // Reads still work.
        assert!(s.get(&k, T0).is_some());
    }
}

#[test]
fn delayed_write_flushes_within_interval() {
    let (mut s, _) = Shard::open_with(SimStorage::new(), &cfg(delayed()), 0, T0).unwrap();
    let k = key_n(1);
    let t = lock_now(&mut s, k, 1, T0);
    assert_eq!(s.put_unlock(k, t, b"a", 60, T0).unwrap(), WriteAck::Done);
    s.flush(T0 + 999);
    events(&mut s, T0 + 999);
    assert_eq!(s.storage().flushes_completed(), 0);
    assert_eq!(s.next_deadline_ms(), Some(T0 + 1000));
    s.flush(T0 + 1000);
    events(&mut s, T0 + 1000);
    assert_eq!(s.storage().flushes_completed(), 1);
    assert_eq!(s.next_deadline_ms(), None);
}

#[test]
fn replica_applies_only_newer_versions() {
    let (mut s, _) = Shard::open_with(SimStorage::new(), &cfg(delayed()), 0, T0).unwrap();
    let k = key_n(3);
    assert_eq!(
        s.apply_replica(k, 10, T0 + 60_000, b"v10", T0).unwrap(),
        ReplicaOutcome::Applied(WriteAck::Done)
    );
    assert_eq!(
        s.apply_replica(k, 9, T0 + 60_000, b"v9", T0).unwrap(),
        ReplicaOutcome::Stale
    );
    assert_eq!(
        s.apply_replica(k, 10, T0 + 60_000, b"v10b", T0).unwrap(),
        ReplicaOutcome::Stale
    );
    assert_eq!(s.get(&k, T0).unwrap().data(), b"v10");
    // A version the clock could not go beyond is refused, not applied.
    assert!(matches!(
        s.apply_replica(key_n(4), u64::MAX, T0 + 60_000, b"x", T0),
        Err(EngineError::Corrupt { .. })
    ));
    assert!(!s.exists(&key_n(4), T0));
    // A local write after a replica gets a higher version (Lamport clock).
    let t = lock_now(&mut s, k, 1, T0);
    s.put_unlock(k, t, b"local", 60, T0).unwrap();
    assert!(s.get(&k, T0).unwrap().version() > 10);
    s.remove(k, T0).unwrap();
    assert!(s.get(&k, T0).is_none());
    assert_eq!(
        s.apply_replica(k, 11, T0 + 60_000, b"old", T0).unwrap(),
        ReplicaOutcome::Stale
    );
}

#[test]
fn compaction_shrinks_and_keeps_everything() {
    let dir = TempDir::new("compact");
    let c = cfg(delayed());
    let (mut s, _) = Shard::open_at(&c, dir.path(), 0, T0).unwrap();
    // Class of ~400-byte records: fill several files.
    let n = 3000u64;
    for i in 0..n {
        let k = key_n(i);
        let t = lock_now(&mut s, k, 1, T0);
        let life = if i % 10 == 0 { 100_000 } else { 60 };
        s.put_unlock(k, t, &blob(i, 350), life, T0).unwrap();
    }
    s.sync().unwrap();
    let files_before = s.stats().slab_files;
    assert!(files_before >= 3, "{files_before}");
    // Delete most of them.
    for i in 0..n {
        if i % 10 != 0 {
            s.remove(key_n(i), T0).unwrap();
        }
    }
    s.sync().unwrap();
    for _ in 0..200 {
        // Spent tombstones go (their sessions would have expired by now).
        s.expire_step(T0 + 120_000, 100_000);
        s.compact_step(T0 + 120_000, 64);
        s.sync().unwrap();
    }
    let after = s.stats();
    assert!(
        after.slab_files < files_before,
        "{} !< {files_before}",
        after.slab_files
    );
    assert!(after.moved > 0);
    drop(s);
    let (s, report) = Shard::open_at(&c, dir.path(), 0, T0 + 120_000).unwrap();
    assert_eq!(report.sessions, n / 10);
    assert_eq!(report.damaged, 0);
    for i in (0..n).step_by(10) {
        assert_eq!(
            s.get(&key_n(i), T0 + 120_000).unwrap().data(),
            &blob(i, 350)[..]
        );
    }
}

#[test]
fn sessions_change_class_as_they_grow() {
    let (mut s, _) = Shard::open_with(SimStorage::new(), &cfg(delayed()), 0, T0).unwrap();
    let k = key_n(1);
    for len in [10usize, 500, 5000, 70_000, 100, 0] {
        let t = lock_now(&mut s, k, 1, T0);
        s.put_unlock(k, t, &blob(len as u64, len), 60, T0).unwrap();
        assert_eq!(s.get(&k, T0).unwrap().data(), &blob(len as u64, len)[..]);
        assert_eq!(s.stats().sessions, 1);
        assert_eq!(s.stats().data_bytes, len as u64);
    }
}

#[test]
fn scan_visits_every_session_across_passes() {
    let (mut s, _) = Shard::open_with(SimStorage::new(), &cfg(delayed()), 0, T0).unwrap();
    for i in 0..500u64 {
        let k = key_n(i);
        let t = lock_now(&mut s, k, 1, T0);
        let life = if i % 5 == 0 { 1 } else { 600 };
        s.put_unlock(k, t, &blob(i, (i as usize * 13) % 3000), life, T0)
            .unwrap();
    }
    let now = T0 + 2000;
    let mut seen = std::collections::HashMap::new();
    let mut cursor = scd_engine::ScanCursor::START;
    let mut passes = 0;
    loop {
        let next = s.scan(cursor, now, 37, |k, r| {
            assert!(seen.insert(k, r.data().to_vec()).is_none(), "visited twice");
        });
        passes += 1;
        match next {
            Some(c) => cursor = c,
            None => break,
        }
    }
    assert!(passes > 10);
    assert_eq!(seen.len(), 400);
    for i in (0..500u64).filter(|i| i % 5 != 0) {
        assert_eq!(seen[&key_n(i)], blob(i, (i as usize * 13) % 3000));
    }
}
