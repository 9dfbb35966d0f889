//! Broadcast heartbeats between real `scd` processes, one per network namespace.
//!
//! Several nodes on 127.0.0.x of one host cannot each hear a broadcast on the heartbeat port
//! (only one socket can bind `0.0.0.0:port`), so the other cluster tests use unicast `peers`.
//! Here every node gets its own network namespace, joined to the others by a bridge (in a hub
//! namespace, so the host's network is not touched) on 10.77.0.0/24, and is configured with
//! `cluster.broadcast = 10.77.0.255` and no peers. The test checks that every node sees the
//! others up, that a session is relayed, that a host outside `allowed_hosts` is not heard, and
//! that a node killed with `kill -9` is seen down.
//!
//! Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip` binary
//! (iproute2): without them the test prints a `SKIPPED` line to stderr and returns. Namespaces
//! and the bridge are removed when the test ends, also when it fails (a test killed by a signal
//! leaves `scdb-*` namespaces behind: `ip netns list`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scd_client::{Client, Endpoint};

/// Generous bound for readiness (a loaded machine must not fail the test).
const WAIT: Duration = Duration::from_secs(60);

const SUBNET: &str = "10.77.0";

/// Runs `ip ARGS`; the error names the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
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

/// A hub namespace holding a bridge, and one namespace per node with a veth into the bridge and
/// address `10.77.0.<i>/24`. Everything goes when this is dropped.
struct Net {
    hub: String,
    nodes: Vec<String>,
}

impl Net {
    fn create(n: u8) -> Result<Net, String> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "scdb-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
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
            let port = format!("v{i}");
            ip(&[
                "-n", &net.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &net.hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &net.hub, "link", "set", &port, "up"])?;
            let addr = format!("{SUBNET}.{i}/24");
            let brd = format!("{SUBNET}.255");
            ip(&["-n", &ns, "addr", "add", &addr, "brd", &brd, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            // The local endpoints (TCP, metrics) listen on the namespace's own loopback.
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces; the veth pairs and the bridge go with them.
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cluster_broadcast: cleanup: {e}");
            }
        }
    }
}

/// One real scd process in namespace `ns`, at `10.77.0.<i>`.
struct Node {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn start(ns: &str, i: u8, key: &std::path::Path, allowed: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("scd-bcast")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("scd.sock");
        let args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            ns.into(),
            env!("CARGO_BIN_EXE_scd").into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--unix-socket".into(),
            socket.display().to_string(),
            "--tcp-listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--log-level".into(),
            "debug".into(),
            "--advertise-address".into(),
            format!("{SUBNET}.{i}"),
            "--cluster-key-file".into(),
            key.display().to_string(),
            "--broadcast".into(),
            format!("{SUBNET}.255"),
            "--allowed-hosts".into(),
            allowed.into(),
            "--heartbeat-interval-ms".into(),
            "100".into(),
            "--relay-timeout-ms".into(),
            "1000".into(),
        ];
        // `ip netns exec` enters the namespace and execs scd: the child's PID is scd's.
        let mut child = Command::new("ip")
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec scd");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
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
        let mut node = Node {
            child: Some(child),
            _dir: dir,
            socket,
            log,
        };
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
        node
    }

    fn client(&self) -> Client {
        Client::connect(&Endpoint::Unix(self.socket.clone())).expect("connect over the Unix socket")
    }

    fn stat(&self, name: &str) -> u64 {
        let stats = self.client().stats().expect("stats");
        stats
            .into_iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| v)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until it is true, for at most `WAIT`; on failure the nodes' logs are printed.
fn eventually(what: &str, nodes: &[Node], mut f: impl FnMut() -> bool) {
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

fn relay(i: u8) -> SocketAddr {
    format!("{SUBNET}.{i}:34567").parse().unwrap()
}

#[test]
fn broadcast_heartbeats_between_namespaces() {
    // Nodes 1-3 form the cluster; namespace 4 holds an outsider (right key, wrong address).
    let net = match Net::create(4) {
        Ok(net) => net,
        Err(e) => {
            // Straight to the stderr file descriptor: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED cluster_broadcast: cannot create network namespaces (needs root and \
                 iproute2's `ip`): {e}"
            );
            return;
        }
    };
    let key_dir = tempfile::tempdir().expect("key dir");
    let key = key_dir.path().join("cluster.key");
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .expect("random key");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key, hex).expect("key file");

    let members = format!("{SUBNET}.1,{SUBNET}.2,{SUBNET}.3");
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::start(&net.nodes[i as usize - 1], i, &key, &members))
        .collect();

    // Every node hears the two others' broadcasts, and has rejoined.
    eventually(
        "every node sees the two others up and is ready",
        &nodes,
        || {
            nodes
                .iter()
                .all(|n| n.stat("node.cluster_peers_up") == 2 && n.stat("node.cluster_ready") == 1)
        },
    );
    for (i, n) in nodes.iter().enumerate() {
        assert!(n.stat("node.cluster_heartbeats_sent") > 0);
        assert!(n.stat("node.cluster_heartbeats_received") > 0);
        // Its own broadcasts come back to it: ignored, not counted as rejected.
        assert_eq!(
            n.stat("node.cluster_heartbeats_rejected"),
            0,
            "node {}: log:\n{}",
            i + 1,
            n.log_text()
        );
        for j in 1..=3u8 {
            if j as usize != i + 1 {
                let up = format!("cluster: node {} is up", relay(j));
                assert!(
                    n.log_text().contains(&up),
                    "node {} logs {up:?}:\n{}",
                    i + 1,
                    n.log_text()
                );
            }
        }
    }

    // A session created on node 1 is read and written through node 2 (relayed to node 1).
    let mut c1 = nodes[0].client();
    let id = c1.create_id().expect("create id");
    assert_eq!(id.master, relay(1));
    let held = c1.read_lock(&id, 1000, 30_000).expect("lock on node 1");
    c1.write_unlock(&id, held.token, 600, b"written on node 1")
        .expect("write on node 1");
    let mut c2 = nodes[1].client();
    let r = c2.read(&id).expect("relayed read through node 2");
    assert_eq!(r.data.as_deref(), Some(&b"written on node 1"[..]));
    let held = c2.read_lock(&id, 1000, 30_000).expect("relayed lock");
    c2.write_unlock(&id, held.token, 600, b"written via node 2")
        .expect("relayed write");
    assert_eq!(
        c1.read(&id).unwrap().data.as_deref(),
        Some(&b"written via node 2"[..])
    );
    assert!(nodes[1].stat("node.cluster_relayed_out") >= 3);
    assert!(nodes[0].stat("node.cluster_relayed_in") >= 3);

    // A node outside allowed_hosts, with the right key, broadcasting on the same subnet: its
    // heartbeats are dropped and counted, and it never counts as a peer.
    let outsider = Node::start(&net.nodes[3], 4, &key, &format!("{SUBNET}.0/24"));
    eventually(
        "every member rejects the outsider's heartbeats",
        &nodes,
        || {
            nodes
                .iter()
                .all(|n| n.stat("node.cluster_heartbeats_rejected") >= 3)
        },
    );
    for n in &nodes {
        assert_eq!(n.stat("node.cluster_peers_up"), 2);
        assert_eq!(n.stat("node.cluster_peers_down"), 0);
        assert!(!n.log_text().contains(&format!("node {} is up", relay(4))));
    }
    drop(outsider);

    // kill -9 of node 3: nodes 1 and 2 see it down.
    nodes[2].kill9();
    eventually("nodes 1 and 2 see node 3 down", &nodes, || {
        nodes[..2]
            .iter()
            .all(|n| n.stat("node.cluster_peers_up") == 1 && n.stat("node.cluster_peers_down") == 1)
    });
    let down = format!("cluster: node {} is down", relay(3));
    for n in &nodes[..2] {
        assert!(n.log_text().contains(&down), "{}", n.log_text());
    }
    // The session (on node 1) is still served through node 2.
    assert_eq!(
        c2.read(&id)
            .expect("relayed read after the kill")
            .data
            .as_deref(),
        Some(&b"written via node 2"[..])
    );
    drop(nodes);
    drop(net);
}
