//! A healed partition with real `scd` processes, one per network namespace (`common::netns`):
//! the master of a session is cut off the network, its backup takes the session over (through
//! a third node), the link comes back, and the old master rejoins by itself, so it never serves
//! its stale copy under the session's original ID, and it takes new sessions again.
//!
//! Two cuts: its link goes down (symmetric: it also sees every peer go down, and rejoins as soon
//! as it hears one again, besides being told `RejoinNeeded`), and only what it sends is lost
//! (one-way: it never sees a peer down, so only the `RejoinNeeded` of the nodes that declared it
//! down makes it rejoin).
//!
//! Needs root and iproute2's `ip` (namespaces): without them the test prints a `SKIPPED` line.
//! No request is made on the cut-off node's side during the partition here; what it answers
//! meanwhile (read leases: Unavailable, never its old copy) is `cluster_leases.rs`'s subject.

mod common;

use common::netns::{SessionOnA, eventually, ha_net, logs, session_on_a};
use common::read_following;

const SUBNET: &str = "10.78.0";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Node 1's link to the bridge goes down.
    Link,
    /// What node 1 sends to the others is dropped; it still hears them.
    Outbound,
}

#[test]
fn a_master_cut_off_and_healed_rejoins_and_never_serves_its_stale_copy() {
    partition_and_heal(SUBNET, Cut::Link);
}

#[test]
fn a_master_that_never_saw_a_peer_down_is_told_to_rejoin() {
    partition_and_heal("10.79.0", Cut::Outbound);
}

fn partition_and_heal(subnet: &str, cut: Cut) {
    // Unicast peers, HA, write-through; 100 ms heartbeats (node timeout 800 ms).
    let Some((net, _key_dir, nodes)) = ha_net(subnet, 3, "cluster_partition") else {
        return;
    };

    // A session mastered by A (node 1), backed up on B, value 1; C is the third node.
    let SessionOnA {
        mut on_a,
        id: original,
        b,
        c,
    } = session_on_a(&net, &nodes);
    assert!(nodes[b as usize - 1].stat("node.cluster_replicas_applied") >= 1);

    // Cut A off; B and C see it down.
    match cut {
        Cut::Link => net.cut(1).expect("cut node 1 off"),
        Cut::Outbound => net.mute(1, &[2, 3]).expect("drop what node 1 sends"),
    }
    eventually("B and C see A down", &nodes, || {
        [b, c].iter().all(|&i| {
            let n = &nodes[i as usize - 1];
            n.stat("node.cluster_peers_down") == 1 && n.stat("node.cluster_peers_up") == 1
        })
    });

    if cut == Cut::Link {
        // And A sees them down (it tells each to rejoin when it hears it again below); under
        // load the failover through C can be over before A's own timeout ran out.
        eventually("A sees B and C down", &nodes, || {
            nodes[0].stat("node.cluster_peers_down") == 2
        });
    }

    // Through C: the session fails over to B (new ID), and value 2 is written there.
    let mut on_c = nodes[c as usize - 1].client();
    let mut id = original;
    assert_eq!(
        read_following(&mut on_c, &mut id).0.as_deref(),
        Some(&b"value 1"[..]),
        "the backup had the acknowledged write"
    );
    assert_eq!(id.master, net.relay(b), "failed over to the backup");
    assert_eq!(id.version, 2);
    let held = on_c.read_lock(&id, 1000, 30_000).expect("lock through C");
    if let Some(n) = held.new_id {
        id = n;
    }
    on_c.write_unlock(&id, held.token, 600, b"value 2")
        .expect("write value 2 through C");
    assert_eq!(nodes[b as usize - 1].stat("node.cluster_failovers"), 1);
    let rejoins_before = nodes[0].stat("node.cluster_rejoins");
    assert_eq!(rejoins_before, 0, "A has not rejoined yet");
    if cut == Cut::Outbound {
        assert_eq!(
            nodes[0].stat("node.cluster_peers_down"),
            0,
            "A still hears its peers"
        );
    }

    // Heal. A is told to rejoin by B and C (and, after a symmetric cut, heard them again after
    // losing them all): it stops serving, syncs with them, and serves again.
    match cut {
        Cut::Link => net.heal(1).expect("heal node 1"),
        Cut::Outbound => net.unmute(1, &[2, 3]).expect("let node 1 send again"),
    }
    eventually("A sees its peers again and has rejoined", &nodes, || {
        let a = &nodes[0];
        a.stat("node.cluster_peers_up") == 2
            && a.stat("node.cluster_rejoins") >= 1
            && a.stat("node.cluster_ready") == 1
    });
    eventually("every node ready with two peers up again", &nodes, || {
        nodes
            .iter()
            .all(|n| n.stat("node.cluster_peers_up") == 2 && n.stat("node.cluster_ready") == 1)
    });
    for i in [b, c] {
        assert!(
            nodes[i as usize - 1].stat("node.cluster_rejoins_requested") >= 1,
            "node {i} told A to rejoin"
        );
    }
    // (The log reaches the test through a pipe, maybe after the statistics: wait for it.)
    let a_logs = |what: &str| {
        eventually(&format!("A logs {what:?}"), &nodes, || {
            nodes[0].log_text().contains(what)
        })
    };
    match cut {
        Cut::Link => {
            a_logs("cluster: rejoining: ");
            // A saw B and C return too and told them to rejoin: all three rejoined at once,
            // each answering the others' sync requests while not ready itself (no deadlock).
            assert!(nodes[0].stat("node.cluster_rejoins_requested") >= 2);
        }
        Cut::Outbound => {
            // Only the RejoinNeeded of B and C made A rejoin; A told nobody to.
            a_logs("declared this node down and hears it again");
            let a_log = nodes[0].log_text();
            assert!(
                !a_log.contains("after losing sight of every peer"),
                "{a_log}"
            );
            assert_eq!(nodes[0].stat("node.cluster_rejoins_requested"), 0);
        }
    }

    // A never serves value 1 again under the original ID: it relays to the new master and hands
    // the client the new ID. So do B and C.
    for i in 1..=3u8 {
        let mut cl = nodes[i as usize - 1].client();
        let mut stale = original;
        assert_eq!(
            read_following(&mut cl, &mut stale).0.as_deref(),
            Some(&b"value 2"[..]),
            "node {i} served the session's old value\n{}",
            logs(&nodes)
        );
        assert_eq!(
            stale.master,
            net.relay(b),
            "node {i} pointed to the new master\n{}",
            logs(&nodes)
        );
    }
    // A write with the original ID through A lands on the new master too.
    let mut stale = original;
    let held = on_a
        .read_lock(&stale, 1000, 30_000)
        .expect("lock through A");
    if let Some(n) = held.new_id {
        stale = n;
    }
    assert_eq!(held.data.as_deref(), Some(&b"value 2"[..]));
    assert_eq!(stale.master, net.relay(b));
    on_a.write_unlock(&stale, held.token, 600, b"value 3")
        .expect("write value 3 through A");
    let mut via_b = nodes[b as usize - 1].client();
    assert_eq!(
        via_b.read(&id).unwrap().data.as_deref(),
        Some(&b"value 3"[..])
    );

    // A takes new sessions again, served and relayed as usual.
    let fresh = on_a.create_id().expect("create id on A after the rejoin");
    assert_eq!(fresh.master, net.relay(1));
    let held = on_a
        .read_lock(&fresh, 1000, 30_000)
        .expect("lock a new session on A");
    on_a.write_unlock(&fresh, held.token, 600, b"new on A")
        .expect("write a new session on A");
    assert_eq!(
        on_c.read(&fresh)
            .expect("relayed read through C")
            .data
            .as_deref(),
        Some(&b"new on A"[..])
    );
    drop(nodes);
    drop(net);
}
