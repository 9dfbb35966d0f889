//! A witness-only node (`cluster.witness_only`) with real `scd` processes: the third, small host
//! of a two-node farm. It holds no sessions (it refuses session requests with a clear error and
//! no ID ever names it), but it counts among the nodes and witnesses silences, so a master that
//! goes silent (SIGSTOP: its connections are not refused) is failed over by its backup without
//! `allow_alone` — which a two-node cluster cannot do (`cluster_witness.rs`, the two-node test).
//!
//! Loopback `127.0.105.x`: A and B are session nodes (HA, write-through), W is the witness.

mod common;

use std::time::Duration;

use common::{Cluster, read_following};
use scd_wire::local::ErrorCode;

#[test]
fn a_witness_only_node_holds_no_sessions_and_lets_two_nodes_fail_over_a_silent_master() {
    let c = Cluster::start_each(
        105,
        3,
        &["--ha", "true", "--storage-model", "write-through"],
        |i| {
            if i == 3 {
                vec!["--witness-only".into(), "true".into()]
            } else {
                Vec::new()
            }
        },
    );
    let (a, b, w) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    common::eventually("W says at start that it is a witness only", || {
        w.log_text().contains("this node is a witness only")
    });
    assert!(
        !a.log_text().contains("cluster.allow_alone is off"),
        "A's peers name two other nodes: no two-node warning"
    );

    // W refuses session requests, with a message that says why.
    let mut on_w = w.client();
    on_w.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let e = on_w.create_id().expect_err("a witness creates no session");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    assert!(e.to_string().contains("witness only"), "{e}");

    // Sessions created through A are backed up on B, never on W (which holds nothing and so is
    // the least loaded node of all).
    let mut on_a = a.client();
    on_a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let ids: Vec<_> = (0..10)
        .map(|_| on_a.create_id().expect("create id on A"))
        .collect();
    for id in &ids {
        assert_eq!(id.master, c.relay(0));
        assert_eq!(id.backup, Some(c.relay(1)), "backed up on B, never on W");
    }
    let id = ids[0];
    let held = on_a.read_lock(&id, 1000, 30_000).expect("lock on A");
    on_a.write_unlock(&id, held.token, 600, b"value 1")
        .expect("write value 1 on A");
    let e = on_w
        .read(&id)
        .expect_err("W serves no session, even one it could relay");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    assert_eq!(w.stat("total.sessions"), 0);
    assert!(a.stat("total.sessions") >= 1 && b.stat("total.sessions") >= 1);

    // A goes silent (stopped, not killed: its connections are not refused). B no longer hears
    // it, W witnesses that, and B takes the session over with its value.
    common::stop_all_threads(a.pid());
    common::eventually("B and W see A down", || {
        b.stat("node.cluster_peers_down") == 1 && w.stat("node.cluster_peers_down") == 1
    });
    let mut on_b = b.client();
    on_b.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut now = id;
    assert_eq!(
        read_following(&mut on_b, &mut now).0.as_deref(),
        Some(&b"value 1"[..]),
        "B log:\n{}\nW log:\n{}",
        b.log_text(),
        w.log_text()
    );
    assert_eq!(now.master, c.relay(1), "B took the session over");
    assert_ne!(now.backup, Some(c.relay(2)), "never backed up on W");
    assert_eq!(b.stat("node.cluster_failovers"), 1);
    assert!(b.stat("node.cluster_witness_agreed") >= 1, "W witnessed it");
    common::eventually("W logs its agreement", || {
        w.log_text().contains("witnessed for")
    });
    let held = on_b.read_lock(&now, 1000, 30_000).expect("lock on B");
    on_b.write_unlock(&now, held.token, 600, b"value 2")
        .expect("write value 2 on B");

    // A continues: it rejoins and never serves its old value; the session is B's.
    common::signal(a.pid(), "CONT");
    c.wait_ready(0);
    let mut old = id;
    assert_eq!(
        read_following(&mut on_a, &mut old).0.as_deref(),
        Some(&b"value 2"[..]),
        "A log:\n{}",
        a.log_text()
    );
    assert_eq!(old.master, c.relay(1));
    assert_eq!(w.stat("total.sessions"), 0, "W still holds nothing");
}
