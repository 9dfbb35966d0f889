//! Broadcast heartbeats between real `scd` processes, one per network namespace.
//!
//! Several nodes on 127.0.0.x of one host cannot each hear a broadcast on the heartbeat port
//! (only one socket can bind `0.0.0.0:port`), so the other cluster tests use unicast `peers`.
//! Here every node gets its own network namespace, joined to the others by a bridge (in a hub
//! namespace, so the host's network is not touched) on 10.77.0.0/24, and is configured with
//! `cluster.broadcast = 10.77.0.255` and no peers. The test checks that every node sees the
//! others up, that a session is relayed, that a host outside `allowed_hosts` is not heard, and
//! that a node killed with `kill -9` is seen down.
//!
//! The namespaces are made by `common::netns` (needs root and iproute2's `ip`: without them the
//! test prints a `SKIPPED` line to stderr and returns).

mod common;

use common::netns::{Net, NsNode, eventually, key_file, skipped};

const SUBNET: &str = "10.77.0";

#[test]
fn broadcast_heartbeats_between_namespaces() {
    // Nodes 1-3 form the cluster; namespace 4 holds an outsider (right key, wrong address).
    let net = match Net::create(SUBNET, 4) {
        Ok(net) => net,
        Err(e) => return skipped("cluster_broadcast", &e),
    };
    let key_dir = tempfile::tempdir().expect("key dir");
    let key = key_file(key_dir.path());
    // Broadcast heartbeats, no peers; only `allowed` may be heard.
    let flags = |allowed: &str| -> Vec<String> {
        vec![
            "--broadcast".into(),
            format!("{SUBNET}.255"),
            "--allowed-hosts".into(),
            allowed.into(),
        ]
    };
    let relay = |i: u8| net.relay(i);

    let members = format!("{SUBNET}.1,{SUBNET}.2,{SUBNET}.3");
    let mut nodes: Vec<NsNode> = (1..=3)
        .map(|i| NsNode::start(&net, i, &key, &flags(&members)))
        .collect();

    // Every node hears the two others' broadcasts, and has rejoined.
    eventually(
        "every node sees the two others up and is ready",
        &nodes,
        || {
            nodes
                .iter()
                .all(|n| n.stat("node.cluster_peers_up") == 2 && n.stat("node.cluster_ready") == 1)
        },
    );
    for (i, n) in nodes.iter().enumerate() {
        assert!(n.stat("node.cluster_heartbeats_sent") > 0);
        assert!(n.stat("node.cluster_heartbeats_received") > 0);
        // Its own broadcasts come back to it: ignored, not counted as rejected.
        assert_eq!(
            n.stat("node.cluster_heartbeats_rejected"),
            0,
            "node {}: log:\n{}",
            i + 1,
            n.log_text()
        );
        for j in 1..=3u8 {
            if j as usize != i + 1 {
                let up = format!("cluster: node {} is up", relay(j));
                assert!(
                    n.log_text().contains(&up),
                    "node {} logs {up:?}:\n{}",
                    i + 1,
                    n.log_text()
                );
            }
        }
    }

    // A session created on node 1 is read and written through node 2 (relayed to node 1).
    let mut c1 = nodes[0].client();
    let id = c1.create_id().expect("create id");
    assert_eq!(id.master, relay(1));
    let held = c1.read_lock(&id, 1000, 30_000).expect("lock on node 1");
    c1.write_unlock(&id, held.token, 600, b"written on node 1")
        .expect("write on node 1");
    let mut c2 = nodes[1].client();
    let r = c2.read(&id).expect("relayed read through node 2");
    assert_eq!(r.data.as_deref(), Some(&b"written on node 1"[..]));
    let held = c2.read_lock(&id, 1000, 30_000).expect("relayed lock");
    c2.write_unlock(&id, held.token, 600, b"written via node 2")
        .expect("relayed write");
    assert_eq!(
        c1.read(&id).unwrap().data.as_deref(),
        Some(&b"written via node 2"[..])
    );
    assert!(nodes[1].stat("node.cluster_relayed_out") >= 3);
    assert!(nodes[0].stat("node.cluster_relayed_in") >= 3);

    // A node outside allowed_hosts, with the right key, broadcasting on the same subnet: its
    // heartbeats are dropped and counted, and it never counts as a peer.
    let outsider = NsNode::start(&net, 4, &key, &flags(&format!("{SUBNET}.0/24")));
    eventually(
        "every member rejects the outsider's heartbeats",
        &nodes,
        || {
            nodes
                .iter()
                .all(|n| n.stat("node.cluster_heartbeats_rejected") >= 3)
        },
    );
    for n in &nodes {
        assert_eq!(n.stat("node.cluster_peers_up"), 2);
        assert_eq!(n.stat("node.cluster_peers_down"), 0);
        assert!(!n.log_text().contains(&format!("node {} is up", relay(4))));
    }
    drop(outsider);

    // kill -9 of node 3: nodes 1 and 2 see it down.
    nodes[2].kill9();
    eventually("nodes 1 and 2 see node 3 down", &nodes, || {
        nodes[..2]
            .iter()
            .all(|n| n.stat("node.cluster_peers_up") == 1 && n.stat("node.cluster_peers_down") == 1)
    });
    // (The log reaches the test through a pipe, maybe after the statistics: wait for it.)
    let down = format!("cluster: node {} is down", relay(3));
    eventually("nodes 1 and 2 log node 3 down", &nodes, || {
        nodes[..2].iter().all(|n| n.log_text().contains(&down))
    });
    // The session (on node 1) is still served through node 2.
    assert_eq!(
        c2.read(&id)
            .expect("relayed read after the kill")
            .data
            .as_deref(),
        Some(&b"written via node 2"[..])
    );
    drop(nodes);
    drop(net);
}
