//! Write-through with HA: a Destroy is a write, and the client is told when the backup did not
//! confirm it. The backup is stopped (SIGSTOP: not declared down within the test, its node
//! timeout being 600 s, but its relay calls time out after 1 s): the Destroy with the lock's
//! token is answered Unavailable, saying the backup may still hold the session; once the backup
//! continues, the retried Destroy (without a lock) reaches it and its copy is gone.
//!
//! Loopback `127.0.107.x`, two nodes.

mod common;

use std::time::Duration;

use common::Cluster;
use scd_wire::local::ErrorCode;

#[test]
fn a_destroy_the_backup_did_not_confirm_is_answered_unavailable_and_can_be_retried() {
    let c = Cluster::start(
        107,
        2,
        &[
            "--ha",
            "true",
            "--storage-model",
            "write-through",
            "--node-timeout-ms",
            "600000",
        ],
    );
    let (master, backup) = (&c.nodes[0], &c.nodes[1]);
    let mut on_master = master.client();
    on_master
        .set_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let id = on_master.create_id().unwrap();
    assert_eq!(id.backup, Some(c.relay(1)));
    let r = on_master.read_lock(&id, 1000, 60_000).unwrap();
    on_master
        .write_unlock(&id, r.token, 600, b"logged in")
        .unwrap();
    assert_eq!(
        backup.stat("total.sessions"),
        1,
        "the backup holds the copy"
    );

    let r = on_master.read_lock(&id, 1000, 60_000).unwrap();
    common::stop_all_threads(backup.pid());
    let e = on_master
        .destroy(&id, r.token)
        .expect_err("the backup cannot confirm the destroy");
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
    assert!(e.to_string().contains("did not confirm"), "{e}");
    assert!(
        !on_master.exists(&id).unwrap(),
        "gone on the master all the same"
    );

    // The backup continues; the retried Destroy (the lock went with the first one) drops its copy.
    common::signal(backup.pid(), "CONT");
    on_master.destroy(&id, 0).expect("the retried destroy");
    assert_eq!(
        backup.stat("total.sessions"),
        0,
        "the backup's copy is gone"
    );
}
