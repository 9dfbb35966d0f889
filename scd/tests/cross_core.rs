//! Requests for sessions of every shard arrive on every core and are answered correctly: the
//! connection's core runs them itself when it owns the shard and passes them to the owning core
//! otherwise. Also run on the epoll fallback driver.

mod common;

use std::collections::BTreeMap;

use common::{Daemon, blob, test_id};
use scd_client::{Client, OwnedReply, Request};

/// Opens connections; the daemon spreads them over its cores (round robin), whichever core
/// accepted them.
fn clients_on_every_core(d: &Daemon, cores: u64) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..8)
        .map(|n| {
            if n % 2 == 0 {
                d.client()
            } else {
                d.tcp_client()
            }
        })
        .collect();
    let s: BTreeMap<String, u64> = clients[0].stats().unwrap().into_iter().collect();
    for c in 0..cores {
        assert!(
            s[&format!("core.{c}.connections_open")] >= 2,
            "core {c}: {s:?}"
        );
    }
    clients
}

fn exercise(d: &Daemon, cores: u64, shards: u64) {
    let mut clients = clients_on_every_core(d, cores);
    let n_clients = clients.len();
    let sessions: Vec<_> = (0..64).map(|n| test_id(n, shards * 1000 + cores)).collect();

    // Each session is written through one connection and read through all the others.
    for (n, id) in sessions.iter().enumerate() {
        let c = &mut clients[n % n_clients];
        let r = c.read_lock(id, 1000, 30_000).unwrap();
        c.write_unlock(id, r.token, 600, &blob(n as u64, 64 + n))
            .unwrap();
    }
    for c in clients.iter_mut() {
        for (n, id) in sessions.iter().enumerate() {
            assert_eq!(
                c.read(id).unwrap().data,
                Some(blob(n as u64, 64 + n)),
                "session {n}"
            );
        }
    }
    // Pipelined locks across shards from one connection, answered by request ID.
    let c = &mut clients[0];
    let mut asked = BTreeMap::new();
    for (n, id) in sessions.iter().enumerate() {
        asked.insert(
            c.send(Request::ReadLock {
                id: *id,
                wait_ms: 1000,
                lease_ms: 30_000,
            })
            .unwrap(),
            n,
        );
    }
    let mut tokens = BTreeMap::new();
    for _ in 0..sessions.len() {
        let (rid, reply) = c.recv().unwrap();
        let n = asked.remove(&rid).expect("each request answered once");
        let OwnedReply::Data { token, data, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(data, blob(n as u64, 64 + n));
        tokens.insert(n, token);
    }
    for (n, token) in tokens {
        c.write_unlock(&sessions[n], token, 600, b"again").unwrap();
    }
    // A lock held through one core and waited for through another.
    let (a, rest) = clients.split_at_mut(1);
    let id = sessions[1];
    let r = a[0].read_lock(&id, 1000, 30_000).unwrap();
    let b = &mut rest[0];
    let rid = b
        .send(Request::ReadLock {
            id,
            wait_ms: 60_000,
            lease_ms: 30_000,
        })
        .unwrap();
    a[0].write_unlock(&id, r.token, 600, b"handed over")
        .unwrap();
    let (got, reply) = b.recv().unwrap();
    assert_eq!(got, rid);
    assert!(
        matches!(reply, OwnedReply::Data { ref data, .. } if data == b"handed over"),
        "{reply:?}"
    );

    let s = d.stats();
    assert_eq!(s["node.cores"], cores);
    for shard in 0..shards {
        assert!(
            s[&format!("shard.{shard}.sessions")] > 0,
            "shard {shard} holds none: {s:?}"
        );
    }
    assert_eq!(s["total.sessions"], sessions.len() as u64);
    assert!(s["node.cross_core_requests"] > 0, "{s:?}");
    for core in 0..cores {
        assert!(
            s[&format!("core.{core}.requests")] > 0,
            "core {core} served nothing: {s:?}"
        );
    }
}

#[test]
fn two_cores_two_shards() {
    let d = Daemon::start(&["--cores", "2", "--shards", "2"]);
    exercise(&d, 2, 2);
}

#[test]
fn two_cores_five_shards() {
    let d = Daemon::start(&["--cores", "2", "--shards", "5"]);
    exercise(&d, 2, 5);
}

#[test]
fn epoll_fallback_serves_the_same() {
    let d = Daemon::start(&["--cores", "2", "--shards", "3", "--io-driver", "epoll"]);
    assert_eq!(
        d.log_lines_containing("event loop on epoll"),
        2,
        "{}",
        d.log_text()
    );
    let s = d.stats();
    assert_eq!(s["core.0.io_uring"], 0);
    exercise(&d, 2, 3);
}

#[test]
fn a_changed_shard_count_is_refused_at_start() {
    let mut d = Daemon::start(&["--cores", "2", "--shards", "4"]);
    d.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scd"))
        .arg("--data-dir")
        .arg(d.dir.path().join("data"))
        .arg("--unix-socket")
        .arg(d.dir.path().join("other.sock"))
        .arg("--shards")
        .arg("3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("re-sharding") || err.contains("shards"),
        "{err}"
    );
}
