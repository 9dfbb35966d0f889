//! Shared helpers for the integration tests: start the real `scd` binary on a temporary folder
//! (Unix socket inside it, loopback TCP and metrics on free ports chosen by the kernel), wait
//! until it says it is ready, connect clients, `kill -9` it, restart it, stop it with SIGTERM.
//!
//! Waits are for readiness only and are generous (a slow machine must not fail a test); no test
//! asserts on how long something took.

#![allow(dead_code)]

pub mod key_holder;
pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scd_client::{Client, Endpoint, SessionId};

/// Generous bound for the daemon to become ready or to stop (recovery, a loaded machine).
pub const READY_WAIT: Duration = Duration::from_secs(60);

pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
    /// The thread copying the daemon's stderr into `log`; joined after the daemon exits so
    /// that every line it wrote is in `log`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// A daemon on a fresh folder with the given extra flags.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_with_env(extra, &[])
    }

    /// `start`, with extra environment variables for the daemon.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("scd-test")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("scd.sock");
        let mut args = base_args(dir.path(), &socket);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon {
            child: None,
            dir,
            socket,
            tcp: None,
            metrics: None,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: Arc::new(Mutex::new(Vec::new())),
            reader: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_scd"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel::<String>();
        let log = self.log.clone();
        self.reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SCD_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                log.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        }));
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("] ready: ") => {
                    self.tcp = field(&line, "tcp ").and_then(|s| s.parse().ok());
                    self.metrics = field(&line, "metrics ").and_then(|s| s.parse().ok());
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("scd did not become ready; log:\n{}", self.log_text());
                }
            }
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn client(&self) -> Client {
        Client::connect(&Endpoint::Unix(self.socket.clone())).expect("connect over the Unix socket")
    }

    pub fn tcp_client(&self) -> Client {
        Client::connect(&Endpoint::Tcp(self.tcp.expect("tcp endpoint"))).expect("connect over TCP")
    }

    /// A raw connection (for bad input).
    pub fn raw_tcp(&self) -> TcpStream {
        TcpStream::connect(self.tcp.expect("tcp endpoint")).expect("raw connect")
    }

    /// SIGKILL: no flush, no cleanup (the socket file stays behind).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
            self.drain_log();
        }
    }

    /// Starts again on the same folder with the same flags.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the daemon before restarting it"
        );
        self.spawn();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(c.id(), "TERM");
        let status = wait_bounded(&mut c);
        self.drain_log();
        status
    }

    /// After the daemon exited: waits for the log copier to reach end of file.
    fn drain_log(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn log_lines_containing(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Statistics as a map.
    pub fn stats(&self) -> std::collections::BTreeMap<String, u64> {
        self.client().stats().expect("stats").into_iter().collect()
    }

    /// Resident memory of the daemon, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// `GET path` on the metrics endpoint: (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(self.metrics.expect("metrics endpoint")).expect("connect");
        s.set_read_timeout(Some(READY_WAIT)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read response");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value after `key` up to the next comma or space in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest.find([',', ' ']).unwrap_or(rest.len());
    Some(&rest[..end])
}

pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{name} {pid} failed");
}

/// Stops a daemon and waits until every one of its threads is stopped. `kill -STOP` returns
/// before that: a stop signal wakes one thread, which then stops the others, and until then
/// they run (on a loaded machine long enough to acknowledge a copy, which is correct behaviour
/// but not what a test of a silent backup wants). io_uring's kernel workers (`iou-*`) run no
/// daemon code and are left out.
pub fn stop_all_threads(pid: u32) {
    signal(pid, "STOP");
    eventually("every thread of the stopped daemon stopped", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task list");
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // "tid (comm) S ...": the state follows the last ')'.
            let Some(close) = stat.rfind(')') else {
                return true;
            };
            let comm = stat.get(stat.find('(').map_or(0, |o| o + 1)..close);
            let state = stat[close + 1..].trim_start().chars().next();
            comm.is_some_and(|c| c.starts_with("iou-")) || matches!(state, Some('T' | 't'))
        })
    });
}

pub fn wait_bounded(c: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        if let Some(status) = c.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("scd did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns true, for at most `READY_WAIT`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A session ID chosen by the test (any HASH): lets a test reach every shard from every core.
pub fn test_id(n: u64, salt: u64) -> SessionId {
    let mut hash = [0u8; 16];
    // A cheap mix so that consecutive n spread over the shards.
    let x = (n ^ salt.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    hash[..8].copy_from_slice(&x.to_le_bytes());
    hash[8..].copy_from_slice(&(n.wrapping_add(salt)).to_le_bytes());
    SessionId::new(SocketAddr::from(([127, 0, 0, 1], 34567)), None, 1, hash)
}

/// Deterministic session data of `len` bytes for session `n`.
pub fn blob(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn socket_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// A cluster of real daemons on loopback addresses `127.0.<net>.1`, `.2`, … (same ports,
/// different IPs), sharing a fresh cluster key, with fast heartbeats. `net` keeps the clusters of
/// tests that run at the same time apart.
pub struct Cluster {
    pub nodes: Vec<Daemon>,
    pub key_dir: tempfile::TempDir,
    pub net: u8,
}

/// Heartbeat interval of test clusters (node timeout is 3 × this + 500 ms).
pub const TEST_HEARTBEAT_MS: u64 = 100;

impl Cluster {
    /// `n` nodes; `extra` flags go to every node (e.g. `--ha true`).
    pub fn start(net: u8, n: u8, extra: &[&str]) -> Cluster {
        Cluster::start_each(net, n, extra, |_| Vec::new())
    }

    /// `start`, calling `before_node(i)` (1-based) on this thread just before node `i` is
    /// started; the flags it returns go to that node alone (after `extra`). A test uses it to
    /// place each node (the daemon inherits this thread's CPU affinity) and size it to match.
    pub fn start_each(
        net: u8,
        n: u8,
        extra: &[&str],
        mut before_node: impl FnMut(u8) -> Vec<String>,
    ) -> Cluster {
        let key_dir = tempfile::tempdir().expect("key dir");
        let mut secret = [0u8; 32];
        getrandom_fill(&mut secret);
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(key_dir.path().join("cluster.key"), hex).expect("key file");
        let mut c = Cluster {
            nodes: Vec::new(),
            key_dir,
            net,
        };
        let args: Vec<Vec<String>> = (1..=n).map(|i| c.args(i, n, extra)).collect();
        for (i, mut a) in (1..=n).zip(args) {
            a.extend(before_node(i));
            let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
            c.nodes.push(Daemon::start(&refs));
        }
        for i in 0..c.nodes.len() {
            c.wait_ready(i);
        }
        c
    }

    pub fn ip(&self, i: u8) -> String {
        format!("127.0.{}.{}", self.net, i)
    }

    /// The relay address (master / backup field of IDs) of node `index` (0-based).
    pub fn relay(&self, index: usize) -> SocketAddr {
        format!("{}:34567", self.ip(index as u8 + 1))
            .parse()
            .unwrap()
    }

    fn args(&self, i: u8, n: u8, extra: &[&str]) -> Vec<String> {
        let peers: Vec<String> = (1..=n).filter(|&j| j != i).map(|j| self.ip(j)).collect();
        let mut a: Vec<String> = vec![
            "--advertise-address".into(),
            self.ip(i),
            "--cluster-key-file".into(),
            self.key_dir
                .path()
                .join("cluster.key")
                .display()
                .to_string(),
            "--peers".into(),
            peers.join(","),
            "--heartbeat-interval-ms".into(),
            TEST_HEARTBEAT_MS.to_string(),
        ];
        // A flag given twice is refused: the test's own relay timeout replaces the default.
        if !extra.contains(&"--relay-timeout-ms") {
            a.extend(["--relay-timeout-ms".into(), "1000".into()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Waits until node `i` has rejoined and sees every other running node.
    pub fn wait_ready(&self, i: usize) {
        let want = self.nodes.iter().filter(|d| d.running()).count() as u64 - 1;
        eventually("cluster node ready with its peers up", || {
            let s = self.nodes[i].stats();
            s.get("node.cluster_ready") == Some(&1) && s.get("node.cluster_peers_up") >= Some(&want)
        });
    }

    /// Waits until node `i` counts `up` peers up.
    pub fn wait_peers_up(&self, i: usize, up: u64) {
        eventually("peer count", || {
            self.nodes[i].stats().get("node.cluster_peers_up") == Some(&up)
        });
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
    f.read_exact(buf).expect("random bytes");
}

impl Daemon {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// A statistic, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }
}

/// Reads the session through `c` until it answers (bounded by `READY_WAIT`), following new IDs
/// (checking each names the same session under a higher epoch); returns the data and version,
/// and leaves in `id` the ID to use from now on.
pub fn read_following(c: &mut Client, id: &mut SessionId) -> (Option<Vec<u8>>, u64) {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        match c.read(id) {
            Ok(r) => {
                if let Some(n) = r.new_id {
                    assert!(n.same_session(id), "a new ID names the same session");
                    assert!(n.version > id.version, "placement epochs only grow");
                    *id = n;
                }
                return (r.data, r.version);
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no answer in time: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The index in `c.nodes` of the node whose relay address is `addr`.
pub fn index_of(c: &Cluster, addr: SocketAddr) -> usize {
    (0..c.nodes.len())
        .find(|&i| c.relay(i) == addr)
        .expect("an address of this cluster")
}

/// The flags every test daemon gets: its data folder in `dir`, its Unix socket, TCP and metrics
/// on loopback ports the kernel picks, debug logging.
pub fn base_args(dir: &Path, socket: &Path) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--unix-socket".into(),
        socket.display().to_string(),
        "--tcp-listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--log-level".into(),
        "debug".into(),
    ]
}
