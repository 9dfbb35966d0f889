//! A master that hangs (SIGSTOP: its connections stay open and are not refused) while a relayed
//! request waits on it: when the relaying node declares the master down, the request it
//! forwarded fails over at once instead of waiting out its relay timeout (plus the lock wait of
//! a ReadLock). The relay timeout here is 60 s, the longest allowed, and the client gives up
//! after 30 s: the relayed ReadLock must be answered before then, which it is only when the
//! down declaration (800 ms without a heartbeat) ends the wait.
//!
//! Loopback `127.0.106.x`, three nodes, HA, write-through.

mod common;

use std::time::Duration;

use common::{Cluster, read_following};
use scd_client::ClientError;

#[test]
fn a_request_relayed_to_a_master_that_hangs_fails_over_when_the_master_is_declared_down() {
    let c = Cluster::start(
        106,
        3,
        &[
            "--ha",
            "true",
            "--storage-model",
            "write-through",
            "--relay-timeout-ms",
            "60000",
        ],
    );
    let (a, relay) = (&c.nodes[0], 2usize);
    let mut on_a = a.client();
    on_a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let id = on_a.create_id().expect("create id on A");
    let b = common::index_of(&c, id.backup.expect("HA on: a backup"));
    // The relaying node is the one that is neither master nor backup.
    let relay = if b == relay { 1 } else { relay };
    let held = on_a.read_lock(&id, 1000, 60_000).expect("lock on A");
    on_a.write_unlock(&id, held.token, 600, b"value 1")
        .expect("write value 1 on A");

    // A client of A holds the lock; a client of the relaying node queues for it through a relay
    // (a 50 s lock wait on A, on a connection with a 60 s relay timeout).
    on_a.read_lock(&id, 1000, 60_000)
        .expect("the holder locks on A");
    let waits = a.stat("total.lock_waits");
    let mut waiter = c.nodes[relay].client();
    waiter.set_timeout(Some(Duration::from_secs(30))).unwrap();
    let queued = std::thread::spawn(move || {
        let r = waiter.read_lock(&id, 50_000, 60_000);
        (waiter, r)
    });
    common::eventually("the relayed ReadLock waits on A", || {
        a.stat("total.lock_waits") > waits
    });

    // A hangs. Its connections are not refused: only the down declaration ends the wait.
    common::stop_all_threads(a.pid());
    let (mut waiter, r) = queued.join().expect("waiter thread");
    match r {
        // Served by the new master (the lock taken on A is gone with it), or Unavailable while
        // the backup did not see A down yet: either way answered, not left waiting.
        // (A served lock names its new master: the hung one cannot answer at all.)
        Ok(held) => assert_eq!(
            held.new_id.map(|n| n.master),
            Some(c.relay(b)),
            "served, so by the backup that took the session over"
        ),
        Err(ClientError::Io(e)) => panic!(
            "the relayed ReadLock was not answered within 30 s of A hanging ({e}): it waited \
             for the relay timeout\nrelay log:\n{}",
            c.nodes[relay].log_text()
        ),
        Err(e) => assert_eq!(
            e.code(),
            Some(scd_wire::local::ErrorCode::Unavailable),
            "{e}"
        ),
    }

    // And the session is served through the relaying node, from the backup, with its value.
    waiter.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut now = id;
    let (data, _) = read_following(&mut waiter, &mut now);
    assert_eq!(data.as_deref(), Some(&b"value 1"[..]));
    assert_eq!(now.master, c.relay(b), "the backup took the session over");
    common::signal(a.pid(), "CONT");
}
