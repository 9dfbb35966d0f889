//! The values that go in and out of a [`Node`](crate::Node): configuration, session copies,
//! client requests and replies, node-to-node messages, actions.

use std::collections::BTreeMap;

use scd_wire::{ErrorCode, SessionId};

use crate::membership::MembershipConfig;
use crate::placement::Placement;
use crate::{Addr, Hash};

/// When a write is acknowledged to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// After the local write is durable and (HA) the backup acknowledged it.
    WriteThrough,
    /// At once; the backup gets it through a bounded queue within the flush interval.
    DelayedWrite,
}

/// A node's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Our relay address (IP:relay_port): our identity in session IDs.
    pub me: Addr,
    /// Our node ID, random at each start (an incarnation). Lock tokens carry its low 32 bits.
    pub node_id: u64,
    /// Heartbeat interval and node timeout.
    pub membership: MembershipConfig,
    /// A master stops serving an HA session this long before its backup could promote
    /// (covers clock-rate drift and processing time). Must be below `node_timeout_ms`.
    pub lease_margin_ms: u64,
    /// HA on: sessions get a backup.
    pub ha: bool,
    /// Write-through or delayed-write.
    pub policy: FlushPolicy,
    /// Delayed-write: how often dirty sessions are replicated.
    pub flush_interval_ms: u64,
    /// Delayed-write: at most this many sessions waiting for replication per backup; a write
    /// beyond waits (it is never dropped).
    pub replication_queue_max: usize,
    /// A client request not answered within this time gets `Unavailable`.
    pub request_timeout_ms: u64,
    /// Two-node clusters only: when no third node can witness a failover or a backup
    /// replacement, make it alone. Two nodes cannot tell a crash from a partition, so a
    /// symmetric partition then gives two masters (split brain). Off by default: with it off,
    /// a session whose backup (or master) is lost waits until a witness is up.
    pub allow_alone: bool,
    /// The other nodes of the cluster as configured (the daemon's `peers`, by relay address;
    /// our own address is ignored). They count as known from the start, heard or not: a search
    /// for a session says `NotFound` only once each of them answered, so that nodes restarted
    /// during a partition, which never heard the far side, cannot call a session that lives
    /// there missing. Empty (e.g. broadcast discovery): only the nodes heard of count.
    pub peers: Vec<Addr>,
}

impl Config {
    /// Defaults: heartbeat 1000 ms, node timeout 3500 ms, lease margin 500 ms, HA on,
    /// write-through, flush interval 1000 ms, queue 1024, request timeout 10 s, no acting
    /// alone, no configured peers.
    pub fn new(me: Addr, node_id: u64) -> Self {
        Config {
            me,
            node_id,
            membership: MembershipConfig::with_interval(1000),
            lease_margin_ms: 500,
            ha: true,
            policy: FlushPolicy::WriteThrough,
            flush_interval_ms: 1000,
            replication_queue_max: 1024,
            request_timeout_ms: 10_000,
            allow_alone: false,
            peers: Vec::new(),
        }
    }
}

/// One node's copy of one session: its placement, data version and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// Where the session lives, as this copy knows it.
    pub placement: Placement,
    /// Data version: +1 on every write at the master. `(placement.epoch, version)` orders
    /// copies: the higher one always wins.
    pub version: u64,
    /// Seconds to live (carried along; expiry is the store's business).
    pub lifetime_s: u32,
    /// A destroyed session (a tombstone, so that a destroy reaches the backup like a write).
    pub deleted: bool,
    /// The session data.
    pub data: Vec<u8>,
    /// A placement change this node proposed and that may have been accepted (kept durable so
    /// that a restart does not forget it). In a copy sent to another node: `None` in a
    /// proposal; in an update, flush, resend or sync item, the change its master has
    /// outstanding above the copy's epoch (in flight, left unanswered, or restored after a
    /// restart), if any — such a copy does not confirm the receiver's replica (it stays
    /// doubtful: never promoted). A receiver never stores the sender's intent.
    pub intent: Option<Intent>,
}

/// A proposed placement change whose answer is not known yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intent {
    /// The node it was proposed to.
    pub target: Addr,
    /// The proposed epoch.
    pub epoch: u32,
    /// A handover: the target becomes master if it accepted.
    pub handover: bool,
}

impl Copy {
    /// `(epoch, version)`: the order of copies.
    pub fn order(&self) -> (u32, u64) {
        (self.placement.epoch, self.version)
    }
}

/// A copy's placement and data version (its data left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Where the session lives, as this copy knows it.
    pub placement: Placement,
    /// Data version.
    pub version: u64,
}

/// Where a node keeps its session copies. The node reads and writes through it and keeps no
/// other copy of session data.
///
/// Durability is the driver's: under write-through, a `put` must be durable before any
/// [`Action`] emitted after it is executed (group commit: the driver holds the actions of one
/// call until its flush completes). Under delayed-write the same holds for a `put` that changes
/// the copy's placement or its [`Intent`] (rare: failover, rehome, rejoin) — a restarted node
/// must never forget a placement epoch it used or proposed — while a `put` that only changes
/// data must be durable within the
/// flush interval. A `remove` must be durable like a placement change: a restarted node that
/// dropped a copy (fenced, handed over) must not find it again.
pub trait Store {
    /// The copy held for `hash`.
    fn get(&self, hash: &Hash) -> Option<Copy>;
    /// The placement and version of the copy held for `hash`, without its data. The node's
    /// periodic work ([`Node::tick`](crate::Node::tick)) reads this for every session: a
    /// driver should answer it without copying the data (the default calls `get`).
    fn meta(&self, hash: &Hash) -> Option<Meta> {
        self.get(hash).map(|c| Meta {
            placement: c.placement,
            version: c.version,
        })
    }
    /// Holds `copy` for `hash`, replacing any other.
    fn put(&mut self, hash: Hash, copy: Copy);
    /// Forgets `hash`.
    fn remove(&mut self, hash: &Hash);
    /// Every hash held (any order).
    fn hashes(&self) -> Vec<Hash>;
}

/// A [`Store`] in memory (tests, examples).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStore {
    /// The copies.
    pub copies: BTreeMap<Hash, Copy>,
}

impl Store for MemStore {
    fn get(&self, hash: &Hash) -> Option<Copy> {
        self.copies.get(hash).cloned()
    }
    fn meta(&self, hash: &Hash) -> Option<Meta> {
        self.copies.get(hash).map(|c| Meta {
            placement: c.placement,
            version: c.version,
        })
    }
    fn put(&mut self, hash: Hash, copy: Copy) {
        self.copies.insert(hash, copy);
    }
    fn remove(&mut self, hash: &Hash) {
        self.copies.remove(hash);
    }
    fn hashes(&self) -> Vec<Hash> {
        self.copies.keys().copied().collect()
    }
}

/// A client request (the session part of the local protocol), owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A new session with this node as master. `hash`: 16 fresh bytes from the OS's CSPRNG.
    Create {
        /// The new session's identity.
        hash: Hash,
        /// Seconds to live.
        lifetime_s: u32,
    },
    /// Read and take the lock. Fails at once with `LockTimeout` when it is held (the driver
    /// retries until its wait deadline).
    ReadLock {
        /// The session.
        id: SessionId,
        /// How long the lock lives unless written or unlocked.
        lease_ms: u32,
    },
    /// Read without locking.
    Read {
        /// The session.
        id: SessionId,
    },
    /// Store data and release the lock.
    Write {
        /// The session.
        id: SessionId,
        /// The lock token from ReadLock.
        token: u64,
        /// Seconds to live.
        lifetime_s: u32,
        /// The data.
        data: Vec<u8>,
    },
    /// Release the lock.
    Unlock {
        /// The session.
        id: SessionId,
        /// The lock token.
        token: u64,
    },
    /// Delete the session (`token` 0: no lock held).
    Destroy {
        /// The session.
        id: SessionId,
        /// The lock token or 0.
        token: u64,
    },
}

impl Request {
    /// The ID the request names (none for Create).
    pub fn id(&self) -> Option<SessionId> {
        match self {
            Request::Create { .. } => None,
            Request::ReadLock { id, .. }
            | Request::Read { id }
            | Request::Write { id, .. }
            | Request::Unlock { id, .. }
            | Request::Destroy { id, .. } => Some(*id),
        }
    }

    /// The session's hash.
    pub fn hash(&self) -> Hash {
        match self {
            Request::Create { hash, .. } => *hash,
            other => other.id().map(|id| id.hash).unwrap_or_default(),
        }
    }
}

/// The answer to a client request. Every success carries the session's current ID: the driver
/// hands it to the client (it changes when the session moves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A new session.
    Created {
        /// Its ID.
        id: SessionId,
    },
    /// The data (and the lock token for ReadLock).
    Data {
        /// The session's current ID.
        id: SessionId,
        /// Data version.
        version: u64,
        /// The data.
        data: Vec<u8>,
        /// The lock token (ReadLock only).
        token: Option<u64>,
    },
    /// Written (and unlocked).
    Written {
        /// The session's current ID.
        id: SessionId,
        /// The version written.
        version: u64,
    },
    /// Unlocked or destroyed.
    Done {
        /// The session's current ID.
        id: SessionId,
    },
    /// Node to node only: this node does not serve the session; `id` is where it lives as far
    /// as this node knows (a later placement than the request's), if it knows.
    Moved {
        /// The newer placement.
        id: Option<SessionId>,
    },
    /// Failed; nothing was changed (except `Unavailable` after a write-through write whose
    /// backup did not answer in time: then the write may or may not persist).
    Error {
        /// Why: `NotFound`, `NotLocked` (a token this master never issued, e.g. after a
        /// failover), `LockTimeout`, `Unavailable`, `BadRequest`.
        code: ErrorCode,
        /// For logs.
        reason: &'static str,
    },
}

/// The kind of a [`Msg::Replicate`]: why the receiver gets this copy. A copy at a placement
/// epoch new to the receiver is accepted only if the kind's condition holds there; this makes
/// the receiver (the new backup) a witness of every placement change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new data version at the same placement.
    Update,
    /// A write-through resend of an unacknowledged write to a backup the sender sees down: like
    /// `Update` for a receiver that holds the copy at this placement, refused by any other (a
    /// node that does not hold it may be a restarted, emptied backup of a master that was cut
    /// off and taken over meanwhile: its ack would acknowledge a write the session has lost).
    Refresh,
    /// The master had no backup and takes the receiver.
    AddBackup,
    /// The sender (the old backup) takes over from `old_master`; accepted only if the receiver
    /// has not heard `old_master` for `node_timeout_ms` either.
    Promote {
        /// The master being replaced.
        old_master: Addr,
    },
    /// The master replaces `old_backup` by the receiver; accepted only if the receiver has not
    /// heard `old_backup` for `node_timeout_ms`, or it is draining.
    Rehome {
        /// The backup being replaced.
        old_backup: Addr,
    },
    /// A rejoined master resumes at a new epoch with its backup (the receiver); accepted only
    /// if the receiver's copy names the sender as master.
    Resume,
    /// A draining master hands the session to the receiver, which becomes its master.
    Handover {
        /// The draining master.
        old_master: Addr,
    },
}

/// A node-to-node message (carried by the relay protocol: the driver maps these to
/// `scd_wire::RelayMessage` frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// A client request relayed to the node that should serve it.
    Forward {
        /// Correlates the reply (origin's number).
        fwd: u64,
        /// The request.
        request: Request,
        /// The origin could not reach the master: the receiver (the backup) should take over
        /// if it too finds the master down.
        failover: bool,
    },
    /// The answer to a Forward.
    ForwardReply {
        /// The Forward's `fwd`.
        fwd: u64,
        /// The answer.
        reply: Reply,
    },
    /// Hold this copy (see [`Change`]).
    Replicate {
        /// The session.
        hash: Hash,
        /// The copy, with the placement it belongs to.
        copy: Copy,
        /// Why.
        change: Change,
    },
    /// The copy at (`epoch`, `version`) is held (durable under write-through).
    ReplicateAck {
        /// The session.
        hash: Hash,
        /// Placement epoch held.
        epoch: u32,
        /// Data version held.
        version: u64,
    },
    /// Refused: the receiver holds the session at placement epoch `epoch`, not older than the
    /// sender's. Fences an old master.
    StaleEpoch {
        /// The session.
        hash: Hash,
        /// The receiver's epoch.
        epoch: u32,
    },
    /// A placement change was refused because the receiver does not agree (it still hears the
    /// node being replaced, or it is busy with the session). Retry later.
    NotAgreed {
        /// The session.
        hash: Hash,
        /// The epoch of the refused proposal.
        epoch: u32,
    },
    /// Forget a copy older than `epoch` (an old backup after a rehome).
    DropReplica {
        /// The session.
        hash: Hash,
        /// The new epoch.
        epoch: u32,
    },
    /// Master → a node that is backup of some of its sessions: may I serve? Sent to every up
    /// peer each heartbeat interval.
    LeaseRequest {
        /// Correlates the grant.
        nonce: u64,
    },
    /// "I heard you now; I will not take over from you for `node_timeout_ms`."
    LeaseGrant {
        /// The request's nonce.
        nonce: u64,
    },
    /// "I took over sessions from you (or declared you down): rejoin before serving."
    LeaseDenied,
    /// "I declared you down and you are back: rejoin (sync) before serving."
    RejoinNeeded,
    /// A rejoining node asks for every copy the receiver holds that names it, or whose hash
    /// is in `hashes` (the copies the asker holds).
    SyncRequest {
        /// Correlates the stream.
        sync: u64,
        /// The hashes the asker holds.
        hashes: Vec<Hash>,
    },
    /// One copy of a sync stream.
    SyncItem {
        /// The request's `sync`.
        sync: u64,
        /// The session.
        hash: Hash,
        /// The copy.
        copy: Copy,
    },
    /// A sync stream ends.
    SyncEnd {
        /// The request's `sync`.
        sync: u64,
        /// Items sent.
        count: u64,
    },
    /// Where is this session? (Its ID names nodes that no longer have it.)
    Locate {
        /// Correlates the answer.
        loc: u64,
        /// The session.
        hash: Hash,
    },
    /// The answer to Locate: the placement the receiver knows, if any.
    Located {
        /// The Locate's `loc`.
        loc: u64,
        /// The session.
        hash: Hash,
        /// The placement known there.
        placement: Option<Placement>,
        /// Every node the answering node knows (heard of or configured, up or down), itself
        /// included: an asker that did not ask one of them may not conclude "not found" (it
        /// may not know every node, e.g. restarted during a partition, and a node down now may
        /// hold the only copy).
        known: Vec<Addr>,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to the node at relay address `to`. If the connection cannot be made or
    /// breaks, tell the node with [`Node::on_unreachable`](crate::Node::on_unreachable).
    Send {
        /// The receiver's relay address.
        to: Addr,
        /// The message.
        msg: Msg,
    },
    /// Answer the local client request `req` (the number given to
    /// [`Node::on_client`](crate::Node::on_client)). Under write-through, only after every
    /// store write made before it is durable.
    Reply {
        /// The request's number.
        req: u64,
        /// The answer.
        reply: Reply,
    },
    /// Draining finished: this node holds no session any more; the daemon may stop (it should
    /// keep relaying for a few seconds so clients learn the new IDs).
    DrainComplete,
}
