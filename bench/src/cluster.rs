//! Several real scd processes as one cluster on this machine: node `i` (1-based) on loopback
//! address `127.0.0.i`, every node on the same ports (client TCP, relay, heartbeat), each with its
//! own data folder and Unix socket, one shared cluster key file, unicast heartbeats to the others
//! (`--peers`). Started, then waited for until every node reports itself ready with every other
//! node up (`node.cluster_ready`, `node.cluster_peers_up` in its statistics).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::constants::{CLUSTER_READY_MS, NODES_MAX};
use crate::load::Endpoint;
use crate::pin::{self, CpuSet};
use crate::scd_client::{self, stat};
use crate::servers::{Probe, ScdPolicy, Server};

/// How a cluster is started.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub policy: ScdPolicy,
    pub ha: bool,
    /// Extra flags for every node (`--scd-args`).
    pub extra: Vec<String>,
    /// `--pin-nodes`: node `i`'s CPUs (node 1 first), each node started with as many cores and
    /// shards as CPUs it got. None: every node may run anywhere, with scd's default cores.
    pub pinned: Option<Vec<CpuSet>>,
}

/// A running cluster. Dropping it kills every node.
pub struct Cluster {
    /// Node 1 first.
    pub nodes: Vec<Server>,
    pub relay_port: u16,
    pub heartbeat_port: u16,
    pub tcp_port: u16,
    pub key_file: PathBuf,
}

/// The loopback address of node `i` (1-based).
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8))
}

/// Three ports (client TCP, relay TCP, heartbeat UDP) free on every node address.
fn free_ports(nodes: usize) -> anyhow::Result<(u16, u16, u16)> {
    'attempt: for _ in 0..50 {
        let mut ports = [0u16; 3];
        // The kernel picks each on node 1's address; the others must have it free too.
        for (k, port) in ports.iter_mut().enumerate() {
            *port = if k == 2 {
                UdpSocket::bind((node_ip(1), 0))?.local_addr()?.port()
            } else {
                TcpListener::bind((node_ip(1), 0))?.local_addr()?.port()
            };
        }
        if ports[0] == ports[1] {
            continue;
        }
        for i in 1..=nodes {
            let ip = node_ip(i);
            let ok = TcpListener::bind((ip, ports[0])).is_ok()
                && TcpListener::bind((ip, ports[1])).is_ok()
                && UdpSocket::bind((ip, ports[2])).is_ok();
            if !ok {
                continue 'attempt;
            }
        }
        return Ok((ports[0], ports[1], ports[2]));
    }
    bail!("found no ports free on every one of 127.0.0.1..{nodes}")
}

/// A fresh random cluster key (64 hex digits) in `dir`.
fn write_key(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .context("reading /dev/urandom")?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("cluster.key");
    std::fs::write(&path, hex).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Cluster {
    /// Starts every node in `dir` (`dir/n1`, `dir/n2`, ...) and waits until the cluster is up.
    pub fn start(program: &Path, dir: &Path, spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            (2..=NODES_MAX).contains(&spec.nodes),
            "a cluster has 2..={NODES_MAX} nodes here"
        );
        anyhow::ensure!(
            spec.pinned
                .as_ref()
                .is_none_or(|sets| sets.len() == spec.nodes),
            "a CPU set for each of the {} nodes",
            spec.nodes
        );
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key_file = write_key(dir)?;
        let (tcp_port, relay_port, heartbeat_port) = free_ports(spec.nodes)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            relay_port,
            heartbeat_port,
            tcp_port,
            key_file,
        };
        for i in 1..=spec.nodes {
            let node_dir = dir.join(format!("n{i}"));
            let args = cluster.node_args(i, &node_dir, spec);
            let unix = node_dir.join("scd.sock");
            let tcp = SocketAddr::new(node_ip(i), tcp_port);
            let cpus = spec.pinned.as_ref().and_then(|sets| sets.get(i - 1));
            let server = Server::spawn_on(
                &format!("scd-n{i}"),
                &node_dir,
                program,
                &args,
                Some(unix),
                Some(tcp),
                cpus,
            )?;
            cluster.nodes.push(server);
        }
        for node in cluster.nodes.iter_mut() {
            node.wait_ready(Probe::ScdHello)?;
        }
        let everyone: Vec<usize> = (0..spec.nodes).collect();
        cluster.wait_up(&everyone, spec.nodes - 1)?;
        Ok(cluster)
    }

    /// The command line of node `i` (1-based).
    fn node_args(&self, i: usize, node_dir: &Path, spec: &ClusterSpec) -> Vec<String> {
        let peers: Vec<String> = (1..=spec.nodes)
            .filter(|&j| j != i)
            .map(|j| node_ip(j).to_string())
            .collect();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--data-dir".into(),
            node_dir.join("data").display().to_string(),
            "--unix-socket".into(),
            node_dir.join("scd.sock").display().to_string(),
            "--tcp-listen".into(),
            SocketAddr::new(node_ip(i), self.tcp_port).to_string(),
            "--storage-model".into(),
            spec.policy.flag().into(),
            "--connections-max".into(),
            "10000".into(),
            "--metrics-listen".into(),
            String::new(),
            "--log-level".into(),
            "warn".into(),
            "--advertise-address".into(),
            node_ip(i).to_string(),
            "--relay-port".into(),
            self.relay_port.to_string(),
            "--heartbeat-port".into(),
            self.heartbeat_port.to_string(),
            "--cluster-key-file".into(),
            self.key_file.display().to_string(),
            "--peers".into(),
            peers.join(","),
            "--ha".into(),
            spec.ha.to_string(),
        ];
        if let Some(set) = spec.pinned.as_ref().and_then(|sets| sets.get(i - 1)) {
            args.extend(pin::scd_core_flags(set, &spec.extra));
        }
        args.extend(spec.extra.iter().cloned());
        args
    }

    /// Node `index` (0-based)'s client endpoint on one transport.
    pub fn endpoint(&self, index: usize, unix: bool) -> anyhow::Result<Endpoint> {
        self.nodes
            .get(index)
            .and_then(|n| n.endpoint(unix))
            .with_context(|| format!("no node {} endpoint", index + 1))
    }

    /// Process IDs of the nodes still running.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.pid()).collect()
    }

    /// The statistics of node `index` (0-based), over its Unix socket.
    pub fn stats(&self, index: usize) -> anyhow::Result<Vec<(String, u64)>> {
        let endpoint = self.endpoint(index, true)?;
        Ok(scd_client::connect(&endpoint, Duration::from_secs(5))?.stats()?)
    }

    /// Waits until each node in `which` (0-based) is ready and counts at least `peers_up` other
    /// nodes up.
    pub fn wait_up(&mut self, which: &[usize], peers_up: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_READY_MS);
        for &i in which {
            loop {
                if !self.nodes[i].running() {
                    bail!("node {} exited:\n{}", i + 1, self.nodes[i].log_tail());
                }
                let stats = self.stats(i)?;
                if stat(&stats, "node.cluster_on") != Some(1) {
                    bail!(
                        "node {} reports no clustering (no node.cluster_on = 1 in its statistics): \
                         this scd does not cluster yet",
                        i + 1
                    );
                }
                let ready = stat(&stats, "node.cluster_ready").unwrap_or(1) == 1;
                let up = stat(&stats, "node.cluster_peers_up").unwrap_or(0);
                if ready && up >= peers_up as u64 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} not ready with {peers_up} peers up within {} ms (ready {ready}, \
                         peers up {up}):\n{}",
                        i + 1,
                        CLUSTER_READY_MS,
                        self.nodes[i].log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kills every node.
    pub fn stop(&mut self) {
        for n in self.nodes.iter_mut() {
            n.stop();
        }
    }

    /// The last log lines of every node, to explain a failure.
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("node {}:\n{}", i + 1, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The command lines, for the report.
    pub fn settings(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.settings.clone())
            .collect::<Vec<_>>()
            .join(" ; ")
    }
}

/// One counter of every node.
pub fn counter_of(stats: &[(String, u64)], name: &str) -> u64 {
    stat(stats, name).unwrap_or(0)
}
