//! Review finding: a ReadLock queued behind another client's lock is checked against the read
//! lease when it arrives, and answered (lock granted, data returned) when the lock frees — with
//! no lease check then. If the master was cut off meanwhile and its backup took the session over
//! and wrote a newer value, the queued ReadLock is granted on the old master with the old value.
//!
//! Network namespaces (`common::netns`), subnet `10.84.0`. Needs root and iproute2's `ip`:
//! without them the test prints a `SKIPPED` line.

mod common;

use std::time::Duration;

use common::netns::{SessionOnA, eventually, ha_net, logs, session_on_a};
use common::read_following;

#[test]
fn a_lock_wait_queued_under_a_lease_is_not_granted_after_the_backup_took_the_session_over() {
    let subnet = "10.84.0";
    let Some((net, _key_dir, nodes)) = ha_net(subnet, 3, "cluster_lease_lock_wait") else {
        return;
    };

    // A session mastered by A (node 1), backed up on B, value 1; C is the third node.
    let SessionOnA {
        on_a: _,
        id: original,
        b,
        c,
    } = session_on_a(&net, &nodes);
    eventually("A holds a lease from B", &nodes, || {
        nodes[0].stat("node.cluster_leases_granted") >= 1
    });

    // One client of A holds the lock; another queues behind it (under a valid lease).
    let mut holder = nodes[0].client();
    holder
        .read_lock(&original, 0, 120_000)
        .expect("the holder locks on A");
    let waits_before = nodes[0].stat("total.lock_waits");
    let mut waiter = nodes[0].client();
    waiter.set_timeout(Some(Duration::from_secs(120))).unwrap();
    let queued = std::thread::spawn(move || waiter.read_lock(&original, 60_000, 120_000));
    eventually("the waiter is queued on A", &nodes, || {
        nodes[0].stat("total.lock_waits") > waits_before
    });

    // Cut A off; B and C declare it down; through C the session fails over to B, value 2.
    net.cut(1).expect("cut node 1 off");
    eventually("B and C see A down", &nodes, || {
        [b, c].iter().all(|&i| {
            let n = &nodes[i as usize - 1];
            n.stat("node.cluster_peers_down") == 1 && n.stat("node.cluster_peers_up") == 1
        })
    });
    let mut on_c = nodes[c as usize - 1].client();
    let mut id = original;
    read_following(&mut on_c, &mut id);
    assert_eq!(id.master, net.relay(b), "failed over to the backup");
    let lock = on_c.read_lock(&id, 1000, 30_000).expect("lock through C");
    if let Some(n) = lock.new_id {
        id = n;
    }
    on_c.write_unlock(&id, lock.token, 600, b"value 2")
        .expect("write value 2 through C");

    // The holder goes away on A (its connection closes): A's lock frees, and the queued wait is
    // answered. A, cut off, holds no lease from B: it must not hand out the lock with value 1.
    drop(holder);
    let got = queued.join().expect("the waiter thread");
    if let Ok(r) = &got {
        assert_ne!(
            r.data.as_deref(),
            Some(&b"value 1"[..]),
            "A granted a queued lock with its old value after B took the session over and wrote \
             value 2 (A held no valid lease then)\n{}",
            logs(&nodes)
        );
    }
    drop(nodes);
    drop(net);
}
