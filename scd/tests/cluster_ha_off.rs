//! HA off with real processes: sessions have no backup (`0-0` in the ID); while a session's
//! master is dead, requests for it through the other nodes get a clear Unavailable (never
//! NotFound, which would make PHP start an empty session under the same ID, and never a hang);
//! when the master comes back with its disk, every write it had flushed is served again, under
//! the same ID.

mod common;

use common::{Cluster, blob, eventually};
use scd_client::{Client, SessionId};
use scd_wire::local::ErrorCode;

/// Writes `data` through `c` under the session's lock; returns the acknowledged version.
fn write(c: &mut Client, id: &SessionId, data: &[u8]) -> u64 {
    let r = c.read_lock(id, 1000, 30_000).unwrap();
    c.write_unlock(id, r.token, 600, data).unwrap()
}

fn run(net: u8, policy: &str) {
    let mut c = Cluster::start(net, 3, &["--ha", "false", "--storage-model", policy]);
    let mut a = c.nodes[0].client();
    let ids: Vec<SessionId> = (0..4).map(|_| a.create_id().unwrap()).collect();
    for id in &ids {
        assert_eq!(id.master, c.relay(0));
        assert_eq!(id.backup, None, "HA off: no backup in the ID");
    }
    // Writes through the master and relayed through node 2, each acknowledged.
    let mut b = c.nodes[1].client();
    let mut last = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let data = blob(n as u64, 500 + n * 100);
        let v = if n % 2 == 0 {
            write(&mut a, id, &data)
        } else {
            write(&mut b, id, &data)
        };
        last.push((data, v));
    }
    assert_eq!(c.nodes[0].stat("node.cluster_replications"), 0, "HA off");
    if policy == "delayed-write" {
        // Delayed-write keeps what it acknowledged for up to the flush interval: wait until
        // two flushes completed after the writes (the second started after all of them). A
        // flush runs only when something is dirty: a filler session keeps it so.
        let filler = a.create_id().unwrap();
        let before = c.nodes[0].stats()["total.flushes"];
        eventually("two flushes after the writes", || {
            write(&mut a, &filler, b"filler");
            c.nodes[0].stats()["total.flushes"] >= before + 2
        });
    }

    c.nodes[0].kill9();
    for via in [1, 2] {
        let mut cl = c.nodes[via].client();
        // A hang would end in an I/O error here, not in the Unavailable asserted below.
        cl.set_timeout(Some(common::READY_WAIT)).unwrap();
        for id in &ids {
            let e = cl.read(id).expect_err("the only copy is on a dead node");
            assert_eq!(
                e.code(),
                Some(ErrorCode::Unavailable),
                "node {via}: the session is unavailable, not gone: {e}"
            );
            assert!(
                e.to_string().contains(&c.relay(0).to_string()),
                "the error names the dead master: {e}"
            );
        }
    }
    assert_eq!(c.nodes[1].stat("node.cluster_failovers"), 0);
    assert_eq!(c.nodes[2].stat("node.cluster_failovers"), 0);

    // The master comes back with its disk: everything it flushed is served again, same ID.
    c.nodes[0].restart();
    c.wait_ready(0);
    for via in [0, 1, 2] {
        let mut cl = c.nodes[via].client();
        for (id, (data, v)) in ids.iter().zip(&last) {
            let mut r = None;
            eventually("the session is served again", || {
                r = cl.read(id).ok();
                r.is_some()
            });
            let r = r.unwrap();
            assert_eq!(r.data.as_deref(), Some(&data[..]), "node {via}");
            assert_eq!(r.version, *v, "node {via}");
            assert_eq!(r.new_id, None, "the session did not move");
        }
    }
    // And it takes writes again, relayed.
    let mut cl = c.nodes[2].client();
    let v = write(&mut cl, &ids[0], b"after");
    assert!(v > last[0].1);
}

#[test]
fn without_ha_a_dead_masters_sessions_are_unavailable_until_it_returns_write_through() {
    run(47, "write-through");
}

#[test]
fn without_ha_a_dead_masters_sessions_are_unavailable_until_it_returns_delayed_write() {
    run(48, "delayed-write");
}
