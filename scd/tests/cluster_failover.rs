//! HA with real processes: write-through replication to the backup, `kill -9` of the master,
//! failover to the backup (a new ID comes back), the old master's restart and rejoin (it never
//! serves its stale copy), and a new backup when the backup dies.

mod common;

use common::{Cluster, blob, read_following};
use scd_client::SessionId;

#[test]
fn kill_the_master_then_the_backup_serves_the_last_acknowledged_write_and_the_master_rejoins() {
    let mut c = Cluster::start(12, 3, &["--ha", "true"]);
    let mut a = c.nodes[0].client();
    let mut id = a.create_id().unwrap();
    assert_eq!(id.master, c.relay(0));
    let backup = id.backup.expect("HA on: the ID names a backup");
    assert_ne!(backup, c.relay(0));
    let backup_index = (0..3).find(|&i| c.relay(i) == backup).unwrap();
    let other = 3 - backup_index;

    // A few writes through a non-master node (relayed), each acknowledged.
    let mut via = c.nodes[other].client();
    let mut last = Vec::new();
    let mut last_version = 0;
    for n in 0..5u64 {
        let r = via.read_lock(&id, 1000, 30_000).unwrap();
        last = blob(n, 700);
        last_version = via.write_unlock(&id, r.token, 600, &last).unwrap();
    }
    assert!(c.nodes[0].stat("node.cluster_replications") >= 5);
    assert!(c.nodes[backup_index].stat("node.cluster_replicas_applied") >= 5);

    c.nodes[0].kill9();
    // The next request through the other node sees the last acknowledged value, under a new ID.
    let mut via = c.nodes[other].client();
    let (data, version) = read_following(&mut via, &mut id);
    assert_eq!(
        data.as_deref(),
        Some(&last[..]),
        "the last acknowledged write survived"
    );
    assert!(version >= last_version);
    assert_eq!(id.master, backup, "the backup is the master now");
    assert_eq!(id.version, 2, "one failover: epoch 2");
    assert_eq!(c.nodes[backup_index].stat("node.cluster_failovers"), 1);

    // Writes go on under the new ID.
    let r = via.read_lock(&id, 1000, 30_000).unwrap();
    let after = blob(99, 900);
    let v_after = via.write_unlock(&id, r.token, 600, &after).unwrap();
    assert!(v_after > version);

    // The old master comes back; it rejoins and never serves its stale copy, whichever ID a
    // client still has.
    c.nodes[0].restart();
    c.wait_ready(0);
    let old_id = SessionId::new(c.relay(0), Some(backup), 1, id.hash);
    for node in 0..3 {
        let mut cl = c.nodes[node].client();
        let mut stale = old_id;
        let (data, version) = read_following(&mut cl, &mut stale);
        assert_eq!(
            data.as_deref(),
            Some(&after[..]),
            "node {node} served an old value"
        );
        assert_eq!(version, v_after);
        assert_eq!(
            stale.master, backup,
            "node {node} pointed the client to the new master"
        );
    }
}

#[test]
fn killing_the_backup_makes_the_master_copy_to_a_new_one() {
    let mut c = Cluster::start(13, 3, &["--ha", "true"]);
    let mut a = c.nodes[0].client();
    let mut ids = Vec::new();
    for n in 0..4u64 {
        let id = a.create_id().unwrap();
        let r = a.read_lock(&id, 1000, 30_000).unwrap();
        a.write_unlock(&id, r.token, 600, &blob(n, 300)).unwrap();
        ids.push(id);
    }
    let backup = ids[0].backup.unwrap();
    let bi = (0..3).find(|&i| c.relay(i) == backup).unwrap();
    let third = 3 - bi;
    c.nodes[bi].kill9();
    // The master notices (heartbeats stop) and copies every session it backed up there to the
    // remaining node.
    common::eventually("backups replaced", || {
        c.nodes[0].stat("node.cluster_backups_replaced") as usize
            >= ids.iter().filter(|i| i.backup == Some(backup)).count()
    });
    assert!(c.nodes[third].stat("node.cluster_replicas_applied") >= 1);
    // A read hands out the new ID with the new backup.
    let (_, _) = read_following(&mut a, &mut ids[0]);
    assert_eq!(ids[0].backup, Some(c.relay(third)));
    // And the new backup really holds it: kill the master, read through the new backup.
    c.nodes[0].kill9();
    let mut t = c.nodes[third].client();
    let mut id = ids[0];
    let (data, _) = read_following(&mut t, &mut id);
    assert_eq!(data, Some(blob(0, 300)));
    assert_eq!(id.master, c.relay(third));
}

#[test]
fn a_lock_held_through_a_dead_master_is_gone_and_its_write_is_refused_and_destroy_reaches_the_backup()
 {
    let mut c = Cluster::start(19, 3, &["--ha", "true"]);
    let mut a = c.nodes[0].client();
    let id = a.create_id().unwrap();
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"v1").unwrap();
    // A second session, destroyed through its master: the backup forgets it too.
    let gone = a.create_id().unwrap();
    let r = a.read_lock(&gone, 1000, 30_000).unwrap();
    a.write_unlock(&gone, r.token, 600, b"doomed").unwrap();
    let r = a.read_lock(&gone, 1000, 30_000).unwrap();
    a.destroy(&gone, r.token).unwrap();

    let backup = id.backup.unwrap();
    let bi = (0..3).find(|&i| c.relay(i) == backup).unwrap();
    let other = 3 - bi;
    // A request through another node takes the lock on the master, then the master dies.
    let mut via = c.nodes[other].client();
    let held = via.read_lock(&id, 1000, 30_000).unwrap();
    c.nodes[0].kill9();
    let e = via
        .write_unlock(&id, held.token, 600, b"v2 under a dead lock")
        .unwrap_err();
    assert!(
        matches!(e.code(), Some(scd_client::ErrorCode::NotLocked)),
        "refused, not applied: {e}"
    );
    assert!(format!("{e}").contains("lock"), "{e}");
    // The new master starts unlocked and holds the last acknowledged value.
    let mut fresh = c.nodes[other].client();
    let mut now = id;
    let (data, _) = read_following(&mut fresh, &mut now);
    assert_eq!(data.as_deref(), Some(&b"v1"[..]));
    let r = fresh.read_lock(&now, 0, 30_000).expect("free at once");
    fresh.unlock(&now, r.token).unwrap();
    // The destroyed session is gone on the backup as well.
    let mut g = gone;
    let (data, _) = read_following(&mut fresh, &mut g);
    assert!(
        data.is_none(),
        "a destroyed session came back after failover"
    );
}

#[test]
fn a_session_created_alone_gets_a_backup_once_another_node_is_up() {
    let mut c = Cluster::start(20, 2, &["--ha", "true"]);
    c.nodes[1].kill9();
    c.wait_peers_up(0, 0);
    let mut a = c.nodes[0].client();
    let id = a.create_id().unwrap();
    assert!(id.backup.is_none(), "no other node is up: no backup");
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"made alone").unwrap();
    // B comes back: A copies the session there and hands out the new ID on the next read.
    c.nodes[1].restart();
    c.wait_ready(1);
    c.wait_peers_up(0, 1);
    common::eventually("the session copied to B", || {
        c.nodes[1].stat("node.cluster_replicas_applied") >= 1
    });
    // B counts the copy when it applied it; A records the new placement when B's answer
    // arrives, a moment later: a read then hands out the ID naming B.
    let mut now = id;
    common::eventually("A hands out the ID naming B as backup", || {
        let (data, _) = read_following(&mut a, &mut now);
        assert_eq!(data.as_deref(), Some(&b"made alone"[..]));
        now.backup == Some(c.relay(1))
    });
    // And B really holds it: A dies, B serves it.
    c.nodes[0].kill9();
    let mut b = c.nodes[1].client();
    let (data, _) = read_following(&mut b, &mut now);
    // (Seen failing once in CI with None: the logs of both nodes say why, next time.)
    assert_eq!(
        data.as_deref(),
        Some(&b"made alone"[..]),
        "B's log:\n{}\nA's log:\n{}",
        c.nodes[1].log_text(),
        c.nodes[0].log_text()
    );
    assert_eq!(now.master, c.relay(1));
}

#[test]
fn a_full_delayed_write_copy_queue_makes_writes_wait_and_drops_none() {
    // One session queued or in flight at a time to the backup: every write of another session
    // waits for the slot; none is refused and no session's last copy is dropped.
    let mut c = Cluster::start(
        21,
        2,
        &[
            "--ha",
            "true",
            "--storage-model",
            "delayed-write",
            "--replication-queue-max",
            "1",
        ],
    );
    let mut a = c.nodes[0].client();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(a.create_id().unwrap());
    }
    let writes = 40u64;
    for n in 0..writes {
        let id = &mut ids[(n % 5) as usize];
        let r = a.read_lock(id, 5000, 30_000).unwrap();
        if let Some(new) = r.new_id {
            *id = new;
        }
        a.write_unlock(id, r.token, 600, format!("value {n}").as_bytes())
            .unwrap();
    }
    // Every write's copy reached the backup, or was replaced in the queue by a newer write of
    // its session (delayed-write sends only a session's newest version).
    common::eventually("every copy sent to the backup", || {
        c.nodes[0].stat("node.cluster_replications")
            + c.nodes[0].stat("node.cluster_replications_coalesced")
            >= writes
    });
    assert_eq!(c.nodes[0].stat("node.cluster_replication_failures"), 0);
    // The backup holds the last value of each session: A dies, B serves them.
    c.nodes[0].kill9();
    let mut b = c.nodes[1].client();
    for (i, id) in ids.iter_mut().enumerate() {
        let last = writes - 5 + i as u64;
        let (data, _) = read_following(&mut b, id);
        assert_eq!(data.as_deref(), Some(format!("value {last}").as_bytes()));
    }
}

#[test]
fn delayed_write_sends_only_the_newest_copy_of_a_busy_session_and_a_destroy_after_its_writes() {
    // Many writes of one session in a row: the backup gets only the newest version queued
    // (`replications_coalesced` counts the copies a newer write replaced), never an older one
    // after a newer one; a kill -9 of the master then finds the last acknowledged write on the
    // backup. A Destroy queued behind writes of its session reaches the backup after them.
    let mut c = Cluster::start(53, 2, &["--ha", "true", "--storage-model", "delayed-write"]);
    let mut a = c.nodes[0].client();
    let mut busy = a.create_id().unwrap();
    let mut gone = a.create_id().unwrap();
    let writes = 300u64;
    for n in 1..=writes {
        for id in [&mut busy, &mut gone] {
            let r = a.read_lock(id, 5000, 30_000).unwrap();
            if let Some(new) = r.new_id {
                *id = new;
            }
            a.write_unlock(id, r.token, 600, format!("value {n}").as_bytes())
                .unwrap();
        }
    }
    let r = a.read_lock(&gone, 5000, 30_000).unwrap();
    a.destroy(&gone, r.token).unwrap();
    // Every write is accounted for: acknowledged by the backup, or replaced by a newer one.
    common::eventually("every write copied or replaced by a newer copy", || {
        c.nodes[0].stat("node.cluster_replications")
            + c.nodes[0].stat("node.cluster_replications_coalesced")
            >= 2 * writes
    });
    assert_eq!(c.nodes[0].stat("node.cluster_replication_failures"), 0);
    let coalesced = c.nodes[0].stat("node.cluster_replications_coalesced");
    assert!(
        coalesced > 0,
        "back-to-back writes of one session are coalesced"
    );
    assert!(c.nodes[0].stat("node.cluster_replications") < 2 * writes);
    c.nodes[0].kill9();
    let mut b = c.nodes[1].client();
    let (data, _) = read_following(&mut b, &mut busy);
    assert_eq!(
        data.as_deref(),
        Some(format!("value {writes}").as_bytes()),
        "the backup serves the last acknowledged write"
    );
    assert_eq!(busy.master, c.relay(1));
    let (data, _) = read_following(&mut b, &mut gone);
    assert_eq!(
        data, None,
        "the destroyed session stays destroyed on the backup"
    );
}
