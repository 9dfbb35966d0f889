//! `scd drain` hands every session to the other nodes, then the daemon stops: nothing is lost,
//! and clients with old IDs are served (they get the new IDs).

mod common;

use std::process::Command;

use common::{Cluster, blob};
use scd_client::SessionId;

#[test]
fn drain_loses_nothing() {
    let mut c = Cluster::start(16, 3, &["--ha", "true"]);
    // Sessions B masters first, while A and C are equally idle (no sessions, no client
    // connections): the tie goes to the lower address, A, so A backs them up. Then sessions A
    // masters.
    let mut on_a: Vec<(SessionId, Vec<u8>)> = Vec::new();
    let mut on_b: Vec<(SessionId, Vec<u8>)> = Vec::new();
    let mut cb = c.nodes[1].client();
    // The backup choice follows the load in the last heartbeats (a client connection counts), so
    // create until a few of B's sessions are backed up by A (bounded).
    let mut n = 0u64;
    while on_b
        .iter()
        .filter(|(id, _)| id.backup == Some(c.relay(0)))
        .count()
        < 4
    {
        assert!(n < 2000, "A never became the backup of B's sessions");
        let id = cb.create_id().unwrap();
        let r = cb.read_lock(&id, 1000, 30_000).unwrap();
        let data = blob(1000 + n, 400);
        cb.write_unlock(&id, r.token, 600, &data).unwrap();
        on_b.push((id, data));
        n += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut ca = c.nodes[0].client();
    for n in 0..12u64 {
        let id = ca.create_id().unwrap();
        let r = ca.read_lock(&id, 1000, 30_000).unwrap();
        let data = blob(n, 400);
        ca.write_unlock(&id, r.token, 600, &data).unwrap();
        on_a.push((id, data));
    }
    drop(ca);
    assert!(on_b.iter().any(|(id, _)| id.backup == Some(c.relay(0))));

    let out = Command::new(env!("CARGO_BIN_EXE_scd"))
        .args(["drain", "--unix-socket"])
        .arg(&c.nodes[0].socket)
        .output()
        .expect("run scd drain");
    assert!(
        out.status.success(),
        "scd drain failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.nodes[0].log_text()
    );
    c.nodes[0].kill9(); // already stopped: collects its exit and log
    assert!(
        c.nodes[0].log_lines_containing("drain finished: 12 sessions handed off, 0 could not be")
            == 1,
        "{}",
        c.nodes[0].log_text()
    );

    // Every session A mastered is served by the others under its old ID, unchanged.
    for node in [1, 2] {
        let mut cl = c.nodes[node].client();
        for (id, data) in &on_a {
            let r = cl.read(id).expect("read after drain");
            assert_eq!(r.data.as_deref(), Some(&data[..]), "node {node}");
            let new = r.new_id.expect("a new ID after the hand-off");
            assert_ne!(new.master, c.relay(0));
        }
    }
    // The sessions B masters with A as backup got a new backup: B can die now and C serves them.
    common::eventually("B replaced its backups", || {
        c.nodes[1].stat("node.cluster_backups_replaced") as usize
            >= on_b
                .iter()
                .filter(|(id, _)| id.backup == Some(c.relay(0)))
                .count()
    });
    c.nodes[1].kill9();
    let mut cc = c.nodes[2].client();
    for (id, data) in &on_b {
        let mut id = *id;
        // The ID may name A (gone) as backup: C still finds it (C is the backup now, or the
        // original one).
        let r = cc
            .read(&id)
            .unwrap_or_else(|e| panic!("session of B lost after drain and B's death: {e}"));
        if let Some(n) = r.new_id {
            id = n;
        }
        assert_eq!(r.data.as_deref(), Some(&data[..]));
        assert_eq!(id.master, c.relay(2));
    }
}
