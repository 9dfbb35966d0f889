//! The daemon's main thread: binds the endpoints, starts one event-loop thread per core, waits for
//! them to open their shards, then waits for SIGTERM/SIGINT and shuts down in order: stop accepting
//! → finish in-flight requests → flush every shard → exit 0 (and remove the Unix socket file).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{error, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::constants;
use crate::core::{self, CoreEvent, CoreMsg, CoreStart};
use crate::settings::{Resolved, Settings};

/// Why the daemon could not start (it then exits non-zero with this message).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data folder {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("cannot read or create node ID file {path}: {source}")]
    NodeId { path: PathBuf, source: io::Error },
    #[error("another scd is already serving the Unix socket {0}")]
    SocketInUse(PathBuf),
    #[error("cannot listen on Unix socket {path}: {source}")]
    UnixListen { path: PathBuf, source: io::Error },
    #[error("cannot listen on TCP {addr}: {source}")]
    TcpListen { addr: SocketAddr, source: io::Error },
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen { addr: SocketAddr, source: io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start core thread {core}: {source}")]
    Thread { core: usize, source: io::Error },
    #[error("core {core} failed to start: {reason}")]
    Core { core: usize, reason: String },
    #[error("cannot listen for relays on {addr}: {source}")]
    RelayListen { addr: SocketAddr, source: io::Error },
    #[error("cannot bind the heartbeat socket {addr}: {source}")]
    HeartbeatBind { addr: SocketAddr, source: io::Error },
    #[error("cluster key: {0}")]
    ClusterKey(String),
    #[error("placement journal: {0}")]
    Journal(String),
    #[error("cannot start the cluster thread: {0}")]
    ClusterThread(io::Error),
}

/// What every core knows about the node. Read-only after start, except the connection count.
pub struct Node {
    pub settings: Settings,
    pub resolved: Resolved,
    /// This node's ID (kept in the data folder, so it survives restarts).
    pub node_id: u64,
    /// This node's relay endpoint: the MASTER and PORT of every session ID it creates.
    pub relay_addr: SocketAddr,
    /// Client connections open right now, on all cores (checked against `connections_max`).
    pub connections_open: AtomicU32,
    /// Round-robin counter: the core that serves the next accepted connection.
    pub next_core: AtomicUsize,
    /// Set when clustering is on (a cluster key is configured).
    pub cluster: Option<crate::cluster::ClusterShared>,
}

/// Runs the daemon until SIGTERM/SIGINT. Returns once everything is flushed.
pub fn run(settings: Settings, resolved: Resolved) -> Result<(), StartError> {
    info!(
        "scd {} starting (pid {}), {} cores, {} shards",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        resolved.cores,
        resolved.shards
    );
    info!("settings: {}", one_line(&settings));
    match &resolved.cluster {
        Some(c) => info!(
            "clustering on: relay {}:{}, heartbeats on {}:{} to {} peers{}, node timeout {} ms, HA {}",
            resolved.advertise,
            settings.cluster.relay_port,
            c.heartbeat_bind,
            settings.cluster.heartbeat_port,
            c.peers.len(),
            c.broadcast
                .map_or(String::new(), |b| format!(" and broadcast {b}")),
            c.node_timeout_ms,
            if settings.cluster.ha { "on" } else { "off" }
        ),
        None => info!(
            "clustering off (no cluster.cluster_key_file): this node serves its own sessions only"
        ),
    }

    let data_dir = settings.node.data_dir.clone();
    fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let node_id = node_id(&data_dir)?;
    // The placement journal (clustering on): read and compacted before anything is served.
    let mut journal = None;
    if resolved.cluster.is_some() {
        let (j, recovered) =
            crate::cluster::journal::Journal::open(&data_dir).map_err(StartError::Journal)?;
        if let Some(why) = &recovered.stopped {
            log::warn!(
                "cluster: placement journal: {why}: dropped its last {} bytes (a write cut by \
                 a crash), kept {} records",
                recovered.dropped,
                recovered.records
            );
        }
        info!(
            "cluster: placement journal: {} placements and {} lease-denial marks restored",
            recovered.live.placements.len(),
            recovered.live.denied.len()
        );
        journal = Some((j, recovered.live));
    }

    // Signals are registered before any thread starts, so every thread inherits the mask state
    // and a signal that arrives during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR1]).map_err(StartError::Signals)?;

    let (unix, unix_lock) = match &resolved.unix_socket {
        Some(path) => {
            let (l, lock) = bind_unix(path, resolved.unix_socket_mode)?;
            (Some(l), Some(lock))
        }
        None => (None, None),
    };
    let tcp = match resolved.tcp_listen {
        Some(addr) => {
            Some(bind_tcp(addr).map_err(|source| StartError::TcpListen { addr, source })?)
        }
        None => None,
    };
    let metrics = match resolved.metrics_listen {
        Some(addr) => {
            Some(bind_tcp(addr).map_err(|source| StartError::MetricsListen { addr, source })?)
        }
        None => None,
    };
    let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());

    let relay_addr = SocketAddr::new(resolved.advertise, settings.cluster.relay_port);
    let mut cluster_parts = None;
    let cluster_shared = match &resolved.cluster {
        Some(c) => {
            let key = scd_wire::mac::ClusterKey::from_secret(&c.secret)
                .map_err(|e| StartError::ClusterKey(e.to_string()))?;
            let relay = bind_tcp(relay_addr).map_err(|source| StartError::RelayListen {
                addr: relay_addr,
                source,
            })?;
            let hb_addr = SocketAddr::new(c.heartbeat_bind, settings.cluster.heartbeat_port);
            let hb_err = |source| StartError::HeartbeatBind {
                addr: hb_addr,
                source,
            };
            let udp = std::net::UdpSocket::bind(hb_addr).map_err(hb_err)?;
            if c.broadcast.is_some() {
                udp.set_broadcast(true).map_err(hb_err)?;
            }
            udp.set_nonblocking(true).map_err(hb_err)?;
            let (tx, rx) = flume::bounded(constants::CORE_CHANNEL_DEPTH);
            cluster_parts = Some((rx, relay, udp));
            Some(crate::cluster::ClusterShared {
                tx,
                key,
                counters: Default::default(),
                view: std::sync::Mutex::new(Vec::new()),
                draining: std::sync::atomic::AtomicBool::new(false),
                irregular: std::sync::Mutex::new(std::collections::HashSet::new()),
                irregular_count: std::sync::atomic::AtomicUsize::new(0),
                dw_copies: Default::default(),
                leases: Default::default(),
            })
        }
        None => None,
    };

    let node = Arc::new(Node {
        relay_addr,
        settings,
        resolved,
        node_id,
        connections_open: AtomicU32::new(0),
        next_core: AtomicUsize::new(0),
        cluster: cluster_shared,
    });

    let cores = node.resolved.cores;
    let mut senders = Vec::with_capacity(cores);
    let mut receivers = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (tx, rx) = flume::bounded::<CoreMsg>(constants::CORE_CHANNEL_DEPTH);
        senders.push(tx);
        receivers.push(rx);
    }
    let (events_tx, events_rx) = mpsc::channel::<CoreEvent>();
    let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(cores);
    for (index, inbox) in receivers.into_iter().enumerate() {
        let start = CoreStart {
            index,
            node: node.clone(),
            peers: senders.clone(),
            inbox,
            events: events_tx.clone(),
            unix: clone_listener(unix.as_ref(), UnixListener::try_clone),
            tcp: clone_listener(tcp.as_ref(), TcpListener::try_clone),
            // One core serves the metrics endpoint; scrapes are rare and cheap.
            metrics: if index == 0 {
                metrics.as_ref().and_then(|l| l.try_clone().ok())
            } else {
                None
            },
        };
        let handle = std::thread::Builder::new()
            .name(format!("core-{index}"))
            .spawn(move || core::run(start))
            .map_err(|source| StartError::Thread {
                core: index,
                source,
            })?;
        threads.push(handle);
    }
    drop(events_tx);
    let cluster_thread = match cluster_parts {
        Some((inbox, relay, heartbeat)) => {
            let (journal, recovered) = journal.take().ok_or_else(|| {
                StartError::Journal("clustering on without a journal".to_string())
            })?;
            let start = crate::cluster::ClusterStart {
                node: node.clone(),
                inbox,
                cores: senders.clone(),
                relay,
                heartbeat,
                started_ms: crate::core::clock_ms(),
                journal,
                recovered,
            };
            Some(
                std::thread::Builder::new()
                    .name("cluster".into())
                    .spawn(move || crate::cluster::run(start))
                    .map_err(StartError::ClusterThread)?,
            )
        }
        None => None,
    };
    // The main thread keeps no listener: the cores own their clones, so closing them stops accepts.
    drop(unix);
    drop(tcp);
    drop(metrics);

    // Wait until every core has opened its shards (recovery) and is serving.
    let mut ready = 0;
    let mut failure: Option<StartError> = None;
    while ready < cores {
        match events_rx.recv() {
            Ok(CoreEvent::Ready { core, summary }) => {
                info!("core {core} ready: {summary}");
                ready += 1;
            }
            Ok(CoreEvent::Failed { core, reason }) => {
                error!("core {core} failed to start: {reason}");
                failure = Some(StartError::Core { core, reason });
                break;
            }
            Ok(CoreEvent::Drained { .. }) => {}
            Err(_) => {
                failure = Some(StartError::Core {
                    core: 0,
                    reason: "a core thread ended".into(),
                });
                break;
            }
        }
    }
    if let Some(e) = failure {
        stop_cores(&senders, &events_rx, cores);
        for t in threads {
            let _ = t.join();
        }
        stop_cluster(&node, cluster_thread);
        remove_socket(&node);
        return Err(e);
    }

    info!(
        "ready: unix socket {}, tcp {}, metrics {}, node {} (id {:016x})",
        node.resolved
            .unix_socket
            .as_ref()
            .map_or("off".to_string(), |p| p.display().to_string()),
        tcp_addr.map_or("off".to_string(), |a| a.to_string()),
        metrics_addr.map_or("off".to_string(), |a| a.to_string()),
        node.relay_addr,
        node.node_id
    );

    if let Some(sig) = signals.forever().next() {
        if sig == SIGUSR1 {
            drain(&node);
        } else {
            let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
            info!("{name} received: stopping (no new connections; finishing requests in flight)");
        }
    }

    stop_cores(&senders, &events_rx, cores);
    for (i, t) in threads.into_iter().enumerate() {
        if t.join().is_err() {
            error!("core {i} ended abnormally");
        }
    }
    stop_cluster(&node, cluster_thread);
    remove_socket(&node);
    // Held until the socket file is gone, so a new daemon never removes a live socket.
    drop(unix_lock);
    info!("stopped: every shard flushed");
    Ok(())
}

/// SIGUSR1 (`scd drain`): hand every session to the other nodes, then stop as on SIGTERM. The
/// node keeps serving (relaying to the new masters) while it hands off.
fn drain(node: &Node) {
    let Some(c) = &node.cluster else {
        warn!("SIGUSR1 (drain) received, but clustering is off: nothing to hand off; stopping");
        return;
    };
    info!("SIGUSR1 received: draining (handing every session to the other nodes), then stopping");
    let (tx, rx) = mpsc::channel();
    if c.tx.send(crate::cluster::ClusterMsg::Drain(tx)).is_err() {
        error!("drain: the cluster thread is gone");
        return;
    }
    match rx.recv_timeout(Duration::from_secs(constants::DRAIN_SECS_MAX)) {
        Ok(summary) => info!("drain finished: {summary}; stopping"),
        Err(_) => error!(
            "drain did not finish within {} s; stopping anyway",
            constants::DRAIN_SECS_MAX
        ),
    }
}

/// Ends the cluster thread (after the cores: in-flight relayed requests were answered).
fn stop_cluster(node: &Node, thread: Option<JoinHandle<()>>) {
    if let (Some(c), Some(t)) = (&node.cluster, thread) {
        let _ = c.tx.send(crate::cluster::ClusterMsg::Stop);
        if t.join().is_err() {
            error!("the cluster thread ended abnormally");
        }
    }
}

/// Two phases so that no core stops serving its shards while another still has connections that
/// may send it requests: all cores stop accepting and drain their connections, then all finish.
fn stop_cores(
    senders: &[flume::Sender<CoreMsg>],
    events: &mpsc::Receiver<CoreEvent>,
    cores: usize,
) {
    for tx in senders {
        let _ = tx.send(CoreMsg::StopAccepting);
    }
    let mut drained = 0;
    while drained < cores {
        match events.recv_timeout(Duration::from_millis(constants::SHUTDOWN_DRAIN_MS_MAX * 2)) {
            Ok(CoreEvent::Drained { core, forced }) => {
                if forced > 0 {
                    warn!("core {core}: closed {forced} connections that did not finish in time");
                }
                drained += 1;
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                warn!("a core did not report drained in time; finishing anyway");
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for tx in senders {
        let _ = tx.send(CoreMsg::Finish);
    }
}

fn clone_listener<L>(l: Option<&L>, f: impl Fn(&L) -> io::Result<L>) -> Option<L> {
    l.and_then(|l| match f(l) {
        Ok(c) => Some(c),
        Err(e) => {
            error!("cannot share a listener with a core: {e}");
            None
        }
    })
}

/// Binds a TCP listener. A port still held for a moment by a daemon that was just killed (its
/// io_uring tears down asynchronously) is retried for a few seconds before giving up.
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut tries = 0;
    let l = loop {
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < constants::BIND_RETRIES => {
                if tries == 0 {
                    warn!(
                        "{addr} is in use; retrying (a daemon that just stopped may still hold it)"
                    );
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(constants::BIND_RETRY_MS));
            }
            Err(e) => return Err(e),
        }
    };
    // The epoll fallback needs non-blocking sockets; io_uring does not mind either way.
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Binds the Unix socket. A lock file beside it (`<socket>.lock`, held for the daemon's life)
/// says whether another daemon serves this path; if none does, a socket file left at the path
/// is stale (a crash) and is replaced. Probing by connecting is not enough: right after a
/// `kill -9`, the dead daemon's io_uring may still hold the listening socket for a moment.
fn bind_unix(path: &Path, mode: u32) -> Result<(UnixListener, fs::File), StartError> {
    let unix_err = |source| StartError::UnixListen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(unix_err)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(unix_err)?;
    if !crate::sys::try_lock_exclusive(&lock).map_err(unix_err)? {
        return Err(StartError::SocketInUse(path.to_path_buf()));
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(unix_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to remove it",
            )));
        }
        fs::remove_file(path).map_err(unix_err)?;
        info!(
            "removed stale socket file {} (left by a daemon that did not stop cleanly)",
            path.display()
        );
    }
    let l = UnixListener::bind(path).map_err(unix_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(unix_err)?;
    l.set_nonblocking(true).map_err(unix_err)?;
    Ok((l, lock))
}

fn remove_socket(node: &Node) {
    if let Some(path) = &node.resolved.unix_socket {
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!("cannot remove socket file {}: {e}", path.display());
            }
        }
    }
}

/// The node ID lives in `data_dir/node-id` (16 hex digits), drawn from the CSPRNG on first start.
fn node_id(dir: &Path) -> Result<u64, StartError> {
    let path = dir.join("node-id");
    let err = |source| StartError::NodeId {
        path: path.clone(),
        source,
    };
    match fs::File::open(&path) {
        Ok(mut f) => {
            let mut text = String::new();
            Read::by_ref(&mut f)
                .take(64)
                .read_to_string(&mut text)
                .map_err(err)?;
            let t = text.trim();
            if t.len() == 16 {
                if let Ok(id) = u64::from_str_radix(t, 16) {
                    if id != 0 {
                        return Ok(id);
                    }
                }
            }
            Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                "expected 16 hex digits",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut id = 0;
            while id == 0 {
                id = getrandom::u64().map_err(|e| err(io::Error::other(e.to_string())))?;
            }
            let tmp = dir.join("node-id.tmp");
            let mut f = fs::File::create(&tmp).map_err(err)?;
            writeln!(f, "{id:016x}").map_err(err)?;
            f.sync_all().map_err(err)?;
            fs::rename(&tmp, &path).map_err(err)?;
            Ok(id)
        }
        Err(e) => Err(err(e)),
    }
}

/// The settings on one log line: `section.key=value ...`.
fn one_line(s: &Settings) -> String {
    let text = s.to_toml();
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once(" = ") {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("{section}.{k}={v}"));
        }
    }
    out
}
