//! Real `scd` processes, one per network namespace, joined by a bridge in a hub namespace (so the
//! host's network is not touched): for what loopback addresses on one host cannot show
//! (broadcast heartbeats, a link that goes down and comes back).
//!
//! Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip` binary
//! (iproute2): without them [`Net::create`] fails and the test prints a `SKIPPED` line
//! ([`skipped`]) and returns. Namespaces and the bridge are removed when the [`Net`] is dropped,
//! also when a test fails (a test killed by a signal leaves `scdb-*` namespaces behind:
//! `ip netns list`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scd_client::{Client, Endpoint};

/// Generous bound for readiness (a loaded machine must not fail the test).
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs `ip ARGS`; the error names the command and its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Prints the `SKIPPED` line of a test that cannot create namespaces, straight to the stderr
/// file descriptor (the test harness captures `eprintln!`).
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: cannot create network namespaces (needs root and iproute2's `ip`): {why}"
    );
}

/// A hub namespace holding a bridge, and one namespace per node with a veth into the bridge and
/// address `<subnet>.<i>/24` (i from 1). Everything goes when this is dropped.
pub struct Net {
    pub subnet: String,
    pub hub: String,
    pub nodes: Vec<String>,
}

impl Net {
    /// `n` node namespaces on `subnet` (three octets, e.g. `10.77.0`; tests that run at the same
    /// time use different ones only for readability: each `Net` is its own set of namespaces).
    pub fn create(subnet: &str, n: u8) -> Result<Net, String> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "scdb-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            subnet: subnet.to_string(),
            hub: format!("{tag}-hub"),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &net.hub])?;
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.hub, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let ns = format!("{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            net.nodes.push(ns.clone());
            let port = Self::port(i);
            ip(&[
                "-n", &net.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &net.hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &net.hub, "link", "set", &port, "up"])?;
            let addr = format!("{subnet}.{i}/24");
            let brd = format!("{subnet}.255");
            ip(&["-n", &ns, "addr", "add", &addr, "brd", &brd, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            // The local endpoints (TCP, metrics) listen on the namespace's own loopback.
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The hub's end of node `i`'s veth.
    fn port(i: u8) -> String {
        format!("v{i}")
    }

    /// Cuts node `i` off the bridge (its hub-side veth goes down): nothing passes either way. The
    /// node's own interface stays up, so its sockets see a silent network, not an error.
    pub fn cut(&self, i: u8) -> Result<(), String> {
        ip(&["-n", &self.hub, "link", "set", &Self::port(i), "down"])
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, i: u8) -> Result<(), String> {
        ip(&["-n", &self.hub, "link", "set", &Self::port(i), "up"])
    }

    /// Drops what node `i` sends to nodes `to` (blackhole routes in `i`'s namespace), while it
    /// still receives from them: a one-way partition. Its sends fail or vanish; theirs arrive.
    pub fn mute(&self, i: u8, to: &[u8]) -> Result<(), String> {
        self.blackholes(i, to, "add")
    }

    /// Undoes [`Net::mute`].
    pub fn unmute(&self, i: u8, to: &[u8]) -> Result<(), String> {
        self.blackholes(i, to, "del")
    }

    /// Adds or deletes (`action`) blackhole routes from node `i` to nodes `to`.
    fn blackholes(&self, i: u8, to: &[u8], action: &str) -> Result<(), String> {
        for &j in to {
            let dst = format!("{}/32", self.addr(j));
            ip(&[
                "-n",
                &self.nodes[i as usize - 1],
                "route",
                action,
                "blackhole",
                &dst,
            ])?;
        }
        Ok(())
    }

    /// Node `i`'s relay address (the master / backup field of IDs).
    pub fn relay(&self, i: u8) -> SocketAddr {
        format!("{}.{i}:34567", self.subnet).parse().unwrap()
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: u8) -> String {
        format!("{}.{i}", self.subnet)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces; the veth pairs and the bridge go with them.
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

/// A fresh random cluster key file in `dir`.
pub fn key_file(dir: &Path) -> PathBuf {
    let key = dir.join("cluster.key");
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .expect("random key");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key, hex).expect("key file");
    key
}

/// One real scd process in node namespace `i` of a [`Net`], advertising `<subnet>.<i>`.
pub struct NsNode {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    /// Node number and the `ip netns exec …` command line (for `restart`).
    i: u8,
    args: Vec<String>,
}

impl NsNode {
    /// Starts scd in node namespace `i` with the cluster key `key`, 100 ms heartbeats, a 1 s
    /// relay timeout and `extra` flags (peers or broadcast, allowed hosts, HA, …), and waits
    /// until it says it is ready.
    pub fn start(net: &Net, i: u8, key: &Path, extra: &[String]) -> NsNode {
        let dir = tempfile::Builder::new()
            .prefix("scd-netns")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("scd.sock");
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            net.nodes[i as usize - 1].clone(),
            env!("CARGO_BIN_EXE_scd").into(),
        ];
        args.extend(super::base_args(dir.path(), &socket));
        args.extend([
            "--advertise-address".into(),
            net.addr(i),
            "--cluster-key-file".into(),
            key.display().to_string(),
            "--heartbeat-interval-ms".into(),
            "100".into(),
            "--relay-timeout-ms".into(),
            "1000".into(),
        ]);
        args.extend(extra.iter().cloned());
        let mut node = NsNode {
            child: None,
            dir,
            socket,
            log: Arc::new(Mutex::new(Vec::new())),
            i,
            args,
        };
        node.spawn();
        node
    }

    /// Starts it again (after `kill9`) on the same data folder with the same flags, and waits
    /// until it says it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the node before restarting it");
        self.spawn();
    }

    fn spawn(&mut self) {
        let i = self.i;
        // `ip netns exec` enters the namespace and execs scd: the child's PID is scd's.
        let mut child = Command::new("ip")
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec scd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("SCD_TEST_LOG").is_some() {
                        eprintln!("[node {i}] {line}");
                    }
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        self.child = Some(child);
        let node = self;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("] ready: ") => break,
                Ok(_) => {}
                Err(_) => {
                    node.kill9();
                    panic!("node {i} did not become ready; log:\n{}", node.log_text());
                }
            }
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&Endpoint::Unix(self.socket.clone())).expect("connect over the Unix socket")
    }

    /// A statistic, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.client().stats().expect("stats");
        stats
            .into_iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| v)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every node's log, for a failure message.
pub fn logs(nodes: &[NsNode]) -> String {
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        out.push_str(&format!(
            "----- node {} log -----\n{}\n",
            i + 1,
            n.log_text()
        ));
    }
    out
}

/// Starts scd in every node namespace of `net` as one HA write-through cluster (each node
/// configured with the others as peers, the subnet allowed) and waits until every node is ready
/// and sees every other up.
pub fn start_ha_cluster(net: &Net, key: &Path) -> Vec<NsNode> {
    let n = net.nodes.len() as u8;
    let nodes: Vec<NsNode> = (1..=n)
        .map(|i| {
            let peers: Vec<String> = (1..=n).filter(|&j| j != i).map(|j| net.addr(j)).collect();
            let flags: Vec<String> = vec![
                "--peers".into(),
                peers.join(","),
                "--allowed-hosts".into(),
                format!("{}.0/24", net.subnet),
                "--ha".into(),
                "true".into(),
                "--storage-model".into(),
                "write-through".into(),
            ];
            NsNode::start(net, i, key, &flags)
        })
        .collect();
    let others = u64::from(n) - 1;
    eventually("every node ready with the others up", &nodes, || {
        nodes.iter().all(|node| {
            node.stat("node.cluster_peers_up") == others && node.stat("node.cluster_ready") == 1
        })
    });
    nodes
}

/// A fresh network of `n` node namespaces on `subnet`, a cluster key, and `start_ha_cluster` on
/// it: the start of every namespace HA test. None (after printing `SKIPPED test`) where
/// namespaces cannot be made. Bind the three parts in this order: they drop in reverse, the
/// nodes first, the network last.
pub fn ha_net(subnet: &str, n: u8, test: &str) -> Option<(Net, tempfile::TempDir, Vec<NsNode>)> {
    let net = match Net::create(subnet, n) {
        Ok(net) => net,
        Err(e) => {
            skipped(test, &e);
            return None;
        }
    };
    let key_dir = tempfile::tempdir().expect("key dir");
    let key = key_file(key_dir.path());
    let nodes = start_ha_cluster(&net, &key);
    Some((net, key_dir, nodes))
}

/// One read of `id` through `c` that must be answered Unavailable: no node may serve the
/// session now (`why` says why, for the failure's message).
pub fn assert_unavailable(
    c: &mut Client,
    id: &scd_client::SessionId,
    what: &str,
    why: &str,
    nodes: &[NsNode],
) {
    match c.read(id) {
        Ok(r) => panic!(
            "{what}: served {:?} (new ID {:?}) while {why}\n{}",
            r.data.as_deref().map(String::from_utf8_lossy),
            r.new_id,
            logs(nodes)
        ),
        Err(e) => assert_eq!(
            e.code(),
            Some(scd_wire::local::ErrorCode::Unavailable),
            "{what}: {e}\n{}",
            logs(nodes)
        ),
    }
}

/// A session mastered by A (node 1) of a three-node `start_ha_cluster`, holding "value 1",
/// written through A; its backup is node `b`, the third node is `c`.
pub struct SessionOnA {
    /// A client of A, its reads bounded by a 60 s timeout (a hang fails; nothing asserts on time).
    pub on_a: Client,
    pub id: scd_client::SessionId,
    pub b: u8,
    pub c: u8,
}

/// Creates a session through A (node 1), checks that its ID names A as master at version 1 and
/// one of the two other nodes as backup, and writes "value 1" to it under a lock.
pub fn session_on_a(net: &Net, nodes: &[NsNode]) -> SessionOnA {
    assert_eq!(nodes.len(), 3, "session_on_a expects a three-node cluster");
    let mut on_a = nodes[0].client();
    on_a.set_timeout(Some(Duration::from_secs(60)))
        .expect("client timeout");
    let id = on_a.create_id().expect("create id on A");
    assert_eq!(id.master, net.relay(1));
    assert_eq!(id.version, 1);
    let backup = id.backup.expect("HA on: the ID names a backup");
    let b = (2..=3u8)
        .find(|&i| net.relay(i) == backup)
        .expect("the backup is another node");
    let held = on_a.read_lock(&id, 1000, 30_000).expect("lock on A");
    on_a.write_unlock(&id, held.token, 600, b"value 1")
        .expect("write value 1 on A");
    SessionOnA {
        on_a,
        id,
        b,
        c: 5 - b,
    }
}

/// Polls `f` until it is true, for at most `WAIT`; on failure the nodes' logs are printed.
pub fn eventually(what: &str, nodes: &[NsNode], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        if Instant::now() > deadline {
            for (i, n) in nodes.iter().enumerate() {
                eprintln!("----- node {} log -----\n{}", i + 1, n.log_text());
            }
            panic!("gave up waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
