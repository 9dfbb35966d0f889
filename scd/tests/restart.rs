//! Durability across a crash of the daemon (`kill -9`) and across a clean stop (SIGTERM).

mod common;

use common::{Daemon, blob, eventually, socket_exists, test_id};
use scd_client::Client;

fn write_sessions(c: &mut Client, range: std::ops::Range<u64>, salt: u64, len: usize) {
    for n in range {
        let id = test_id(n, salt);
        let r = c.read_lock(&id, 1000, 30_000).unwrap();
        // Acknowledged = the reply came back.
        c.write_unlock(&id, r.token, 3600, &blob(n, len + n as usize))
            .unwrap();
    }
}

fn check_sessions(c: &mut Client, range: std::ops::Range<u64>, salt: u64, len: usize) {
    for n in range {
        let got = c.read(&test_id(n, salt)).unwrap();
        assert_eq!(
            got.data,
            Some(blob(n, len + n as usize)),
            "session {n} lost or changed"
        );
    }
}

#[test]
fn write_through_keeps_every_acknowledged_write_across_kill_9() {
    let mut d = Daemon::start(&["--storage-model", "write-through"]);
    {
        let mut c = d.client();
        write_sessions(&mut c, 0..300, 1, 500);
        // Overwrites too: the newest acknowledged version must win after recovery.
        write_sessions(&mut c, 0..50, 1, 4000);
    }
    d.kill9();
    assert!(
        socket_exists(&d.socket),
        "kill -9 leaves the socket file behind"
    );
    d.restart();
    let mut c = d.client();
    check_sessions(&mut c, 0..50, 1, 4000);
    check_sessions(&mut c, 50..300, 1, 500);
    assert_eq!(d.stats()["total.sessions"], 300);
    assert!(
        d.log_lines_containing("removed stale socket file") >= 1,
        "{}",
        d.log_text()
    );
}

#[test]
fn delayed_write_keeps_what_was_written_a_flush_interval_before_kill_9() {
    let mut d = Daemon::start(&[
        "--storage-model",
        "delayed-write",
        "--flush-interval-ms",
        "100",
    ]);
    {
        let mut c = d.client();
        write_sessions(&mut c, 0..200, 2, 700);
        // Two more completed flushes after the last write: the second one started after every
        // write above, so it covered them (behaviour, not a sleep).
        let before = d.stats()["total.flushes"];
        eventually("two flushes after the writes", || {
            d.stats()["total.flushes"] >= before + 2
        });
        // Written just before the kill: may or may not survive; must never come back corrupt.
        write_sessions(&mut c, 1000..1050, 2, 700);
    }
    d.kill9();
    d.restart();
    let mut c = d.client();
    check_sessions(&mut c, 0..200, 2, 700);
    for n in 1000..1050 {
        if let Some(data) = c.read(&test_id(n, 2)).unwrap().data {
            assert_eq!(
                data,
                blob(n, 700 + n as usize),
                "a late write came back altered"
            );
        }
    }
}

#[test]
fn sigterm_flushes_everything_and_a_restart_finds_it() {
    // Delayed-write with a long interval: only the shutdown flush can have saved these.
    let mut d = Daemon::start(&[
        "--storage-model",
        "delayed-write",
        "--flush-interval-ms",
        "60000",
    ]);
    {
        let mut c = d.client();
        write_sessions(&mut c, 0..100, 3, 300);
    }
    let status = d.stop();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        d.log_text()
    );
    assert!(
        !socket_exists(&d.socket),
        "a clean stop removes the socket file"
    );
    assert!(
        d.log_lines_containing("stopped: every shard flushed") == 1,
        "{}",
        d.log_text()
    );
    d.restart();
    let mut c = d.client();
    check_sessions(&mut c, 0..100, 3, 300);
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scd"))
        .arg("--data-dir")
        .arg(d.dir.path().join("other-data"))
        .arg("--unix-socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // The running daemon is untouched.
    assert!(d.client().stats().is_ok());
}

#[test]
fn a_second_daemon_on_the_same_data_folder_is_refused() {
    let d = Daemon::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scd"))
        .arg("--data-dir")
        .arg(d.dir.path().join("data"))
        .arg("--unix-socket")
        .arg(d.dir.path().join("second.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("core") && err.contains("shard"), "{err}");
    assert!(d.client().stats().is_ok());
}
