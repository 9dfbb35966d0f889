//! Fencing on the master's write path under write-through: the copy to the backup is sent while
//! the local flush runs, and a backup that refuses it (StaleEpoch: it took the session over) must
//! turn the write into an error for the client even though the local flush succeeded.

mod common;

use std::net::SocketAddr;

use common::{Cluster, blob, test_id};
use scd_client::{ClientError, SessionId};
use scd_wire::local::ErrorCode;

#[test]
fn a_backup_that_refuses_the_copy_with_stale_epoch_makes_the_write_fail_though_the_local_flush_succeeded()
 {
    let c = Cluster::start(17, 2, &["--ha", "true", "--storage-model", "write-through"]);
    let a = c.relay(0);
    let b = c.relay(1);
    // A master address where nothing listens (connection refused at once).
    let gone: SocketAddr = format!("{}:34567", c.ip(9)).parse().unwrap();
    let hash = test_id(7, 17).hash;

    // B takes the session over from the unreachable master: it is its backup in this ID, so it
    // promotes itself to epoch 2 (nothing was written yet, so nothing is copied to A).
    let via_b_id = SessionId::new(gone, Some(b), 1, hash);
    let mut via_b = c.nodes[1].client();
    let r = via_b
        .read(&via_b_id)
        .expect("B serves the session it took over");
    let taken = r.new_id.expect("B hands out the session's new ID");
    assert_eq!(taken.master, b);
    assert!(taken.version >= 2, "a takeover raises the epoch");
    assert!(c.nodes[1].stat("node.cluster_failovers") >= 1);

    // A still believes it masters the session at epoch 1 with B as backup (a client with an old
    // ID naming A): its write is applied and flushed locally, but the copy goes to B, which knows
    // a newer epoch and refuses it.
    let old_id = SessionId::new(a, Some(b), 1, hash);
    let mut via_a = c.nodes[0].client();
    let lock = via_a
        .read_lock(&old_id, 1000, 30_000)
        .expect("A grants the lock (no read lease, see the known limits)");
    let written = via_a.write_unlock(&old_id, lock.token, 600, &blob(1, 2048));
    match written {
        Ok(v) => panic!("the write was acknowledged (version {v}) though the backup refused it"),
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Unavailable, "{message}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert!(c.nodes[0].stat("node.cluster_fenced") >= 1);
    assert!(c.nodes[0].stat("node.cluster_replication_failures") >= 1);
    assert_eq!(c.nodes[1].stat("node.cluster_replicas_applied"), 0);

    // A stopped mastering the session: the next request through A goes to B, the new master,
    // which never saw the refused write.
    let r = via_a.read(&old_id).expect("A relays to the new master");
    assert_eq!(r.data, None, "the refused write is nowhere");
    let moved = r.new_id.expect("the client learns the new master");
    assert_eq!(moved.master, b);
}
