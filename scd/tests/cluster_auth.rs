//! A heartbeat or a relay connection without the right key changes nothing and gets nothing back;
//! a host outside `allowed_hosts` is not even answered.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};

use std::time::Duration;

use common::key_holder::KeyHolder;
use common::{Cluster, Daemon};
use scd_wire::local::ErrorCode;
use scd_wire::{HashList, RelayMessage};

/// Reads until end of stream (bounded); returns what came.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(common::READY_WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn wrong_key_heartbeats_and_relays_change_nothing_and_get_nothing() {
    let c = Cluster::start(14, 2, &[]);
    let a = &c.nodes[0];
    let before_up = a.stat("node.cluster_peers_up");
    assert_eq!(before_up, 1);

    // An intruder with another key, announcing itself to node A over heartbeats.
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("other.key");
    std::fs::write(&key, "a different secret, 32 bytes....").unwrap();
    let intruder = Daemon::start(&[
        "--advertise-address",
        "127.0.14.3",
        "--cluster-key-file",
        key.to_str().unwrap(),
        "--peers",
        "127.0.14.1,127.0.14.2",
        "--heartbeat-interval-ms",
        "100",
    ]);
    common::eventually("A drops the intruder's heartbeats", || {
        a.stat("node.cluster_heartbeats_rejected") >= 3
    });
    assert_eq!(
        a.stat("node.cluster_peers_up"),
        1,
        "the intruder is not a peer"
    );
    assert_eq!(intruder.stat("node.cluster_peers_up"), 0);

    // Forged datagrams straight at A's heartbeat port: nothing comes back.
    let udp = UdpSocket::bind("127.0.14.3:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let rejected = a.stat("node.cluster_heartbeats_rejected");
    let mut forged = vec![0u8; 100];
    forged[..4].copy_from_slice(b"SCHB");
    forged[4] = 1;
    forged[5] = 1;
    for _ in 0..3 {
        udp.send_to(&forged, "127.0.14.1:45678").unwrap();
    }
    let mut buf = [0u8; 2048];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a heartbeat is never answered"
    );
    common::eventually("forged heartbeats counted", || {
        a.stat("node.cluster_heartbeats_rejected") >= rejected + 3
    });

    // A relay connection that cannot prove the key: after the challenge, a bad proof gets a
    // closed connection and nothing else.
    let relay: SocketAddr = "127.0.14.1:34567".parse().unwrap();
    let refused = a.stat("node.cluster_relay_connections_refused");
    let mut s = TcpStream::connect(relay).unwrap();
    let mut challenge = [0u8; 64];
    s.set_read_timeout(Some(common::READY_WAIT)).unwrap();
    let n = s.read(&mut challenge).unwrap();
    assert!(n > 0, "the challenge");
    // A proof frame of the right shape with a made-up tag (header: magic, version, kind 0x41,
    // flags, request ID 0, body length 73).
    let mut proof = Vec::new();
    proof.extend_from_slice(b"SC");
    proof.push(1);
    proof.push(0x41);
    proof.extend_from_slice(&[0, 0]);
    proof.extend_from_slice(&0u64.to_le_bytes());
    proof.extend_from_slice(&73u32.to_le_bytes());
    proof.push(1);
    proof.extend_from_slice(&7u64.to_le_bytes());
    proof.extend_from_slice(&[9u8; 64]);
    s.write_all(&proof).unwrap();
    assert!(
        read_to_close(&mut s).is_empty(),
        "nothing after a bad proof"
    );
    // Garbage instead of a proof: the same.
    let mut s = TcpStream::connect(relay).unwrap();
    let _ = s.read(&mut challenge).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_to_close(&mut s).is_empty());
    common::eventually("refused relay connections counted", || {
        a.stat("node.cluster_relay_connections_refused") >= refused + 2
    });

    // The intruder's attempts to relay fail; A's sessions are untouched.
    let mut ca = a.client();
    let id = ca.create_id().unwrap();
    let r = ca.read_lock(&id, 1000, 30_000).unwrap();
    ca.write_unlock(&id, r.token, 600, b"mine").unwrap();
    let mut ci = intruder.client();
    assert!(
        ci.read(&id).is_err(),
        "the intruder cannot reach A's sessions"
    );
    assert_eq!(ca.read(&id).unwrap().data.as_deref(), Some(&b"mine"[..]));
    assert_eq!(a.stat("node.cluster_relayed_in"), 0);
    assert!(a.stat("node.cluster_relay_connections_refused") >= refused + 3);
    assert_eq!(a.stat("node.cluster_peers_up"), 1);
}

#[test]
fn hosts_outside_allowed_hosts_are_not_heard_or_answered() {
    // Node A allows only 127.0.15.2: node C (127.0.15.3) is never heard and its relay
    // connections are closed before the challenge.
    let c = Cluster::start(15, 2, &["--allowed-hosts", "127.0.15.1,127.0.15.2"]);
    let a = &c.nodes[0];
    let key = c.key_dir.path().join("cluster.key");
    let outsider = Daemon::start(&[
        "--advertise-address",
        "127.0.15.3",
        "--cluster-key-file",
        key.to_str().unwrap(),
        "--peers",
        "127.0.15.1",
        "--heartbeat-interval-ms",
        "100",
    ]);
    common::eventually("A drops the outsider's heartbeats", || {
        a.stat("node.cluster_heartbeats_rejected") >= 3
    });
    assert_eq!(a.stat("node.cluster_peers_up"), 1);
    // A raw connection from 127.0.0.1 (not allowed): closed before the challenge.
    let refused = a.stat("node.cluster_relay_connections_refused");
    let mut s = TcpStream::connect("127.0.15.1:34567").unwrap();
    assert!(read_to_close(&mut s).is_empty(), "not even a challenge");
    common::eventually("counted", || {
        a.stat("node.cluster_relay_connections_refused") > refused
    });
    // The outsider (with the right key) cannot relay through A either, while B can.
    let mut cb = c.nodes[1].client();
    let id = cb.create_id().unwrap();
    let r = cb.read_lock(&id, 1000, 30_000).unwrap();
    cb.write_unlock(&id, r.token, 600, b"b").unwrap();
    let mut ca = a.client();
    assert_eq!(
        ca.read(&id).unwrap().data.as_deref(),
        Some(&b"b"[..]),
        "A relays to B"
    );
    drop(outsider);
}

#[test]
fn a_key_holder_no_heartbeat_named_gets_no_session_list_answer_and_cannot_make_a_node_rejoin() {
    let c = Cluster::start(49, 2, &["--ha", "true"]);
    let id = c.nodes[0].client().create_id().unwrap();
    let mut k = KeyHolder::connect(&c, 0, 0x5eed_0000_0000_0001);
    let asks = [
        RelayMessage::SyncHashes {
            hashes: HashList::new(&id.hash).unwrap(),
        },
        RelayMessage::RejoinNeeded,
    ];
    for ask in asks {
        let what = format!("{ask:?}");
        let (code, text) = k.ask(ask);
        assert_eq!(code, Some(ErrorCode::Unavailable), "{what}: {text}");
    }
    // Nothing changed: the node serves, and never rejoined.
    assert_eq!(c.nodes[0].stat("node.cluster_rejoins"), 0);
    assert_eq!(c.nodes[0].stat("node.cluster_ready"), 1);
    assert!(c.nodes[0].client().read(&id).is_ok());
}

#[test]
fn a_key_holder_no_heartbeat_named_cannot_make_a_backup_drop_its_copy() {
    let mut c = Cluster::start(50, 2, &["--ha", "true"]);
    let mut a = c.nodes[0].client();
    let id = a.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)), "B backs the session up");
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"kept").unwrap();
    common::eventually("the copy on B", || {
        c.nodes[1].stat("node.cluster_replicas_applied") >= 1
    });
    let mut k = KeyHolder::connect(&c, 1, 0x5eed_0000_0000_0001);
    let (code, text) = k.ask(RelayMessage::DropReplica { hash: id.hash });
    assert_eq!(code, Some(ErrorCode::Unavailable), "{text}");
    // B still holds it: A dies, B serves it.
    c.nodes[0].kill9();
    let mut now = id;
    let (data, _) = common::read_following(&mut c.nodes[1].client(), &mut now);
    assert_eq!(data.as_deref(), Some(&b"kept"[..]));
}
