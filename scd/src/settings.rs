//! Settings: one TOML file whose keys explain themselves, every key overridable by a command-line
//! flag, defaults that let `scd` with no arguments start in a local folder. Everything is checked
//! at start; an invalid setting is refused with its key, its value and the reason.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::constants;

/// Every setting of the daemon. The TOML file has one table per section below.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub node: NodeSettings,
    pub local: LocalSettings,
    pub storage: StorageSettings,
    pub locks: LockSettings,
    pub cluster: ClusterSettings,
    pub stats: StatsSettings,
    pub log: LogSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// Folder holding the session store (slab files). Created if missing.
    pub data_dir: PathBuf,
    /// This node's address as other nodes and session IDs name it (the MASTER field of IDs).
    pub advertise_address: String,
    /// Event loops (threads) to run; 0 = one per available core.
    pub cores: usize,
    /// Engine shards the store is split into; 0 = one per core. Fixed once the store exists.
    pub shards: u32,
    /// `auto` (io_uring, or epoll where io_uring is blocked), `io-uring`, or `epoll`.
    pub io_driver: IoDriver,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            data_dir: PathBuf::from("scd-data"),
            advertise_address: "127.0.0.1".to_string(),
            cores: 0,
            shards: 0,
            io_driver: IoDriver::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IoDriver {
    Auto,
    IoUring,
    Epoll,
}

impl fmt::Display for IoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoDriver::Auto => "auto",
            IoDriver::IoUring => "io-uring",
            IoDriver::Epoll => "epoll",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSettings {
    /// Unix socket the PHP module connects to; "" = no Unix socket.
    pub unix_socket: String,
    /// Permission bits of the Unix socket file, in octal.
    pub unix_socket_mode: String,
    /// Loopback TCP address the PHP module may connect to instead; "" = no TCP endpoint.
    pub tcp_listen: String,
    /// Most client connections open at once (whole daemon); more are closed at accept.
    pub connections_max: u32,
    /// Most requests one connection may have in flight (pipelined) before the daemon stops
    /// reading from it until replies have gone out.
    pub requests_in_flight_max: u32,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            unix_socket: "scd-data/scd.sock".to_string(),
            unix_socket_mode: "0660".to_string(),
            tcp_listen: String::new(),
            connections_max: 4096,
            requests_in_flight_max: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `write-through` (acknowledged = on disk) or `delayed-write` (acknowledged = in memory,
    /// on disk within `flush_interval_ms`).
    pub model: StorageModel,
    /// Under delayed-write, the longest a write stays in memory only.
    pub flush_interval_ms: u64,
    /// Largest session (bytes) accepted; a larger write is refused.
    pub session_size_max: u32,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            model: StorageModel::WriteThrough,
            flush_interval_ms: 1000,
            session_size_max: 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StorageModel {
    WriteThrough,
    DelayedWrite,
}

impl fmt::Display for StorageModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageModel::WriteThrough => "write-through",
            StorageModel::DelayedWrite => "delayed-write",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockSettings {
    /// Longest a client may wait for a session lock; longer requests are shortened to this.
    pub wait_max_ms: u32,
    /// Longest lease a client may ask for; a lock whose holder hangs is released after it.
    pub lease_max_ms: u32,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings {
            wait_max_ms: 30_000,
            lease_max_ms: 300_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// TCP port other nodes relay requests to (the PORT field of session IDs).
    pub relay_port: u16,
    /// UDP port of the heartbeats.
    pub heartbeat_port: u16,
    /// Nodes allowed to talk to this one: IP addresses or CIDR masks.
    pub allowed_hosts: Vec<String>,
    /// Keep a copy of every session on a backup node.
    pub ha: bool,
    /// How often this node announces itself and its load.
    pub heartbeat_interval_ms: u64,
    /// File holding the shared cluster key; "" = none: a single node, no relays, no heartbeats.
    /// Setting it turns clustering on (required once HA is on).
    pub cluster_key_file: String,
    /// A node not heard from for this long is down; 0 = 3 × heartbeat_interval_ms + 500.
    pub node_timeout_ms: u64,
    /// Unicast heartbeat targets: `IP` (this node's heartbeat port) or `IP:PORT`, one per other
    /// node, for networks without broadcast.
    pub peers: Vec<String>,
    /// Broadcast heartbeat target: `IP` or `IP:PORT` (e.g. `10.0.0.255`); "" = none.
    pub broadcast: String,
    /// IP the heartbeat socket binds; "" = `node.advertise_address`, or `0.0.0.0` when
    /// `broadcast` is set (a socket bound to a unicast address hears no broadcast; then only one
    /// node per host can use the heartbeat port).
    pub heartbeat_bind: String,
    /// Longest a relay connect or a relayed request may take before the peer counts as
    /// unreachable (then, with HA, the backup is tried).
    pub relay_timeout_ms: u64,
    /// Delayed-write with HA: most replications waiting for one backup; a write that finds the
    /// queue full waits for room (never dropped).
    pub replication_queue_max: u32,
    /// Read leases: a master's lease from a backup lasts `node_timeout_ms − lease_margin_ms`
    /// after its request left, so that it ends before the backup may promote (after the node
    /// timeout without hearing the master). The margin covers clock-rate differences and
    /// processing delays; 0 < margin < node timeout.
    pub lease_margin_ms: u64,
    /// A backup whose connection to the session's master is refused (nothing listens: the
    /// master's process is gone) promotes at once, without waiting for the node timeout.
    /// Assumes firewalls between nodes drop rather than reject; turn off where they reject.
    pub failover_on_refused: bool,
    /// A placement change decided on a node's silence alone (a backup taking a session over
    /// from a master it no longer hears, a master dropping a backup it no longer hears) needs
    /// another live node to witness that silence. With no other live node (a two-node cluster)
    /// it is made only with this on: the survivor goes on alone, and a partition can then give a
    /// session two masters; off, the sessions wait for the other node.
    pub allow_alone: bool,
    /// This node is a witness only: it holds no sessions (session requests are refused, it is
    /// never a backup or a new master) and takes part in the cluster only to count among its
    /// nodes and witness other nodes' silence. A third, small host of a two-node farm, so
    /// that a silent node can be failed over without `allow_alone`.
    pub witness_only: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            relay_port: 34567,
            heartbeat_port: 45678,
            allowed_hosts: vec!["127.0.0.0/8".to_string(), "::1".to_string()],
            ha: false,
            heartbeat_interval_ms: 1000,
            cluster_key_file: String::new(),
            node_timeout_ms: 0,
            peers: Vec::new(),
            broadcast: String::new(),
            heartbeat_bind: String::new(),
            relay_timeout_ms: 2000,
            replication_queue_max: 10_000,
            lease_margin_ms: 500,
            failover_on_refused: true,
            allow_alone: false,
            witness_only: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsSettings {
    /// Address of the Prometheus endpoint (`GET /metrics`); "" = off.
    pub metrics_listen: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// File to append the log to; "" = standard error.
    pub file: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".to_string(),
            file: String::new(),
        }
    }
}

/// One flag per setting; a flag given on the command line wins over the config file.
#[derive(Clone, Debug, Default, Args)]
pub struct SettingsArgs {
    /// Config file (TOML). Without it, the built-in defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// node.data_dir: folder of the session store [default: scd-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// node.advertise_address: this node's address in session IDs [default: 127.0.0.1]
    #[arg(long, value_name = "IP")]
    pub advertise_address: Option<String>,
    /// node.cores: event loops; 0 = one per core [default: 0]
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// node.shards: store shards, fixed once created; 0 = one per core [default: 0]
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// node.io_driver: event loop [default: auto]
    #[arg(long, value_name = "DRIVER")]
    pub io_driver: Option<IoDriver>,
    /// local.unix_socket: path for the PHP module; "" = none [default: scd-data/scd.sock]
    #[arg(long, value_name = "PATH")]
    pub unix_socket: Option<String>,
    /// local.unix_socket_mode: socket file permissions, octal [default: 0660]
    #[arg(long, value_name = "MODE")]
    pub unix_socket_mode: Option<String>,
    /// local.tcp_listen: loopback IP:PORT for the PHP module; "" = none [default: ""]
    #[arg(long, value_name = "ADDR")]
    pub tcp_listen: Option<String>,
    /// local.connections_max: client connections at once [default: 4096]
    #[arg(long, value_name = "N")]
    pub connections_max: Option<u32>,
    /// local.requests_in_flight_max: pipelined requests per connection [default: 64]
    #[arg(long, value_name = "N")]
    pub requests_in_flight_max: Option<u32>,
    /// storage.model: when a write is acknowledged [default: write-through]
    #[arg(long, value_name = "MODEL")]
    pub storage_model: Option<StorageModel>,
    /// storage.flush_interval_ms: delayed-write's longest time in memory [default: 1000]
    #[arg(long, value_name = "MS")]
    pub flush_interval_ms: Option<u64>,
    /// storage.session_size_max: largest session, bytes [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub session_size_max: Option<u32>,
    /// locks.wait_max_ms: longest lock wait a client may ask for [default: 30000]
    #[arg(long, value_name = "MS")]
    pub lock_wait_max_ms: Option<u32>,
    /// locks.lease_max_ms: longest lock lease a client may ask for [default: 300000]
    #[arg(long, value_name = "MS")]
    pub lock_lease_max_ms: Option<u32>,
    /// cluster.relay_port: TCP relay port, also in session IDs [default: 34567]
    #[arg(long, value_name = "PORT")]
    pub relay_port: Option<u16>,
    /// cluster.heartbeat_port: UDP heartbeat port [default: 45678]
    #[arg(long, value_name = "PORT")]
    pub heartbeat_port: Option<u16>,
    /// cluster.allowed_hosts: comma-separated IPs or CIDR masks of the other nodes [default: 127.0.0.0/8,::1]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allowed_hosts: Option<Vec<String>>,
    /// cluster.ha: keep a copy of every session on a backup node [default: false]
    #[arg(long, value_name = "BOOL")]
    pub ha: Option<bool>,
    /// cluster.heartbeat_interval_ms: how often this node announces itself [default: 1000]
    #[arg(long, value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// cluster.cluster_key_file: shared secret, same on every node; set = clustering on [default: ""]
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<String>,
    /// cluster.node_timeout_ms: silence after which a node is down; 0 = 3 x interval + 500 [default: 0]
    #[arg(long, value_name = "MS")]
    pub node_timeout_ms: Option<u64>,
    /// cluster.peers: comma-separated unicast heartbeat targets, IP or IP:PORT [default: ""]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// cluster.broadcast: broadcast heartbeat target, IP or IP:PORT; "" = none [default: ""]
    #[arg(long, value_name = "ADDR")]
    pub broadcast: Option<String>,
    /// cluster.heartbeat_bind: IP the heartbeat socket binds; "" = advertise address, or 0.0.0.0 with a broadcast target [default: ""]
    #[arg(long, value_name = "IP")]
    pub heartbeat_bind: Option<String>,
    /// cluster.relay_timeout_ms: longest relay connect or relayed request [default: 2000]
    #[arg(long, value_name = "MS")]
    pub relay_timeout_ms: Option<u64>,
    /// cluster.replication_queue_max: delayed-write replications queued per backup [default: 10000]
    #[arg(long, value_name = "N")]
    pub replication_queue_max: Option<u32>,
    /// cluster.lease_margin_ms: a read lease lasts node timeout minus this [default: 500]
    #[arg(long, value_name = "MS")]
    pub lease_margin_ms: Option<u64>,
    /// cluster.failover_on_refused: a backup refused by the master's address promotes at once [default: true]
    #[arg(long, value_name = "BOOL")]
    pub failover_on_refused: Option<bool>,
    /// cluster.allow_alone: with no other live node to witness a silent peer, go on without it (a partition can then give two masters) [default: false]
    #[arg(long, value_name = "BOOL")]
    pub allow_alone: Option<bool>,
    /// cluster.witness_only: hold no sessions; only count among the nodes and witness silences (a two-node farm's third host) [default: false]
    #[arg(long, value_name = "BOOL")]
    pub witness_only: Option<bool>,
    /// stats.metrics_listen: IP:PORT for Prometheus GET /metrics; "" = off [default: ""]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// log.level: error, warn, info, debug or trace [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// log.file: append the log here; "" = standard error [default: ""]
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<String>,
}

/// Why settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key} = {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(
    key: &'static str,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> SettingsError {
    SettingsError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Settings {
    /// Parses a TOML document (unknown keys are refused: a typo must not silently fall back to a
    /// default).
    pub fn from_toml(text: &str, path: &Path) -> Result<Settings, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The config file (if any) with the flags applied on top, validated.
    pub fn load(args: &SettingsArgs) -> Result<(Settings, Resolved), SettingsError> {
        let mut settings = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.clone(),
                    source,
                })?;
                Settings::from_toml(&text, path)?
            }
            None => Settings::default(),
        };
        settings.apply(args);
        let resolved = settings.validate()?;
        Ok((settings, resolved))
    }

    /// Applies every flag that was given.
    pub fn apply(&mut self, a: &SettingsArgs) {
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut self.node.data_dir, &a.data_dir);
        set(&mut self.node.advertise_address, &a.advertise_address);
        set(&mut self.node.cores, &a.cores);
        set(&mut self.node.shards, &a.shards);
        set(&mut self.node.io_driver, &a.io_driver);
        set(&mut self.local.unix_socket, &a.unix_socket);
        set(&mut self.local.unix_socket_mode, &a.unix_socket_mode);
        set(&mut self.local.tcp_listen, &a.tcp_listen);
        set(&mut self.local.connections_max, &a.connections_max);
        set(
            &mut self.local.requests_in_flight_max,
            &a.requests_in_flight_max,
        );
        set(&mut self.storage.model, &a.storage_model);
        set(&mut self.storage.flush_interval_ms, &a.flush_interval_ms);
        set(&mut self.storage.session_size_max, &a.session_size_max);
        set(&mut self.locks.wait_max_ms, &a.lock_wait_max_ms);
        set(&mut self.locks.lease_max_ms, &a.lock_lease_max_ms);
        set(&mut self.cluster.relay_port, &a.relay_port);
        set(&mut self.cluster.heartbeat_port, &a.heartbeat_port);
        set(&mut self.cluster.allowed_hosts, &a.allowed_hosts);
        set(&mut self.cluster.ha, &a.ha);
        set(
            &mut self.cluster.heartbeat_interval_ms,
            &a.heartbeat_interval_ms,
        );
        set(&mut self.cluster.cluster_key_file, &a.cluster_key_file);
        set(&mut self.cluster.node_timeout_ms, &a.node_timeout_ms);
        set(&mut self.cluster.peers, &a.peers);
        set(&mut self.cluster.broadcast, &a.broadcast);
        set(&mut self.cluster.heartbeat_bind, &a.heartbeat_bind);
        set(&mut self.cluster.relay_timeout_ms, &a.relay_timeout_ms);
        set(
            &mut self.cluster.replication_queue_max,
            &a.replication_queue_max,
        );
        set(&mut self.cluster.lease_margin_ms, &a.lease_margin_ms);
        set(
            &mut self.cluster.failover_on_refused,
            &a.failover_on_refused,
        );
        set(&mut self.cluster.allow_alone, &a.allow_alone);
        set(&mut self.cluster.witness_only, &a.witness_only);
        set(&mut self.stats.metrics_listen, &a.metrics_listen);
        set(&mut self.log.level, &a.log_level);
        set(&mut self.log.file, &a.log_file);
    }

    /// Checks every key and returns the parsed forms the daemon runs on.
    pub fn validate(&self) -> Result<Resolved, SettingsError> {
        let n = &self.node;
        if n.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data_dir", "", "the store needs a folder"));
        }
        let advertise: IpAddr = n.advertise_address.parse().map_err(|_| {
            invalid(
                "node.advertise_address",
                &n.advertise_address,
                "not an IPv4 or IPv6 address",
            )
        })?;
        if advertise.is_unspecified() || advertise.is_multicast() {
            return Err(invalid(
                "node.advertise_address",
                &n.advertise_address,
                "session IDs name this address as the session's home, so it must be a real \
                 unicast address of this node",
            ));
        }
        if n.cores > constants::CORES_MAX {
            return Err(invalid(
                "node.cores",
                n.cores,
                format!("at most {} (0 = one per core)", constants::CORES_MAX),
            ));
        }
        if n.shards > constants::SHARDS_MAX {
            return Err(invalid(
                "node.shards",
                n.shards,
                format!("at most {} (0 = one per core)", constants::SHARDS_MAX),
            ));
        }
        let cores = if n.cores == 0 {
            std::thread::available_parallelism()
                .map(|c| c.get())
                .unwrap_or(1)
                .min(constants::CORES_MAX)
        } else {
            n.cores
        };
        let shards = if n.shards == 0 {
            cores as u32
        } else {
            n.shards
        };

        let l = &self.local;
        let unix_socket = if l.unix_socket.is_empty() {
            None
        } else {
            if l.unix_socket.len() > constants::UNIX_SOCKET_PATH_MAX {
                return Err(invalid(
                    "local.unix_socket",
                    &l.unix_socket,
                    format!(
                        "a Unix socket path has at most {} bytes",
                        constants::UNIX_SOCKET_PATH_MAX
                    ),
                ));
            }
            Some(PathBuf::from(&l.unix_socket))
        };
        let unix_socket_mode = parse_mode(&l.unix_socket_mode).ok_or_else(|| {
            invalid(
                "local.unix_socket_mode",
                &l.unix_socket_mode,
                "permission bits in octal, at most 0777 (e.g. \"0660\")",
            )
        })?;
        let tcp_listen = if l.tcp_listen.is_empty() {
            None
        } else {
            let addr: SocketAddr = l.tcp_listen.parse().map_err(|_| {
                invalid("local.tcp_listen", &l.tcp_listen, "not an IP:PORT address")
            })?;
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "local.tcp_listen",
                    &l.tcp_listen,
                    "the local endpoint has no authentication, so it only listens on loopback \
                     (127.0.0.1 or ::1)",
                ));
            }
            Some(addr)
        };
        if unix_socket.is_none() && tcp_listen.is_none() {
            return Err(invalid(
                "local.unix_socket",
                "",
                "PHP needs a way in: set local.unix_socket or local.tcp_listen",
            ));
        }
        if l.connections_max == 0 || l.connections_max > constants::CONNECTIONS_MAX_LIMIT {
            return Err(invalid(
                "local.connections_max",
                l.connections_max,
                format!("between 1 and {}", constants::CONNECTIONS_MAX_LIMIT),
            ));
        }
        if l.requests_in_flight_max == 0
            || l.requests_in_flight_max > constants::REQUESTS_IN_FLIGHT_MAX_LIMIT
        {
            return Err(invalid(
                "local.requests_in_flight_max",
                l.requests_in_flight_max,
                format!("between 1 and {}", constants::REQUESTS_IN_FLIGHT_MAX_LIMIT),
            ));
        }

        let s = &self.storage;
        if !(constants::FLUSH_INTERVAL_MS_MIN..=constants::FLUSH_INTERVAL_MS_MAX)
            .contains(&s.flush_interval_ms)
        {
            return Err(invalid(
                "storage.flush_interval_ms",
                s.flush_interval_ms,
                format!(
                    "between {} and {} ms",
                    constants::FLUSH_INTERVAL_MS_MIN,
                    constants::FLUSH_INTERVAL_MS_MAX
                ),
            ));
        }
        if s.session_size_max == 0 || s.session_size_max > constants::SESSION_SIZE_MAX_LIMIT {
            return Err(invalid(
                "storage.session_size_max",
                s.session_size_max,
                format!("between 1 and {} bytes", constants::SESSION_SIZE_MAX_LIMIT),
            ));
        }

        let k = &self.locks;
        if k.wait_max_ms > constants::LOCK_WAIT_MS_MAX {
            return Err(invalid(
                "locks.wait_max_ms",
                k.wait_max_ms,
                format!("at most {} ms", constants::LOCK_WAIT_MS_MAX),
            ));
        }
        if k.lease_max_ms == 0 || k.lease_max_ms > constants::LOCK_LEASE_MS_MAX {
            return Err(invalid(
                "locks.lease_max_ms",
                k.lease_max_ms,
                format!("between 1 and {} ms", constants::LOCK_LEASE_MS_MAX),
            ));
        }

        let c = &self.cluster;
        if c.relay_port == 0 {
            return Err(invalid(
                "cluster.relay_port",
                0,
                "session IDs carry it: 1 to 65535",
            ));
        }
        if c.heartbeat_port == 0 {
            return Err(invalid("cluster.heartbeat_port", 0, "1 to 65535"));
        }
        if c.relay_port == c.heartbeat_port {
            return Err(invalid(
                "cluster.heartbeat_port",
                c.heartbeat_port,
                "must differ from cluster.relay_port",
            ));
        }
        let mut allowed_hosts = Vec::with_capacity(c.allowed_hosts.len());
        for h in &c.allowed_hosts {
            let net = IpNet::parse(h).ok_or_else(|| {
                invalid(
                    "cluster.allowed_hosts",
                    h,
                    "not an IP address or CIDR mask (e.g. 10.0.0.0/24, fd00::/64)",
                )
            })?;
            allowed_hosts.push(net);
        }
        if !(constants::HEARTBEAT_INTERVAL_MS_MIN..=constants::HEARTBEAT_INTERVAL_MS_MAX)
            .contains(&c.heartbeat_interval_ms)
        {
            return Err(invalid(
                "cluster.heartbeat_interval_ms",
                c.heartbeat_interval_ms,
                format!(
                    "between {} and {} ms",
                    constants::HEARTBEAT_INTERVAL_MS_MIN,
                    constants::HEARTBEAT_INTERVAL_MS_MAX
                ),
            ));
        }
        let cluster_secret = if !c.cluster_key_file.is_empty() {
            let bytes = std::fs::read(&c.cluster_key_file).map_err(|e| {
                invalid(
                    "cluster.cluster_key_file",
                    &c.cluster_key_file,
                    e.to_string(),
                )
            })?;
            // A key file written with `echo` ends in a newline; it is not part of the secret.
            let trimmed = bytes.trim_ascii_end().to_vec();
            if let Err(e) = scd_wire::mac::ClusterKey::from_secret(&trimmed) {
                return Err(invalid(
                    "cluster.cluster_key_file",
                    &c.cluster_key_file,
                    e.to_string(),
                ));
            }
            Some(trimmed)
        } else if c.ha {
            return Err(invalid(
                "cluster.ha",
                true,
                "HA sends sessions to other nodes, which needs cluster.cluster_key_file",
            ));
        } else if c.witness_only {
            return Err(invalid(
                "cluster.witness_only",
                true,
                "a witness serves a cluster, which needs cluster.cluster_key_file",
            ));
        } else {
            None
        };
        let node_timeout_ms = if c.node_timeout_ms == 0 {
            c.heartbeat_interval_ms * 3 + 500
        } else {
            c.node_timeout_ms
        };
        if node_timeout_ms <= c.heartbeat_interval_ms * 2 || node_timeout_ms > 3_600_000 {
            return Err(invalid(
                "cluster.node_timeout_ms",
                c.node_timeout_ms,
                format!(
                    "more than two heartbeat intervals ({} ms) and at most 3600000 (0 = 3 × \
                     interval + 500)",
                    c.heartbeat_interval_ms * 2
                ),
            ));
        }
        if c.lease_margin_ms == 0 || c.lease_margin_ms >= node_timeout_ms {
            return Err(invalid(
                "cluster.lease_margin_ms",
                c.lease_margin_ms,
                format!(
                    "more than 0 and less than the node timeout ({node_timeout_ms} ms): a read \
                     lease lasts the node timeout minus this margin"
                ),
            ));
        }
        let target = |key: &'static str, text: &str| -> Result<SocketAddr, SettingsError> {
            if let Ok(a) = text.parse::<SocketAddr>() {
                if a.port() == 0 {
                    return Err(invalid(key, text, "port 0"));
                }
                return Ok(a);
            }
            text.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, c.heartbeat_port))
                .map_err(|_| invalid(key, text, "not an IP or IP:PORT address"))
        };
        let mut peers = Vec::with_capacity(c.peers.len());
        for p in &c.peers {
            peers.push(target("cluster.peers", p)?);
        }
        if peers.len() > constants::PEERS_MAX {
            return Err(invalid(
                "cluster.peers",
                peers.len(),
                format!("at most {} peers", constants::PEERS_MAX),
            ));
        }
        let broadcast = if c.broadcast.is_empty() {
            None
        } else {
            Some(target("cluster.broadcast", &c.broadcast)?)
        };
        let heartbeat_bind = if c.heartbeat_bind.is_empty() {
            match broadcast {
                // A socket bound to a unicast address never receives broadcasts: with a
                // broadcast target, "" means every address (so only one node per host).
                Some(SocketAddr::V4(_)) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                _ => advertise,
            }
        } else {
            c.heartbeat_bind.parse::<IpAddr>().map_err(|_| {
                invalid(
                    "cluster.heartbeat_bind",
                    &c.heartbeat_bind,
                    "not an IP address",
                )
            })?
        };
        if !(constants::RELAY_TIMEOUT_MS_MIN..=constants::RELAY_TIMEOUT_MS_MAX)
            .contains(&c.relay_timeout_ms)
        {
            return Err(invalid(
                "cluster.relay_timeout_ms",
                c.relay_timeout_ms,
                format!(
                    "between {} and {} ms",
                    constants::RELAY_TIMEOUT_MS_MIN,
                    constants::RELAY_TIMEOUT_MS_MAX
                ),
            ));
        }
        if c.replication_queue_max == 0 || c.replication_queue_max > 1_000_000 {
            return Err(invalid(
                "cluster.replication_queue_max",
                c.replication_queue_max,
                "between 1 and 1000000",
            ));
        }
        if cluster_secret.is_some() && peers.is_empty() && broadcast.is_none() {
            return Err(invalid(
                "cluster.peers",
                "",
                "clustering is on (cluster_key_file is set) but heartbeats go nowhere: set \
                 cluster.peers and/or cluster.broadcast",
            ));
        }
        let cluster = cluster_secret.map(|secret| ClusterResolved {
            secret,
            node_timeout_ms,
            peers,
            broadcast,
            heartbeat_bind,
        });

        let metrics_listen = if self.stats.metrics_listen.is_empty() {
            None
        } else {
            Some(
                self.stats
                    .metrics_listen
                    .parse::<SocketAddr>()
                    .map_err(|_| {
                        invalid(
                            "stats.metrics_listen",
                            &self.stats.metrics_listen,
                            "not an IP:PORT address",
                        )
                    })?,
            )
        };

        let log_level: log::LevelFilter = match self.log.level.as_str() {
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            _ => {
                return Err(invalid(
                    "log.level",
                    &self.log.level,
                    "one of error, warn, info, debug, trace",
                ));
            }
        };
        let log_file = if self.log.file.is_empty() {
            None
        } else {
            Some(PathBuf::from(&self.log.file))
        };

        Ok(Resolved {
            cores,
            shards,
            advertise,
            unix_socket,
            unix_socket_mode,
            tcp_listen,
            allowed_hosts,
            cluster,
            metrics_listen,
            log_level,
            log_file,
        })
    }

    /// The settings as TOML (what `scd check-config` prints and the start-up log summarises).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print settings: {e}\n"))
    }
}

/// The parsed, checked forms of the settings the daemon runs on.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub cores: usize,
    pub shards: u32,
    pub advertise: IpAddr,
    pub unix_socket: Option<PathBuf>,
    pub unix_socket_mode: u32,
    pub tcp_listen: Option<SocketAddr>,
    pub allowed_hosts: Vec<IpNet>,
    /// Set when clustering is on (a cluster key is configured).
    pub cluster: Option<ClusterResolved>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
}

/// The cluster settings in the forms the daemon runs on (only when clustering is on).
#[derive(Clone)]
pub struct ClusterResolved {
    /// The shared secret's bytes (trailing whitespace of the file removed).
    pub secret: Vec<u8>,
    pub node_timeout_ms: u64,
    /// Unicast heartbeat targets.
    pub peers: Vec<SocketAddr>,
    /// Broadcast heartbeat target.
    pub broadcast: Option<SocketAddr>,
    /// IP the heartbeat socket binds.
    pub heartbeat_bind: IpAddr,
}

/// Never print the secret.
impl fmt::Debug for ClusterResolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterResolved")
            .field("node_timeout_ms", &self.node_timeout_ms)
            .field("peers", &self.peers)
            .field("broadcast", &self.broadcast)
            .field("heartbeat_bind", &self.heartbeat_bind)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Whether `ip` may talk to this node (heartbeats, relay connections).
    pub fn host_allowed(resolved: &Resolved, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        resolved.allowed_hosts.iter().any(|n| n.contains(ip))
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let mode = u32::from_str_radix(s, 8).ok()?;
    (mode <= 0o777).then_some(mode)
}

/// An IP network: an address and a prefix length (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().ok()?;
        let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            None => bits,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let v: u8 = p.parse().ok()?;
                if v > bits {
                    return None;
                }
                v
            }
        };
        Some(IpNet { addr, prefix_len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(e: SettingsError) -> &'static str {
        match e {
            SettingsError::Invalid { key, .. } => key,
            other => panic!("expected an invalid-key error, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_follow_the_seed() {
        let s = Settings::default();
        let r = s.validate().expect("defaults must validate");
        assert_eq!(s.cluster.relay_port, 34567);
        assert_eq!(s.cluster.heartbeat_port, 45678);
        assert_eq!(s.storage.model, StorageModel::WriteThrough);
        assert_eq!(
            r.unix_socket.as_deref(),
            Some(Path::new("scd-data/scd.sock"))
        );
        assert_eq!(r.unix_socket_mode, 0o660);
        assert!(r.cores >= 1);
        assert_eq!(r.shards as usize, r.cores);
    }

    #[test]
    fn example_config_parses_and_validates_apart_from_its_key_file() {
        let text = include_str!("../scd.example.toml");
        let s = Settings::from_toml(text, Path::new("scd.example.toml")).expect("example parses");
        assert_eq!(s.node.data_dir, PathBuf::from("/var/lib/scd"));
        assert_eq!(s.local.unix_socket, "/run/scd/scd.sock");
        assert_eq!(s.cluster.relay_port, 34567);
        // The example names a key file that exists only on a real node; everything else is valid.
        let mut s2 = s.clone();
        s2.cluster.cluster_key_file = String::new();
        s2.cluster.ha = false;
        s2.validate().expect("example validates");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Settings::from_toml("[node]\ndata_dri = \"x\"\n", Path::new("t.toml")).unwrap_err();
        assert!(
            matches!(e, SettingsError::Parse { ref message, .. } if message.contains("data_dri"))
        );
    }

    #[test]
    fn wrong_types_are_refused_with_the_key() {
        let e = Settings::from_toml("[cluster]\nrelay_port = \"x\"\n", Path::new("t.toml"))
            .unwrap_err();
        assert!(
            matches!(e, SettingsError::Parse { ref message, .. } if message.contains("relay_port"))
        );
    }

    #[test]
    fn flags_override_the_file() {
        let mut s =
            Settings::from_toml("[cluster]\nrelay_port = 4000\n", Path::new("t.toml")).unwrap();
        let args = SettingsArgs {
            relay_port: Some(5000),
            ..Default::default()
        };
        s.apply(&args);
        assert_eq!(s.cluster.relay_port, 5000);
    }

    #[test]
    fn invalid_values_name_their_key() {
        type Mutation = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "node.advertise_address",
                Box::new(|s| s.node.advertise_address = "0.0.0.0".into()),
            ),
            (
                "node.advertise_address",
                Box::new(|s| s.node.advertise_address = "host".into()),
            ),
            ("node.cores", Box::new(|s| s.node.cores = 100_000)),
            (
                "local.tcp_listen",
                Box::new(|s| s.local.tcp_listen = "0.0.0.0:80".into()),
            ),
            (
                "local.tcp_listen",
                Box::new(|s| s.local.tcp_listen = "nonsense".into()),
            ),
            (
                "local.unix_socket_mode",
                Box::new(|s| s.local.unix_socket_mode = "0999".into()),
            ),
            (
                "local.unix_socket_mode",
                Box::new(|s| s.local.unix_socket_mode = "7777".into()),
            ),
            (
                "local.unix_socket",
                Box::new(|s| s.local.unix_socket = "x".repeat(200)),
            ),
            (
                "local.unix_socket",
                Box::new(|s| s.local.unix_socket = String::new()),
            ),
            (
                "storage.flush_interval_ms",
                Box::new(|s| s.storage.flush_interval_ms = 0),
            ),
            (
                "storage.session_size_max",
                Box::new(|s| s.storage.session_size_max = 0),
            ),
            ("cluster.relay_port", Box::new(|s| s.cluster.relay_port = 0)),
            (
                "cluster.heartbeat_port",
                Box::new(|s| s.cluster.heartbeat_port = 34567),
            ),
            (
                "cluster.allowed_hosts",
                Box::new(|s| s.cluster.allowed_hosts = vec!["10.0.0.0/33".into()]),
            ),
            (
                "cluster.heartbeat_interval_ms",
                Box::new(|s| s.cluster.heartbeat_interval_ms = 1),
            ),
            ("cluster.ha", Box::new(|s| s.cluster.ha = true)),
            (
                "cluster.witness_only",
                Box::new(|s| s.cluster.witness_only = true),
            ),
            (
                "cluster.cluster_key_file",
                Box::new(|s| s.cluster.cluster_key_file = "/nonexistent/k".into()),
            ),
            (
                "stats.metrics_listen",
                Box::new(|s| s.stats.metrics_listen = "x".into()),
            ),
            ("log.level", Box::new(|s| s.log.level = "loud".into())),
            (
                "cluster.relay_timeout_ms",
                Box::new(|s| s.cluster.relay_timeout_ms = 0),
            ),
            (
                "cluster.node_timeout_ms",
                Box::new(|s| s.cluster.node_timeout_ms = 1500),
            ),
            (
                "cluster.peers",
                Box::new(|s| s.cluster.peers = vec!["10.0.0.x".into()]),
            ),
            (
                "cluster.broadcast",
                Box::new(|s| s.cluster.broadcast = "10.0.0.255:0".into()),
            ),
            (
                "cluster.heartbeat_bind",
                Box::new(|s| s.cluster.heartbeat_bind = "any".into()),
            ),
            (
                "cluster.replication_queue_max",
                Box::new(|s| s.cluster.replication_queue_max = 0),
            ),
            (
                "cluster.lease_margin_ms",
                Box::new(|s| s.cluster.lease_margin_ms = 0),
            ),
            (
                "cluster.lease_margin_ms",
                // The default node timeout is 3 × 1000 + 500.
                Box::new(|s| s.cluster.lease_margin_ms = 3500),
            ),
            (
                "cluster.lease_margin_ms",
                Box::new(|s| {
                    s.cluster.node_timeout_ms = 2500;
                    s.cluster.lease_margin_ms = 2600;
                }),
            ),
            ("locks.lease_max_ms", Box::new(|s| s.locks.lease_max_ms = 0)),
        ];
        for (key, f) in cases {
            let mut s = Settings::default();
            f(&mut s);
            let e = s.validate().expect_err(key);
            assert_eq!(key_of(e), key);
        }
    }

    #[test]
    fn error_message_names_key_value_and_reason() {
        let mut s = Settings::default();
        s.local.tcp_listen = "0.0.0.0:80".into();
        let text = s.validate().unwrap_err().to_string();
        assert!(text.contains("local.tcp_listen"), "{text}");
        assert!(text.contains("0.0.0.0:80"), "{text}");
        assert!(text.contains("loopback"), "{text}");
    }

    #[test]
    fn a_cluster_key_turns_clustering_on() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
        let mut s = Settings::default();
        s.cluster.cluster_key_file = key.display().to_string();
        // Heartbeats must go somewhere.
        assert_eq!(key_of(s.validate().unwrap_err()), "cluster.peers");
        s.cluster.peers = vec!["127.0.0.2".into(), "127.0.0.3:4000".into()];
        s.cluster.ha = true;
        let r = s.validate().unwrap();
        let c = r.cluster.expect("clustering on");
        assert_eq!(c.secret, b"0123456789abcdef0123");
        assert_eq!(c.node_timeout_ms, 3500);
        assert_eq!(c.peers[0], "127.0.0.2:45678".parse().unwrap());
        assert_eq!(c.peers[1], "127.0.0.3:4000".parse().unwrap());
        assert_eq!(c.heartbeat_bind, r.advertise);
        // With a broadcast target, the socket binds every address (to hear broadcasts).
        s.cluster.broadcast = "10.0.0.255".into();
        let c = s.validate().unwrap().cluster.unwrap();
        assert_eq!(c.broadcast, Some("10.0.0.255:45678".parse().unwrap()));
        assert_eq!(c.heartbeat_bind, "0.0.0.0".parse::<IpAddr>().unwrap());
        s.cluster.broadcast.clear();
        assert!(
            !format!("{c:?}").contains("0123456789"),
            "the secret is never printed"
        );
        // A short secret is refused with the key's name.
        std::fs::write(&key, "short").unwrap();
        assert_eq!(
            key_of(s.validate().unwrap_err()),
            "cluster.cluster_key_file"
        );
        // No key: a single node.
        let r = Settings::default().validate().unwrap();
        assert!(r.cluster.is_none());
    }

    #[test]
    fn allowed_hosts_match_mapped_addresses() {
        let r = Settings::default().validate().unwrap();
        assert!(Settings::host_allowed(&r, "127.0.0.3".parse().unwrap()));
        assert!(Settings::host_allowed(
            &r,
            "::ffff:127.0.0.3".parse().unwrap()
        ));
        assert!(!Settings::host_allowed(&r, "10.0.0.3".parse().unwrap()));
    }

    #[test]
    fn ip_networks() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one = IpNet::parse("::1").unwrap();
        assert_eq!(one.prefix_len, 128);
        assert!(one.contains("::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/").is_none());
        assert!(IpNet::parse("10.0.0.0/+8").is_none());
        assert!(IpNet::parse("fd00::/129").is_none());
    }

    #[test]
    fn printed_settings_parse_back_identically() {
        let s = Settings::default();
        let back = Settings::from_toml(&s.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(s, back);
    }
}
