//! The real `scd` binary over a Unix socket and loopback TCP: create, lock, read, write, touch,
//! destroy, expiry, strict existence checks, oversized data, statistics (wire, `scd stats`,
//! Prometheus).

mod common;

use std::process::Command;

use common::{Daemon, blob, eventually, test_id};
use scd_client::{Client, ErrorCode};

fn lifecycle(c: &mut Client) {
    // A fresh ID names this node as master, has no backup, and does not exist yet (strict mode).
    let id = c.create_id().expect("create id");
    assert_eq!(id.master, "127.0.0.1:34567".parse().unwrap());
    assert!(id.backup.is_none());
    assert_eq!(id.version, 1);
    assert!(!c.exists(&id).unwrap());

    // PHP's read of a new session: the lock is taken, NotFound with a token.
    let r = c.read_lock(&id, 1000, 30_000).unwrap();
    assert!(r.data.is_none());
    assert_ne!(r.token, 0);
    assert!(!c.exists(&id).unwrap(), "a lock alone is not a session");

    let v1 = c.write_unlock(&id, r.token, 600, b"first").unwrap();
    assert!(c.exists(&id).unwrap());
    let plain = c.read(&id).unwrap();
    assert_eq!(plain.data.as_deref(), Some(&b"first"[..]));
    assert_eq!(plain.token, 0);
    assert_eq!(plain.version, v1);

    // The token was spent by write_unlock: writing with it again is refused.
    let stale = c.write_unlock(&id, r.token, 600, b"stale").unwrap_err();
    assert!(
        matches!(stale.code(), Some(ErrorCode::NotLocked)),
        "{stale}"
    );

    let r2 = c.read_lock(&id, 1000, 30_000).unwrap();
    assert_eq!(r2.data.as_deref(), Some(&b"first"[..]));
    assert_ne!(r2.token, r.token);
    let wrong = c.unlock(&id, r2.token + 1).unwrap_err();
    assert!(
        matches!(wrong.code(), Some(ErrorCode::NotLocked)),
        "{wrong}"
    );
    // update_timestamp: keeps the data, releases the lock.
    c.touch(&id, r2.token, 600).unwrap();
    let after_touch = c.read(&id).unwrap();
    assert_eq!(after_touch.data.as_deref(), Some(&b"first"[..]));
    assert!(c.unlock(&id, r2.token).is_err(), "touch released the lock");

    let r3 = c.read_lock(&id, 1000, 30_000).unwrap();
    let v2 = c.write_unlock(&id, r3.token, 600, b"second").unwrap();
    assert!(v2 > v1, "versions grow: {v1} then {v2}");
    assert_eq!(c.read(&id).unwrap().data.as_deref(), Some(&b"second"[..]));

    // Destroy under the lock ends the request: the session is gone and the lock released (the
    // PHP module sends nothing after it), so the next request locks at once.
    let r4 = c.read_lock(&id, 1000, 30_000).unwrap();
    c.destroy(&id, r4.token).unwrap();
    assert!(!c.exists(&id).unwrap());
    assert!(c.read(&id).unwrap().data.is_none());
    let e = c.unlock(&id, r4.token).unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::NotLocked)), "{e}");
    let r5 = c
        .read_lock(&id, 0, 30_000)
        .expect("free at once after destroy");
    assert!(r5.data.is_none());
    c.unlock(&id, r5.token).unwrap();

    // Touch or unlock of a session nobody locked is refused.
    let e = c.touch(&id, 12345, 600).unwrap_err();
    assert!(
        matches!(e.code(), Some(ErrorCode::NotLocked | ErrorCode::NotFound)),
        "{e}"
    );

    // IDs are never handed out twice.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let id = c.create_id().unwrap();
        assert!(seen.insert(id.hash), "a session hash was handed out twice");
    }
}

#[test]
fn session_lifecycle_over_unix_socket_and_tcp() {
    let d = Daemon::start(&[]);
    lifecycle(&mut d.client());
    lifecycle(&mut d.tcp_client());
    let hello = *d.client().server();
    assert_eq!(hello.node, "127.0.0.1:34567".parse().unwrap());
    assert_eq!(hello.data_max, 1024 * 1024);
}

#[test]
fn unlocked_destroy_is_refused_while_another_holds_the_lock() {
    let d = Daemon::start(&[]);
    let mut a = d.client();
    let mut b = d.client();
    let id = test_id(1, 7);
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    a.write_unlock(&id, r.token, 600, b"x").unwrap();
    let r = a.read_lock(&id, 1000, 30_000).unwrap();
    let e = b.destroy(&id, 0).unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::NotLocked)), "{e}");
    assert!(b.exists(&id).unwrap());
    a.unlock(&id, r.token).unwrap();
    b.destroy(&id, 0).unwrap();
    assert!(!b.exists(&id).unwrap());
}

#[test]
fn sessions_expire_after_their_lifetime() {
    let d = Daemon::start(&["--storage-model", "delayed-write"]);
    let mut c = d.client();
    let short = test_id(1, 1);
    let long = test_id(2, 1);
    for (id, lifetime_s) in [(&short, 1), (&long, 3600)] {
        let r = c.read_lock(id, 1000, 30_000).unwrap();
        c.write_unlock(id, r.token, lifetime_s, b"data").unwrap();
    }
    assert!(c.exists(&long).unwrap());
    eventually("the 1 s session to expire", || !c.exists(&short).unwrap());
    assert!(
        c.read(&short).unwrap().data.is_none(),
        "an expired session is never returned"
    );
    assert!(c.exists(&long).unwrap());
}

#[test]
fn oversized_session_is_refused_and_the_connection_goes_on() {
    let d = Daemon::start(&["--session-size-max", "4096"]);
    let mut c = d.client();
    assert_eq!(c.server().data_max, 4096);
    let id = test_id(3, 3);
    let r = c.read_lock(&id, 1000, 30_000).unwrap();
    // Within the frame limit but over the data limit.
    let e = c
        .write_unlock(&id, r.token, 600, &blob(1, 4097))
        .unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::TooLarge)), "{e}");
    // Far over the frame limit: refused from the header, the body is skipped as it streams.
    let e = c
        .write_unlock(&id, r.token, 600, &blob(2, 200_000))
        .unwrap_err();
    assert!(matches!(e.code(), Some(ErrorCode::TooLarge)), "{e}");
    // The connection still works, and the lock is still held.
    c.write_unlock(&id, r.token, 600, &blob(3, 4096)).unwrap();
    assert_eq!(c.read(&id).unwrap().data, Some(blob(3, 4096)));
}

#[test]
fn pipelined_requests_are_all_answered() {
    let d = Daemon::start(&["--requests-in-flight-max", "8"]);
    let mut c = d.client();
    // Prepare sessions, then pipeline 500 reads without waiting (more than the in-flight bound:
    // the daemon stops reading until replies drain, never drops).
    let ids: Vec<_> = (0..50).map(|n| test_id(n, 99)).collect();
    for (n, id) in ids.iter().enumerate() {
        let r = c.read_lock(id, 1000, 30_000).unwrap();
        c.write_unlock(id, r.token, 600, &blob(n as u64, 100 + n))
            .unwrap();
    }
    let mut expected = std::collections::HashMap::new();
    for i in 0..500 {
        let n = i % ids.len();
        let rid = c.send(scd_client::Request::Read { id: ids[n] }).unwrap();
        expected.insert(rid, n);
    }
    for _ in 0..500 {
        let (rid, reply) = c.recv().unwrap();
        let n = expected
            .remove(&rid)
            .expect("a reply for a request that was sent, once");
        match reply {
            scd_client::OwnedReply::Data { data, .. } => assert_eq!(data, blob(n as u64, 100 + n)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(expected.is_empty());
}

#[test]
fn statistics_over_the_wire_the_command_line_and_prometheus() {
    let d = Daemon::start(&[]);
    let mut c = d.client();
    for n in 0..10 {
        let id = test_id(n, 5);
        let r = c.read_lock(&id, 1000, 30_000).unwrap();
        c.write_unlock(&id, r.token, 600, &blob(n, 100 * (n as usize + 1)))
            .unwrap();
        c.read(&id).unwrap();
    }
    let s = d.stats();
    assert_eq!(s["total.sessions"], 10);
    assert_eq!(s["total.bytes"], (1..=10).map(|n| 100 * n).sum::<u64>());
    assert_eq!(s["total.size_smallest"], 100);
    assert_eq!(s["total.size_largest"], 1000);
    assert_eq!(s["total.size_average"], 550);
    assert!(s["total.writes"] >= 10);
    assert!(s["total.reads"] >= 20, "{s:?}");
    assert!(s["total.flushes"] >= 1, "write-through flushes: {s:?}");
    let cores = s["node.cores"];
    let shard_sessions: u64 = (0..cores).map(|n| s[&format!("shard.{n}.sessions")]).sum();
    assert_eq!(shard_sessions, 10);

    // `scd stats` finds the daemon through the same settings.
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scd"));
        cmd.arg("stats").arg("--unix-socket").arg(&d.socket);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("scd stats");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(false);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("total") && l.contains(" 10 ")),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(true)).expect("JSON");
    assert_eq!(json["total"]["sessions"], 10);
    assert_eq!(
        json["shards"].as_array().map(|a| a.len()),
        Some(cores as usize)
    );

    let (status, body) = d.http_get("/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("# TYPE scd_shard_sessions gauge"), "{body}");
    assert!(body.contains("scd_shard_sessions{shard=\"0\"}"), "{body}");
    let (status, _) = d.http_get("/nothing");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn scd_stats_reports_a_daemon_that_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scd"))
        .arg("stats")
        .arg("--unix-socket")
        .arg(dir.path().join("none.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the daemon"), "{err}");
}

#[test]
fn expired_sessions_give_their_disk_space_back() {
    let d = Daemon::start(&[
        "--storage-model",
        "delayed-write",
        "--flush-interval-ms",
        "50",
    ]);
    let mut c = d.client();
    for n in 0..3000 {
        let id = test_id(n, 21);
        let r = c.read_lock(&id, 1000, 30_000).unwrap();
        c.write_unlock(&id, r.token, 2, &blob(n, 4000)).unwrap();
    }
    let full = d.stats()["total.disk_bytes"];
    assert!(full >= 4 << 20, "{full}");
    // Every session expires after 2 s; expiry reclaims the slots and housekeeping compacts the
    // slab files, even while requests (these statistics) keep coming.
    eventually("the store to shrink", || {
        let s = d.stats();
        s["total.sessions"] == 0 && s["total.disk_bytes"] < full / 2
    });
}
