//! The cluster through real PHP: three real scd nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3
//! (same ports, different loopback addresses, one cluster key, HA on, write-through, heartbeats
//! every 100 ms), and PHP's built-in web server loading the real cluster.so on nodes A and B, each
//! talking to its local scd over its Unix socket. A browser (an HTTP client with a cookie jar)
//! counts in its session through A, then B (relayed to A); scd A is killed with `kill -9`; the
//! next request through B finds the last acknowledged count on the backup, which took the session
//! over, and the response hands the browser the session's new ID; scd A restarts on the same data
//! folder, rejoins, and requests through A with the new cookie and with the old one (naming A as
//! master) never see an older count.
//!
//! How many requests failed during the failover and how long after the kill the first request
//! succeeded are printed (`--nocapture`), never asserted on.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Jar, PhpServer, READY_WITHIN, Response, Scd, TestDir, php_ini};
use scd_wire::SessionId;

/// Heartbeat interval of the test cluster: a dead node is noticed within 3 × this + 500 ms, and a
/// refused connection at once.
const HEARTBEAT_MS: &str = "100";

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, i as u8 + 1)
}

/// A relay (TCP) and a heartbeat (UDP) port free on every node address: the nodes use the same
/// ports on different addresses, as on a farm. The kernel picks them on the first address.
fn free_cluster_ports(nodes: usize) -> (u16, u16) {
    for _ in 0..50 {
        let relay = TcpListener::bind((node_ip(0), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let heartbeat = UdpSocket::bind((node_ip(0), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let free = (0..nodes).all(|i| {
            TcpListener::bind((node_ip(i), relay)).is_ok()
                && UdpSocket::bind((node_ip(i), heartbeat)).is_ok()
        });
        if free {
            return (relay, heartbeat);
        }
    }
    panic!("no relay and heartbeat ports free on every node address");
}

/// Every statistic of a node, or None while it does not answer.
fn stats(scd: &Scd) -> Option<BTreeMap<String, u64>> {
    let mut c = scd_client::Client::connect_unix(&scd.socket).ok()?;
    Some(c.stats().ok()?.into_iter().collect())
}

fn stat(scd: &Scd, name: &str) -> u64 {
    stats(scd).and_then(|s| s.get(name).copied()).unwrap_or(0)
}

/// Waits (bounded) until a node serves (it has rejoined) and sees `peers_up` other nodes.
fn wait_cluster_ready(scd: &Scd, peers_up: u64) {
    let start = Instant::now();
    loop {
        if let Some(s) = stats(scd) {
            if s.get("node.cluster_ready") == Some(&1)
                && s.get("node.cluster_peers_up").copied().unwrap_or(0) >= peers_up
            {
                return;
            }
        }
        assert!(
            start.elapsed() < 2 * READY_WITHIN,
            "scd at {} not ready with {peers_up} peers up; stats {:?}; log:\n{}",
            scd.socket.display(),
            stats(scd),
            scd.log_text()
        );
        sleep(Duration::from_millis(25));
    }
}

/// Three scd nodes; `nodes[i]` advertises `node_ip(i)`.
struct Cluster {
    nodes: Vec<Scd>,
    // Kept for their lifetime: the nodes' folders and the key file.
    _dirs: Vec<TestDir>,
    _key_dir: TestDir,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let key_dir = TestDir::new("key");
        let key_file = key_dir.join("cluster.key");
        let mut secret = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut secret,
        )
        .unwrap();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key_file, hex).unwrap();
        let (relay, heartbeat) = free_cluster_ports(n);
        let (relay, heartbeat) = (relay.to_string(), heartbeat.to_string());
        let key = key_file.display().to_string();
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = TestDir::new(&format!("node{}", i + 1));
            let ip = node_ip(i).to_string();
            let peers: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| node_ip(j).to_string())
                .collect();
            let peers = peers.join(",");
            let args = [
                "--advertise-address",
                &ip,
                "--relay-port",
                &relay,
                "--heartbeat-port",
                &heartbeat,
                "--cluster-key-file",
                &key,
                "--peers",
                &peers,
                "--ha",
                "true",
                "--storage-model",
                "write-through",
                "--heartbeat-interval-ms",
                HEARTBEAT_MS,
                "--relay-timeout-ms",
                "1000",
            ];
            nodes.push(Scd::start_node(&dir, &args));
            dirs.push(dir);
        }
        for scd in &nodes {
            wait_cluster_ready(scd, n as u64 - 1);
        }
        Cluster {
            nodes,
            _dirs: dirs,
            _key_dir: key_dir,
        }
    }

    /// Which node advertises this address.
    fn index_of(&self, ip: std::net::IpAddr) -> usize {
        (0..self.nodes.len())
            .find(|&i| std::net::IpAddr::V4(node_ip(i)) == ip)
            .unwrap_or_else(|| panic!("{ip} is no node of the cluster"))
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- scd {} ({}) ---\n{}", i + 1, node_ip(i), n.log_text()))
            .collect()
    }
}

/// What one count.php request gave: the count, if it was written.
fn count(php: &PhpServer, jar: &mut Jar) -> Result<(u64, Response), String> {
    let r = common::try_http_get(php.port, "/count.php", jar)?;
    checked(r, true)
}

/// A peek.php request: the count, without changing it.
fn peek(php: &PhpServer, jar: &mut Jar) -> Result<(u64, Response), String> {
    let r = common::try_http_get(php.port, "/peek.php", jar)?;
    checked(r, false)
}

fn checked(r: Response, written: bool) -> Result<(u64, Response), String> {
    if r.status != 200 || r.body.contains("Warning") || r.body.contains("START-FAILED") {
        return Err(format!("status {}: {}", r.status, r.body.trim()));
    }
    if written && r.field("written") != Some("yes") {
        return Err(format!("not written: {}", r.body.trim()));
    }
    match r.field("n").and_then(|v| v.parse().ok()) {
        Some(n) => Ok((n, r)),
        None => Err(format!("no count in {:?}", r.body)),
    }
}

/// The counts a browser has seen: never one older than the last.
struct Seen {
    last: u64,
}

impl Seen {
    /// A count read (peek) or written (count): never below the last one seen.
    fn saw(&mut self, n: u64, what: &str, cluster: &Cluster) {
        assert!(
            n >= self.last,
            "{what}: count {n} is older than {} seen before; logs:\n{}",
            self.last,
            cluster.logs()
        );
        self.last = n;
    }
}

fn sid(jar: &Jar) -> SessionId {
    let id = jar.session_id().expect("a session cookie");
    SessionId::parse(id.as_bytes()).unwrap_or_else(|e| panic!("{id} is no cluster ID: {e:?}"))
}

/// The tests of this file run one at a time: each starts three scd and two PHP servers, and the
/// machine may have two cores.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A browser whose session was created through PHP on node `a` and whose backup is node
/// `backup`. The backup is the least-loaded other node (sessions held + open client connections),
/// so idle connections to the third node steer the choice; sessions are created until one lands
/// on `backup` (bounded).
fn session_backed_by(cluster: &Cluster, php_a: &PhpServer, a: usize, backup: usize) -> Jar {
    let third = (0..cluster.nodes.len())
        .find(|&i| i != a && i != backup)
        .unwrap();
    let _ballast: Vec<_> = (0..32).map(|_| cluster.nodes[third].client()).collect();
    let start = Instant::now();
    loop {
        let mut jar = Jar::default();
        let (n, _) = count(php_a, &mut jar).unwrap_or_else(|e| panic!("through A: {e}"));
        assert_eq!(n, 1, "a new session");
        let id = sid(&jar);
        assert_eq!(id.master.ip(), std::net::IpAddr::V4(node_ip(a)));
        let b = id.backup.expect("HA on: the ID names a backup");
        if b.ip() == node_ip(backup) {
            return jar;
        }
        assert!(
            start.elapsed() < READY_WITHIN,
            "no session got node {} as backup",
            node_ip(backup)
        );
        sleep(Duration::from_millis(50));
    }
}

/// The backup is B itself: B's scd takes the session over.
#[test]
fn counts_on_through_relay_kill9_of_the_master_failover_to_b_and_rejoin() {
    let _g = serial();
    scenario(1);
}

/// The backup is C, where no PHP runs: after the kill B relays to C, which takes the session
/// over.
#[test]
fn counts_on_through_relay_kill9_of_the_master_failover_to_c_and_rejoin() {
    let _g = serial();
    scenario(2);
}

fn scenario(backup_index: usize) {
    let mut cluster = Cluster::start(3);
    let (a, b) = (0, 1);
    let ini_a = php_ini(&cluster.nodes[a].save_path(), &[]);
    let ini_b = php_ini(&cluster.nodes[b].save_path(), &[]);
    let php_dir_a = TestDir::new("php-a");
    let php_dir_b = TestDir::new("php-b");
    let php_a = PhpServer::start(&php_dir_a, 2, &ini_a);
    let php_b = PhpServer::start(&php_dir_b, 2, &ini_b);
    let mut seen = Seen { last: 0 };

    // 1. Created and counted through A (its master), then counted through B: relayed to A, the
    //    count goes on under the same ID.
    let mut jar = session_backed_by(&cluster, &php_a, a, backup_index);
    seen.saw(1, "created through A", &cluster);
    for want in 2..=3 {
        let (n, _) = count(&php_a, &mut jar).unwrap_or_else(|e| panic!("through A: {e}"));
        assert_eq!(n, want);
        seen.saw(n, "through A", &cluster);
    }
    let created = sid(&jar);
    let backup = created.backup.expect("HA on: the ID names a backup");
    assert_eq!(cluster.index_of(backup.ip()), backup_index);
    let old_jar = jar.clone();
    let relayed_before = stat(&cluster.nodes[b], "node.cluster_relayed_out");
    for want in 4..=6 {
        let (n, _) = count(&php_b, &mut jar).unwrap_or_else(|e| panic!("through B: {e}"));
        assert_eq!(n, want, "the count goes on through B");
        seen.saw(n, "through B", &cluster);
    }
    assert_eq!(sid(&jar), created, "a relayed request keeps the ID");
    assert!(
        stat(&cluster.nodes[b], "node.cluster_relayed_out") >= relayed_before + 3,
        "B relayed the requests to A"
    );
    let last_acknowledged = seen.last;

    // 2. kill -9 of scd A (PHP on A stays up, unused meanwhile). The next request through B
    //    finds the last acknowledged count on the backup, which now masters the session, and the
    //    response hands out the new ID.
    cluster.nodes[a].kill9();
    let killed = Instant::now();
    let mut failed = Vec::new();
    let (n, r) = loop {
        match count(&php_b, &mut jar) {
            Ok(done) => break done,
            Err(e) => {
                assert!(
                    killed.elapsed() < 2 * READY_WITHIN,
                    "no request through B succeeded after the kill ({} failed, last: {e}); logs:\n{}",
                    failed.len(),
                    cluster.logs()
                );
                failed.push(e);
                sleep(Duration::from_millis(5));
            }
        }
    };
    let first_success = killed.elapsed();
    println!(
        "failover through PHP on B to the backup {}: {} request(s) failed; first success {:.1} ms \
         after the kill -9",
        node_ip(backup_index),
        failed.len(),
        first_success.as_secs_f64() * 1000.0
    );
    for e in &failed {
        println!("  failed: {e}");
    }
    // Nothing was in flight at the kill, so nothing could have been written twice.
    assert_eq!(
        n,
        last_acknowledged + 1,
        "the last acknowledged count survived: {}",
        r.body
    );
    seen.saw(n, "first request after the kill", &cluster);
    let moved = sid(&jar);
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("PHPSESSID={moved}"))),
        "the response carries the new ID in Set-Cookie: {:?}",
        r.set_cookies()
    );
    assert!(moved.same_session(&created));
    assert_ne!(moved, created, "the failover gave the session a new ID");
    assert_eq!(
        moved.master, backup,
        "the backup is the session's master now"
    );
    assert!(moved.version > created.version, "a higher epoch");
    assert!(moved.backup.is_some_and(|m| m.ip() != node_ip(a)));
    assert_eq!(r.field("id"), Some(moved.to_string().as_str()));
    for _ in 0..3 {
        let (n, _) = count(&php_b, &mut jar).unwrap_or_else(|e| panic!("through B: {e}"));
        assert_eq!(n, seen.last + 1);
        seen.saw(n, "through B after the failover", &cluster);
    }
    assert_eq!(sid(&jar), moved, "the new ID stays");

    // 3. scd A restarts on its data folder and rejoins. Through A, with the current cookie and
    //    with the old one (A as master, epoch 1), no request sees an older count.
    cluster.nodes[a].restart();
    wait_cluster_ready(&cluster.nodes[a], 2);
    // PHP on A's workers held connections to the dead scd: they reconnect by themselves.
    let (n, _) = peek(&php_a, &mut jar).unwrap_or_else(|e| panic!("peek through A: {e}"));
    assert_eq!(n, seen.last, "A serves the current count");
    seen.saw(n, "peek through A", &cluster);
    let (n, _) = count(&php_a, &mut jar).unwrap_or_else(|e| panic!("through A: {e}"));
    assert_eq!(n, seen.last + 1);
    seen.saw(n, "through A after the rejoin", &cluster);
    assert_eq!(sid(&jar), moved, "A sends no other ID");

    let mut stale = old_jar.clone();
    assert_eq!(sid(&stale), created);
    let (n, r) = peek(&php_a, &mut stale).unwrap_or_else(|e| panic!("old ID, through A: {e}"));
    assert_eq!(
        n, seen.last,
        "the old ID reads the current count, not A's stale copy"
    );
    seen.saw(n, "peek with the old ID through A", &cluster);
    assert_eq!(
        sid(&stale),
        moved,
        "the old cookie is replaced by the current ID: {:?}",
        r.set_cookies()
    );
    let mut stale = old_jar.clone();
    let (n, _) = count(&php_a, &mut stale).unwrap_or_else(|e| panic!("old ID, through A: {e}"));
    assert_eq!(
        n,
        seen.last + 1,
        "the old ID counts on from the current count"
    );
    seen.saw(n, "count with the old ID through A", &cluster);
    assert_eq!(sid(&stale), moved);
    let mut stale = old_jar.clone();
    let (n, _) = count(&php_b, &mut stale).unwrap_or_else(|e| panic!("old ID, through B: {e}"));
    assert_eq!(n, seen.last + 1);
    seen.saw(n, "count with the old ID through B", &cluster);
    assert_eq!(sid(&stale), moved);

    // The browser goes on, alternating nodes.
    for i in 0..6 {
        let php = if i % 2 == 0 { &php_a } else { &php_b };
        let (n, _) = count(php, &mut jar).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(n, seen.last + 1);
        seen.saw(n, "counting after the rejoin", &cluster);
    }
    assert_eq!(
        stat(&cluster.nodes[backup_index], "node.cluster_failovers"),
        1,
        "one failover, on the backup"
    );
    println!(
        "final count {} (ID {} -> {}), session moved from {} to {}",
        seen.last, created, moved, created.master, moved.master
    );
}

/// What one browser saw during the steady load.
#[derive(Default)]
struct Browser {
    requests: u64,
    failed: u64,
    /// Start of each successful request, relative to the kill (negative = before it), in ms.
    successes: Vec<f64>,
    /// The first few failures, to print.
    errors: Vec<String>,
}

/// Several browsers count in their own sessions (mastered by A) through PHP on B without pause
/// while scd A is killed: the share of failed requests and the time until requests succeed again
/// are printed; no browser ever sees an older count or loses an acknowledged one.
#[test]
fn steady_load_through_b_during_kill9_of_the_master_loses_no_acknowledged_count() {
    let _g = serial();
    const BROWSERS: usize = 4;
    let mut cluster = Cluster::start(3);
    let (a, b) = (0, 1);
    let php_dir_a = TestDir::new("php-a");
    let php_dir_b = TestDir::new("php-b");
    let php_a = PhpServer::start(&php_dir_a, 2, &php_ini(&cluster.nodes[a].save_path(), &[]));
    let php_b = PhpServer::start(
        &php_dir_b,
        BROWSERS as u32,
        &php_ini(&cluster.nodes[b].save_path(), &[]),
    );
    let jars: Vec<Jar> = (0..BROWSERS)
        .map(|_| {
            let mut jar = Jar::default();
            let (n, _) = count(&php_a, &mut jar).unwrap_or_else(|e| panic!("through A: {e}"));
            assert_eq!(n, 1);
            assert_eq!(sid(&jar).master.ip(), std::net::IpAddr::V4(node_ip(a)));
            jar
        })
        .collect();

    let kill_at: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Successful requests per browser, before and after the kill.
    let progress: Vec<std::sync::atomic::AtomicU64> = (0..BROWSERS)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    let results: Vec<(Browser, Jar, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = jars
            .into_iter()
            .enumerate()
            .map(|(i, mut jar)| {
                let (php_b, kill_at, stop, progress) = (&php_b, &kill_at, &stop, &progress);
                s.spawn(move || {
                    let mut me = Browser::default();
                    let mut last = 1u64;
                    let mut failed_since = 0u64;
                    loop {
                        let started = Instant::now();
                        let result = count(php_b, &mut jar);
                        me.requests += 1;
                        match result {
                            Ok((n, r)) => {
                                // A failed request may still have been written (the reply was
                                // lost with the master), so the count may jump by the failures
                                // since the last success, never more, never back.
                                assert!(
                                    n > last && n <= last + 1 + failed_since,
                                    "browser {i}: count {n} after {last} with {failed_since} \
                                     failure(s) in between: {}",
                                    r.body
                                );
                                last = n;
                                failed_since = 0;
                                let rel = match kill_at.get() {
                                    Some(k) if started >= *k => {
                                        (started - *k).as_secs_f64() * 1000.0
                                    }
                                    Some(k) => -((*k - started).as_secs_f64() * 1000.0),
                                    None => -1.0,
                                };
                                me.successes.push(rel);
                                progress[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                                    return (me, jar, last);
                                }
                            }
                            Err(e) => {
                                if me.errors.len() < 3 {
                                    me.errors.push(e);
                                }
                                me.failed += 1;
                                failed_since += 1;
                                assert!(
                                    me.failed < 10_000,
                                    "browser {i}: requests never succeed again"
                                );
                                sleep(Duration::from_millis(2));
                            }
                        }
                    }
                })
            })
            .collect();
        let wait_all = |cluster: &Cluster, at_least: u64, what: &str| {
            let start = Instant::now();
            while progress
                .iter()
                .any(|p| p.load(std::sync::atomic::Ordering::SeqCst) < at_least)
            {
                assert!(
                    start.elapsed() < 2 * READY_WITHIN,
                    "{what}: some browser made no progress; logs:\n{}",
                    cluster.logs()
                );
                sleep(Duration::from_millis(10));
            }
        };
        wait_all(&cluster, 5, "before the kill");
        let before: Vec<u64> = progress
            .iter()
            .map(|p| p.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        kill_at.set(Instant::now()).unwrap();
        cluster.nodes[a].kill9();
        wait_all(&cluster, before.iter().max().unwrap() + 5, "after the kill");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let requests: u64 = results.iter().map(|(m, _, _)| m.requests).sum();
    let failed: u64 = results.iter().map(|(m, _, _)| m.failed).sum();
    let after = |m: &Browser| m.successes.iter().copied().find(|&t| t >= 0.0);
    let first = results
        .iter()
        .filter_map(|(m, _, _)| after(m))
        .fold(f64::INFINITY, f64::min);
    let every = results
        .iter()
        .map(|(m, _, _)| after(m).expect("every browser succeeded after the kill"))
        .fold(0.0, f64::max);
    println!(
        "steady load through PHP on B, {BROWSERS} browsers, kill -9 of their sessions' master: \
         {failed} of {requests} requests failed ({:.2} %); first request started after the kill \
         that succeeded started {first:.1} ms after it; every browser served again {every:.1} ms \
         after it",
        100.0 * failed as f64 / requests as f64
    );
    for (i, (m, _, _)) in results.iter().enumerate() {
        for e in &m.errors {
            println!("  browser {i} failed: {e}");
        }
    }
    // Every browser holds its session's new ID, and B serves the last count it saw.
    for (i, (_, mut jar, last)) in results.into_iter().enumerate() {
        let id = sid(&jar);
        assert_ne!(
            id.master.ip(),
            std::net::IpAddr::V4(node_ip(a)),
            "browser {i}"
        );
        let (n, _) = peek(&php_b, &mut jar).unwrap_or_else(|e| panic!("browser {i}: {e}"));
        assert_eq!(n, last, "browser {i}: the last acknowledged count is kept");
    }
}
