//! Read leases with real `scd` processes, one per network namespace (`common::netns`): the
//! master A of a session is cut off, and its own local client keeps asking A for the session.
//! A serves it only while it holds a valid read lease from the session's backup B; once the
//! lease lapses A answers Unavailable, and after B's side took the session over and wrote a
//! newer value, A never serves the old value — neither during the cut nor after the heal.
//!
//! Two cuts: A's link goes down (A also sees every peer go down), and only what A sends is lost
//! (A still hears its peers: only its lease requests going unanswered stop it).
//!
//! Needs root and iproute2's `ip` (namespaces): without them the test prints a `SKIPPED` line.

mod common;

use std::time::Duration;

use common::netns::{NsNode, SessionOnA, eventually, ha_net, logs, session_on_a};
use common::read_following;
use scd_client::{Client, ErrorCode, SessionId};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cut {
    /// A's link to the bridge goes down.
    Link,
    /// What A sends to the others is dropped; it still hears them.
    Outbound,
}

#[test]
fn a_master_cut_off_from_its_backup_stops_serving_when_its_lease_lapses() {
    cut_master_off("10.80.0", Cut::Link);
}

#[test]
fn a_master_that_still_hears_its_backup_stops_serving_without_grants() {
    cut_master_off("10.81.0", Cut::Outbound);
}

/// What a read through A gave.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Value(Option<Vec<u8>>),
    Unavailable,
}

/// One read of `id` through `c` (A's own local client): a value, or Unavailable; anything else
/// fails the test.
fn read_through_a(c: &mut Client, id: &SessionId, nodes: &[NsNode]) -> Seen {
    match c.read(id) {
        Ok(r) => Seen::Value(r.data),
        Err(e) if e.code() == Some(ErrorCode::Unavailable) => Seen::Unavailable,
        Err(e) => panic!(
            "A answered neither a value nor Unavailable: {e}\n{}",
            logs(nodes)
        ),
    }
}

fn cut_master_off(subnet: &str, cut: Cut) {
    // Unicast peers, HA, write-through; 100 ms heartbeats (node timeout 800 ms), the default
    // lease margin (500 ms: a lease lasts 300 ms after its request left).
    let Some((net, _key_dir, nodes)) = ha_net(subnet, 3, "cluster_leases") else {
        return;
    };

    // A session mastered by A (node 1), backed up on B, value 1; C is the third node.
    let SessionOnA {
        mut on_a,
        id: original,
        b,
        c,
    } = session_on_a(&net, &nodes);
    // A holds leases from its peers and serves the session.
    eventually("A holds a lease from B", &nodes, || {
        nodes[0].stat("node.cluster_leases_granted") >= 1
    });
    assert_eq!(
        read_through_a(&mut on_a, &original, &nodes),
        Seen::Value(Some(b"value 1".to_vec()))
    );

    // Cut A off. Until its lease from B lapses A may still serve value 1; once B has not heard
    // A for the node timeout (and may take the session over) the lease has lapsed — it ends
    // `lease_margin_ms` before that — and A answers Unavailable.
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
    assert_eq!(
        read_through_a(&mut on_a, &original, &nodes),
        Seen::Unavailable,
        "A served the session after its backup could take it over\n{}",
        logs(&nodes)
    );
    assert!(nodes[0].stat("node.cluster_leases_missing") >= 1);

    // Through C: the session fails over to B, and value 2 is written there.
    let mut on_c = nodes[c as usize - 1].client();
    let mut id = original;
    assert_eq!(
        read_following(&mut on_c, &mut id).0.as_deref(),
        Some(&b"value 1"[..]),
        "the backup had the acknowledged write"
    );
    assert_eq!(id.master, net.relay(b), "failed over to the backup");
    let held = on_c.read_lock(&id, 1000, 30_000).expect("lock through C");
    if let Some(n) = held.new_id {
        id = n;
    }
    on_c.write_unlock(&id, held.token, 600, b"value 2")
        .expect("write value 2 through C");
    assert_eq!(nodes[b as usize - 1].stat("node.cluster_failovers"), 1);

    // A, still cut off, never serves its old value (nor lets its client write over it).
    for _ in 0..3 {
        assert_eq!(
            read_through_a(&mut on_a, &original, &nodes),
            Seen::Unavailable,
            "A served the session while B masters it\n{}",
            logs(&nodes)
        );
    }
    let lock = on_a.read_lock(&original, 0, 30_000);
    assert!(
        matches!(&lock, Err(e) if e.code() == Some(ErrorCode::Unavailable)),
        "A locked the session while B masters it: {lock:?}"
    );
    if cut == Cut::Outbound {
        assert_eq!(
            nodes[0].stat("node.cluster_peers_down"),
            0,
            "A still hears its peers"
        );
    }

    // Heal. Whatever A answers from now on is Unavailable (while it rejoins) or value 2 under
    // the new ID, never value 1.
    match cut {
        Cut::Link => net.heal(1).expect("heal node 1"),
        Cut::Outbound => net.unmute(1, &[2, 3]).expect("let node 1 send again"),
    }
    eventually("A serves value 2 again", &nodes, || {
        match read_through_a(&mut on_a, &original, &nodes) {
            Seen::Unavailable => false,
            Seen::Value(v) => {
                assert_eq!(
                    v.as_deref(),
                    Some(&b"value 2"[..]),
                    "A served the session's old value after the heal\n{}",
                    logs(&nodes)
                );
                true
            }
        }
    });
    let mut stale = original;
    let (data, _) = read_following(&mut on_a, &mut stale);
    assert_eq!(data.as_deref(), Some(&b"value 2"[..]));
    assert_eq!(stale.master, net.relay(b), "A points to the new master");
    assert!(nodes[0].stat("node.cluster_rejoins") >= 1, "A rejoined");
    for n in &nodes {
        assert!(n.stat("node.cluster_leases_requested") >= 1);
    }
    drop(nodes);
    drop(net);
}

/// With `cluster.failover_on_refused` off, a refused connection no longer promotes at once: the
/// backup takes over a killed master's session only once the master is down in its own view
/// (not heard for the node timeout). Loopback addresses `127.0.61.x`.
#[test]
fn without_the_refused_fast_path_a_killed_master_fails_over_once_declared_down() {
    use common::Cluster;
    let mut c = Cluster::start(61, 3, &["--ha", "true", "--failover-on-refused", "false"]);
    let mut a = c.nodes[0].client();
    let id = a.create_id().unwrap();
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"kept").unwrap();
    let backup = id.backup.expect("HA on: the ID names a backup");
    let bi = common::index_of(&c, backup);
    let other = 3 - bi;
    common::eventually("A holds leases and its peers grant them", || {
        c.nodes[0].stat("node.cluster_leases_granted") >= 2
    });
    assert_eq!(c.nodes[0].stat("node.cluster_leases_denied"), 0);
    c.nodes[0].kill9();
    // Until B declares A down, a request through the third node may get Unavailable (the
    // client retries); then B takes the session over.
    let mut via = c.nodes[other].client();
    let mut now = id;
    let (data, _) = read_following(&mut via, &mut now);
    assert_eq!(data.as_deref(), Some(&b"kept"[..]));
    assert_eq!(now.master, backup, "the backup is the master now");
    assert_eq!(c.nodes[bi].stat("node.cluster_failovers"), 1);
    assert_eq!(
        c.nodes[bi].stat("node.cluster_peers_down"),
        1,
        "B declared A down"
    );
    // It never promoted before it declared A down. (The log reaches the test through a pipe,
    // maybe after the answer: wait for it.)
    common::eventually("B logs the failover", || {
        c.nodes[bi].log_text().contains("failover: took over")
    });
    let b_log = c.nodes[bi].log_text();
    let down_at = b_log
        .find("is down (no heartbeat within the node timeout)")
        .expect("B logged A down");
    let promoted_at = b_log
        .find("failover: took over")
        .expect("B logged the failover");
    assert!(
        down_at < promoted_at,
        "B promoted before A was down:\n{b_log}"
    );
}

/// A master stopped (SIGSTOP) for longer than the node timeout is taken over by its backup; when
/// it continues, its lease from the backup has lapsed and the backup denies it a new one (it
/// took the session over), so the old master never serves its old value: its client gets
/// Unavailable until it has rejoined, then the new value. Loopback addresses `127.0.62.x`.
#[test]
fn a_master_paused_past_the_node_timeout_never_serves_its_old_value_when_it_continues() {
    use common::Cluster;
    let c = Cluster::start(62, 3, &["--ha", "true", "--storage-model", "write-through"]);
    let mut a = c.nodes[0].client();
    a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let original = a.create_id().unwrap();
    let r = a.read_lock(&original, 1000, 30_000).unwrap();
    a.write_unlock(&original, r.token, 600, b"value 1").unwrap();
    let backup = original.backup.expect("HA on: the ID names a backup");
    let bi = common::index_of(&c, backup);
    let other = 3 - bi;
    common::eventually("A holds a lease from its backup", || {
        c.nodes[0].stat("node.cluster_leases_granted") >= 2
    });

    common::signal(c.nodes[0].pid(), "STOP");
    common::eventually("B and C see A down", || {
        [bi, other]
            .iter()
            .all(|&i| c.nodes[i].stat("node.cluster_peers_down") == 1)
    });
    // Through the third node: B takes the session over, and value 2 is written there.
    let mut via = c.nodes[other].client();
    let mut id = original;
    assert_eq!(
        read_following(&mut via, &mut id).0.as_deref(),
        Some(&b"value 1"[..])
    );
    assert_eq!(id.master, backup);
    let r = via.read_lock(&id, 1000, 30_000).unwrap();
    if let Some(n) = r.new_id {
        id = n;
    }
    via.write_unlock(&id, r.token, 600, b"value 2").unwrap();

    // A continues: whatever its own client gets is Unavailable or value 2, never value 1.
    common::signal(c.nodes[0].pid(), "CONT");
    common::eventually("A serves value 2", || match a.read(&original) {
        Ok(r) => {
            assert_eq!(
                r.data.as_deref(),
                Some(&b"value 2"[..]),
                "A served its old value after it continued\nA's log:\n{}",
                c.nodes[0].log_text()
            );
            true
        }
        Err(e) => {
            assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
            false
        }
    });
    assert!(c.nodes[0].stat("node.cluster_rejoins") >= 1, "A rejoined");
    assert_eq!(c.nodes[bi].stat("node.cluster_failovers"), 1);
}

/// A backup whose process is gone (its connection refused) does not hold up its master: in a
/// two-node cluster, after `kill -9` of the backup, the master's next request finds no valid
/// lease, sees the refusal, and goes on without a backup (no other node could take the copy),
/// without waiting for the node timeout. Loopback addresses `127.0.63.x`.
#[test]
fn a_master_goes_on_without_a_killed_backup_that_refuses_connections() {
    use common::Cluster;
    let mut c = Cluster::start(63, 2, &["--ha", "true", "--storage-model", "write-through"]);
    let mut a = c.nodes[0].client();
    a.set_timeout(Some(Duration::from_secs(60))).unwrap();
    let id = a.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)));
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"value 1").unwrap();
    c.nodes[1].kill9();
    // Served throughout (under the lease B granted before it died, then without a backup); the
    // client learns the new ID.
    let mut now = id;
    common::eventually("the session goes on without a backup", || {
        let (data, _) = read_following(&mut a, &mut now);
        assert_eq!(data.as_deref(), Some(&b"value 1"[..]));
        now.backup.is_none()
    });
    let r = a.read_lock(&now, 1000, 30_000).unwrap();
    a.write_unlock(&now, r.token, 600, b"value 2").unwrap();
    assert_eq!(a.read(&now).unwrap().data.as_deref(), Some(&b"value 2"[..]));
    assert!(c.nodes[0].stat("node.cluster_backups_replaced") >= 1);
}
