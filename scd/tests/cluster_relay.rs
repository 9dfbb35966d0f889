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
