//! Locate with real processes: a session whose master and backup have both moved away from the
//! nodes its ID names is still found (the node the client talks to asks every live node), as
//! long as one copy lives; the client gets the session's current ID. A session that exists
//! nowhere gets a prompt answer (NotFound when the ID's nodes answer that they do not hold it and
//! every live node answered the search, Unavailable when they cannot be reached or a live node
//! did not answer), never a hang. A named node that does not hold the session gives back the lock
//! it took when the answer is another.

mod common;

use common::{Cluster, blob, index_of, read_following};
use scd_client::{ClientError, ErrorCode, SessionId};

#[test]
fn a_session_whose_master_and_backup_both_moved_is_found_with_its_original_id() {
    let mut c = Cluster::start(41, 4, &["--ha", "true"]);
    let a = 0;
    let original = c.nodes[a].client().create_id().unwrap();
    let b = index_of(&c, original.backup.expect("HA on: the ID names a backup"));
    assert_ne!(b, a);

    // Acknowledged writes on A (copied to B).
    let mut via_a = c.nodes[a].client();
    for n in 0..3u64 {
        let r = via_a.read_lock(&original, 1000, 30_000).unwrap();
        via_a
            .write_unlock(&original, r.token, 600, &blob(n, 500))
            .unwrap();
    }

    // A dies; a request through a third node fails over to B, which picks a new backup X.
    c.nodes[a].kill9();
    let others: Vec<usize> = (0..4).filter(|&i| i != a).collect();
    for &i in &others {
        c.wait_peers_up(i, 2);
    }
    let first = *others.iter().find(|&&i| i != b).unwrap();
    let mut via_first = c.nodes[first].client();
    let mut id = original;
    let (data, _) = read_following(&mut via_first, &mut id);
    assert_eq!(data, Some(blob(2, 500)), "the failover kept the last write");
    assert_eq!(id.master, c.relay(b), "B took the session over");
    assert_eq!(id.version, 2);
    let x = index_of(&c, id.backup.expect("B picked a new backup"));
    assert!(x != a && x != b);

    // One more acknowledged write under the new ID (copied to X).
    let last = blob(7, 900);
    let r = via_first.read_lock(&id, 1000, 30_000).unwrap();
    let last_version = via_first.write_unlock(&id, r.token, 600, &last).unwrap();
    assert!(c.nodes[x].stat("node.cluster_replicas_applied") >= 1);

    // B dies too: neither node the original ID names holds the session; only X has a copy.
    c.nodes[b].kill9();
    let z = (0..4).find(|&i| i != a && i != b && i != x).unwrap();
    c.wait_peers_up(x, 1);
    c.wait_peers_up(z, 1);
    assert_eq!(c.nodes[z].stat("node.cluster_locates"), 0);

    // Through Z, which never held the session, with the ORIGINAL cookie (A, B, epoch 1).
    let mut via_z = c.nodes[z].client();
    let mut current = original;
    let (data, version) = read_following(&mut via_z, &mut current);
    assert_eq!(
        data.as_deref(),
        Some(&last[..]),
        "the last acknowledged write was found"
    );
    assert_eq!(version, last_version);
    assert_eq!(
        current.master,
        c.relay(x),
        "X, the last copy, masters it now"
    );
    assert!(current.version >= 3, "a takeover after the search: epoch 3");
    assert!(c.nodes[z].stat("node.cluster_locates") >= 1);
    assert!(c.nodes[z].stat("node.cluster_locates_found") >= 1);
    assert!(c.nodes[x].stat("node.cluster_locates_answered") >= 1);

    // The current ID works for writes; the original one still finds the session (strict mode's
    // Exists, then a read), and never an older value.
    let r = via_z.read_lock(&current, 1000, 30_000).unwrap();
    assert_eq!(r.data.as_deref(), Some(&last[..]));
    let after = blob(8, 300);
    via_z.write_unlock(&current, r.token, 600, &after).unwrap();
    assert!(via_z.exists(&original).unwrap(), "found by its original ID");
    let mut again = original;
    let (data, _) = read_following(&mut via_z, &mut again);
    assert_eq!(data.as_deref(), Some(&after[..]));
    assert_eq!(again.master, c.relay(x));
}

#[test]
fn a_session_that_exists_nowhere_gets_a_prompt_answer() {
    let mut c = Cluster::start(42, 4, &["--ha", "true"]);
    // The ID names two dead nodes: nobody alive holds the session. The answer is Unavailable (its
    // nodes may come back with it on their disks), after the search.
    let dead_master = c.relay(0);
    let dead_backup = c.relay(1);
    c.nodes[0].kill9();
    c.nodes[1].kill9();
    c.wait_peers_up(2, 1);
    c.wait_peers_up(3, 1);
    let hash = common::test_id(1, 42).hash;
    let gone = SessionId::new(dead_master, Some(dead_backup), 1, hash);
    let mut via = c.nodes[2].client();
    match via.read(&gone) {
        Ok(r) => panic!("a session nobody holds was served: {r:?}"),
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Unavailable, "{message}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert_eq!(c.nodes[2].stat("node.cluster_locates"), 1);
    assert_eq!(c.nodes[2].stat("node.cluster_locates_found"), 0);
    assert!(c.nodes[3].stat("node.cluster_locates_answered") >= 1);

    // The ID names live nodes that do not hold it: their NotFound stands after the search.
    let hash = common::test_id(2, 42).hash;
    let unknown = SessionId::new(c.relay(3), Some(c.relay(2)), 1, hash);
    let r = via.read(&unknown).unwrap();
    assert_eq!(r.data, None);
    assert_eq!(r.new_id, None);
    assert!(!via.exists(&unknown).unwrap());
    assert_eq!(c.nodes[2].stat("node.cluster_locates"), 3);
    assert_eq!(c.nodes[2].stat("node.cluster_locates_found"), 0);
}

#[test]
fn a_named_node_that_does_not_hold_the_session_gives_its_lock_back_when_it_is_found_elsewhere() {
    let c = Cluster::start(43, 4, &["--ha", "true"]);
    let mut via_a = c.nodes[0].client();
    let real = via_a.create_id().unwrap();
    let b = index_of(&c, real.backup.expect("HA on: a backup"));
    let r = via_a.read_lock(&real, 1000, 30_000).unwrap();
    let data = blob(5, 400);
    via_a.write_unlock(&real, r.token, 600, &data).unwrap();

    // An ID for the same session naming the two other nodes (as a node that lost the session
    // would be named): its master answers NotFound and takes a lock on a new, empty session.
    let others: Vec<usize> = (0..4).filter(|&i| i != 0 && i != b).collect();
    let (m, k) = (others[0], others[1]);
    let wrong = SessionId::new(c.relay(m), Some(c.relay(k)), 1, real.hash);
    // A new client each round, each kept open (a closed client's relayed locks are released
    // anyway): a lock still held at the wrong master by the first would make the second wait.
    let mut clients = Vec::new();
    for round in 0..2 {
        clients.push(c.nodes[k].client());
        let via_k = clients.last_mut().unwrap();
        let r = via_k
            .read_lock(&wrong, 1000, 30_000)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(r.data.as_deref(), Some(&data[..]), "round {round}");
        let moved = r
            .new_id
            .expect("the client is pointed to the session's real ID");
        assert_eq!(moved, real);
        via_k.unlock(&moved, r.token).unwrap();
    }
    assert_eq!(c.nodes[k].stat("node.cluster_locates_found"), 2);
}

#[test]
fn a_not_found_stands_only_when_every_live_node_answered_the_search() {
    // A long node timeout: a killed node still counts as up (it is asked, and does not answer).
    let mut c = Cluster::start(44, 4, &["--ha", "true", "--node-timeout-ms", "600000"]);
    c.nodes[0].kill9();
    // The ID names live nodes 3 (master) and 2 (backup) that do not hold the session; node 0
    // might, and cannot say.
    let hash = common::test_id(3, 44).hash;
    let unsure = SessionId::new(c.relay(3), Some(c.relay(2)), 1, hash);
    let mut clients = Vec::new();
    for round in 0..2 {
        // Each client kept open: the lock node 3 took on a new, empty session must have been
        // given back, or the second ReadLock would wait for it and time out.
        clients.push(c.nodes[2].client());
        let via = clients.last_mut().unwrap();
        match via.read_lock(&unsure, 1000, 30_000) {
            Ok(r) => panic!("round {round}: answered {r:?} though node 0 did not answer"),
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, ErrorCode::Unavailable, "round {round}: {message}");
            }
            Err(e) => panic!("round {round}: unexpected error: {e}"),
        }
    }
    assert_eq!(c.nodes[2].stat("node.cluster_locates"), 2);
    assert_eq!(c.nodes[2].stat("node.cluster_locates_found"), 0);
}
