//! The placement journal with real processes (`kill -9`, restart on the same data folder): a
//! node that took a session over, or backs up a session taken over, still knows its epoch after
//! a restart, so a restarted old master never serves its older copy under the client's old ID.
//!
//! Three nodes A, B, C; a session on A with backup B; `kill -9` A; B takes it over (epoch 2,
//! its new backup is C) and "new" is written there; `kill -9` B. Then A restarts first, while B
//! is down and C is up.
//!
//! What A must do then: its own copy ("old", epoch 1) is older than what C knows (C backs the
//! session up for B at epoch 2), so its rejoin's hash list learns "epoch 2, master B, backup C",
//! A routes the session there and drops its own copy; it adopts nothing (it is neither the
//! master nor the backup at epoch 2). Then B restarts and, from its journal, is master at epoch
//! 2 again (C's sync confirms it). Every request with the ORIGINAL cookie, through any node, then
//! returns "new".
//!
//! - `..._while_its_successor_is_down`: C stays up throughout (it remembers epoch 2 in memory).
//! - `..._and_the_third_node_restarted_too`: C is also `kill -9`ed and restarted before A, so
//!   only the journals of B and C remember epoch 2. Without the journal (main before it) A
//!   learns nothing at its rejoin and serves "old": this test fails there.
//!
//! Loopback addresses `127.0.71.x` and `127.0.72.x`.

mod common;

use std::time::Duration;

use common::{Cluster, eventually, index_of, read_following};
use scd_client::{ErrorCode, SessionId};

/// A session on node 0 with "old" written; returns its ID and the indexes of B (its backup) and
/// C (the third node).
fn session_on_a(c: &Cluster) -> (SessionId, usize, usize) {
    let mut a = c.nodes[0].client();
    a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let id = a.create_id().unwrap();
    assert_eq!(id.master, c.relay(0));
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"old").unwrap();
    let b = index_of(c, id.backup.expect("HA on: the ID names a backup"));
    (id, b, 3 - b)
}

/// Through node `via`: the session fails over to B (epoch 2) and "new" is written there.
fn take_over_and_write_new(c: &Cluster, original: SessionId, b: usize, via: usize) -> SessionId {
    let mut cl = c.nodes[via].client();
    cl.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut id = original;
    let (data, _) = read_following(&mut cl, &mut id);
    assert_eq!(data.as_deref(), Some(&b"old"[..]));
    assert_eq!(id.master, c.relay(b), "failed over to the backup");
    assert_eq!(id.version, 2);
    let r = cl.read_lock(&id, 1000, 30_000).unwrap();
    if let Some(n) = r.new_id {
        id = n;
    }
    cl.write_unlock(&id, r.token, 600, b"new").unwrap();
    assert_eq!(c.nodes[b].stat("node.cluster_failovers"), 1);
    assert!(
        c.nodes[b].stat("node.cluster_journal_records") >= 2,
        "B journaled the takeover and the denial mark"
    );
    id
}

/// Every node answers the original cookie with "new" (following new IDs; a node still sorting
/// itself out may answer Unavailable, never "old").
fn every_node_serves_new(c: &Cluster, original: SessionId) {
    for node in 0..3 {
        let mut cl = c.nodes[node].client();
        cl.set_timeout(Some(Duration::from_secs(60))).unwrap();
        eventually("the node answers the original cookie", || {
            let mut id = original;
            match cl.read(&id) {
                Ok(r) => {
                    assert_eq!(
                        r.data.as_deref(),
                        Some(&b"new"[..]),
                        "node {node} served another value for the original cookie\nA:\n{}\nB \
                         and C:\n{}\n{}",
                        c.nodes[0].log_text(),
                        c.nodes[1].log_text(),
                        c.nodes[2].log_text()
                    );
                    if let Some(n) = r.new_id {
                        id = n;
                    }
                    assert!(id.version >= 2, "node {node} kept the client on epoch 1");
                    true
                }
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "node {node}: {e}");
                    false
                }
            }
        });
        let mut id = original;
        let (data, _) = read_following(&mut cl, &mut id);
        assert_eq!(data.as_deref(), Some(&b"new"[..]), "node {node}");
    }
}

#[test]
fn a_restarted_old_master_follows_the_epoch_taken_over_while_its_successor_is_down() {
    let mut c = Cluster::start(71, 3, &["--ha", "true", "--storage-model", "write-through"]);
    let (original, b, third) = session_on_a(&c);
    c.nodes[0].kill9();
    take_over_and_write_new(&c, original, b, third);
    c.nodes[b].kill9();

    // A first, B down, C up: A learns epoch 2 from C, and drops its own copy.
    c.nodes[0].restart();
    c.wait_ready(0);
    assert_eq!(
        c.nodes[0].stat("node.cluster_rejoin_moved"),
        1,
        "A learnt that its session was taken over elsewhere\n{}",
        c.nodes[0].log_text()
    );
    // Then B: its journal makes it master at epoch 2 again.
    c.nodes[b].restart();
    for i in 0..3 {
        c.wait_ready(i);
    }
    assert!(
        c.nodes[b]
            .log_text()
            .contains("placement journal: 1 placements and 1 lease-denial marks restored"),
        "B restored its takeover\n{}",
        c.nodes[b].log_text()
    );
    every_node_serves_new(&c, original);
}

#[test]
fn a_restarted_old_master_follows_the_epoch_taken_over_and_the_third_node_restarted_too() {
    let mut c = Cluster::start(72, 3, &["--ha", "true", "--storage-model", "write-through"]);
    let (original, b, third) = session_on_a(&c);
    // A plain session (master here at epoch 1, and its copy on the backup) costs no journal
    // record.
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].stat("node.cluster_journal_records"),
            0,
            "node {i}"
        );
    }
    c.nodes[0].kill9();
    take_over_and_write_new(&c, original, b, third);
    assert!(
        c.nodes[third].stat("node.cluster_journal_records") >= 1,
        "C journaled the copy it backs up at epoch 2"
    );
    c.nodes[b].kill9();
    c.nodes[third].kill9();
    c.nodes[third].restart();
    c.wait_ready(third);

    // A first (B down, C restarted): only C's journal knows epoch 2.
    c.nodes[0].restart();
    c.wait_ready(0);
    assert_eq!(
        c.nodes[0].stat("node.cluster_rejoin_moved"),
        1,
        "A learnt from C's journal that its session was taken over\n{}\nC:\n{}",
        c.nodes[0].log_text(),
        c.nodes[third].log_text()
    );
    c.nodes[b].restart();
    for i in 0..3 {
        c.wait_ready(i);
    }
    every_node_serves_new(&c, original);
}
