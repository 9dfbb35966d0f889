//! Write-through with HA: a write is visible to nobody before the session's backup holds it.
//! The master keeps the writer's lock through its flush until the backup acknowledged the copy
//! (docs/ARCHITECTURE.md, "Replication in the daemon: decisions"), so a client waiting for the
//! lock cannot read a value that the backup would not have after a failover.
//!
//! Nor by a lockless Read, nor by the next holder after the writer's connection closed or its
//! lease ended while the copy was in flight (the lock is pinned until the copy resolves), and a
//! Destroy with a token keeps the lock until the backup dropped its copy.
//!
//! Loopback, `127.0.95.x` (two nodes: the core's path), `127.0.96.x` (three nodes: the
//! write relayed from another node, served by the master's cluster thread) and `127.0.97.x`
//! (two nodes: an ended lease, a Destroy). The backup is stopped (SIGSTOP) so that it cannot
//! acknowledge; node timeout and relay timeout are long, so nobody gives up on it while it is
//! stopped.

mod common;

use std::io;
use std::time::Duration;

use common::Cluster;
use scd_client::{Client, ClientError, OwnedReply, SessionId};
use scd_wire::local::{ErrorCode, Request};

/// No failover, no lapsed lease, no given-up copy while the backup is stopped.
const FLAGS: &[&str] = &[
    "--ha",
    "true",
    "--storage-model",
    "write-through",
    "--node-timeout-ms",
    "600000",
    "--relay-timeout-ms",
    "60000",
];

/// Bounds a hang (a test never asserts on time): far above any wait of the daemon here.
const HANG: Duration = Duration::from_secs(120);

/// While the backup cannot acknowledge: how long each client is watched for an answer it must
/// not get. (Not a timing assertion: without the rule the second client is answered within a
/// flush, so any wait that long shows the bug.)
const WATCH: Duration = Duration::from_millis(1500);

/// A client of node `i` whose reads give up only after `HANG`.
fn client(c: &Cluster, i: usize) -> Client {
    let mut cl = c.nodes[i].client();
    cl.set_timeout(Some(HANG)).unwrap();
    cl
}

/// Sends a WriteUnlock of `data` with `token` without waiting for its answer; its request ID.
fn send_write(cl: &mut Client, id: SessionId, token: u64, data: &[u8]) -> u64 {
    cl.send(Request::WriteUnlock {
        id,
        token,
        lifetime_s: 600,
        data,
    })
    .unwrap()
}

/// Sends a ReadLock (waiting up to 60 s, 60 s lease) without waiting for its answer.
fn send_lock(cl: &mut Client, id: SessionId) -> u64 {
    cl.send(Request::ReadLock {
        id,
        wait_ms: 60_000,
        lease_ms: 60_000,
    })
    .unwrap()
}

/// Every node's log, for a failure's message.
fn all_logs(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| n.log_text())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// No reply on `c` for `WATCH`: the read times out.
fn assert_no_answer(c: &mut Client, what: &str, logs: &dyn Fn() -> String) {
    c.set_timeout(Some(WATCH)).unwrap();
    match c.recv() {
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Ok((_, r)) => panic!(
            "{what}: answered {r:?} while the backup cannot hold the write\n{}",
            logs()
        ),
        Err(e) => panic!("{what}: {e}\n{}", logs()),
    }
    c.set_timeout(Some(HANG)).unwrap();
}

/// Client 1 holds the lock of a session mastered by node 0 whose backup is stopped, and writes
/// "new"; client 2, on the master, waits for the lock; client 3, on client 1's node, reads
/// without a lock (the PHP module's `lock_failure = readonly`). None is answered until the
/// backup continues; then client 1's write succeeds and clients 2 and 3 read "new". Client 1 is
/// connected to the master, or (`relayed`) to the node that is neither master nor backup.
fn scenario(c: &Cluster, relayed: bool) {
    let logs = || all_logs(c);
    let mut on_master = client(c, 0);
    let id = on_master.create_id().unwrap();
    let backup = (1..c.nodes.len())
        .find(|&i| id.backup == Some(c.relay(i)))
        .expect("the new session has a backup");
    let writer = if relayed {
        (1..c.nodes.len())
            .find(|&i| i != backup)
            .expect("a third node")
    } else {
        0
    };
    // "old" is written and acknowledged by the backup.
    let r = on_master.read_lock(&id, 1000, 60_000).unwrap();
    on_master.write_unlock(&id, r.token, 600, b"old").unwrap();

    let mut c1 = client(c, writer);
    let r = c1.read_lock(&id, 1000, 60_000).unwrap();
    assert_eq!(r.data.as_deref(), Some(&b"old"[..]));
    let mut c2 = client(c, 0);
    let mut c3 = client(c, writer);

    common::stop_all_threads(c.nodes[backup].pid());
    let w = send_write(&mut c1, id, r.token, b"new");
    let rl = send_lock(&mut c2, id);
    // Client 1 waits for the backup's acknowledgement, client 2 for the lock client 1 holds
    // until then: neither may be answered (client 2 least of all with "new").
    assert_no_answer(&mut c2, "client 2's ReadLock", &logs);
    assert_no_answer(&mut c1, "client 1's WriteUnlock", &logs);
    // A lockless Read sent once the write is held: it waits for the copy too.
    let rd = c3.send(Request::Read { id }).unwrap();
    assert_no_answer(&mut c3, "client 3's lockless Read", &logs);
    assert_no_answer(&mut c2, "client 2's ReadLock, again", &logs);

    common::signal(c.nodes[backup].pid(), "CONT");
    let (got, reply) = c1.recv().unwrap();
    assert_eq!(got, w);
    assert!(
        matches!(reply, OwnedReply::Done { .. }),
        "client 1's write: {reply:?}\n{}",
        logs()
    );
    let (got, reply) = c2.recv().unwrap();
    assert_eq!(got, rl);
    match reply {
        OwnedReply::Data { token, data, .. } => {
            assert_eq!(data, b"new", "client 2 reads the acknowledged write");
            assert_ne!(token, 0);
            c2.unlock(&id, token).unwrap();
        }
        other => panic!("client 2's ReadLock: {other:?}\n{}", logs()),
    }
    let (got, reply) = c3.recv().unwrap();
    assert_eq!(got, rd);
    match reply {
        OwnedReply::Data { token, data, .. } => {
            assert_eq!(data, b"new", "client 3 reads the acknowledged write");
            assert_eq!(token, 0, "a lockless read takes no lock");
        }
        other => panic!("client 3's Read: {other:?}\n{}", logs()),
    }
}

/// Two nodes: the write is served by the master's core (`conn::write_replicated`).
#[test]
fn write_through_ha_a_write_is_read_by_nobody_before_the_backup_holds_it() {
    let c = Cluster::start(95, 2, FLAGS);
    scenario(&c, false);
    writer_gone(&c);
}

/// The writer's connection closes while its write waits for the stopped backup: its lock stays
/// held for the write until the backup holds the copy (the next holder is not answered before
/// that, then reads the write), and is then released (no lock is leaked by the held write);
/// the next holder keeps its lock.
fn writer_gone(c: &Cluster) {
    let logs = || all_logs(c);
    let mut on_master = client(c, 0);
    let id = on_master.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)));
    let mut c1 = client(c, 0);
    let r = c1.read_lock(&id, 1000, 60_000).unwrap();
    common::stop_all_threads(c.nodes[1].pid());
    send_write(&mut c1, id, r.token, b"gone");
    drop(c1);
    let mut c2 = client(c, 0);
    let rl = send_lock(&mut c2, id);
    assert_no_answer(&mut c2, "the next holder's ReadLock", &logs);
    common::signal(c.nodes[1].pid(), "CONT");
    let (got, reply) = c2.recv().unwrap();
    assert_eq!(got, rl);
    let token = match reply {
        OwnedReply::Data { token, data, .. } => {
            assert_eq!(
                data, b"gone",
                "the next holder reads the acknowledged write"
            );
            token
        }
        other => panic!("the next holder: {other:?}\n{}", logs()),
    };
    assert_ne!(token, 0);
    // Its lock is its own, whatever the closed writer's late release did.
    let e = on_master
        .read_lock(&id, 0, 60_000)
        .expect_err("the lock is held by client 2");
    assert_eq!(e.code(), Some(ErrorCode::LockTimeout), "{e}");
    c2.write_unlock(&id, token, 600, b"after").unwrap();
    let r = on_master.read_lock(&id, 1000, 60_000).unwrap();
    assert_eq!(r.data.as_deref(), Some(&b"after"[..]));
    on_master.unlock(&id, r.token).unwrap();
}

/// Three nodes: the write comes relayed from another node and is served by the master's
/// cluster thread (`cluster::route`'s `write_replicated`).
#[test]
fn write_through_ha_a_relayed_write_is_read_by_nobody_before_the_backup_holds_it() {
    let c = Cluster::start(96, 3, FLAGS);
    scenario(&c, true);
}

/// Two nodes: the writer's lease ends while its write's copy waits for the stopped backup; the
/// lock is kept until the backup holds it.
#[test]
fn write_through_ha_a_lease_that_ends_during_the_copy_hands_the_lock_on_after_it() {
    let c = Cluster::start(97, 2, FLAGS);
    lease_ends(&c);
}

/// Two nodes: a Destroy with a token keeps the lock until the backup dropped its copy.
#[test]
fn write_through_ha_a_destroy_is_seen_by_nobody_before_the_backup_dropped_its_copy() {
    let c = Cluster::start(98, 2, FLAGS);
    destroy_held(&c);
}

/// Client 1's lock lease (2 s) ends while its write waits for the stopped backup: client 2, waiting
/// for the lock, is not answered before the backup continues (the lease does not hand the lock
/// on), and then reads the write.
fn lease_ends(c: &Cluster) {
    let logs = || all_logs(c);
    let mut on_master = client(c, 0);
    let id = on_master.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)));
    // Written once with the backup up: this node then holds a read lease from it, valid for
    // the node timeout (far longer than this test), so it serves the session while it is
    // stopped.
    let r = on_master.read_lock(&id, 1000, 60_000).unwrap();
    on_master.write_unlock(&id, r.token, 600, b"old").unwrap();
    let mut c1 = client(c, 0);
    let mut c2 = client(c, 0);
    common::stop_all_threads(c.nodes[1].pid());
    // Taken with the backup already stopped, so that the write follows well within the lease.
    let r = c1.read_lock(&id, 1000, 2000).unwrap();
    let w = send_write(&mut c1, id, r.token, b"leased");
    let rl = send_lock(&mut c2, id);
    // Three watches: the 2 s lease ends during them.
    assert_no_answer(&mut c2, "client 2's ReadLock", &logs);
    assert_no_answer(&mut c1, "client 1's WriteUnlock", &logs);
    assert_no_answer(&mut c2, "client 2's ReadLock after the lease's end", &logs);
    common::signal(c.nodes[1].pid(), "CONT");
    let (got, reply) = c1.recv().unwrap();
    assert_eq!(got, w);
    assert!(
        matches!(reply, OwnedReply::Done { .. }),
        "client 1's write: {reply:?}\n{}",
        logs()
    );
    let (got, reply) = c2.recv().unwrap();
    assert_eq!(got, rl);
    match reply {
        OwnedReply::Data { token, data, .. } => {
            assert_eq!(data, b"leased");
            c2.unlock(&id, token).unwrap();
        }
        other => panic!("client 2's ReadLock: {other:?}\n{}", logs()),
    }
}

/// Client 1 destroys the session with its token while the backup is stopped: client 2 waiting
/// for the lock and client 3 reading without one are not answered (they would find the session
/// gone while the backup still holds it) until the backup continues; then client 1's Destroy is
/// done, client 2 gets the lock of a session that no longer exists, and client 3's Read and
/// Exists find none.
fn destroy_held(c: &Cluster) {
    let logs = || all_logs(c);
    let mut on_master = client(c, 0);
    let id = on_master.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)));
    let r = on_master.read_lock(&id, 1000, 60_000).unwrap();
    on_master
        .write_unlock(&id, r.token, 600, b"doomed")
        .unwrap();
    let mut c1 = client(c, 0);
    let r = c1.read_lock(&id, 1000, 60_000).unwrap();
    assert_eq!(r.data.as_deref(), Some(&b"doomed"[..]));
    let mut c2 = client(c, 0);
    let mut c3 = client(c, 0);
    common::stop_all_threads(c.nodes[1].pid());
    let d = c1.send(Request::Destroy { id, token: r.token }).unwrap();
    let rl = send_lock(&mut c2, id);
    assert_no_answer(&mut c2, "client 2's ReadLock", &logs);
    assert_no_answer(&mut c1, "client 1's Destroy", &logs);
    let rd = c3.send(Request::Read { id }).unwrap();
    let ex = c3.send(Request::Exists { id }).unwrap();
    assert_no_answer(&mut c3, "client 3's lockless Read and Exists", &logs);
    common::signal(c.nodes[1].pid(), "CONT");
    let (got, reply) = c1.recv().unwrap();
    assert_eq!(got, d);
    assert!(
        matches!(reply, OwnedReply::Done { .. }),
        "client 1's Destroy: {reply:?}\n{}",
        logs()
    );
    let (got, reply) = c2.recv().unwrap();
    assert_eq!(got, rl);
    match reply {
        OwnedReply::NotFound { token, .. } => {
            assert_ne!(token, 0);
            c2.unlock(&id, token).unwrap();
        }
        other => panic!("client 2's ReadLock: {other:?}\n{}", logs()),
    }
    let (got, reply) = c3.recv().unwrap();
    assert_eq!(got, rd);
    assert!(
        matches!(reply, OwnedReply::NotFound { token: 0, .. }),
        "client 3's Read: {reply:?}\n{}",
        logs()
    );
    let (got, reply) = c3.recv().unwrap();
    assert_eq!(got, ex);
    assert!(
        matches!(reply, OwnedReply::Existence(false)),
        "client 3's Exists: {reply:?}\n{}",
        logs()
    );
}
