//! The cluster, wired to the runtime: one extra thread with its own monoio event loop runs the
//! heartbeat socket (UDP), the relay listener and the pooled outbound relay connections (TCP,
//! authenticated, sealed frames), and every decision about where a session is served: relay to
//! its master, fail over to its backup, replicate a write to the backup, fence a stale master,
//! rejoin after a restart or a healed partition (RejoinNeeded), hand everything off on drain.
//!
//! The core threads send it every session request they cannot serve on their own shards
//! (`ClusterMsg::Request`), and the copies of HA writes they served themselves
//! (`ClusterMsg::Copied`);
//! it runs local work on the cores through their inboxes (`CoreMsg::Request`), exactly like a
//! connection on another core would.
//!
//! - `membership`: `scd_cluster::Membership` (the deterministic table of live nodes the seeded
//!   simulation covers) fed with verified heartbeats and relay traffic, and
//!   `scd_cluster::choose_backup`.
//! - `heartbeat`: sending (`scd_cluster::HeartbeatSchedule`: interval ± 20 % jitter, to peers
//!   and/or broadcast) and receiving
//!   (allowed hosts, MAC, replay check; never answered).
//! - `relay`: the listener (allowed hosts before anything, handshake, then sealed frames) and the
//!   pool of outbound connections.
//! - `lease`: read leases (the table of leases held, the grant/deny rule, the promotion rule).
//! - `witness`: the rule a node answers WitnessRequest by, and what a decider makes of the
//!   answers (a placement change made on a peer's silence needs another node's agreement).
//! - `journal`: the placement journal in the data directory (placements not derivable from a
//!   session ID, and lease-denial marks), so that a restart forgets no epoch it used.
//! - `route`: what happens to one request, replication, promotion, sync and drain.

pub mod membership;

mod heartbeat;
pub mod journal;
mod lease;
pub use lease::GrantCheck;
mod relay;
mod route;
mod witness;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use scd_engine::OwnerId;
use scd_wire::mac::ClusterKey;
use scd_wire::session_id::SessionId;

use crate::core::CoreMsg;
use crate::daemon::Node;
use crate::exec::{Op, ReplyTo};
pub use lease::Leases;
pub use route::Placement;

/// The answer to a session request (local, relayed, or a copy) made to a witness-only node
/// (`cluster.witness_only`).
pub const WITNESS_ONLY: &str = "this node is a witness only (cluster.witness_only): it holds no \
     sessions; point PHP's session.save_path at a session node";

/// What the core threads (and the main thread) send the cluster thread.
pub enum ClusterMsg {
    /// A client's session request (local connection): serve it wherever the session lives.
    Request {
        id: SessionId,
        op: Op<Vec<u8>>,
        owner: OwnerId,
        reply: ReplyTo,
    },
    /// With HA, a WriteUnlock a core served itself (the session is plainly mastered here and
    /// has a backup, `serve_directly`): its copy, for the backup. `done` (write-through) is told
    /// when the backup acknowledged it: None, or why the client gets `Unavailable` instead (the
    /// session was taken over meanwhile). Under write-through the core holds the writer's lock
    /// until then (`Op::WriteHold`), and releases it after answering.
    Copied {
        id: SessionId,
        version: u64,
        lifetime_s: u32,
        data: Vec<u8>,
        done: Option<flume::Sender<Option<String>>>,
    },
    /// Delayed-write copies wait in `ClusterShared::dw_copies` (told once per batch).
    CopiesWaiting,
    /// A local client connection closed: release the locks it holds on other nodes.
    OwnerGone(OwnerId),
    /// `scd drain`: hand every session to other nodes, then report on the channel.
    Drain(std::sync::mpsc::Sender<String>),
    /// Stop the cluster thread (after the cores stopped serving).
    Stop,
}

/// Counters of the cluster thread, read by `scd stats` and /metrics.
#[derive(Default)]
pub struct Counters {
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_received: AtomicU64,
    pub heartbeats_rejected: AtomicU64,
    pub peers_up: AtomicU64,
    pub peers_down: AtomicU64,
    pub relayed_out: AtomicU64,
    pub relayed_in: AtomicU64,
    pub relay_failures: AtomicU64,
    pub relay_connections_refused: AtomicU64,
    pub replications: AtomicU64,
    pub replication_failures: AtomicU64,
    pub replications_coalesced: AtomicU64,
    pub replicate_batches: AtomicU64,
    pub replicas_applied: AtomicU64,
    pub failovers: AtomicU64,
    pub fenced: AtomicU64,
    pub backups_replaced: AtomicU64,
    pub sync_items: AtomicU64,
    pub sessions_handed_off: AtomicU64,
    pub locates: AtomicU64,
    pub locates_found: AtomicU64,
    pub locates_answered: AtomicU64,
    pub rejoins: AtomicU64,
    pub rejoins_requested: AtomicU64,
    pub rejoin_hashes_listed: AtomicU64,
    pub rejoin_moved: AtomicU64,
    pub leases_requested: AtomicU64,
    pub leases_granted: AtomicU64,
    pub leases_denied: AtomicU64,
    pub leases_missing: AtomicU64,
    pub witness_requests: AtomicU64,
    pub witness_agreed: AtomicU64,
    pub witness_refused: AtomicU64,
    pub journal_records: AtomicU64,
    pub journal_syncs: AtomicU64,
    pub journal_errors: AtomicU64,
    pub ready: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bump_by(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `(name, value)` in the order of `stats::CLUSTER_FIELDS`.
    pub fn values(&self) -> Vec<u64> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            1,
            g(&self.ready),
            g(&self.peers_up),
            g(&self.peers_down),
            g(&self.heartbeats_sent),
            g(&self.heartbeats_received),
            g(&self.heartbeats_rejected),
            g(&self.relayed_out),
            g(&self.relayed_in),
            g(&self.relay_failures),
            g(&self.relay_connections_refused),
            g(&self.replications),
            g(&self.replication_failures),
            g(&self.replications_coalesced),
            g(&self.replicate_batches),
            g(&self.replicas_applied),
            g(&self.failovers),
            g(&self.fenced),
            g(&self.backups_replaced),
            g(&self.sync_items),
            g(&self.sessions_handed_off),
            g(&self.locates),
            g(&self.locates_found),
            g(&self.locates_answered),
            g(&self.rejoins),
            g(&self.rejoins_requested),
            g(&self.rejoin_hashes_listed),
            g(&self.rejoin_moved),
            g(&self.leases_requested),
            g(&self.leases_granted),
            g(&self.leases_denied),
            g(&self.leases_missing),
            g(&self.witness_requests),
            g(&self.witness_agreed),
            g(&self.witness_refused),
            g(&self.journal_records),
            g(&self.journal_syncs),
            g(&self.journal_errors),
        ]
    }
}

/// What the whole daemon shares about the cluster (in `Node`).
pub struct ClusterShared {
    pub tx: flume::Sender<ClusterMsg>,
    pub key: ClusterKey,
    pub counters: Counters,
    /// Live, non-draining peers' relay addresses with their load, for the backup choice at
    /// CreateId.
    pub view: Mutex<Vec<(SocketAddr, u64)>>,
    pub draining: AtomicBool,
    /// Sessions whose placement is not simply "this node, epoch 1" (moved, taken over, backup
    /// replaced): their requests always go through the cluster thread.
    pub irregular: Mutex<std::collections::HashSet<[u8; 16]>>,
    /// How many sessions `irregular` holds (set under its lock): while 0, which is the usual
    /// case, the cores serve without taking the lock.
    pub irregular_count: AtomicUsize,
    /// Delayed-write copies of writes the cores served themselves, handed to the cluster thread
    /// without waking it for each (it takes them all a few ms after the first).
    pub dw_copies: Mutex<DwCopies>,
    /// The read leases this node holds from its peers (as a master): written by the cluster
    /// thread, read by the cores for every request of a session with a backup.
    pub leases: Arc<Leases>,
}

/// The copy of a write a core served itself.
pub struct CoreCopy {
    pub id: SessionId,
    pub version: u64,
    pub lifetime_s: u32,
    pub data: Vec<u8>,
}

/// See `ClusterShared::dw_copies`: one copy per session, its newest version.
#[derive(Default)]
pub struct DwCopies {
    pub copies: HashMap<[u8; 16], CoreCopy>,
    /// The cluster thread was told there are copies, and has not taken them yet.
    pub told: bool,
}

impl ClusterShared {
    /// The check a ReadLock that may wait in the lock queue must pass when it is granted: this
    /// node still holds a valid read lease from `backup` (see `exec::GrantCheck`).
    pub fn lease_check(&self, backup: SocketAddr) -> GrantCheck {
        GrantCheck::new(self.leases.clone(), backup)
    }

    /// Whether a core may serve this request on its own shard, without the cluster thread: the
    /// node has rejoined, the ID names it master, nothing newer is known about the session
    /// here, and, when the ID names a backup, this node holds a valid read lease from it (else
    /// the cluster thread waits a bounded time for one, or answers Unavailable). The caller
    /// sends writes of sessions with a backup to the cluster thread anyway (replication).
    pub fn serve_directly(&self, me: SocketAddr, id: &SessionId) -> bool {
        id.master == me
            && self.counters.ready.load(Ordering::Relaxed) == 1
            && id
                .backup
                .is_none_or(|b| self.leases.valid(b, membership::now_ms()))
            && (self.irregular_count.load(Ordering::Acquire) == 0
                || self
                    .irregular
                    .lock()
                    .map(|s| !s.contains(&id.hash))
                    .unwrap_or(false))
    }

    /// Hands a delayed-write copy to the cluster thread: replaces the session's waiting copy if
    /// there is one (the newest version stays). Ok(true): the caller tells the cluster thread
    /// (`CopiesWaiting`). Err: `max` copies wait already; the caller sends it as `Copied` and
    /// waits for room in the backup's queue.
    pub fn put_dw_copy(&self, copy: CoreCopy, max: usize) -> Result<bool, CoreCopy> {
        let Ok(mut w) = self.dw_copies.lock() else {
            return Err(copy);
        };
        if let Some(old) = w.copies.get_mut(&copy.id.hash) {
            Counters::bump(&self.counters.replications_coalesced);
            if old.version <= copy.version {
                *old = copy;
            }
        } else if w.copies.len() >= max {
            return Err(copy);
        } else {
            w.copies.insert(copy.id.hash, copy);
        }
        Ok(!std::mem::replace(&mut w.told, true))
    }

    /// Takes every waiting delayed-write copy (cluster thread).
    pub fn take_dw_copies(&self) -> Vec<CoreCopy> {
        match self.dw_copies.lock() {
            Ok(mut w) => {
                w.told = false;
                w.copies.drain().map(|(_, c)| c).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// The backup for a new session mastered by `me`: `scd_cluster::choose_backup` over the
    /// live, non-draining peers the cluster thread last published (least load, ties by
    /// address).
    pub fn choose_backup(&self, me: SocketAddr) -> Option<SocketAddr> {
        let view = self.view.lock().ok()?;
        scd_cluster::choose_backup(view.iter().copied(), me, &[])
    }
}

/// Everything the cluster thread starts with.
pub struct ClusterStart {
    pub node: Arc<Node>,
    pub inbox: flume::Receiver<ClusterMsg>,
    pub cores: Vec<flume::Sender<CoreMsg>>,
    pub relay: std::net::TcpListener,
    pub heartbeat: std::net::UdpSocket,
    /// Start of this run (ms since the epoch): the heartbeat epoch.
    pub started_ms: u64,
    /// The placement journal, opened (read, truncated at its first bad record, compacted) by
    /// the daemon's start, with what it held.
    pub journal: journal::Journal,
    pub recovered: journal::Live,
}

/// The cluster thread's body.
pub fn run(start: ClusterStart) {
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build();
    match rt {
        Ok(mut rt) => rt.block_on(route::main(start)),
        Err(e) => log::error!("cluster: cannot build the event loop: {e}"),
    }
}
