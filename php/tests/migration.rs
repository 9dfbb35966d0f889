//! The migration window, end to end: sessions made by PHP's `files` handler and by phpredis on a
//! running PHP, then the same cookies against PHP switched to `cluster` with
//! `cluster.adopt_from`: every old cookie still finds its data and gets a cluster ID; concurrent
//! first requests with one old cookie adopt it once; forged old IDs get fresh sessions; outside the
//! window old IDs are unknown. Real scd, real PHP (`php -S`), real redis-server.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{Jar, PhpServer, READY_WITHIN, Scd, TestDir, php_ini};
use scd_wire::SessionId;

fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One test's folder, with the old store of the files handler (`php-sessions/`) and PHP's error
/// log; the tests run one at a time (the guard is released last, after the folder is gone).
struct Setup {
    dir: TestDir,
    old_dir: PathBuf,
    log: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let serial = serial();
        let dir = TestDir::new(name);
        let old_dir = dir.join("php-sessions");
        std::fs::create_dir_all(&old_dir).unwrap();
        let log = dir.join("php-error.log");
        Setup {
            dir,
            old_dir,
            log,
            _serial: serial,
        }
    }

    /// PHP with the files handler on the old store.
    fn files_php(&self, workers: u32) -> PhpServer {
        PhpServer::start(&self.dir, workers, &files_ini(&self.old_dir))
    }

    /// `count` sessions made on the files handler with `set.php` (see [`make_sessions`]).
    fn files_sessions(&self, count: usize) -> Vec<(String, String)> {
        make_sessions(&self.files_php(2), count, false)
    }

    /// PHP switched to cluster with the window open on the files store until `until`.
    fn adopting_files_ini(&self, scd: &Scd, until: &str) -> Vec<(String, String)> {
        let from = format!("files:{}", self.old_dir.display());
        cluster_ini(scd, &from, until, &self.log)
    }

    /// The `sess_*` files in the old store.
    fn old_files(&self) -> Vec<PathBuf> {
        sess_files(&self.old_dir)
    }
}

fn n_of(r: &common::Response) -> u64 {
    r.field("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no n= in {:?}", r.body))
}

fn is_cluster_id(id: &str) -> bool {
    SessionId::parse(id.as_bytes()).is_ok()
}

/// PHP with the files handler (the module is loaded but not used: step 2 of the rollout).
fn files_ini(dir: &Path) -> Vec<(String, String)> {
    php_ini(
        "unused",
        &[
            ("session.save_handler", "files"),
            ("session.save_path", &dir.display().to_string()),
        ],
    )
}

/// PHP switched to cluster with the window open on `from`.
fn cluster_ini(scd: &Scd, from: &str, until: &str, log: &Path) -> Vec<(String, String)> {
    php_ini(
        &scd.save_path(),
        &[
            ("cluster.adopt_from", from),
            ("cluster.adopt_until", until),
            ("error_log", &log.display().to_string()),
        ],
    )
}

/// PHP on cluster, every session written or touched also mirrored to `to`.
fn mirror_ini(scd: &Scd, to: &str, log: &Path) -> Vec<(String, String)> {
    let mut ini = php_ini(
        &scd.save_path(),
        &[("error_log", &log.display().to_string())],
    );
    ini.push(("cluster.mirror_to".into(), to.into()));
    ini
}

/// Makes `count` sessions with `set.php`, each with its own value; returns (ID, value). The IDs
/// are cluster IDs if and only if `cluster_ids` (PHP runs the cluster handler, not an old one).
fn make_sessions(php: &PhpServer, count: usize, cluster_ids: bool) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let mut jar = Jar::default();
            let v = format!("v{i}x{}", i * 31);
            let r = php.get(&format!("/set.php?k=v&v={v}"), &mut jar);
            assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
            let id = jar.session_id().expect("a cookie").to_string();
            assert_eq!(is_cluster_id(&id), cluster_ids, "{id}");
            (id, v)
        })
        .collect()
}

/// One user's session, counted `times` times with `count.php` (each request writes); returns
/// its ID.
fn counted_session(php: &PhpServer, times: u64) -> String {
    let mut jar = Jar::default();
    for i in 1..=times {
        let r = php.get("/count.php", &mut jar);
        assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
        assert_eq!(n_of(&r), i, "{}", r.body);
    }
    jar.session_id().unwrap().to_string()
}

/// An old cookie outside the window: nothing found (`v=none`), and a fresh cluster ID.
fn assert_unknown_old(php: &PhpServer, old: &str) {
    let mut jar = Jar::with_session(old);
    let r = php.get("/get.php?k=v", &mut jar);
    assert_eq!(r.field("v"), Some("none"), "{old}: {}", r.body);
    assert!(is_cluster_id(jar.session_id().unwrap()));
}

/// An old-format ID that exists nowhere: a fresh session (`n=1`) under a fresh cluster ID,
/// which is returned.
fn assert_forged_gets_fresh(php: &PhpServer, forged: &str) -> String {
    let mut jar = Jar::with_session(forged);
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 1, "{}", r.body);
    let fresh = jar.session_id().unwrap().to_string();
    assert!(is_cluster_id(&fresh), "{fresh}");
    fresh
}

/// Every old cookie finds its data; the response hands out a cluster ID, which then works.
fn check_adopted(php: &PhpServer, sessions: &[(String, String)]) -> Vec<String> {
    let mut new_ids = Vec::new();
    for (old, v) in sessions {
        let mut jar = Jar::with_session(old);
        let r = php.get("/get.php?k=v", &mut jar);
        assert_eq!(r.field("v"), Some(v.as_str()), "old {old}: {}", r.body);
        assert!(!r.body.contains("Warning"), "{}", r.body);
        let new = jar.session_id().expect("a cookie").to_string();
        assert!(
            is_cluster_id(&new),
            "the response carries a cluster ID: {new}"
        );
        assert_eq!(r.field("id"), Some(new.as_str()), "PHP uses the new ID");
        assert_eq!(r.set_cookies().len(), 1, "{:?}", r.set_cookies());
        // The next request with the new cookie: same data, same ID, no new cookie.
        let r = php.get("/get.php?k=v", &mut jar);
        assert_eq!(r.field("v"), Some(v.as_str()), "{}", r.body);
        assert_eq!(jar.session_id(), Some(new.as_str()));
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
        new_ids.push(new);
    }
    new_ids
}

/// Waits (bounded) until the PHP error log holds `needle`.
fn wait_log(log: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < READY_WITHIN,
            "{needle:?} never appeared in {}:\n{text}",
            log.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// 20 parallel first requests with one old cookie each add 1: one adoption, one cluster
/// session, old + 20.
fn twenty_at_once(php: &PhpServer, old: &str, old_n: u64) {
    let port = php.port;
    let workers: Vec<_> = (0..20)
        .map(|_| {
            let mut jar = Jar::with_session(old);
            thread::spawn(move || {
                let r = common::http_get(port, "/count.php", &mut jar);
                (r, jar)
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut ids = Vec::new();
    for w in workers {
        let (r, jar) = w.join().unwrap();
        assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
        assert!(!r.body.contains("Warning"), "{}", r.body);
        seen.push(n_of(&r));
        ids.push(jar.session_id().unwrap().to_string());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (old_n + 1..=old_n + 20).collect::<Vec<u64>>(),
        "each request saw the previous one's count"
    );
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "every request ended in one cluster session: {ids:?}"
    );
    let mut jar = Jar::with_session(&ids[0]);
    assert_eq!(n_of(&php.get("/peek.php", &mut jar)), old_n + 20);
}

fn sess_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sess_"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn files_sessions_are_adopted_once_and_nobody_is_logged_out() {
    let t = Setup::new("adoptfiles");

    // Before: PHP with the files handler, users logged in.
    let (sessions, hot_old) = {
        let php = t.files_php(2);
        (make_sessions(&php, 10, false), counted_session(&php, 5))
    };
    assert_eq!(t.old_files().len(), 11);

    // The switch: the same PHP, php.ini now says cluster with the window open.
    let scd = Scd::start(&t.dir, &[]);
    let php = PhpServer::start(&t.dir, 8, &t.adopting_files_ini(&scd, "+1h"));
    let new_ids = check_adopted(&php, &sessions);
    let text = wait_log(&t.log, "migration window open on this node");
    assert_eq!(
        text.matches("migration window open").count(),
        1,
        "opened once per node: {text}"
    );
    // The old copies are gone (cluster.adopt_remove defaults to on); the hot one is left.
    assert_eq!(t.old_files().len(), 1, "{:?}", t.old_files());
    // A late request with an old cookie (the browser had not stored the new one yet) still
    // finds the session, under the same cluster ID.
    let mut late = Jar::with_session(&sessions[3].0);
    let r = php.get("/get.php?k=v", &mut late);
    assert_eq!(r.field("v"), Some(sessions[3].1.as_str()), "{}", r.body);
    assert_eq!(late.session_id(), Some(new_ids[3].as_str()));

    // 20 concurrent first requests with one old cookie: imported once, count = 5 + 20.
    twenty_at_once(&php, &hot_old, 5);
    assert!(t.old_files().is_empty());

    // A forged old-format ID that exists nowhere: a fresh session, nothing stored for it.
    let forged = "0123456789abcdef0123456789abcdef";
    let fresh = assert_forged_gets_fresh(&php, forged);
    let node = SessionId::parse(fresh.as_bytes()).unwrap().master;
    let map = SessionId::new(
        node,
        None,
        1,
        cluster::adopt::mapping_key(forged.as_bytes()),
    );
    match scd.client().exists(&map, 5000).unwrap() {
        cluster::conn::Reply::Exists(e) => assert!(!e, "no record for a forged ID"),
        other => panic!("{other:?}"),
    }
    assert!(t.old_files().is_empty(), "nothing written to the old store");

    // phpinfo counts the adoptions of this node (10 + 1).
    let r = php.get("/info.php", &mut Jar::default());
    assert!(
        r.body
            .contains("Sessions adopted on this node </td><td class=\"v\">11 <"),
        "{}",
        r.body
    );
}

#[test]
fn without_strict_mode_an_unknown_old_id_gets_a_fresh_cluster_id_from_read() {
    let t = Setup::new("adoptnonstrict");
    let scd = Scd::start(&t.dir, &[]);
    let mut ini = t.adopting_files_ini(&scd, "");
    ini.retain(|(k, _)| k != "session.use_strict_mode");
    ini.push(("session.use_strict_mode".into(), "0".into()));
    let php = PhpServer::start(&t.dir, 2, &ini);
    // validate_sid is not called without strict mode: read itself replaces the ID.
    let mut jar = Jar::with_session("unknownoldid1234");
    let r = php.get("/count.php", &mut jar);
    assert_eq!(n_of(&r), 1, "{}", r.body);
    let id = jar.session_id().unwrap().to_string();
    assert!(is_cluster_id(&id), "{id}");
    assert_eq!(r.field("id"), Some(id.as_str()));
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 2);
    // The window with an empty adopt_until lasts gc_maxlifetime (1440 s) from now.
    wait_log(&t.log, "migration window open on this node");
}

#[test]
fn outside_the_window_old_ids_are_unknown() {
    let t = Setup::new("adoptclosed");
    let sessions = t.files_sessions(2);
    let scd = Scd::start(&t.dir, &[]);
    let php = PhpServer::start(&t.dir, 2, &t.adopting_files_ini(&scd, "2000-01-01"));
    for (old, _) in &sessions {
        assert_unknown_old(&php, old);
    }
    // Nothing was adopted or removed.
    assert_eq!(t.old_files().len(), 2);
    wait_log(&t.log, "migration window closed on this node");
}

// ---------------------------------------------------------------------------------------------
// phpredis.

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &TestDir) -> Redis {
        let port = common::free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (ci/deps installs it)");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < READY_WITHIN, "redis-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    /// phpredis's `session.save_path` for this server, keys prefixed `APP_SESS:`.
    fn save_path(&self) -> String {
        format!("tcp://127.0.0.1:{}?prefix=APP_SESS:", self.port)
    }

    /// This server as an old store for `cluster.adopt_from` and `cluster.mirror_to` (quoted for
    /// php.ini: `=` in an unquoted value is a syntax error).
    fn store(&self) -> String {
        format!("\"redis:{}\"", self.save_path())
    }

    /// PHP on phpredis's own handler with this server.
    fn phpredis_ini(&self) -> Vec<(String, String)> {
        let quoted = format!("\"{}\"", self.save_path());
        let mut ini = php_ini(
            "unused",
            &[
                ("session.save_handler", "redis"),
                ("session.save_path", &quoted),
            ],
        );
        // Debian's redis.so needs igbinary loaded first; `-n` loads nothing by itself.
        ini.insert(0, ("extension".into(), "redis".into()));
        ini.insert(0, ("extension".into(), "igbinary".into()));
        ini
    }

    fn keys(&self) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw", "KEYS", "*"])
            .output()
            .expect("redis-cli");
        let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn phpredis_sessions_are_adopted_once_and_marked_for_other_nodes() {
    let t = Setup::new("adoptredis");
    let redis = Redis::start(&t.dir);
    let (sessions, hot_old) = {
        let php = PhpServer::start(&t.dir, 2, &redis.phpredis_ini());
        (make_sessions(&php, 5, false), counted_session(&php, 3))
    };
    let keys = redis.keys();
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("APP_SESS:")), "{keys:?}");

    let scd = Scd::start(&t.dir, &[]);
    // Switched PHP without phpredis loaded: adoption speaks RESP itself.
    let php = PhpServer::start(&t.dir, 8, &cluster_ini(&scd, &redis.store(), "+1h", &t.log));
    let new_ids = check_adopted(&php, &sessions);
    twenty_at_once(&php, &hot_old, 3);
    // Old copies removed; a marker per adopted session tells other nodes the cluster ID.
    let keys = redis.keys();
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(keys.iter().all(|k| k.ends_with("_ADOPTED")), "{keys:?}");
    let (old0, _) = &sessions[0];
    let addr = cluster::resp::RespAddr::Tcp("127.0.0.1".into(), redis.port);
    let mut conn = cluster::resp::Resp::connect(&addr, 5000).unwrap();
    let marker = conn
        .call(&[b"GET", format!("APP_SESS:{old0}_ADOPTED").as_bytes()])
        .unwrap();
    assert_eq!(
        marker,
        cluster::resp::RespValue::Bulk(new_ids[0].clone().into_bytes()),
        "{keys:?}"
    );

    // (Another node finds this marker under the old store's lock and hands out the same ID;
    // it reaches the session through scd's relays, which this single-node test does not run.)

    // A forged old ID: fresh session, nothing written to Redis.
    assert_forged_gets_fresh(&php, "forgedforgedforgedforged00");
    assert_eq!(redis.keys().len(), 6);
}

#[test]
fn a_relative_window_closes_by_itself_and_says_so() {
    let t = Setup::new("adoptcloses");
    let sessions = t.files_sessions(2);
    let scd = Scd::start(&t.dir, &[]);
    let php = PhpServer::start(&t.dir, 2, &t.adopting_files_ini(&scd, "+2s"));
    // The first session request opens the window and adopts.
    check_adopted(&php, &sessions[..1]);
    wait_log(&t.log, "migration window open on this node");
    // Session requests go on (new visitors) until one of them finds the window past its end.
    let start = Instant::now();
    loop {
        php.get("/count.php", &mut Jar::default());
        if std::fs::read_to_string(&t.log)
            .unwrap_or_default()
            .contains("migration window closed on this node")
        {
            break;
        }
        assert!(start.elapsed() < READY_WITHIN, "the window never closed");
        thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&t.log).unwrap();
    assert!(text.contains("after adopting 1 sessions"), "{text}");
    assert_eq!(text.matches("migration window closed").count(), 1, "{text}");
    // Now the second old cookie is unknown: a fresh session, its old file left alone.
    assert_unknown_old(&php, &sessions[1].0);
    assert_eq!(t.old_files().len(), 1);
}

#[test]
fn with_adopt_remove_off_the_old_copy_stays_and_is_never_imported_twice() {
    let t = Setup::new("adoptkeep");
    let old = counted_session(&t.files_php(2), 3);
    let scd = Scd::start(&t.dir, &[]);
    let mut ini = t.adopting_files_ini(&scd, "+1h");
    ini.push(("cluster.adopt_remove".into(), "0".into()));
    let php = PhpServer::start(&t.dir, 2, &ini);
    let mut jar = Jar::with_session(&old);
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 4);
    let new = jar.session_id().unwrap().to_string();
    assert!(is_cluster_id(&new));
    assert_eq!(t.old_files().len(), 1, "the old copy is left");
    assert_eq!(n_of(&php.get("/count.php", &mut jar)), 5);
    // The old cookie again (another tab): the same cluster session with its current data, not a
    // second import of the old copy (which still says 3).
    let mut tab = Jar::with_session(&old);
    assert_eq!(n_of(&php.get("/count.php", &mut tab)), 6);
    assert_eq!(tab.session_id(), Some(new.as_str()));
}

#[test]
fn php_fpm_hands_out_the_adopted_id_in_its_cookie() {
    let t = Setup::new("adoptfpm");
    // Sessions made by php-fpm with the files handler, then the same pool switched.
    let old = {
        let fpm = common::PhpFpm::start(&t.dir, 2, &files_ini(&t.old_dir));
        let mut jar = Jar::default();
        for _ in 0..2 {
            fpm.get("count.php", "", &mut jar);
        }
        jar.session_id().unwrap().to_string()
    };
    assert!(!is_cluster_id(&old));
    let scd = Scd::start(&t.dir, &[]);
    let fpm = common::PhpFpm::start(&t.dir, 4, &t.adopting_files_ini(&scd, "+1h"));
    let mut jar = Jar::with_session(&old);
    let r = fpm.get("count.php", "", &mut jar);
    let fpm_log = std::fs::read_to_string(&fpm.log).unwrap_or_default();
    assert!(!fpm_log.contains("Unable to set"), "{fpm_log}");
    assert_eq!(n_of(&r), 3, "{}", r.body);
    let new = jar.session_id().unwrap().to_string();
    assert!(is_cluster_id(&new), "{new}");
    assert_eq!(r.field("id"), Some(new.as_str()));
    assert_eq!(n_of(&fpm.get("count.php", "", &mut jar)), 4);
    assert!(t.old_files().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The way back: cluster.mirror_to.

#[test]
fn rolling_back_to_files_after_a_mirror_period_keeps_users_logged_in() {
    let t = Setup::new("mirror");
    let scd = Scd::start(&t.dir, &[]);
    // Users on cluster.
    let sessions = {
        let php = PhpServer::start(&t.dir, 2, &php_ini(&scd.save_path(), &[]));
        let sessions = make_sessions(&php, 4, true);
        assert!(t.old_files().is_empty());
        sessions
    };
    // The mirror period: PHP still on cluster, every session written or touched is also written
    // to the files handler's folder under its cluster ID.
    {
        let to = format!("files:{}", t.old_dir.display());
        let php = PhpServer::start(&t.dir, 2, &mirror_ini(&scd, &to, &t.log));
        // One user changes their session (write), the others only visit (lazy_write: touch).
        let mut jar = Jar::with_session(&sessions[0].0);
        let r = php.get("/set.php?k=v&v=changed", &mut jar);
        assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
        for (id, _) in &sessions[1..] {
            let mut jar = Jar::with_session(id);
            let r = php.get("/touch.php", &mut jar);
            assert_eq!(r.field("written"), Some("yes"), "{}", r.body);
        }
        // A user who logs out: the mirror goes too.
        let mut jar = Jar::with_session(&sessions[3].0);
        let r = php.get("/destroy.php", &mut jar);
        assert_eq!(r.field("destroyed"), Some("yes"), "{}", r.body);
        assert_eq!(t.old_files().len(), 3, "{:?}", t.old_files());
    }
    // Roll back: PHP on the files handler again. The cookies (cluster IDs, which the files
    // handler accepts) find their sessions.
    let php = t.files_php(2);
    let want = ["changed", sessions[1].1.as_str(), sessions[2].1.as_str()];
    for ((id, _), v) in sessions.iter().zip(want) {
        let mut jar = Jar::with_session(id);
        let r = php.get("/get.php?k=v", &mut jar);
        assert_eq!(r.field("v"), Some(v), "{id}: {}", r.body);
        assert_eq!(r.field("id"), Some(id.as_str()), "the same cookie");
    }
    let mut jar = Jar::with_session(&sessions[3].0);
    let r = php.get("/get.php?k=v", &mut jar);
    assert_eq!(
        r.field("v"),
        Some("none"),
        "the logged-out user stays logged out"
    );
}

#[test]
fn rolling_back_to_phpredis_after_a_mirror_period_keeps_users_logged_in() {
    let t = Setup::new("mirrorredis");
    let redis = Redis::start(&t.dir);
    let scd = Scd::start(&t.dir, &[]);
    let sessions = {
        let php = PhpServer::start(&t.dir, 2, &mirror_ini(&scd, &redis.store(), &t.log));
        make_sessions(&php, 3, true)
    };
    let keys = redis.keys();
    assert_eq!(keys.len(), 3, "{keys:?}");
    // Back to phpredis: the cookies find their sessions.
    let php = PhpServer::start(&t.dir, 2, &redis.phpredis_ini());
    for (id, v) in &sessions {
        let mut jar = Jar::with_session(id);
        let r = php.get("/get.php?k=v", &mut jar);
        assert_eq!(r.field("v"), Some(v.as_str()), "{id}: {}", r.body);
        assert_eq!(r.field("id"), Some(id.as_str()));
    }
}
