//! Several real `scd` processes on 127.0.N.x (same ports, different addresses): heartbeats make
//! them see each other, and a session created through one node is served through another
//! (relayed to its master over an authenticated connection).

mod common;

use common::Cluster;
use scd_client::ErrorCode;

#[test]
fn a_session_created_on_a_is_read_and_written_through_b() {
    let c = Cluster::start(11, 3, &[]);
    let mut a = c.nodes[0].client();
    let mut b = c.nodes[1].client();
    let id = a.create_id().expect("create id");
    assert_eq!(id.master, c.relay(0), "the creating node is the master");
    assert!(id.backup.is_none(), "HA is off: no backup");

    // Through B: relayed to A.
    let r = b.read_lock(&id, 1000, 30_000).expect("relayed read_lock");
    assert!(r.data.is_none());
    let v1 = b.write_unlock(&id, r.token, 600, b"written via B").unwrap();
    // Through A directly: the same session.
    let direct = a.read(&id).unwrap();
    assert_eq!(direct.data.as_deref(), Some(&b"written via B"[..]));
    assert_eq!(direct.version, v1);
    // A lock taken through B is the master's lock: A's client waits for it.
    let held = b.read_lock(&id, 1000, 30_000).unwrap();
    let e = a.read_lock(&id, 50, 30_000).unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::LockTimeout)), "{e}");
    b.write_unlock(&id, held.token, 600, b"second").unwrap();
    let mut cc = c.nodes[2].client();
    assert_eq!(cc.read(&id).unwrap().data.as_deref(), Some(&b"second"[..]));

    assert!(c.nodes[1].stat("node.cluster_relayed_out") >= 4);
    assert!(c.nodes[0].stat("node.cluster_relayed_in") >= 4);
    for n in &c.nodes {
        assert_eq!(n.stat("node.cluster_peers_up"), 2);
        assert!(n.stat("node.cluster_heartbeats_received") > 0);
    }
}

#[test]
fn two_clients_relayed_through_one_node_never_share_a_lock() {
    // Both clients of B reach A's session over B's one pooled relay connection; A must still
    // see them as two lock owners (found by scd-bench --nodes: the second got the lock too).
    let c = Cluster::start(12, 2, &[]);
    let mut a = c.nodes[0].client();
    let id = a.create_id().expect("create id");
    let mut b1 = c.nodes[1].client();
    let mut b2 = c.nodes[1].client();
    let held = b1.read_lock(&id, 1000, 30_000).expect("first relayed lock");
    let e = b2.read_lock(&id, 200, 30_000).unwrap_err();
    assert!(
        matches!(e.code(), Some(ErrorCode::LockTimeout)),
        "a second client of the same node must wait for the lock: {e}"
    );
    // The holder's write still applies, and then the other client gets the lock.
    b1.write_unlock(&id, held.token, 600, b"by b1").unwrap();
    let next = b2.read_lock(&id, 1000, 30_000).expect("lock after release");
    assert_eq!(next.data.as_deref(), Some(&b"by b1"[..]));
    b2.write_unlock(&id, next.token, 600, b"by b2").unwrap();
    assert_eq!(a.read(&id).unwrap().data.as_deref(), Some(&b"by b2"[..]));
    // (A client of B that goes away releases its relayed lock at once: the next test.)
}

#[test]
fn a_client_that_goes_away_releases_its_relayed_lock_at_once() {
    // A PHP worker on B dies holding the lock of a session mastered by A: the lock must go
    // with its connection, as a local one does, not after its (long) lease.
    let c = Cluster::start(13, 2, &[]);
    let mut a = c.nodes[0].client();
    let id = a.create_id().expect("create id");
    let mut dying = c.nodes[1].client();
    let held = dying.read_lock(&id, 1000, 300_000).expect("relayed lock");
    assert_ne!(held.token, 0);
    drop(dying);
    // Far shorter than the 300 s lease: only a release at close lets this through.
    let mut next = c.nodes[1].client();
    let got = next
        .read_lock(&id, 30_000, 30_000)
        .expect("the lock of a closed client is released");
    next.write_unlock(&id, got.token, 600, b"after").unwrap();
    // The same through A's own client.
    let mut dying = c.nodes[1].client();
    let _held = dying.read_lock(&id, 1000, 300_000).unwrap();
    drop(dying);
    let got = a
        .read_lock(&id, 30_000, 30_000)
        .expect("released for A's client too");
    assert_eq!(got.data.as_deref(), Some(&b"after"[..]));
}
