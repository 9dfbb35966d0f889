//! A node that comes back never serves a session that was taken over while it was away, also
//! when the session moved on since (A → B → X) or its new master restarted meanwhile: at its
//! rejoin it lists the sessions it holds (SyncHashes) and learns where each lives now. Real
//! processes on 127.0.51.x and 127.0.52.x: five nodes, so that one of them (W) never holds the
//! session and relays a request with the original ID to the restarted node.

mod common;

use common::{Cluster, blob, index_of, read_following};
use scd_client::SessionId;

fn wait_all_see(c: &Cluster, up: u64) {
    for i in 0..c.nodes.len() {
        if c.nodes[i].running() {
            c.wait_peers_up(i, up);
        }
    }
}

/// The session moved A → B → X (two kills, two failovers, a write after each): returns the
/// cluster, the original ID, the current ID, the indexes (a, b, x, w: w never held it) and the
/// last value written.
fn moved_twice(net: u8) -> (Cluster, SessionId, SessionId, [usize; 4], Vec<u8>) {
    let mut c = Cluster::start(net, 5, &["--ha", "true"]);
    let a = 0;
    let original = c.nodes[a].client().create_id().unwrap();
    let b = index_of(&c, original.backup.expect("HA on: the ID names a backup"));
    let mut via_a = c.nodes[a].client();
    for n in 0..3u64 {
        let r = via_a.read_lock(&original, 1000, 30_000).unwrap();
        via_a
            .write_unlock(&original, r.token, 600, &blob(n, 500))
            .unwrap();
    }
    drop(via_a);

    // A dies; a read through another node fails over to B, which picks a new backup X.
    c.nodes[a].kill9();
    wait_all_see(&c, 3);
    let r1 = (0..5).find(|&i| i != a && i != b).unwrap();
    let mut via_r1 = c.nodes[r1].client();
    let mut id = original;
    assert_eq!(read_following(&mut via_r1, &mut id).0, Some(blob(2, 500)));
    assert_eq!(id.master, c.relay(b), "B took the session over");
    let x = index_of(&c, id.backup.expect("B picked a new backup"));
    let r = via_r1.read_lock(&id, 1000, 30_000).unwrap();
    via_r1
        .write_unlock(&id, r.token, 600, &blob(5, 600))
        .unwrap();
    drop(via_r1);

    // B dies; a read through another node fails over to X, which picks a new backup Y.
    c.nodes[b].kill9();
    wait_all_see(&c, 2);
    let r2 = (0..5).find(|&i| i != a && i != b && i != x).unwrap();
    let mut via_r2 = c.nodes[r2].client();
    assert_eq!(read_following(&mut via_r2, &mut id).0, Some(blob(5, 600)));
    assert_eq!(id.master, c.relay(x), "X took the session over");
    let y = index_of(&c, id.backup.expect("X picked a new backup"));
    let w = (0..5)
        .find(|&i| ![a, b, x, y].contains(&i))
        .expect("a fifth node");
    // The last value, N.
    let last = blob(9, 700);
    let r = via_r2.read_lock(&id, 1000, 30_000).unwrap();
    assert_eq!(r.data, Some(blob(5, 600)));
    via_r2.write_unlock(&id, r.token, 600, &last).unwrap();
    (c, original, id, [a, b, x, w], last)
}

/// A read with `old` through node `via` answers `last` and hands out `current`, never an older
/// value.
fn reads_current(c: &Cluster, via: usize, old: SessionId, current: SessionId, last: &[u8]) {
    let mut client = c.nodes[via].client();
    let mut id = old;
    let data = read_following(&mut client, &mut id).0;
    assert!(
        data.as_deref() == Some(last),
        "node {via}, ID of epoch {}: the current value ({} bytes), never the old copy (got {:?} \
         bytes)",
        old.version,
        last.len(),
        data.as_ref().map(|d| d.len())
    );
    assert_eq!(id, current, "node {via}: the client gets the current ID");
}

#[test]
fn a_restarted_master_does_not_serve_a_session_that_moved_twice_since() {
    let (mut c, original, current, [a, _b, x, w], last) = moved_twice(51);
    // A comes back with its disk: it holds the session's old copy (value 2, epoch 1).
    c.nodes[a].restart();
    c.wait_ready(a);
    // With the ORIGINAL ID (master A), through A and through W (which relays to A).
    reads_current(&c, a, original, current, &last);
    reads_current(&c, w, original, current, &last);
    assert!(c.nodes[a].stat("node.cluster_rejoin_hashes_listed") >= 1);
    assert!(c.nodes[a].stat("node.cluster_rejoin_moved") >= 1);
    // Writes with the current ID still go to X.
    let mut via_a = c.nodes[a].client();
    let r = via_a.read_lock(&current, 1000, 30_000).unwrap();
    assert_eq!(r.data.as_deref(), Some(&last[..]));
    via_a.unlock(&current, r.token).unwrap();
    assert_eq!(current.master, c.relay(x));
}

#[test]
fn restarted_former_masters_do_not_serve_a_session_whose_new_master_restarted_too() {
    let (mut c, original, current, [a, b, x, w], last) = moved_twice(52);
    // B, which took the session over from A and lost it to X, comes back first; then A.
    c.nodes[b].restart();
    c.wait_ready(b);
    c.nodes[a].restart();
    c.wait_ready(a);
    c.wait_ready(b);
    // The ID B handed out (master B, backup X, epoch 2).
    let of_b = SessionId::new(c.relay(b), Some(c.relay(x)), 2, original.hash);
    for via in [a, b, w] {
        reads_current(&c, via, original, current, &last);
        reads_current(&c, via, of_b, current, &last);
    }
    // A's copy was dropped; B got the current copy from X's sync stream (X took the session
    // over from it) and keeps it as a copy of X's session.
    assert!(c.nodes[a].stat("node.cluster_rejoin_moved") >= 1);
}

#[test]
fn a_restarted_master_does_not_serve_a_session_whose_new_master_restarted_meanwhile() {
    // A → B only; then B restarts, then A restarts. B still knows (its placement journal) that
    // it took the session over from A, and tells A in its sync stream (before the journal only
    // X, B's backup, knew, and A learnt it from X's answer to its hash list; that path is
    // covered by `cluster_durable.rs`, where the node that took over is down).
    let mut c = Cluster::start(53, 4, &["--ha", "true"]);
    let a = 0;
    let original = c.nodes[a].client().create_id().unwrap();
    let b = index_of(&c, original.backup.expect("HA on: the ID names a backup"));
    let mut via_a = c.nodes[a].client();
    let r = via_a.read_lock(&original, 1000, 30_000).unwrap();
    via_a
        .write_unlock(&original, r.token, 600, &blob(1, 400))
        .unwrap();
    drop(via_a);
    c.nodes[a].kill9();
    wait_all_see(&c, 2);
    let r1 = (0..4).find(|&i| i != a && i != b).unwrap();
    let mut via_r1 = c.nodes[r1].client();
    let mut id = original;
    assert_eq!(read_following(&mut via_r1, &mut id).0, Some(blob(1, 400)));
    assert_eq!(id.master, c.relay(b), "B took the session over");
    let x = index_of(&c, id.backup.expect("B picked a new backup"));
    let last = blob(9, 700);
    let r = via_r1.read_lock(&id, 1000, 30_000).unwrap();
    via_r1.write_unlock(&id, r.token, 600, &last).unwrap();
    drop(via_r1);
    let w = (0..4).find(|&i| ![a, b, x].contains(&i)).unwrap();

    // B restarts with its disk, then A.
    c.nodes[b].kill9();
    c.nodes[b].restart();
    c.wait_ready(b);
    c.nodes[a].restart();
    c.wait_ready(a);
    reads_current(&c, a, original, id, &last);
    reads_current(&c, w, original, id, &last);
    assert!(
        c.nodes[b]
            .log_text()
            .contains("placement journal: 1 placements and 1 lease-denial marks restored"),
        "B restored its takeover\n{}",
        c.nodes[b].log_text()
    );
    assert!(
        c.nodes[a].stat("node.cluster_sync_items") >= 1
            || c.nodes[a].stat("node.cluster_rejoin_moved") >= 1,
        "A learnt that the session moved"
    );
}
