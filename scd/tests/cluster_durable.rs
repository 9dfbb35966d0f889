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
//! `a_backup_replacement_of_many_sessions_is_one_journal_batch_and_survives_a_kill`: the
//! sessions A masters with B as backup get C as backup when B is killed, recorded with one
//! journal fdatasync (not one per session); A is then killed and restarted and its journal
//! restores every one of those placements.
//!
//! Loopback addresses `127.0.71.x`, `127.0.72.x` and `127.0.76.x`.

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

/// The review scenario, with one scd per network namespace (`common::netns`, subnet
/// `10.87.0`): only what A sends is dropped (A still hears B and C); B takes the session over
/// (epoch 2) and "value 2" is written there through C; then B is `kill -9`ed and restarted
/// during the cut (quickly: A, which hears B's heartbeats, may never see it down, only its new
/// incarnation). After the heal, B must still deny A read leases — it took a session over from
/// A, and A has not synced with it since — so A, which still believes it masters the session at
/// epoch 1, never serves "value 1": it is denied, rejoins, learns epoch 2 from B, and relays to
/// it. Without the journal B forgets the denial mark at its restart and grants A a lease, and A
/// serves "value 1" (this test fails on main there).
///
/// C is `kill -9`ed before B restarts: with C up, C's RejoinNeeded at the heal (it declared A
/// down) would make A rejoin too, racing with B's grant, and the test would show nothing
/// reliably. With C gone only B's memory (its journal) stands between A and its stale copy.
///
/// Needs root and iproute2's `ip` (namespaces): without them the test prints a `SKIPPED` line.
#[test]
fn a_backup_that_took_over_and_restarted_during_a_cut_still_denies_the_old_master_leases() {
    use common::netns::{eventually as ns_eventually, ha_net, logs};

    let subnet = "10.87.0";
    let Some((net, _key_dir, mut nodes)) = ha_net(subnet, 3, "cluster_durable") else {
        return;
    };
    let mut on_a = nodes[0].client();
    on_a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let original = on_a.create_id().expect("create id on A");
    let backup = original.backup.expect("HA on: the ID names a backup");
    let b = (2..=3u8)
        .find(|&i| net.relay(i) == backup)
        .expect("the backup is another node");
    let c = 5 - b;
    let held = on_a.read_lock(&original, 1000, 30_000).unwrap();
    on_a.write_unlock(&original, held.token, 600, b"value 1")
        .unwrap();
    ns_eventually("A holds a lease from B", &nodes, || {
        nodes[0].stat("node.cluster_leases_granted") >= 1
    });

    // Only what A sends is lost: B and C declare A down; B takes the session over.
    net.mute(1, &[2, 3]).expect("drop what node 1 sends");
    ns_eventually("B and C see A down", &nodes, || {
        [b, c]
            .iter()
            .all(|&i| nodes[i as usize - 1].stat("node.cluster_peers_down") >= 1)
    });
    let mut on_c = nodes[c as usize - 1].client();
    on_c.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut id = original;
    assert_eq!(
        read_following(&mut on_c, &mut id).0.as_deref(),
        Some(&b"value 1"[..])
    );
    assert_eq!(id.master, net.relay(b), "failed over to the backup");
    let held = on_c.read_lock(&id, 1000, 30_000).unwrap();
    if let Some(n) = held.new_id {
        id = n;
    }
    on_c.write_unlock(&id, held.token, 600, b"value 2").unwrap();
    assert_eq!(nodes[b as usize - 1].stat("node.cluster_failovers"), 1);
    drop(on_c);

    // C goes; B restarts during the cut.
    nodes[c as usize - 1].kill9();
    nodes[b as usize - 1].kill9();
    nodes[b as usize - 1].restart();
    assert!(
        nodes[b as usize - 1]
            .log_text()
            .contains("lease-denial marks restored"),
        "{}",
        logs(&nodes)
    );

    // Heal. A never serves "value 1" again: Unavailable (no lease, denied, rejoining), then
    // "value 2" once it has learnt where the session went.
    net.unmute(1, &[2, 3]).expect("let node 1 send again");
    ns_eventually("A serves value 2", &nodes, || match on_a.read(&original) {
        Ok(r) => {
            assert_eq!(
                r.data.as_deref(),
                Some(&b"value 2"[..]),
                "A served its old value after the heal\n{}",
                logs(&nodes)
            );
            true
        }
        Err(e) => {
            assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
            false
        }
    });
    assert!(
        nodes[0].stat("node.cluster_leases_denied") >= 1
            || nodes[0].stat("node.cluster_rejoins") >= 1,
        "A was told to rejoin\n{}",
        logs(&nodes)
    );
    let mut stale = original;
    let (data, _) = read_following(&mut on_a, &mut stale);
    assert_eq!(data.as_deref(), Some(&b"value 2"[..]));
    assert_eq!(stale.master, net.relay(b), "A points to the new master");
    drop(nodes);
    drop(net);
}

#[test]
fn a_backup_replacement_of_many_sessions_is_one_journal_batch_and_survives_a_kill() {
    let mut c = Cluster::start(76, 3, &["--ha", "true", "--storage-model", "write-through"]);
    let mut a = c.nodes[0].client();
    let mut ids = Vec::new();
    for n in 0..40u64 {
        let id = a.create_id().unwrap();
        let r = a.read_lock(&id, 1000, 30_000).unwrap();
        a.write_unlock(&id, r.token, 600, &common::blob(n, 200))
            .unwrap();
        ids.push((id, n));
    }
    drop(a);
    // B: the node backing up the most of them; C: the other.
    let backed = |i: usize| {
        ids.iter()
            .filter(|(id, _)| id.backup == Some(c.relay(i)))
            .count()
    };
    let b = if backed(1) >= backed(2) { 1 } else { 2 };
    let third = 3 - b;
    let moved: Vec<(SessionId, u64)> = ids
        .iter()
        .filter(|(id, _)| id.backup == Some(c.relay(b)))
        .copied()
        .collect();
    assert!(
        moved.len() >= 10,
        "{} of 40 backed up by one node",
        moved.len()
    );
    let syncs_before = c.nodes[0].stat("node.cluster_journal_syncs");
    let records_before = c.nodes[0].stat("node.cluster_journal_records");

    c.nodes[b].kill9();
    eventually("every session B backed up has a new backup", || {
        c.nodes[0].stat("node.cluster_backups_replaced") as usize >= moved.len()
            && c.nodes[0].stat("node.cluster_journal_records") - records_before
                >= moved.len() as u64
    });
    let syncs = c.nodes[0].stat("node.cluster_journal_syncs") - syncs_before;
    // The new placements (and B's lease denial) are one batch: one fdatasync, not one per
    // session (a second one at most, for a change of another kind made meanwhile).
    assert!(
        syncs <= 2,
        "{syncs} journal syncs for {} backup replacements",
        moved.len()
    );
    assert_eq!(c.nodes[0].stat("node.cluster_journal_errors"), 0);

    // A dies right after, and restarts with B still down: its journal gives back every new
    // placement (epoch 2, backup C).
    c.nodes[0].kill9();
    c.nodes[0].restart();
    let restored = c.nodes[0]
        .log_text()
        .lines()
        .rev()
        .find(|l| l.contains("placement journal:") && l.contains("placements and"))
        .map(|l| l.to_string())
        .expect("the restored count is logged");
    let count: usize = restored
        .split("placement journal: ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(
        count >= moved.len(),
        "{restored}: fewer than the {} placements changed",
        moved.len()
    );
    assert!(restored.contains("1 lease-denial marks"), "{restored}");
    c.wait_peers_up(0, 1);
    let mut a = c.nodes[0].client();
    for (id, n) in &moved {
        let mut id = *id;
        let (data, _) = read_following(&mut a, &mut id);
        assert_eq!(data, Some(common::blob(*n, 200)));
        assert_eq!(id.master, c.relay(0));
        assert_eq!(id.backup, Some(c.relay(third)), "the new backup");
        assert_eq!(id.version, 2);
    }
    // A stops cleanly: nothing left unwritten, no journal error.
    drop(a);
    assert!(c.nodes[0].stop().success());
    assert_eq!(
        c.nodes[0].log_lines_containing("cannot write the placement journal"),
        0
    );
}
