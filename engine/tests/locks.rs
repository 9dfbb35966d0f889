//! Session locks: waiter order, deadlines, leases, owners that go away, wrong tokens.

mod common;

use common::{events, key_n, lock_now};
use scd_engine::sim::SimStorage;
use scd_engine::{
    EngineError, Event, FlushPolicy, LockOutcome, OwnerId, Shard, ShardConfig, WaitId,
};

const T0: u64 = 1_700_000_000_000;

fn shard() -> Shard<SimStorage> {
    let cfg = ShardConfig {
        flush: FlushPolicy::DelayedWrite { interval_ms: 1000 },
        shards: 1,
        ..ShardConfig::default()
    };
    Shard::open_with(SimStorage::new(), &cfg, 0, T0).unwrap().0
}

fn queued(o: Result<LockOutcome, EngineError>) -> WaitId {
    match o {
        Ok(LockOutcome::Queued(w)) => w,
        other => panic!("expected to be queued, got {other:?}"),
    }
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let mut s = shard();
    let k = key_n(1);
    let mut holder = lock_now(&mut s, k, 1, T0);
    let waits: Vec<WaitId> = (2..=5)
        .map(|o| queued(s.lock(k, OwnerId(o), T0, T0 + 60_000, 10_000)))
        .collect();
    assert_eq!(s.stats().lock_waiters, 4);
    for (i, &w) in waits.iter().enumerate() {
        let now = T0 + 10 * (i as u64 + 1);
        s.put_unlock(k, holder, format!("by {i}").as_bytes(), 60, now)
            .unwrap();
        let ev = events(&mut s, now);
        holder = match &ev[..] {
            [Event::LockGranted { wait, token }] if *wait == w => *token,
            other => panic!("expected grant to {w:?}, got {other:?}"),
        };
    }
    s.unlock(k, holder, T0 + 100).unwrap();
    assert!(events(&mut s, T0 + 100).is_empty());
    assert_eq!(s.stats().locks_held, 0);
    assert_eq!(s.stats().lock_waits, 4);
}

#[test]
fn deadline_times_out_a_waiter_and_skips_it() {
    let mut s = shard();
    let k = key_n(1);
    let t = lock_now(&mut s, k, 1, T0);
    let early = queued(s.lock(k, OwnerId(2), T0, T0 + 100, 10_000));
    let late = queued(s.lock(k, OwnerId(3), T0, T0 + 5000, 10_000));
    assert_eq!(s.next_deadline_ms(), Some(T0 + 100));
    assert!(events(&mut s, T0 + 99).is_empty());
    assert_eq!(
        events(&mut s, T0 + 100),
        vec![Event::LockTimedOut { wait: early }]
    );
    s.unlock(k, t, T0 + 200).unwrap();
    assert!(
        matches!(&events(&mut s, T0 + 200)[..], [Event::LockGranted { wait, .. }] if *wait == late)
    );
    // A deadline already past: refused at once, not queued.
    assert_eq!(
        s.lock(k, OwnerId(4), T0 + 300, T0 + 300, 1000),
        Ok(LockOutcome::TimedOut)
    );
    assert_eq!(s.stats().lock_timeouts, 2);
}

#[test]
fn lease_end_releases_and_grants_next() {
    let mut s = shard();
    let k = key_n(1);
    let t = match s.lock(k, OwnerId(1), T0, T0, 500).unwrap() {
        LockOutcome::Granted(t) => t,
        o => panic!("{o:?}"),
    };
    let w = queued(s.lock(k, OwnerId(2), T0, T0 + 10_000, 500));
    assert_eq!(s.next_deadline_ms(), Some(T0 + 500));
    assert!(events(&mut s, T0 + 499).is_empty());
    let ev = events(&mut s, T0 + 500);
    let t2 = match &ev[..] {
        [Event::LockGranted { wait, token }] if *wait == w => *token,
        other => panic!("{other:?}"),
    };
    assert_ne!(t, t2);
    // The first holder's token is stale now.
    assert!(matches!(
        s.put(k, t, b"late", 60, T0 + 501),
        Err(EngineError::WrongToken)
    ));
    assert!(s.put(k, t2, b"ok", 60, T0 + 501).is_ok());
    // And with nobody waiting, the lease just ends.
    assert!(events(&mut s, T0 + 1000).is_empty());
    assert!(matches!(
        s.put(k, t2, b"late", 60, T0 + 1000),
        Err(EngineError::NotLocked)
    ));
    assert_eq!(s.stats().lease_expiries, 2);
}

#[test]
fn owner_gone_releases_its_locks_and_waits() {
    let mut s = shard();
    let (a, b, c) = (key_n(1), key_n(2), key_n(3));
    let ta = lock_now(&mut s, a, 1, T0);
    let _tb = lock_now(&mut s, b, 1, T0);
    let tc = lock_now(&mut s, c, 2, T0);
    // Owner 1 also waits for c; owner 3 waits for a.
    let w1 = queued(s.lock(c, OwnerId(1), T0, T0 + 10_000, 1000));
    let w3 = queued(s.lock(a, OwnerId(3), T0, T0 + 10_000, 1000));
    assert_eq!(s.release_owner(OwnerId(1), T0 + 1), 3);
    let ev = events(&mut s, T0 + 1);
    assert!(
        matches!(&ev[..], [Event::LockGranted { wait, .. }] if *wait == w3),
        "{ev:?}"
    );
    assert!(matches!(
        s.unlock(a, ta, T0 + 2),
        Err(EngineError::WrongToken)
    ));
    // b is free again.
    lock_now(&mut s, b, 4, T0 + 2);
    // Owner 1's wait for c is gone: releasing c wakes nobody.
    s.unlock(c, tc, T0 + 3).unwrap();
    let ev = events(&mut s, T0 + 3);
    assert!(
        !ev.iter()
            .any(|e| matches!(e, Event::LockGranted { wait, .. } if *wait == w1)),
        "{ev:?}"
    );
}

#[test]
fn wrong_and_stale_tokens_are_refused() {
    let mut s = shard();
    let k = key_n(1);
    let other = key_n(2);
    let t = lock_now(&mut s, k, 1, T0);
    let t_other = lock_now(&mut s, other, 1, T0);
    // A token for another session.
    assert!(matches!(
        s.put(k, t_other, b"x", 60, T0),
        Err(EngineError::WrongToken)
    ));
    assert!(matches!(
        s.touch(k, t_other, 60, T0),
        Err(EngineError::WrongToken)
    ));
    assert!(matches!(
        s.destroy(k, Some(t_other), T0),
        Err(EngineError::WrongToken)
    ));
    // Re-locking by the holder issues a new token; the old one is stale.
    let t2 = lock_now(&mut s, k, 1, T0);
    assert_ne!(t, t2);
    assert!(matches!(
        s.put(k, t, b"x", 60, T0),
        Err(EngineError::WrongToken)
    ));
    assert!(s.put(k, t2, b"x", 60, T0).is_ok());
    s.unlock(k, t2, T0).unwrap();
    assert!(matches!(s.unlock(k, t2, T0), Err(EngineError::NotLocked)));
    assert!(matches!(
        s.put(k, t2, b"x", 60, T0),
        Err(EngineError::NotLocked)
    ));
}

#[test]
fn a_new_session_can_be_locked_before_it_exists() {
    let mut s = shard();
    let k = key_n(42);
    assert!(!s.exists(&k, T0));
    let t = lock_now(&mut s, k, 1, T0);
    assert!(s.get(&k, T0).is_none());
    s.put_unlock(k, t, b"first write", 60, T0).unwrap();
    assert_eq!(s.get(&k, T0).unwrap().data(), b"first write");
    // Destroy without a token works when nobody holds the lock.
    s.destroy(k, None, T0).unwrap();
    assert!(!s.exists(&k, T0));
}

#[test]
fn write_through_hands_the_lock_on_only_once_the_write_is_durable() {
    let cfg = ShardConfig {
        flush: FlushPolicy::WriteThrough,
        shards: 1,
        ..ShardConfig::default()
    };
    let mut s = Shard::open_with(SimStorage::new(), &cfg, 0, T0).unwrap().0;
    let k = key_n(1);
    let holder = lock_now(&mut s, k, 1, T0);
    let next = queued(s.lock(k, OwnerId(2), T0, T0 + 60_000, 10_000));
    s.storage_mut().hold_flushes(true);
    let ticket = match s.put_unlock(k, holder, b"new", 60, T0 + 1).unwrap() {
        scd_engine::WriteAck::Pending(t) => t,
        other => panic!("write-through must wait for the flush, got {other:?}"),
    };
    // The write is not durable yet: the waiter must not be able to read it.
    let ev = events(&mut s, T0 + 2);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::LockGranted { .. })),
        "lock handed on before the write was durable: {ev:?}"
    );
    assert_eq!(s.stats().locks_held, 1);
    s.storage_mut().hold_flushes(false);
    let ev = events(&mut s, T0 + 3);
    let durable = ev
        .iter()
        .position(|e| matches!(e, Event::Durable { ticket: t } if *t == ticket))
        .expect("the write becomes durable");
    let granted = ev
        .iter()
        .position(|e| matches!(e, Event::LockGranted { wait, .. } if *wait == next))
        .expect("the waiter gets the lock once the write is durable");
    assert!(durable < granted, "{ev:?}");
}

/// A pinned lock outlasts every release but its last unpin: the holder's unlock and its
/// write's unlock are deferred, its lease does not end, its owner going away leaves it, and the
/// holder's own new request waits in the queue; the last unpin releases it to the first
/// waiter. An unpin of a lock that is not pinned changes nothing.
#[test]
fn a_pinned_lock_is_released_only_by_its_last_unpin() {
    let mut s = shard();
    let k = key_n(1);
    let t = match s.lock(k, OwnerId(1), T0, T0, 500).unwrap() {
        LockOutcome::Granted(t) => t,
        o => panic!("{o:?}"),
    };
    assert!(!s.is_pinned(&k));
    assert_eq!(s.unpin(k, t, T0), Err(EngineError::NotPinned));
    s.pin(k, t, T0).unwrap();
    s.pin(k, t, T0).unwrap();
    assert!(s.is_pinned(&k));
    assert_eq!(s.pinned_locks(), 1);
    let w = queued(s.lock(k, OwnerId(2), T0, T0 + 60_000, 500));
    // Its own holder asks again: queued, not a fresh grant.
    let own = queued(s.lock(k, OwnerId(1), T0, T0 + 60_000, 500));
    s.put_unlock(k, t, b"held", 60, T0 + 1).unwrap();
    s.unlock(k, t, T0 + 2).unwrap();
    // Long past the lease, and the owner gone: still held.
    assert!(events(&mut s, T0 + 10_000).is_empty());
    assert_eq!(s.release_owner(OwnerId(1), T0 + 10_001), 1, "only its wait");
    assert!(events(&mut s, T0 + 10_001).is_empty());
    assert_eq!(s.stats().locks_held, 1);
    assert_eq!(s.stats().lease_expiries, 0);
    // The first unpin of two keeps it; the last releases it to the first waiter left.
    s.unpin(k, t, T0 + 10_002).unwrap();
    assert!(events(&mut s, T0 + 10_002).is_empty());
    s.unpin(k, t, T0 + 10_003).unwrap();
    let ev = events(&mut s, T0 + 10_003);
    let t2 = match &ev[..] {
        [Event::LockGranted { wait, token }] if *wait == w => *token,
        other => panic!("expected a grant to {w:?} (not {own:?}), got {other:?}"),
    };
    assert!(!s.is_pinned(&k));
    assert_eq!(s.pinned_locks(), 0);
    assert!(matches!(
        s.unpin(k, t, T0 + 10_004),
        Err(EngineError::WrongToken)
    ));
    // The new holder's lock is an ordinary one: its lease ends.
    assert!(events(&mut s, T0 + 10_003 + 500).is_empty());
    assert!(matches!(
        s.put(k, t2, b"late", 60, T0 + 10_003 + 501),
        Err(EngineError::NotLocked)
    ));
}
