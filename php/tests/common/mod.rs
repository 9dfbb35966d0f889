//! Shared pieces of the PHP end-to-end tests: temporary folders, the real `scd` binary, PHP's
//! built-in web server and php-fpm loading the real `cluster.so`, and small HTTP and FastCGI
//! clients with a cookie jar.
//!
//! Nothing here is faked: every test talks to a real scd through real PHP. Waits are bounded
//! polls for readiness; no test asserts on elapsed time.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cluster::conn::Conn;
use cluster::settings::Endpoint;

/// How long anything may take to become ready before a test gives up (a bound, not a measure).
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// Longest wait for one HTTP response (a request stuck on a lock would hit this).
pub const RESPONSE_WITHIN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Folders and binaries.

/// A fresh folder under the system temp dir, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        // Short: a Unix socket path inside it must stay under 108 bytes.
        let path = std::env::temp_dir().join(format!("scdphp-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("SCD_PHP_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `target/<profile>`: the folder holding this test binary's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The `cluster.so` cargo built for this test run. Cargo writes it to `deps/` when it builds the
/// library for the tests, and copies it up to `target/<profile>/` only when the library itself is
/// a build target, so take the newer of the two.
pub fn cluster_so() -> PathBuf {
    let candidates = [
        profile_dir().join("deps/libcluster.so"),
        profile_dir().join("libcluster.so"),
    ];
    candidates
        .into_iter()
        .filter_map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max()
        .map(|(_, p)| p)
        .expect("libcluster.so is missing: cargo builds it with the scd-php package")
}

/// The real `scd` binary of this workspace, as `cargo test --workspace` builds it.
///
/// The build is asked for with the same command shape as the test suite (`ci/test`), so under
/// `cargo test --workspace` it is a no-op, and `cargo test -p scd-php` alone builds the workspace's
/// test targets once. (`cargo build -p scd` would resolve features differently and make the two
/// commands rebuild scd in turn.)
pub fn scd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().unwrap();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "test",
            "--workspace",
            "--no-run",
            "--quiet",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target)
        .stdout(Stdio::null());
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo to build scd");
        assert!(status.success(), "building the workspace (for scd) failed");
        let bin = profile.join("scd");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

pub fn php_bin() -> &'static str {
    "php"
}

/// Debian's php-fpm binary (php-fpm8.2 in /usr/sbin).
pub fn php_fpm_bin() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == "php-fpm" || n.starts_with("php-fpm8"))
            })
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return p;
        }
    }
    panic!("php-fpm not found (ci/deps installs php-fpm)");
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kill(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for a child with a bound; true if it exited.
fn wait_exit(child: &mut Child, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    false
}

// ---------------------------------------------------------------------------------------------
// scd.

/// A real scd on a Unix socket in a test folder.
pub struct Scd {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Scd {
    /// Starts scd (write-through unless `extra` says otherwise) and waits until it answers Hello.
    pub fn start(dir: &TestDir, extra: &[&str]) -> Scd {
        let relay_port = free_port().to_string();
        let heartbeat_port = free_port().to_string();
        let mut args = vec![
            "--advertise-address",
            "127.0.0.1",
            "--relay-port",
            &relay_port,
            "--heartbeat-port",
            &heartbeat_port,
        ];
        args.extend_from_slice(extra);
        Scd::start_node(dir, &args)
    }

    /// Starts scd with only its folder, socket and log chosen here (no TCP, no metrics): `args`
    /// gives the rest, e.g. a cluster node's address, ports and peers (a flag may appear once).
    pub fn start_node(dir: &TestDir, extra: &[&str]) -> Scd {
        let data_dir = dir.join("data");
        let socket = dir.join("scd.sock");
        let log = dir.join("scd.log");
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--unix-socket".into(),
            socket.display().to_string(),
            "--tcp-listen".into(),
            String::new(),
            "--metrics-listen".into(),
            String::new(),
            "--log-file".into(),
            log.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut scd = Scd {
            child: None,
            data_dir,
            socket,
            log,
            args,
        };
        scd.spawn();
        scd
    }

    fn spawn(&mut self) {
        let child = Command::new(scd_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scd");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until a Hello succeeds (bounded).
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if Conn::connect(&self.endpoint(), 1000, 5000).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "scd exited during start-up ({status}); log:\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "scd not ready; log:\n{}",
                self.log_text()
            );
            sleep(Duration::from_millis(25));
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.socket.clone())
    }

    pub fn save_path(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// A direct connection, to check what scd holds without going through PHP.
    pub fn client(&self) -> Conn {
        Conn::connect(&self.endpoint(), 1000, 5000).expect("connect to scd")
    }

    /// One counter of `scd stats` (`total.writes`, ...), read over the wire.
    pub fn stat(&self, name: &str) -> u64 {
        let mut c = scd_client::Client::connect_unix(&self.socket).expect("connect for Stats");
        let stats = c.stats().expect("Stats");
        stats
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("scd has no statistic {name}: {stats:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("scd running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// `kill -9`: no flush, no goodbye. Returns once the socket no longer accepts: the kernel
    /// tears down a dead process's io_uring (and the listening socket it holds) shortly after the
    /// process is reaped, and a new scd refuses to start while the old socket still answers.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
            assert!(
                start.elapsed() < READY_WITHIN,
                "the dead scd's socket still accepts"
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same data folder and socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGSTOP / SIGCONT: a daemon that accepts connections (the kernel does) but never answers.
    pub fn pause(&self) {
        kill("-STOP", &self.pid().to_string());
    }

    pub fn resume(&self) {
        kill("-CONT", &self.pid().to_string());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Scd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill("-CONT", &child.id().to_string());
            kill("-TERM", &child.id().to_string());
            if !wait_exit(&mut child, Duration::from_secs(10)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PHP.

/// The php.ini lines every test server gets: no php.ini from the system (`-n`), the module,
/// errors shown in the page so tests can read the warnings.
pub fn php_ini(save_path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut ini: Vec<(String, String)> = vec![
        ("extension".into(), cluster_so().display().to_string()),
        ("session.save_handler".into(), "cluster".into()),
        ("session.save_path".into(), save_path.to_string()),
        ("session.use_strict_mode".into(), "1".into()),
        ("session.use_cookies".into(), "1".into()),
        ("session.use_only_cookies".into(), "1".into()),
        ("session.gc_maxlifetime".into(), "1440".into()),
        ("display_errors".into(), "1".into()),
        ("html_errors".into(), "0".into()),
        ("log_errors".into(), "0".into()),
        ("error_reporting".into(), "-1".into()),
        ("memory_limit".into(), "256M".into()),
    ];
    for (k, v) in extra {
        ini.retain(|(name, _)| name != k);
        ini.push((k.to_string(), v.to_string()));
    }
    ini
}

/// Writes the test pages into `docroot`.
pub fn write_pages(docroot: &Path) {
    std::fs::create_dir_all(docroot).unwrap();
    for (name, code) in PAGES {
        std::fs::write(docroot.join(name), code).unwrap();
    }
}

/// The pages every test server serves. Each prints one line a test can check.
const PAGES: &[(&str, &str)] = &[
    // Adds 1 to $_SESSION['n'] and prints it.
    (
        "count.php",
        r#"<?php
if (isset($_GET['lock_failure'])) { ini_set('cluster.lock_failure', $_GET['lock_failure']); }
if (isset($_GET['lock_wait_ms'])) { ini_set('cluster.lock_wait_ms', $_GET['lock_wait_ms']); }
if (!session_start()) { echo "START-FAILED\n"; exit; }
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
$ok = session_write_close();
echo "n=", $_SESSION['n'], " id=", session_id(), " written=", $ok ? "yes" : "no", "\n";
"#,
    ),
    // Prints the session's count without changing it.
    (
        "peek.php",
        r#"<?php
if (!session_start(['read_and_close' => true])) { echo "START-FAILED\n"; exit; }
echo "n=", $_SESSION['n'] ?? 'none', " id=", session_id(), "\n";
"#,
    ),
    // Takes the lock, says which worker holds it, and keeps it.
    (
        "hold.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
file_put_contents($_GET['pidfile'] . '.tmp', getmypid());
rename($_GET['pidfile'] . '.tmp', $_GET['pidfile']);
sleep((int)($_GET['seconds'] ?? 60));
echo "held\n";
"#,
    ),
    // Stores a value of the given size.
    (
        "big.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
$_SESSION['big'] = str_repeat('x', (int)$_GET['bytes']);
$ok = session_write_close();
echo "written=", $ok ? "yes" : "no", "\n";
"#,
    ),
    // Stores a named value (?k=..&v=..) and prints the session ID.
    (
        "set.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
$_SESSION[$_GET['k']] = $_GET['v'];
$ok = session_write_close();
echo "id=", session_id(), " written=", $ok ? "yes" : "no", "\n";
"#,
    ),
    // Prints a named value.
    (
        "get.php",
        r#"<?php
if (!session_start(['read_and_close' => true])) { echo "START-FAILED\n"; exit; }
echo "v=", $_SESSION[$_GET['k']] ?? 'none', " id=", session_id(), "\n";
"#,
    ),
    // session_regenerate_id, then a write under the new ID.
    (
        "regen.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
$old = session_id();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
$ok = session_regenerate_id((bool)($_GET['delete'] ?? 0));
$new = session_id();
session_write_close();
echo "old=", $old, " new=", $new, " regenerated=", $ok ? "yes" : "no", " n=", $_SESSION['n'], "\n";
"#,
    ),
    // session_destroy.
    (
        "destroy.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
$id = session_id();
echo "destroyed=", session_destroy() ? "yes" : "no", " id=", $id, "\n";
"#,
    ),
    // Opens the session and does nothing (lazy_write then touches instead of writing).
    (
        "touch.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
$ok = session_write_close();
echo "n=", $_SESSION['n'] ?? 'none', " written=", $ok ? "yes" : "no", "\n";
"#,
    ),
    // A fatal error with the session open: PHP still writes and closes at shutdown.
    (
        "fatal.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
echo "n=", $_SESSION['n'], "\n";
undefined_function_for_a_fatal_error();
"#,
    ),
    // Changes the session, then waits for the test's go (?flag=path) before writing it.
    (
        "wait.php",
        r#"<?php
if (!session_start()) { echo "START-FAILED\n"; exit; }
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
file_put_contents($_GET['pidfile'] . '.tmp', getmypid());
rename($_GET['pidfile'] . '.tmp', $_GET['pidfile']);
while (!file_exists($_GET['flag'])) { usleep(10000); }
session_write_close();
echo "n=", $_SESSION['n'], "\n";
"#,
    ),
    (
        "info.php",
        r#"<?php
phpinfo(INFO_MODULES);
"#,
    ),
];

/// PHP's built-in web server with N workers, in its own process group (ending the parent alone
/// would leave the workers running).
pub struct PhpServer {
    child: Option<Child>,
    pub port: u16,
    pub docroot: PathBuf,
}

impl PhpServer {
    pub fn start(dir: &TestDir, workers: u32, ini: &[(String, String)]) -> PhpServer {
        let docroot = dir.join("docroot");
        write_pages(&docroot);
        let port = free_port();
        let mut cmd = Command::new(php_bin());
        cmd.arg("-n");
        for (k, v) in ini {
            cmd.arg("-d").arg(format!("{k}={v}"));
        }
        cmd.arg("-S")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-t")
            .arg(&docroot)
            .env("PHP_CLI_SERVER_WORKERS", workers.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().expect("start php -S");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("php -S exited at start ({status})");
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "php -S did not start listening"
            );
            sleep(Duration::from_millis(25));
        }
        PhpServer {
            child: Some(child),
            port,
            docroot,
        }
    }

    pub fn get(&self, path: &str, jar: &mut Jar) -> Response {
        http_get(self.port, path, jar)
    }
}

impl Drop for PhpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole group: the parent and every worker it forked.
            kill("-KILL", &format!("-{}", child.id()));
            let _ = child.wait();
        }
    }
}

use std::os::unix::process::CommandExt;

/// A PID written by `hold.php`, once it is there (bounded wait).
pub fn wait_for_pid_file(path: &Path) -> u32 {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(
            start.elapsed() < READY_WITHIN,
            "{} never appeared",
            path.display()
        );
        sleep(Duration::from_millis(20));
    }
}

pub fn kill9_pid(pid: u32) {
    kill("-KILL", &pid.to_string());
}

// ---------------------------------------------------------------------------------------------
// HTTP with a cookie jar.

/// Cookies by name, as a browser would keep them (path and expiry are ignored: one site).
#[derive(Clone, Debug, Default)]
pub struct Jar {
    pub cookies: BTreeMap<String, String>,
}

impl Jar {
    pub fn session_id(&self) -> Option<&str> {
        self.cookies.get("PHPSESSID").map(String::as_str)
    }

    pub fn with_session(id: &str) -> Jar {
        let mut jar = Jar::default();
        jar.cookies.insert("PHPSESSID".into(), id.into());
        jar
    }

    fn header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        Some(
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// Takes `Set-Cookie: NAME=VALUE; attrs` (a deleted cookie is removed).
    fn take(&mut self, set_cookie: &str) {
        let first = set_cookie.split(';').next().unwrap_or("");
        if let Some((name, value)) = first.split_once('=') {
            let name = name.trim().to_string();
            let value = value.trim().to_string();
            if value.is_empty() || value == "deleted" {
                self.cookies.remove(&name);
            } else {
                self.cookies.insert(name, value);
            }
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `key=` in the page's last line (`n=3 id=... written=yes`).
    pub fn field(&self, key: &str) -> Option<&str> {
        let line = self.body.lines().rev().find(|l| !l.trim().is_empty())?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

/// One HTTP/1.1 GET (Connection: close); cookies from the jar, Set-Cookie back into it.
pub fn http_get(port: u16, path: &str, jar: &mut Jar) -> Response {
    try_http_get(port, path, jar).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A GET whose server may die mid-request (a worker killed on purpose): errors are returned.
pub fn try_http_get(port: u16, path: &str, jar: &mut Jar) -> Result<Response, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(RESPONSE_WITHIN)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(c) = jar.header() {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("no complete response: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let response = Response {
        status,
        headers,
        body: body.to_string(),
    };
    for c in response.set_cookies() {
        jar.take(c);
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// php-fpm and FastCGI.

/// php-fpm (Debian's) with one static pool on loopback TCP, loading cluster.so.
pub struct PhpFpm {
    child: Option<Child>,
    pub port: u16,
    pub docroot: PathBuf,
    pub log: PathBuf,
}

impl PhpFpm {
    pub fn start(dir: &TestDir, children: u32, ini: &[(String, String)]) -> PhpFpm {
        let docroot = dir.join("docroot");
        write_pages(&docroot);
        let port = free_port();
        let log = dir.join("fpm.log");
        let mut conf = format!(
            "[global]\nerror_log = {log}\ndaemonize = no\n\n[www]\nlisten = 127.0.0.1:{port}\n\
             pm = static\npm.max_children = {children}\ncatch_workers_output = yes\n\
             clear_env = no\n",
            log = log.display()
        );
        // php-fpm applies a pool's php_admin_values in the reverse of their order in the file,
        // and an extension must be loaded before any of its settings is applied (else php-fpm
        // says "Unable to set php_admin_value" and the setting keeps its default): extensions go
        // last.
        for (k, v) in ini {
            if k != "extension" {
                conf.push_str(&format!("php_admin_value[{k}] = {v}\n"));
            }
        }
        for (k, v) in ini.iter().rev() {
            if k == "extension" {
                conf.push_str(&format!("php_admin_value[{k}] = {v}\n"));
            }
        }
        let conf_path = dir.join("fpm.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(php_fpm_bin())
            .arg("-n")
            .arg("-F")
            .arg("-R")
            .arg("-y")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start php-fpm");
        let mut fpm = PhpFpm {
            child: Some(child),
            port,
            docroot,
            log,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = fpm.child.as_mut().map(Child::try_wait) {
                panic!(
                    "php-fpm exited at start ({status}); log:\n{}",
                    std::fs::read_to_string(&fpm.log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "php-fpm did not start listening"
            );
            sleep(Duration::from_millis(25));
        }
        fpm
    }

    pub fn get(&self, script: &str, query: &str, jar: &mut Jar) -> Response {
        let path = self.docroot.join(script);
        let response = fastcgi_get(self.port, &path, script, query, jar);
        for c in response.set_cookies() {
            jar.take(c);
        }
        response
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill("-KILL", &format!("-{}", child.id()));
            let _ = child.wait();
        }
    }
}

const FCGI_VERSION: u8 = 1;
const FCGI_BEGIN_REQUEST: u8 = 1;
const FCGI_END_REQUEST: u8 = 3;
const FCGI_PARAMS: u8 = 4;
const FCGI_STDIN: u8 = 5;
const FCGI_STDOUT: u8 = 6;
const FCGI_STDERR: u8 = 7;
const FCGI_RESPONDER: u16 = 1;

fn fcgi_record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    // Content longer than 65535 bytes goes in several records.
    for chunk in content
        .chunks(65535)
        .chain(content.is_empty().then_some(&[][..]))
    {
        out.extend_from_slice(&[FCGI_VERSION, kind, 0, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]); // no padding
        out.extend_from_slice(chunk);
    }
}

fn fcgi_param(out: &mut Vec<u8>, name: &str, value: &str) {
    for len in [name.len(), value.len()] {
        if len < 128 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
        }
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// One FastCGI request (request ID 1, no keep-alive): a GET of `script` with `query`.
pub fn fastcgi_get(
    port: u16,
    script_path: &Path,
    script: &str,
    query: &str,
    jar: &Jar,
) -> Response {
    try_fastcgi_get(port, script_path, script, query, jar)
        .unwrap_or_else(|e| panic!("FastCGI GET {script}?{query}: {e}"))
}

/// A FastCGI GET whose worker may die mid-request: errors are returned.
pub fn try_fastcgi_get(
    port: u16,
    script_path: &Path,
    script: &str,
    query: &str,
    jar: &Jar,
) -> Result<Response, String> {
    let mut params = Vec::new();
    let uri = format!("/{script}");
    let mut pairs = vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".to_string()),
        ("REQUEST_METHOD", "GET".to_string()),
        ("SCRIPT_FILENAME", script_path.display().to_string()),
        ("SCRIPT_NAME", uri.clone()),
        ("REQUEST_URI", format!("{uri}?{query}")),
        ("QUERY_STRING", query.to_string()),
        ("SERVER_PROTOCOL", "HTTP/1.1".to_string()),
        ("SERVER_NAME", "127.0.0.1".to_string()),
        ("SERVER_PORT", "80".to_string()),
        ("REMOTE_ADDR", "127.0.0.1".to_string()),
    ];
    if let Some(c) = jar.header() {
        pairs.push(("HTTP_COOKIE", c));
    }
    for (k, v) in &pairs {
        fcgi_param(&mut params, k, v);
    }
    let mut req = Vec::new();
    let mut begin = FCGI_RESPONDER.to_be_bytes().to_vec();
    begin.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // flags 0: close after the request
    fcgi_record(&mut req, FCGI_BEGIN_REQUEST, &begin);
    fcgi_record(&mut req, FCGI_PARAMS, &params);
    fcgi_record(&mut req, FCGI_PARAMS, &[]);
    fcgi_record(&mut req, FCGI_STDIN, &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(RESPONSE_WITHIN)).unwrap();
    stream.write_all(&req).map_err(|e| e.to_string())?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    loop {
        let mut head = [0u8; 8];
        stream
            .read_exact(&mut head)
            .map_err(|e| format!("FastCGI record header: {e}"))?;
        let len = u16::from_be_bytes([head[4], head[5]]) as usize;
        let pad = head[6] as usize;
        let mut content = vec![0u8; len + pad];
        stream
            .read_exact(&mut content)
            .expect("FastCGI record body");
        content.truncate(len);
        match head[1] {
            FCGI_STDOUT => stdout.extend_from_slice(&content),
            FCGI_STDERR => stderr.extend_from_slice(&content),
            FCGI_END_REQUEST => break,
            other => return Err(format!("unexpected FastCGI record type {other}")),
        }
    }
    let text = String::from_utf8_lossy(&stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", &text));
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.split("\r\n") {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                status = v
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    // What PHP wrote to stderr first, so the page's own last line stays last.
    let mut full = String::from_utf8_lossy(&stderr).into_owned();
    full.push_str(body);
    Ok(Response {
        status,
        headers,
        body: full,
    })
}
