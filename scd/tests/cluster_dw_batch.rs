//! Delayed-write copies travel to the backup as ReplicateBatch frames. A batch with one stale
//! copy (the backup took that session over: it knows a newer epoch) applies every other copy,
//! and the stale one is handled as a refused single Replicate is: the master is fenced (it stops
//! serving that session and drops its copy), and the session's new master never sees the write.

mod common;

use std::net::SocketAddr;

use common::{Cluster, blob, read_following, signal, test_id};
use scd_client::SessionId;

#[test]
fn a_batch_with_one_stale_copy_applies_the_others_and_fences_the_stale_one() {
    let mut c = Cluster::start(67, 2, &["--ha", "true", "--storage-model", "delayed-write"]);
    let a = c.relay(0);
    let b = c.relay(1);
    let mut via_a = c.nodes[0].client();
    let mut via_b = c.nodes[1].client();

    // Eight sessions A masters with B as backup.
    let fresh: Vec<SessionId> = (0..8).map(|_| via_a.create_id().unwrap()).collect();
    for id in &fresh {
        assert_eq!((id.master, id.backup), (a, Some(b)));
    }
    // One session B took over from an unreachable master (it is its backup in that ID): B holds
    // it under epoch 2 as master, while A, given an old ID naming A master at epoch 1, still
    // believes it masters it.
    let gone: SocketAddr = format!("{}:34567", c.ip(9)).parse().unwrap();
    let hash = test_id(3, 67).hash;
    let taken = via_b
        .read(&SessionId::new(gone, Some(b), 1, hash))
        .expect("B serves the session it took over")
        .new_id
        .expect("B hands out the session's new ID");
    assert_eq!(taken.master, b);
    assert!(taken.version >= 2, "a takeover raises the epoch");
    let stale = SessionId::new(a, Some(b), 1, hash);

    // The order of the writes: the stale session among fresh ones.
    let mut order: Vec<SessionId> = fresh.clone();
    order.insert(5, stale);
    let tokens: Vec<u64> = order
        .iter()
        .map(|id| via_a.read_lock(id, 1000, 30_000).unwrap().token)
        .collect();

    let batches0 = c.nodes[0].stat("node.cluster_replicate_batches");
    let replications0 = c.nodes[0].stat("node.cluster_replications");
    let fenced0 = c.nodes[0].stat("node.cluster_fenced");
    let applied0 = c.nodes[1].stat("node.cluster_replicas_applied");

    // B stops answering while A takes the writes (delayed-write: acknowledged at once), so the
    // copies wait in A's queue behind the first batch (which waits for B's answer) and go out
    // together: at most two batches for the nine copies, whatever the timing. B resumes well
    // within the relay timeout (1 s) and the node timeout.
    let b_pid = c.nodes[1].pid();
    signal(b_pid, "STOP");
    let written: Vec<Vec<u8>> = (0..order.len())
        .map(|i| blob(100 + i as u64, 3000))
        .collect();
    for ((id, token), data) in order.iter().zip(&tokens).zip(&written) {
        via_a
            .write_unlock(id, *token, 600, data)
            .expect("a delayed-write write is acknowledged at once");
    }
    signal(b_pid, "CONT");

    common::eventually("every copy answered", || {
        c.nodes[0].stat("node.cluster_fenced") > fenced0
            && c.nodes[0].stat("node.cluster_replications") >= replications0 + 8
    });
    let batches = c.nodes[0].stat("node.cluster_replicate_batches") - batches0;
    assert!(
        (1..=2).contains(&batches),
        "nine copies went out in {batches} batches"
    );
    assert_eq!(c.nodes[0].stat("node.cluster_fenced"), fenced0 + 1);
    assert_eq!(
        c.nodes[0].stat("node.cluster_replications"),
        replications0 + 8
    );
    // B applied the eight fresh copies and refused the stale one alone.
    assert_eq!(
        c.nodes[1].stat("node.cluster_replicas_applied"),
        applied0 + 8
    );

    // The stale session: A stopped mastering it, the next request through A goes to B, which
    // never saw the refused write.
    let r = via_a.read(&stale).expect("A relays to the new master");
    assert_eq!(r.data, None, "the refused write is nowhere");
    assert_eq!(
        r.new_id.expect("the client learns the new master").master,
        b
    );

    // The fresh sessions: still A's, with their data; and B really holds every copy: A dies,
    // B serves each with the written data.
    let fresh_data: Vec<&Vec<u8>> = written
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(_, d)| d)
        .collect();
    for (id, data) in fresh.iter().zip(&fresh_data) {
        let r = via_a.read(id).unwrap();
        assert_eq!(r.data.as_deref(), Some(data.as_slice()));
    }
    c.nodes[0].kill9();
    for (id, data) in fresh.iter().zip(&fresh_data) {
        let mut now = *id;
        let (got, _) = read_following(&mut via_b, &mut now);
        assert_eq!(
            got.as_deref(),
            Some(data.as_slice()),
            "B lost a batched copy; B's log:\n{}",
            c.nodes[1].log_text()
        );
        assert_eq!(now.master, b);
    }
}
