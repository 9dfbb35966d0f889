//! The failover witness needs a majority: with four nodes, a partition into two pairs — the
//! master A with a node C on one side, the backup B with a node D on the other — gives each side
//! one witness. With a single witness the rule of three-node clusters, B would take the session
//! over with D's agreement while A gave it a new backup with C's: two masters, each serving and
//! accepting writes. A decider needs, with itself, a majority of the nodes it knows (two
//! witnesses of four), which no side of a 2 | 2 split has: the session waits (Unavailable) on
//! both sides, and after the heal it is served by its one master with its last acknowledged
//! value. Once A alone is cut off, B, C and D are a majority and B takes the session over.
//!
//! Network namespaces (`common::netns`, subnet `10.89.0`); needs root and iproute2's `ip`:
//! without them the test prints a `SKIPPED` line.

mod common;

use std::time::Duration;

use common::netns::{assert_unavailable, eventually, ha_net, logs};
use common::read_following;

const SUBNET: &str = "10.89.0";

/// Why no node may serve the session while the reads below are made.
const WHY: &str = "the cluster is split in two pairs";

#[test]
fn a_split_into_two_pairs_gives_no_side_a_majority_and_no_second_master() {
    // Unicast peers, HA, write-through; 100 ms heartbeats (node timeout 800 ms).
    let Some((net, _key_dir, nodes)) = ha_net(SUBNET, 4, "cluster_quorum") else {
        return;
    };
    let node = |i: u8| &nodes[i as usize - 1];
    let client = |i: u8| {
        let mut c = node(i).client();
        // Bounds a hang (a test never asserts on time): far above any wait of the daemon.
        c.set_timeout(Some(Duration::from_secs(60))).unwrap();
        c
    };

    // A session mastered by A (node 1), backed up on B, value 1. C shares A's side of the
    // split, D B's.
    let mut on_a = client(1);
    let original = on_a.create_id().expect("create id on A");
    assert_eq!(original.master, net.relay(1));
    let backup = original.backup.expect("HA on: the ID names a backup");
    let b = (2..=4u8)
        .find(|&i| net.relay(i) == backup)
        .expect("the backup is another node");
    let mut others = (2..=4u8).filter(|&i| i != b);
    let (c, d) = (others.next().unwrap(), others.next().unwrap());
    let held = on_a.read_lock(&original, 1000, 30_000).expect("lock on A");
    on_a.write_unlock(&original, held.token, 600, b"value 1")
        .expect("write value 1 on A");
    assert!(node(b).stat("node.cluster_replicas_applied") >= 1);

    // Split {A, C} | {B, D}, both ways.
    for (from, to) in [(1, [b, d]), (c, [b, d]), (b, [1, c]), (d, [1, c])] {
        net.mute(from, &to).expect("drop what crosses the split");
    }
    eventually("each node sees the other pair down", &nodes, || {
        nodes
            .iter()
            .all(|n| n.stat("node.cluster_peers_down") == 2 && n.stat("node.cluster_peers_up") == 1)
    });

    // Through B (the backup, which no longer hears A): only D could witness that A is silent,
    // one of the two a four-node cluster needs. Through A (no lease from B, which it no longer
    // hears): only C could witness that B is silent, not enough to replace it either. Both wait.
    let (mut on_b, mut on_c, mut on_d) = (client(b), client(c), client(d));
    eventually("both sides found too few witnesses", &nodes, || {
        assert_unavailable(&mut on_b, &original, "through B", WHY, &nodes);
        assert_unavailable(&mut on_a, &original, "through A", WHY, &nodes);
        [1, b].iter().all(|&i| {
            node(i)
                .log_text()
                .contains("fewer than the 2 that must agree")
        })
    });
    for _ in 0..3 {
        for (name, cl) in [
            ("A", &mut on_a),
            ("B", &mut on_b),
            ("C", &mut on_c),
            ("D", &mut on_d),
        ] {
            assert_unavailable(cl, &original, &format!("through {name}"), WHY, &nodes);
        }
    }
    assert_eq!(
        node(b).stat("node.cluster_failovers"),
        0,
        "B took the session over on one witness\n{}",
        logs(&nodes)
    );
    assert_eq!(
        node(1).stat("node.cluster_backups_replaced"),
        0,
        "A replaced B on one witness\n{}",
        logs(&nodes)
    );

    // Heal: every node hears every other again; the session is served with value 1 by its one
    // master, A, under its original placement.
    for (from, to) in [(1, [b, d]), (c, [b, d]), (b, [1, c]), (d, [1, c])] {
        net.unmute(from, &to).expect("heal the split");
    }
    eventually("every node ready with three peers up again", &nodes, || {
        nodes
            .iter()
            .all(|n| n.stat("node.cluster_peers_up") == 3 && n.stat("node.cluster_ready") == 1)
    });
    for (name, cl) in [
        ("A", &mut on_a),
        ("B", &mut on_b),
        ("C", &mut on_c),
        ("D", &mut on_d),
    ] {
        let mut id = original;
        assert_eq!(
            read_following(cl, &mut id).0.as_deref(),
            Some(&b"value 1"[..]),
            "through {name}\n{}",
            logs(&nodes)
        );
        assert_eq!(id.master, net.relay(1), "through {name}: one master, A");
        assert_eq!(id.version, 1, "through {name}: the placement never changed");
    }

    // A alone cut off: B, C and D are three of four, a majority; B takes the session over.
    net.cut(1).expect("cut A off");
    eventually("B, C and D see A down", &nodes, || {
        [b, c, d]
            .iter()
            .all(|&i| node(i).stat("node.cluster_peers_down") == 1)
    });
    let agreed_before = node(b).stat("node.cluster_witness_agreed");
    let mut now = original;
    assert_eq!(
        read_following(&mut on_b, &mut now).0.as_deref(),
        Some(&b"value 1"[..]),
        "{}",
        logs(&nodes)
    );
    assert_eq!(now.master, net.relay(b), "B took the session over");
    assert_eq!(node(b).stat("node.cluster_failovers"), 1);
    assert!(
        node(b).stat("node.cluster_witness_agreed") >= agreed_before + 2,
        "C and D witnessed it\n{}",
        logs(&nodes)
    );
}
