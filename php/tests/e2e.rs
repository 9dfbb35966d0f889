//! End to end: real scd, PHP's built-in web server (`PHP_CLI_SERVER_WORKERS`) loading the real
//! cluster.so, and an HTTP client with a cookie jar.
//!
//! The tests of this file run one at a time (`serial()`): each starts its own scd and PHP server,
//! and the machine has two cores.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use common::{Jar, PhpServer, Scd, TestDir, php_ini};
use scd_wire::SessionId;

fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The start of most tests here: the serial guard, a test folder named `name`, scd on its
/// defaults, and a PHP server of `workers` workers using it with `ini` on top of `php_ini`'s
/// settings. (Bound in this order, they drop in reverse: PHP first, the guard last.)
fn scd_and_php(
    name: &str,
    workers: u32,
    ini: &[(&str, &str)],
) -> (MutexGuard<'static, ()>, TestDir, Scd, PhpServer) {
    let g = serial();
    let dir = TestDir::new(name);
    let scd = Scd::start(&dir, &[]);
    let php = PhpServer::start(&dir, workers, &php_ini(&scd.save_path(), ini));
    (g, dir, scd, php)
}

/// Does scd hold this session? Asked directly, not through PHP.
fn scd_has(scd: &Scd, id: &str) -> bool {
    let sid = SessionId::parse(id.as_bytes()).expect("a cluster session ID");
    match scd.client().exists(&sid, 5000).expect("Exists") {
        cluster::conn::Reply::Exists(e) => e,
        other => panic!("Exists answered {other:?}"),
    }
}

fn n_of(r: &common::Response) -> u64 {
    r.field("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no n= in {:?}", r.body))
}

#[test]
fn counter_across_requests_with_a_cookie_jar() {
    let (_g, _dir, scd, php) = scd_and_php("count", 2, &[]);
    let mut jar = Jar::default();
    for want in 1..=5 {
        let r = php.get("/count.php", &mut jar);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(n_of(&r), want, "{}", r.body);
        assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
        assert!(!r.body.contains("Warning"), "{}", r.body);
    }
    let id = jar.session_id().expect("a session cookie").to_string();
    // The cookie is a cluster ID naming this node, and scd holds the session.
    let sid = SessionId::parse(id.as_bytes()).unwrap();
    assert_eq!(sid.master.ip().to_string(), "127.0.0.1");
    assert!(scd_has(&scd, &id));
    // A new browser gets a new session.
    let mut other = Jar::default();
    let r = php.get("/count.php", &mut other);
    assert_eq!(n_of(&r), 1);
    assert_ne!(other.session_id(), Some(id.as_str()));
}

#[test]
fn fifty_concurrent_increments_on_one_session_count_exactly_fifty() {
    let (_g, _dir, _scd, php) = scd_and_php("fifty", 8, &[]);
    let mut jar = Jar::default();
    let r = php.get("/set.php?k=start&v=1", &mut jar);
    assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
    let port = php.port;
    let workers: Vec<_> = (0..50)
        .map(|_| {
            let mut jar = jar.clone();
            thread::spawn(move || common::http_get(port, "/count.php", &mut jar))
        })
        .collect();
    let mut seen = Vec::new();
    for w in workers {
        let r = w.join().unwrap();
        assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
        seen.push(n_of(&r));
    }
    // Every request saw a different count: no two ran on the same session at once.
    seen.sort_unstable();
    assert_eq!(seen, (1..=50).collect::<Vec<u64>>());
    let r = php.get("/peek.php", &mut jar);
    assert_eq!(n_of(&r), 50, "{}", r.body);
}

#[test]
fn kill9_of_the_worker_holding_the_lock_does_not_block_the_next_request() {
    let (_g, dir, _scd, php) = scd_and_php("killw", 4, &[("cluster.lock_wait_ms", "20000")]);
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    let pidfile = dir.join("holder.pid");
    let port = php.port;
    let mut holder_jar = jar.clone();
    let path = format!("/hold.php?seconds=120&pidfile={}", pidfile.display());
    let holder = thread::spawn(move || {
        // The worker dies mid-request: the response is cut short or empty.
        common::try_http_get(port, &path, &mut holder_jar)
    });
    let pid = common::wait_for_pid_file(&pidfile);
    common::kill9_pid(pid);
    // The dead worker's connection closed, so scd released its lock at once: this request gets
    // the lock (a lock still held would fail it with a lock-timeout warning after 20 s).
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 2, "{}", r.body);
    assert!(!r.body.contains("timed out"), "{}", r.body);
    let _ = holder.join();
}

/// Stores `count` sessions with distinct values; returns (id, value) pairs.
fn store_sessions(php: &PhpServer, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let mut jar = Jar::default();
            let v = format!("value{i}x{}", i * 7919);
            let r = php.get(&format!("/set.php?k=v&v={v}"), &mut jar);
            assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
            (jar.session_id().unwrap().to_string(), v)
        })
        .collect()
}

fn check_sessions(php: &PhpServer, sessions: &[(String, String)]) {
    for (id, v) in sessions {
        let mut jar = Jar::with_session(id);
        let r = php.get("/get.php?k=v", &mut jar);
        assert_eq!(r.field("v"), Some(v.as_str()), "session {id}: {}", r.body);
        assert_eq!(
            r.field("id"),
            Some(id.as_str()),
            "session {id} kept its ID: {}",
            r.body
        );
    }
}

#[test]
fn kill9_of_scd_and_restart_keeps_every_write_through_session() {
    let _g = serial();
    let dir = TestDir::new("wt");
    let mut scd = Scd::start(&dir, &["--storage-model", "write-through"]);
    let php = PhpServer::start(&dir, 2, &php_ini(&scd.save_path(), &[]));
    let sessions = store_sessions(&php, 20);
    scd.kill9();
    scd.restart();
    // The PHP workers still hold connections to the dead daemon: they notice and reconnect.
    check_sessions(&php, &sessions);
}

#[test]
fn kill9_of_scd_under_delayed_write_keeps_sessions_older_than_one_flush_interval() {
    let _g = serial();
    let dir = TestDir::new("dw");
    let flush_ms = 200;
    let mut scd = Scd::start(
        &dir,
        &[
            "--storage-model",
            "delayed-write",
            "--flush-interval-ms",
            &flush_ms.to_string(),
        ],
    );
    let php = PhpServer::start(&dir, 2, &php_ini(&scd.save_path(), &[]));
    let sessions = store_sessions(&php, 20);
    // The guarantee covers writes more than one flush interval old; wait several.
    thread::sleep(Duration::from_millis(5 * flush_ms));
    scd.kill9();
    scd.restart();
    check_sessions(&php, &sessions);
}

#[test]
fn strict_mode_replaces_forged_ids_and_never_stores_them() {
    let (_g, _dir, scd, php) = scd_and_php("strict", 2, &[("session.use_strict_mode", "1")]);
    // A real ID, to forge a well-formed one next to it.
    let mut real = Jar::default();
    php.get("/count.php", &mut real);
    let real_id = real.session_id().unwrap().to_string();
    let mut forged_sid = SessionId::parse(real_id.as_bytes()).unwrap();
    forged_sid.hash = [0x42; 16];
    let forged_well_formed = forged_sid.encode().as_str().to_string();
    for forged in [
        forged_well_formed.as_str(),
        "attackerchosenid123",
        "7f000001-8707-0-0-1-zz",
        "../../etc/passwd",
    ] {
        let mut jar = Jar::with_session(forged);
        let r = php.get("/count.php", &mut jar);
        assert_eq!(
            n_of(&r),
            1,
            "a forged ID starts an empty session: {}",
            r.body
        );
        let new_id = jar.session_id().unwrap().to_string();
        assert_ne!(new_id, forged, "the forged ID was replaced");
        assert_eq!(r.field("id"), Some(new_id.as_str()));
        assert!(!r.set_cookies().is_empty(), "a new cookie was sent");
        assert!(scd_has(&scd, &new_id));
    }
    // The well-formed forged ID was never stored.
    assert!(!scd_has(&scd, &forged_well_formed));
    // The real session is untouched.
    assert_eq!(n_of(&php.get("/peek.php", &mut real)), 1);
}

#[test]
fn without_strict_mode_malformed_ids_are_still_replaced() {
    let (_g, _dir, scd, php) = scd_and_php("nonstrict", 2, &[("session.use_strict_mode", "0")]);
    let mut jar = Jar::with_session("attackerchosenid123");
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 1, "{}", r.body);
    let id = jar.session_id().unwrap().to_string();
    assert_ne!(id, "attackerchosenid123");
    assert!(SessionId::parse(id.as_bytes()).is_ok());
    assert!(scd_has(&scd, &id));
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 2);

    // A well-formed ID scd does not know is adopted, as PHP does for every handler without strict
    // mode (documented; strict mode is the recommended setting).
    let mut unknown = SessionId::parse(id.as_bytes()).unwrap();
    unknown.hash = [0x17; 16];
    let unknown = unknown.encode().as_str().to_string();
    let mut jar = Jar::with_session(&unknown);
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 1, "{}", r.body);
    assert_eq!(r.field("id"), Some(unknown.as_str()));
    assert!(scd_has(&scd, &unknown));
}

#[test]
fn an_oversized_session_is_refused_with_a_warning_and_the_old_data_kept() {
    let (_g, _dir, _scd, php) = scd_and_php("big", 2, &[]);
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    let r = php.get("/big.php?bytes=2000000", &mut jar);
    // (session_write_close() returns true even when the write failed: PHP 8.2 reports the failure
    // as warnings only.)
    assert!(
        r.body.contains("more than scd's limit of 1048576 bytes"),
        "{}",
        r.body
    );
    assert!(r.body.contains("keeps its previous data"), "{}", r.body);
    // The stored session is the one from before, and its lock was released.
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 2, "{}", r.body);
    // A session just under the limit is fine.
    let r = php.get("/big.php?bytes=1000000", &mut jar);
    assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
}

#[test]
fn malformed_frames_on_the_local_endpoint_leave_php_requests_working() {
    let (_g, _dir, mut scd, php) = scd_and_php("garbage", 2, &[]);
    let socket = scd.socket.clone();
    let garbage = thread::spawn(move || {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let oversized = {
            // A valid header claiming a 4 GiB body.
            let mut h = b"SC\x01\x03\0\0\0\0\x01\0\0\0\0\0\0\0".to_vec();
            h.extend_from_slice(&u32::MAX.to_le_bytes());
            h
        };
        for i in 0..200 {
            let Ok(mut s) = UnixStream::connect(&socket) else {
                continue;
            };
            let bytes: Vec<u8> = match i % 4 {
                0 => (0..(next() % 512)).map(|_| next() as u8).collect(),
                1 => oversized.clone(),
                2 => b"SC\x01\x05\0\0\0\0".to_vec(), // truncated header, then close
                _ => b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            };
            let _ = s.write_all(&bytes);
        }
    });
    let mut jar = Jar::default();
    for want in 1..=30 {
        let r = php.get("/count.php", &mut jar);
        assert_eq!(n_of(&r), want, "{}", r.body);
        assert!(!r.body.contains("Warning"), "{}", r.body);
    }
    garbage.join().unwrap();
    assert!(scd.is_running(), "scd died; log:\n{}", scd.log_text());
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 31);
}

#[test]
fn lock_timeout_fails_session_start_or_reads_only_as_configured() {
    let (_g, dir, _scd, php) = scd_and_php("locktimeout", 4, &[]);
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    let pidfile = dir.join("holder.pid");
    let port = php.port;
    let mut holder_jar = jar.clone();
    let path = format!("/hold.php?seconds=120&pidfile={}", pidfile.display());
    let holder = thread::spawn(move || common::try_http_get(port, &path, &mut holder_jar));
    let pid = common::wait_for_pid_file(&pidfile);

    // Default policy: session_start() fails with a warning naming the wait and the remedies.
    let r = php.get("/count.php?lock_wait_ms=300", &mut jar);
    assert!(r.body.contains("START-FAILED"), "{}", r.body);
    assert!(
        r.body
            .contains("timed out after 300 ms waiting for the lock"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("cluster.lock_failure = readonly"),
        "{}",
        r.body
    );

    // readonly: the data is read without the lock, and this request's change is not saved.
    let r = php.get(
        "/count.php?lock_wait_ms=300&lock_failure=readonly",
        &mut jar,
    );
    assert_eq!(
        n_of(&r),
        2,
        "the page saw the stored n=1 and added 1: {}",
        r.body
    );
    assert!(r.body.contains("was read without its lock"), "{}", r.body);
    assert!(
        r.body.contains("changes of this request were not saved"),
        "{}",
        r.body
    );

    common::kill9_pid(pid);
    let _ = holder.join();
    let r = php.get("/peek.php", &mut jar);
    assert_eq!(
        n_of(&r),
        1,
        "the readonly request wrote nothing: {}",
        r.body
    );
}

#[test]
fn regenerate_id_moves_the_data_and_destroy_deletes() {
    let (_g, _dir, scd, php) = scd_and_php("regen", 2, &[]);
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    let first = jar.session_id().unwrap().to_string();

    // Keep the old session (delete_old_session = false).
    let r = php.get("/regen.php?delete=0", &mut jar);
    assert_eq!(r.field("regenerated"), Some("yes"), "{}", r.body);
    let second = jar.session_id().unwrap().to_string();
    assert_eq!(r.field("old"), Some(first.as_str()));
    assert_eq!(r.field("new"), Some(second.as_str()));
    assert_ne!(first, second);
    assert_eq!(
        n_of(&php.get("/peek.php", &mut jar)),
        2,
        "the data moved to the new ID"
    );
    assert!(scd_has(&scd, &first), "the old session was kept");

    // Delete the old one this time.
    let r = php.get("/regen.php?delete=1", &mut jar);
    assert_eq!(r.field("regenerated"), Some("yes"), "{}", r.body);
    let third = jar.session_id().unwrap().to_string();
    assert!(!scd_has(&scd, &second), "the old session was deleted");
    assert!(scd_has(&scd, &third));
    assert_eq!(n_of(&php.get("/peek.php", &mut jar)), 3);

    let r = php.get("/destroy.php", &mut jar);
    assert_eq!(r.field("destroyed"), Some("yes"), "{}", r.body);
    assert!(!scd_has(&scd, &third));
}

#[test]
fn unchanged_data_is_touched_and_the_lock_released() {
    let _g = serial();
    let dir = TestDir::new("touch");
    let scd = Scd::start(&dir, &[]);
    let php = PhpServer::start(
        &dir,
        2,
        &php_ini(
            &scd.save_path(),
            &[
                ("session.lazy_write", "1"),
                ("cluster.lock_wait_ms", "2000"),
            ],
        ),
    );
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    let writes = scd.stat("total.writes");
    for _ in 0..3 {
        let r = php.get("/touch.php", &mut jar);
        assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
        assert!(!r.body.contains("Warning"), "{}", r.body);
    }
    // lazy_write: unchanged data went out as Touch, not as a write of the data.
    assert_eq!(
        scd.stat("total.writes"),
        writes,
        "no data write for unchanged sessions"
    );
    // Each touch released the lock (a kept lock would time this out after 2 s).
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 2, "{}", r.body);
    assert_eq!(
        scd.stat("total.writes"),
        writes + 1,
        "changed data is written"
    );
}

#[test]
fn a_fatal_error_still_writes_and_releases_the_lock() {
    let (_g, _dir, _scd, php) = scd_and_php("fatal", 2, &[("cluster.lock_wait_ms", "2000")]);
    let mut jar = Jar::default();
    let r = php.get("/fatal.php", &mut jar);
    assert!(r.body.contains("Fatal error"), "{}", r.body);
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 2, "{}", r.body);
}

#[test]
fn phpinfo_shows_the_live_connection() {
    let (_g, _dir, scd, php) = scd_and_php("infolive", 1, &[]);
    let mut jar = Jar::default();
    let r = php.get("/info.php", &mut jar);
    let save_path = scd.save_path();
    assert!(r.body.contains("cluster session module"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("connected: {save_path} (scd node 127.0.0.1:")),
        "{}",
        r.body
    );
    assert!(r.body.contains("protocol v1"), "{}", r.body);
}

#[test]
fn a_paused_daemon_fails_within_the_io_timeout_then_recovers() {
    let (_g, _dir, scd, php) = scd_and_php("paused", 1, &[("cluster.io_timeout_ms", "500")]);
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    scd.pause();
    let r = php.get("/count.php", &mut jar);
    scd.resume();
    assert!(r.body.contains("START-FAILED"), "{}", r.body);
    assert!(r.body.contains("no reply within"), "{}", r.body);
    // The broken connection was dropped; the next request reconnects and finds the session.
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 2, "{}", r.body);
}

#[test]
fn session_reset_rereads_without_waiting_for_its_own_lock() {
    let (_g, _dir, _scd, php) = scd_and_php("reset", 1, &[("cluster.lock_wait_ms", "2000")]);
    std::fs::write(
        php.docroot.join("reset.php"),
        r#"<?php
session_start();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 100;
$reset = session_reset();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
session_write_close();
echo "reset=", $reset ? "yes" : "no", " n=", $_SESSION['n'], "\n";
"#,
    )
    .unwrap();
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    let r = php.get("/reset.php", &mut jar);
    assert_eq!(r.field("reset"), Some("yes"), "{}", r.body);
    assert_eq!(
        n_of(&r),
        2,
        "the +100 was discarded by the reset: {}",
        r.body
    );
    assert!(!r.body.contains("Warning"), "{}", r.body);
    assert_eq!(n_of(&php.get("/peek.php", &mut jar)), 2);
}

#[test]
fn scd_restarting_mid_request_fails_that_write_with_a_warning_only() {
    let (_g, dir, mut scd, php) = scd_and_php("midreq", 2, &[]);
    let mut jar = Jar::default();
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 1);
    let pidfile = dir.join("w.pid");
    let flag = dir.join("go");
    let port = php.port;
    let mut wjar = jar.clone();
    let path = format!(
        "/wait.php?pidfile={}&flag={}",
        pidfile.display(),
        flag.display()
    );
    let waiter = thread::spawn(move || common::http_get(port, &path, &mut wjar));
    common::wait_for_pid_file(&pidfile);
    // The page holds the lock; scd dies and comes back, and with it the lock is gone.
    scd.restart();
    std::fs::write(&flag, b"go").unwrap();
    let r = waiter.join().unwrap();
    assert!(
        r.body.contains("this request no longer holds its lock"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("the changes of this request are lost"),
        "{}",
        r.body
    );
    // The stored session is the one from before the restart, and the next request works.
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 2, "{}", r.body);
    assert!(!r.body.contains("Warning"), "{}", r.body);
}
