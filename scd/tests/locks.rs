//! Session locks through the real daemon: a lock belongs to its client connection, so a client
//! that dies releases it at once; waiters are served in arrival order; a wait can time out.

mod common;

use common::{Daemon, eventually, test_id};
use scd_client::{ErrorCode, OwnedReply, Request};

/// Leases far longer than any wait in these tests: a lock that moves on did so because of a
/// release, never because its lease ran out.
const LEASE_MS: u32 = 600_000;
const WAIT_MS: u32 = 300_000;

#[test]
fn a_client_that_disconnects_releases_its_lock_and_the_waiter_gets_it() {
    for (tcp_holder, tcp_waiter) in [(false, false), (true, false), (false, true)] {
        let d = Daemon::start(&[]);
        let id = test_id(1, 11);
        let mut holder = if tcp_holder {
            d.tcp_client()
        } else {
            d.client()
        };
        let mut waiter = if tcp_waiter {
            d.tcp_client()
        } else {
            d.client()
        };
        let r = holder.read_lock(&id, 1000, LEASE_MS).unwrap();
        holder.write_unlock(&id, r.token, 600, b"v1").unwrap();
        let held = holder.read_lock(&id, 1000, LEASE_MS).unwrap();

        // The waiter queues behind the holder (its reply will come only once it has the lock).
        let rid = waiter
            .send(Request::ReadLock {
                id,
                wait_ms: WAIT_MS,
                lease_ms: LEASE_MS,
            })
            .unwrap();
        eventually("the waiter to be queued", || {
            d.stats()["total.lock_waits"] >= 1
        });

        // The PHP worker dies: its connection closes with the lock held.
        drop(holder);
        waiter.set_timeout(Some(common::READY_WAIT)).unwrap();
        let (got, reply) = waiter
            .recv()
            .expect("the waiter gets the lock once the holder is gone");
        assert_eq!(got, rid);
        let token = match reply {
            OwnedReply::Data { token, data, .. } => {
                assert_eq!(data, b"v1");
                token
            }
            other => panic!("expected the session data, got {other:?}"),
        };
        assert_ne!(token, held.token);
        // The waiter really holds the lock: it can write with its token.
        waiter.write_unlock(&id, token, 600, b"v2").unwrap();
        assert_eq!(waiter.read(&id).unwrap().data.as_deref(), Some(&b"v2"[..]));
    }
}

#[test]
fn a_dead_clients_lock_is_free_at_once_without_waiting() {
    let d = Daemon::start(&[]);
    let id = test_id(2, 11);
    {
        let mut c = d.client();
        c.read_lock(&id, 1000, LEASE_MS).unwrap();
    }
    // Closing is asynchronous; ask without waiting until the release has happened.
    let mut other = d.client();
    eventually("the lock to be released", || {
        match other.read_lock(&id, 0, LEASE_MS) {
            Ok(r) => r.token != 0,
            Err(e) => {
                assert!(matches!(e.code(), Some(ErrorCode::LockTimeout)), "{e}");
                false
            }
        }
    });
}

#[test]
fn waiters_get_the_lock_in_arrival_order() {
    let d = Daemon::start(&[]);
    let id = test_id(3, 11);
    let mut a = d.client();
    let r = a.read_lock(&id, 1000, LEASE_MS).unwrap();
    a.write_unlock(&id, r.token, 600, b"a").unwrap();
    let held = a.read_lock(&id, 1000, LEASE_MS).unwrap();

    let mut waiters = Vec::new();
    for n in 0..4u64 {
        let mut c = d.client();
        c.set_timeout(Some(common::READY_WAIT)).unwrap();
        c.send(Request::ReadLock {
            id,
            wait_ms: WAIT_MS,
            lease_ms: LEASE_MS,
        })
        .unwrap();
        // Queue strictly one after the other.
        eventually("the waiter to be queued", || {
            d.stats()["total.lock_waits"] > n
        });
        waiters.push(c);
    }
    a.unlock(&id, held.token).unwrap();
    // Each waiter in turn sees the data its predecessor wrote.
    let mut expect = b"a".to_vec();
    for (n, c) in waiters.iter_mut().enumerate() {
        let (_, reply) = c.recv().expect("lock granted in turn");
        let OwnedReply::Data { token, data, .. } = reply else {
            panic!("expected data, got {reply:?}")
        };
        assert_eq!(data, expect, "waiter {n} came out of order");
        expect = format!("w{n}").into_bytes();
        c.write_unlock(&id, token, 600, &expect).unwrap();
    }
}

#[test]
fn a_wait_that_runs_out_is_answered_with_lock_timeout() {
    let d = Daemon::start(&[]);
    let id = test_id(4, 11);
    let mut a = d.client();
    let mut b = d.client();
    a.read_lock(&id, 1000, LEASE_MS).unwrap();
    let e = b.read_lock(&id, 50, LEASE_MS).unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::LockTimeout)), "{e}");
    let e = b.read_lock(&id, 0, LEASE_MS).unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::LockTimeout)), "{e}");
    let s = d.stats();
    assert!(s["total.lock_timeouts"] >= 2, "{s:?}");
    // b's connection is fine afterwards.
    assert!(!b.exists(&id).unwrap());
}

#[test]
fn a_lease_releases_the_lock_of_a_client_that_hangs() {
    let d = Daemon::start(&[]);
    let id = test_id(5, 11);
    let mut hung = d.client();
    let mut other = d.client();
    let h = hung.read_lock(&id, 1000, 200).unwrap();
    // The holder stays connected but never comes back; its 200 ms lease ends the lock.
    other.set_timeout(Some(common::READY_WAIT)).unwrap();
    let r = other.read_lock(&id, WAIT_MS, LEASE_MS).unwrap();
    assert_ne!(r.token, 0);
    // The hung client's token is stale now.
    let e = hung.write_unlock(&id, h.token, 600, b"late").unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::NotLocked)), "{e}");
}
