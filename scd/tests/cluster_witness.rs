//! The failover witness with real `scd` processes: a placement change decided on a node's
//! silence alone needs another live node to witness that silence (`WitnessRequest`), and with
//! no other live node it is made only with `cluster.allow_alone`.
//!
//! - Network namespaces (`common::netns`, subnet `10.82.0`), three nodes: only the link between
//!   the master A and the backup B is cut (both still reach C). A and B each stop hearing the
//!   other, but C hears both and refuses to witness: B does not take the session over, A does
//!   not drop B, no second master appears; after the heal the session is served with its last
//!   acknowledged value by its one master. Then A is cut off completely: B takes the session
//!   over with C's agreement. Needs root and iproute2's `ip`: without them the test prints a
//!   `SKIPPED` line.
//! - Loopback, two nodes (`127.0.91.x`, `127.0.92.x`): the backup is stopped (SIGSTOP: silent,
//!   and its connections are not refused) past the node timeout. With `allow_alone` off the
//!   master's session is Unavailable (nobody can witness); with it on the master goes on alone
//!   (a new ID without that backup).

mod common;

use std::time::Duration;

use common::netns::{SessionOnA, assert_unavailable, eventually, ha_net, logs, session_on_a};
use common::read_following;
use scd_wire::local::ErrorCode;

const SUBNET: &str = "10.82.0";

/// Why no node may serve the session while the reads below are made.
const WHY: &str = "A and B cannot hear each other";

#[test]
fn a_cut_between_master_and_backup_changes_nothing_until_a_third_node_witnesses_a_silence() {
    // Unicast peers, HA, write-through; 100 ms heartbeats (node timeout 800 ms).
    let Some((net, _key_dir, nodes)) = ha_net(SUBNET, 3, "cluster_witness") else {
        return;
    };

    // A session mastered by A (node 1), backed up on B, value 1; C is the third node.
    let SessionOnA {
        mut on_a,
        id: original,
        b,
        c,
    } = session_on_a(&net, &nodes);
    let (na, nb, nc) = (&nodes[0], &nodes[b as usize - 1], &nodes[c as usize - 1]);
    assert!(nb.stat("node.cluster_replicas_applied") >= 1);

    // Cut only the link A–B, both ways: A and B declare each other down; C hears both.
    net.mute(1, &[b]).expect("drop what A sends to B");
    net.mute(b, &[1]).expect("drop what B sends to A");
    eventually(
        "A and B see each other down, C sees both up",
        &nodes,
        || {
            na.stat("node.cluster_peers_down") == 1
                && nb.stat("node.cluster_peers_down") == 1
                && nc.stat("node.cluster_peers_up") == 2
        },
    );

    // Through B (the backup, which no longer hears the master): it asks C, C still hears A
    // and refuses, so B does not take the session over. Through A (which no longer hears its
    // backup and holds no lease from it): it asks C whether to drop B, C refuses, A waits.
    let mut on_b = nb.client();
    on_b.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut on_c = nc.client();
    on_c.set_timeout(Some(Duration::from_secs(60))).unwrap();
    eventually("B and A were refused a witness by C", &nodes, || {
        assert_unavailable(&mut on_b, &original, "through B", WHY, &nodes);
        assert_unavailable(&mut on_a, &original, "through A", WHY, &nodes);
        nb.stat("node.cluster_witness_refused") >= 1 && na.stat("node.cluster_witness_refused") >= 1
    });
    // Asked again, and through C: the same.
    for _ in 0..3 {
        assert_unavailable(&mut on_b, &original, "through B", WHY, &nodes);
        assert_unavailable(&mut on_a, &original, "through A", WHY, &nodes);
        assert_unavailable(&mut on_c, &original, "through C", WHY, &nodes);
    }
    assert_eq!(
        nb.stat("node.cluster_failovers"),
        0,
        "B took the session over"
    );
    assert_eq!(nb.stat("node.cluster_witness_agreed"), 0);
    assert_eq!(na.stat("node.cluster_backups_replaced"), 0, "A dropped B");
    assert_eq!(na.stat("node.cluster_witness_agreed"), 0);
    assert!(nb.stat("node.cluster_witness_requests") >= nb.stat("node.cluster_witness_refused"));
    eventually("C logs its refusals", &nodes, || {
        nc.log_text().contains("refused to witness")
    });

    // Heal: A and B hear each other again (each tells the other to rejoin). The session is
    // served with its last acknowledged value by its one master, A, under its original ID.
    net.unmute(1, &[b]).expect("let A send to B");
    net.unmute(b, &[1]).expect("let B send to A");
    eventually("every node ready with two peers up again", &nodes, || {
        nodes
            .iter()
            .all(|n| n.stat("node.cluster_peers_up") == 2 && n.stat("node.cluster_ready") == 1)
    });
    for (name, cl) in [("A", &mut on_a), ("B", &mut on_b), ("C", &mut on_c)] {
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
    assert_eq!(nb.stat("node.cluster_failovers"), 0);
    assert_eq!(nc.stat("node.cluster_failovers"), 0);
    // A writes value 2 (once it holds B's lease again).
    let mut id = original;
    eventually("A takes the lock again", &nodes, || {
        match on_a.read_lock(&id, 1000, 30_000) {
            Ok(held) => {
                if let Some(n) = held.new_id {
                    id = n;
                }
                on_a.write_unlock(&id, held.token, 600, b"value 2")
                    .expect("write value 2 on A");
                true
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
                false
            }
        }
    });
    assert_eq!(id.master, net.relay(1));

    // Now cut A off completely: C no longer hears A either, agrees, and B takes over.
    net.cut(1).expect("cut A off");
    eventually("B and C see A down", &nodes, || {
        nb.stat("node.cluster_peers_down") == 1 && nc.stat("node.cluster_peers_down") == 1
    });
    let mut now = id;
    assert_eq!(
        read_following(&mut on_b, &mut now).0.as_deref(),
        Some(&b"value 2"[..]),
        "{}",
        logs(&nodes)
    );
    assert_eq!(now.master, net.relay(b), "B took the session over");
    assert_eq!(nb.stat("node.cluster_failovers"), 1);
    assert!(
        nb.stat("node.cluster_witness_agreed") >= 1,
        "C witnessed it"
    );
    eventually("C logs its agreement", &nodes, || {
        nc.log_text().contains("witnessed for")
    });
    drop(nodes);
    drop(net);
}

/// Two nodes, the backup stopped past the node timeout: with `allow_alone` off nobody can
/// witness its silence, so the master keeps it as backup and the session is Unavailable (the
/// start warning said so); once the backup continues, the session is served again. With
/// `allow_alone` on, the master goes on without it.
#[test]
fn two_nodes_a_silent_backup_holds_the_session_unless_allow_alone() {
    use common::Cluster;

    // allow_alone off (the default).
    let c = Cluster::start(91, 2, &["--ha", "true", "--storage-model", "write-through"]);
    common::eventually("A warns at start that it cannot fail over alone", || {
        c.nodes[0].log_text().contains("cluster.allow_alone is off")
    });
    let mut a = c.nodes[0].client();
    a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let id = a.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)));
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"value 1").unwrap();
    common::signal(c.nodes[1].pid(), "STOP");
    common::eventually("A sees B down", || {
        c.nodes[0].stat("node.cluster_peers_down") == 1
    });
    for _ in 0..3 {
        match a.read(&id) {
            Ok(r) => panic!(
                "A served the session ({:?}, new ID {:?}) without its silent backup\n{}",
                r.data,
                r.new_id,
                c.nodes[0].log_text()
            ),
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}"),
        }
    }
    assert_eq!(c.nodes[0].stat("node.cluster_backups_replaced"), 0);
    assert_eq!(
        c.nodes[0].stat("node.cluster_witness_requests"),
        0,
        "nobody to ask"
    );
    common::eventually("A logs why it waits", || {
        c.nodes[0]
            .log_text()
            .contains("no other live node can witness")
    });
    // B continues: the session is served again, with its value.
    common::signal(c.nodes[1].pid(), "CONT");
    let mut now = id;
    assert_eq!(
        read_following(&mut a, &mut now).0.as_deref(),
        Some(&b"value 1"[..])
    );
    assert_eq!(now.master, c.relay(0));
    drop(c);

    // allow_alone on: A goes on alone.
    let c = Cluster::start(
        92,
        2,
        &[
            "--ha",
            "true",
            "--storage-model",
            "write-through",
            "--allow-alone",
            "true",
        ],
    );
    let mut a = c.nodes[0].client();
    a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let id = a.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)));
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"value 1").unwrap();
    assert!(
        !c.nodes[0].log_text().contains("cluster.allow_alone is off"),
        "no warning with allow_alone on"
    );
    common::signal(c.nodes[1].pid(), "STOP");
    common::eventually("A sees B down", || {
        c.nodes[0].stat("node.cluster_peers_down") == 1
    });
    let mut now = id;
    assert_eq!(
        read_following(&mut a, &mut now).0.as_deref(),
        Some(&b"value 1"[..]),
        "{}",
        c.nodes[0].log_text()
    );
    assert_eq!(now.master, c.relay(0));
    assert_ne!(
        now.backup,
        Some(c.relay(1)),
        "served without the silent backup"
    );
    assert!(now.version > id.version, "under a new epoch");
    assert!(c.nodes[0].stat("node.cluster_backups_replaced") >= 1);
    // And written.
    let r = a.read_lock(&now, 1000, 30_000).unwrap();
    if let Some(n) = r.new_id {
        now = n;
    }
    a.write_unlock(&now, r.token, 600, b"value 2").unwrap();
    assert_eq!(a.read(&now).unwrap().data.as_deref(), Some(&b"value 2"[..]));
    common::signal(c.nodes[1].pid(), "CONT");
}
