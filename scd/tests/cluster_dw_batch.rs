//! Delayed-write copies travel to the backup as ReplicateBatch frames. A batch with one stale
//! copy (the backup took that session over: it knows a newer epoch) applies every other copy,
//! and the stale one is handled as a refused single Replicate is: the master is fenced (it stops
//! serving that session and drops its copy), and the session's new master never sees the write.
//! A batch that does not decode (one copy over the receiver's limit) closes the connection and
//! applies none of its copies.

mod common;

use std::io::Read;
use std::net::SocketAddr;

use common::key_holder::KeyHolder;
use common::{Cluster, blob, read_following, signal, test_id};
use scd_client::SessionId;
use scd_wire::{BatchOutcome, Limits, RelayMessage, Replica, ReplicaList};

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

/// A batch sealed with the cluster key is answered copy by copy; a batch with one copy over the
/// node's session limit closes the connection and applies none of its copies, not even the
/// valid one before it; the node serves on.
#[test]
fn a_bad_batch_closes_the_connection_and_changes_nothing() {
    let c = Cluster::start(
        68,
        2,
        &[
            "--ha",
            "true",
            "--storage-model",
            "delayed-write",
            "--session-size-max",
            "4096",
        ],
    );
    let b = &c.nodes[1];
    let mut k = KeyHolder::connect(&c, 1, 0x5eed_0000_0000_0068);
    // Wide enough to build any batch; the node checks against its own limits.
    let wide = Limits {
        body_max: u32::MAX,
        data_max: u32::MAX,
        batch_body_max: u32::MAX,
    };
    let copy = |n: u64, len: usize| Replica {
        hash: test_id(n, 68).hash,
        version: 3,
        epoch: 1,
        lifetime_s: 600,
        data: &DATA[..len],
    };
    const DATA: [u8; 5000] = [b'x'; 5000];

    // A good batch of two: both held.
    let applied0 = b.stat("node.cluster_replicas_applied");
    let mut entries = Vec::new();
    ReplicaList::push(&mut entries, &copy(1, 100));
    ReplicaList::push(&mut entries, &copy(2, 4096));
    let good = RelayMessage::ReplicateBatch {
        copies: ReplicaList::new(&entries, 2, &wide).unwrap(),
    };
    k.send(good);
    let outcomes = k.answer(|m| match m {
        RelayMessage::ReplicateBatchAck { outcomes } => outcomes.iter().collect::<Vec<_>>(),
        other => panic!("{other:?} to a ReplicateBatch"),
    });
    assert_eq!(
        outcomes,
        vec![
            (copy(1, 0).hash, BatchOutcome::Held { version: 3 }),
            (copy(2, 0).hash, BatchOutcome::Held { version: 3 }),
        ]
    );
    assert_eq!(b.stat("node.cluster_replicas_applied"), applied0 + 2);

    // A batch whose second copy is over the node's 4096-byte limit: the connection closes with
    // nothing sent back, and the first copy is not applied either.
    let mut entries = Vec::new();
    ReplicaList::push(&mut entries, &copy(3, 100));
    ReplicaList::push(&mut entries, &copy(4, 5000));
    let bad = RelayMessage::ReplicateBatch {
        copies: ReplicaList::new(&entries, 2, &wide).unwrap(),
    };
    k.send(bad);
    let mut rest = Vec::new();
    // (Bounded by the read timeout: a node that kept the connection open fails here.)
    let closed = k.s.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the node closes the connection: {closed:?}");
    assert!(rest.is_empty(), "nothing is answered to a bad batch");
    assert_eq!(
        b.stat("node.cluster_replicas_applied"),
        applied0 + 2,
        "no copy of a bad batch is applied"
    );
    // B serves on, holds the good batch's copies and not the bad one's.
    let mut cb = b.client();
    let here = |n: u64| SessionId::new(c.relay(1), None, 1, test_id(n, 68).hash);
    assert!(cb.exists(&here(1)).unwrap());
    assert!(cb.exists(&here(2)).unwrap());
    assert!(!cb.exists(&here(3)).unwrap(), "the bad batch's valid copy");
    assert!(!cb.exists(&here(4)).unwrap());
}
