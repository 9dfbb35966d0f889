//! Where each request is served, and everything that keeps the copies right.
//!
//! Per session this node keeps a `Placement` (in memory; those a session ID does not say also in
//! the placement journal, `journal.rs`, read back at start): the placement epoch it knows, the
//! master, the backup, and the node it was taken over from. The rules:
//!
//! - **Master here** (the placement says so at an epoch at least the ID's, or the ID names this
//!   node and nothing newer is known): run it on the local shard. A write (WriteUnlock, Touch)
//!   with HA on is then replicated to the backup; under write-through the copy is sent as soon as
//!   the shard applied the write, while its flush runs, and the client's answer waits for both
//!   the local flush and the backup's acknowledgement; a WriteUnlock then runs as `WriteHold`
//!   and its lock is released only after that answer, so no lock holder reads a write the
//!   backup does not hold;
//!   under delayed-write it goes out at once and the copy waits in the backup's queue (one entry
//!   per session, its newest version; at most `replication_queue_max` sessions queued or in
//!   flight, a write that finds the queue full waits), sent in batches (`dw_sender`).
//!   A WriteUnlock of a session the cores serve directly (`ClusterShared::serve_directly`) runs
//!   on its core, and only its copy comes here (`ClusterMsg::Copied`).
//!   Destroy drops the backup's copy.
//!   Under a **read lease** only: a session with a backup is served while this node holds a
//!   valid lease from that backup (`await_lease`; `lease.rs`), else it waits a bounded time for
//!   one, replaces a backup that is down, or answers Unavailable.
//! - **Master elsewhere**: relay to it. If it cannot be reached (refused, timeout, broken
//!   connection) or is known down, go to the backup; the backup promotes itself (epoch + 1), picks
//!   a new backup, copies the session there (before answering, under write-through), serves the
//!   request, and the reply carries the new ID — but only when the master is down in the
//!   backup's own view or refused the backup's connection (`lease::may_promote`); after a relay
//!   timeout alone it answers Unavailable. It then denies the old master leases until that node
//!   has synced with it (rejoined).
//! - **Fencing**: a replica with an epoch lower than the receiver's is refused (StaleEpoch); the
//!   master that gets it stops being master for that session and forgets its copy.
//! - **Rejoin**: after a start, no session is served until this node has asked every live peer
//!   (SyncRequest) for the copies that name it, and learned which of its sessions were taken over;
//!   then it lists every session it holds (SyncHashes) and follows the newest placement the
//!   peers know of each (a session taken over elsewhere is routed there, its local copy removed).
//!   The same happens, without a restart, when a peer that declared this node down hears it again
//!   (a healed partition: it sends RejoinNeeded), or when this node hears a peer again after it
//!   had lost sight of every peer (it may have been the one cut off). One rejoin at a time: a
//!   RejoinNeeded (or a returning peer) during a rejoin adds one more sync round before serving.
//! - **Drain**: every session this node masters goes to its backup (or the least-loaded node):
//!   copy, then Promote. Heartbeats say "draining", so the masters this node backs up pick new
//!   backups. Then the daemon stops.
//! - **Locate**: when neither node an ID names can serve a client's request (unreachable, down,
//!   or they do not hold the session), the node the client talks to asks every live peer where
//!   the session is and relays the request to the newest placement found.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use log::{debug, error, info, warn};
use scd_client::OwnedReply;
use scd_engine::{OwnerId, SessionKey, shard_for};
use scd_wire::constants::{REPLICATE_BATCH_MAX, SYNC_HASHES_MAX};
use scd_wire::frame::{Frame, Limits};
use scd_wire::heartbeat::Heartbeat;
use scd_wire::local::{ErrorCode, Reply, Request, decode_reply};
use scd_wire::mac::ClusterKey;
use scd_wire::relay::{
    BatchOutcome, HashList, Location, OutcomeList, PlaceList, RelayMessage, Replica, ReplicaList,
    SyncRole, WitnessChange,
};
use scd_wire::session_id::SessionId;

use super::journal::{self, Entry, Journal};
use super::lease::{Grants, LeaseAnswer, MasterView};
use super::membership::{self, Change, Members};
use super::relay::{self, CallError, Incoming, Located, Out, OwnedReplica, PeerConn, ServedConn};
use super::witness::{self, WitnessView, Witnessed};
use super::{ClusterMsg, ClusterShared, ClusterStart, Counters};
use crate::core::{CoreMsg, ShardRequest, clock_ms};
use crate::daemon::Node;
use crate::exec::{Op, ReplyTo};
use crate::notify::Notify;
use crate::proto;

mod backups;
mod drain;
mod failover;
mod rejoin;
mod replication;

/// Why a master may drop or replace a session's backup (`State::may_drop_backup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackupLoss {
    /// It announced that it is draining (a new backup is needed, but going on without one is
    /// not: the draining node still holds the copy).
    Draining,
    /// Its connection was refused: its process is gone.
    Refused,
    /// It is silent, and another node witnessed that (or none is left, with `allow_alone`).
    Witnessed,
}

/// Adds one peer's answer about a session to the rejoin's hash-list results: the highest epoch
/// wins, then the highest data version; answers at the highest epoch naming different masters
/// mark a conflict; a backup one answer lacks is taken from another with the same placement.
fn merge_place(best: &mut HashMap<[u8; 16], (Location, bool)>, hash: [u8; 16], l: Location) {
    let Some((e, conflict)) = best.get_mut(&hash) else {
        best.insert(hash, (l, false));
        return;
    };
    if l.epoch > e.epoch {
        *e = l;
        *conflict = false;
    } else if l.epoch == e.epoch {
        if l.master != e.master {
            *conflict = true;
        }
        let backup = e.backup.or(l.backup);
        if l.version > e.version {
            *e = l;
        }
        if l.master == e.master {
            e.backup = e.backup.or(backup);
        }
    }
}

/// What a rejoin's hash list found out about a session held here.
enum Known {
    Master,
    Backup,
    Elsewhere,
}

/// A master's copy on its way into a shard (`State::copy_arriving`): the placement known
/// before it, and the one recorded for it.
#[derive(Clone, Copy, Debug)]
struct Arriving {
    tentative: Placement,
}

/// The copies of one session on their way into a shard (`State::arrivals`). Two can overlap;
/// the placement known before the first is put back only when none of them is held.
#[derive(Clone, Copy, Debug)]
struct Arrivals {
    in_flight: u32,
    before: Option<Placement>,
    held: bool,
}

/// What this node knows of where one session lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub epoch: u32,
    pub master: Option<SocketAddr>,
    pub backup: Option<SocketAddr>,
    /// The master it was taken over from (failover or drain), told at that node's rejoin.
    pub prev: Option<SocketAddr>,
}

impl Placement {
    /// The placement a session ID says: its master at the ID's version, its backup.
    fn named_by(id: &SessionId) -> Placement {
        Placement {
            epoch: id.version,
            master: Some(id.master),
            backup: id.backup,
            prev: None,
        }
    }

    fn id(&self, hash: [u8; 16]) -> Option<SessionId> {
        self.master
            .map(|m| SessionId::new(m, self.backup, self.epoch, hash))
    }
}

/// The cluster thread's state (single thread: `Rc` + `Cell`/`RefCell`, never borrowed across an
/// `.await`).
pub struct State {
    pub node: Arc<Node>,
    pub me: SocketAddr,
    pub node_id: u64,
    pub key: ClusterKey,
    pub timeout_ms: u64,
    pub limits: Limits,
    cores: Vec<flume::Sender<CoreMsg>>,
    members: RefCell<Members>,
    pool: RefCell<HashMap<SocketAddr, Rc<PeerConn>>>,
    placements: RefCell<HashMap<[u8; 16], Placement>>,
    /// Until when each placement is kept (ms since the epoch): placements of sessions nobody
    /// asked for since are swept, so the table is bounded by the sessions in use.
    keep_until: RefCell<HashMap<[u8; 16], u64>>,
    owner_seq: Cell<u64>,
    /// Locks this node's local clients hold on other nodes (taken by a relayed ReadLock, not
    /// yet written, unlocked or destroyed): (node, session, token) by client. When a client's
    /// connection closes they are unlocked there at once, as its local locks are.
    relayed_locks: RefCell<HashMap<OwnerId, Vec<RelayedLock>>>,
    pub sessions_held: Cell<u64>,
    ready: Cell<bool>,
    /// A rejoin (after the start, or asked for since) is running: `ready` is false until it ends.
    rejoining: Cell<bool>,
    /// Something happened during the rejoin that its current sync round may have missed (a
    /// RejoinNeeded, a peer heard again): one more round follows before serving.
    rejoin_again: Cell<bool>,
    /// Every peer went down while this node served: it may be the one cut off, so the first peer
    /// heard again makes it rejoin before acting on what it knows.
    alone: Cell<bool>,
    /// Rejoins started since the start: a placement change that was in flight when one started
    /// (a new backup chosen on stale knowledge) is abandoned.
    rejoin_gen: Cell<u64>,
    /// The delayed-write copy queue of each backup.
    queued: RefCell<HashMap<SocketAddr, Rc<DwQueue>>>,
    /// Tasks moving copies from the cores' hand-off into the queues (`take_core_copies`); a
    /// Destroy waits for none to be left, so that no copy of its session enters a queue after it.
    copies_moving: Cell<u32>,
    /// How long a granted read lease lasts after its request left: node timeout − lease margin.
    lease_ms: u64,
    /// Peers this node took a session over from (failover) or replaced as a backup after it
    /// declared them down, since they last synced with it (SyncRequest / SyncHashes): their
    /// lease requests are denied, with this reason, and they rejoin.
    lease_grants: RefCell<Grants>,
    /// Peers a lease request is in flight to (at most one each).
    lease_inflight: RefCell<HashSet<SocketAddr>>,
    /// When the current rejoin's sync round started (`membership::now_ms`): a denial of a lease
    /// request sent before it is answered by that round's sync, not by another round.
    round_started_ms: Cell<u64>,
    /// Master's copies on their way into a shard, per session (`copy_arriving`): how many, the
    /// placement known before the first, and whether one is held already.
    arrivals: RefCell<HashMap<[u8; 16], Arrivals>>,
    /// The placement journal: every placement not derivable from a session ID, and the lease
    /// denial marks (`journal.rs`). A change is made durable before this thread goes on, so
    /// before anything is done on it outside (an answer, an ack, a copy, a proposal).
    journal: RefCell<Journal>,
}

/// A session copied to a new backup (`copy_to_new_backup`), to be recorded
/// (`record_backup_moves`).
struct BackupMove {
    hash: [u8; 16],
    /// The placement the copy was made under.
    p: Placement,
    /// The new backup (None: no other node took the copy; the session goes on without one).
    placed: Option<SocketAddr>,
    /// The version copied there (None: nothing was written yet).
    version: Option<u64>,
    /// `rejoin_gen` when the copy started.
    generation: u64,
}

/// A journal batch (`Journal::submit`) holding a change this node made: the change is acted on
/// only once it is committed (`State::committed`). 0: nothing to wait for.
#[must_use = "a journal change is committed before it is acted on: await State::committed"]
#[derive(Clone, Copy, Debug)]
struct Commit(u64);

/// Rounds of copies `replace_backup_everywhere` makes for sessions written during their copy.
const BACKUP_MOVE_ROUNDS: u32 = 3;

/// A placement is kept at least this long after its session was last used (or its lifetime,
/// when longer): long enough that a client with an old ID is still sent to the new master.
const PLACEMENT_KEEP_MS: u64 = 24 * 3600 * 1000;

/// How often old placements are swept.
const PLACEMENT_SWEEP_MS: u64 = 10_000;

/// Owner IDs of relayed requests: "core" 0xFFFF in the top 16 bits, never a real core's.
const RELAY_OWNER_BASE: u64 = 0xFFFF << 48;

/// A lock a local client took on another node through a relay: (that node, the session, the
/// token).
type RelayedLock = (SocketAddr, SessionId, u64);

/// The delayed-write copies queued for one backup or in flight, as the slots of a bounded
/// channel: a session's entry takes a slot when it enters the queue and frees it when its copy
/// is done (acknowledged, or handed to the repair path).
type QueueSlots = (flume::Sender<()>, flume::Receiver<()>);

/// How long the delayed-write sender lets a backup's queue fill before it sends a batch (at most
/// the flush interval): writes of one session within it become one copy.
const DW_LINGER_MS: u64 = 20;

/// At most this many sessions, and about this many bytes of copies, per delayed-write batch.
const DW_BATCH_MAX: usize = 512;
const DW_BATCH_BYTES: usize = 4 << 20;

/// A session's change waiting in a delayed-write queue: its newest copy, and whether a Destroy
/// must reach the backup before it (`drop_waiters` are told when it did).
#[derive(Default)]
struct Pending {
    drop: bool,
    drop_waiters: Vec<flume::Sender<()>>,
    copy: Option<(Placement, OwnedReplica)>,
}

/// What enters a delayed-write queue.
enum DwChange {
    Copy(Placement, OwnedReplica),
    Drop(flume::Sender<()>),
}

/// What a batch sends for one session.
enum Item {
    Copy(Placement, OwnedReplica),
    Drop(Vec<flume::Sender<()>>),
}

/// The delayed-write copies bound for one backup. A session is in `waiting` at most once, with
/// only its newest version: a later write replaces the queued copy (it does not take another
/// slot). One sender task per backup sends what waits in batches, one batch in flight at a time,
/// so the changes of one session reach the backup in the order they were made.
struct DwQueue {
    backup: SocketAddr,
    waiting: RefCell<HashMap<[u8; 16], Pending>>,
    /// The sessions of `waiting`, oldest first.
    order: RefCell<VecDeque<[u8; 16]>>,
    slots: QueueSlots,
    wake: Notify,
}

impl DwQueue {
    /// Folds `change` into the session's waiting entry; gives it back when none waits.
    fn merge(&self, hash: [u8; 16], change: DwChange, coalesced: &AtomicU64) -> Option<DwChange> {
        let mut waiting = self.waiting.borrow_mut();
        let Some(e) = waiting.get_mut(&hash) else {
            return Some(change);
        };
        match change {
            DwChange::Copy(p, copy) => {
                let newer = e
                    .copy
                    .as_ref()
                    .is_none_or(|(_, c)| c.version <= copy.version);
                if e.copy.is_some() {
                    Counters::bump(coalesced);
                }
                if newer {
                    e.copy = Some((p, copy));
                }
            }
            DwChange::Drop(waiter) => {
                if e.copy.take().is_some() {
                    Counters::bump(coalesced);
                }
                e.drop = true;
                e.drop_waiters.push(waiter);
            }
        }
        None
    }

    /// A new entry (its slot taken).
    fn insert(&self, hash: [u8; 16], change: DwChange) {
        let e = match change {
            DwChange::Copy(p, copy) => Pending {
                copy: Some((p, copy)),
                ..Pending::default()
            },
            DwChange::Drop(waiter) => Pending {
                drop: true,
                drop_waiters: vec![waiter],
                copy: None,
            },
        };
        self.waiting.borrow_mut().insert(hash, e);
        self.order.borrow_mut().push_back(hash);
        self.wake.notify();
    }

    /// Takes the next batch: (session, what to send, whether its slot is freed when done). A
    /// session with a Destroy and a newer copy sends the Destroy now and keeps the copy (and its
    /// slot) for the next batch.
    fn take_batch(&self) -> Vec<([u8; 16], Item, bool)> {
        let mut waiting = self.waiting.borrow_mut();
        let mut order = self.order.borrow_mut();
        let mut batch = Vec::new();
        let mut later = Vec::new();
        let mut bytes = 0;
        while batch.len() < DW_BATCH_MAX && bytes < DW_BATCH_BYTES {
            let Some(hash) = order.pop_front() else { break };
            let Some(mut e) = waiting.remove(&hash) else {
                continue;
            };
            if e.drop {
                let waiters = std::mem::take(&mut e.drop_waiters);
                if e.copy.is_some() {
                    e.drop = false;
                    later.push((hash, e));
                    batch.push((hash, Item::Drop(waiters), false));
                } else {
                    batch.push((hash, Item::Drop(waiters), true));
                }
            } else if let Some((p, copy)) = e.copy {
                bytes += copy.data.len();
                batch.push((hash, Item::Copy(p, copy), true));
            }
        }
        for (hash, e) in later {
            waiting.insert(hash, e);
            order.push_back(hash);
        }
        batch
    }
}

/// A received batch's copies: the outcome of each (StaleEpoch for those `stale` refuses, alone;
/// a placeholder for the others), and the others grouped by the core that owns their shard, as
/// (index in the batch, shard, copy), in batch order.
#[allow(clippy::type_complexity)]
fn split_batch(
    copies: Vec<OwnedReplica>,
    shards: usize,
    cores: usize,
    stale: impl Fn(&OwnedReplica) -> bool,
) -> (Vec<BatchOutcome>, Vec<Vec<(usize, u32, OwnedReplica)>>) {
    let mut outcomes = vec![BatchOutcome::Refused(ErrorCode::Internal); copies.len()];
    let mut by_core: Vec<Vec<(usize, u32, OwnedReplica)>> =
        (0..cores.max(1)).map(|_| Vec::new()).collect();
    for (i, copy) in copies.into_iter().enumerate() {
        if stale(&copy) {
            outcomes[i] = BatchOutcome::Refused(ErrorCode::StaleEpoch);
            continue;
        }
        let shard = shard_for(&SessionKey(copy.hash), shards) as u32;
        by_core[shard as usize % cores.max(1)].push((i, shard, copy));
    }
    (outcomes, by_core)
}

/// What became of one delayed-write copy sent in a batch.
#[derive(Debug, PartialEq, Eq)]
enum CopyAnswer {
    /// The backup holds it.
    Held,
    /// The backup knows a newer placement (StaleEpoch): this node is no longer the master.
    Stale,
    /// No answer, or another refusal: retried, then repaired, as a failed single copy.
    Failed(String),
}

/// The ranges of `copies` that go out as one ReplicateBatch each: in order, at most
/// `REPLICATE_BATCH_MAX` copies and `limits.batch_body_max` body bytes per frame (a copy too large
/// for any batch is a range of its own).
fn batch_groups(
    copies: &[([u8; 16], Placement, OwnedReplica, bool)],
    limits: &Limits,
) -> Vec<std::ops::Range<usize>> {
    let max = limits.batch_body_max as usize;
    let mut groups = Vec::new();
    let mut start = 0;
    let mut body = 4;
    for (i, (_, _, copy, _)) in copies.iter().enumerate() {
        let len = copy.as_wire().encoded_len();
        if i > start && (i - start >= REPLICATE_BATCH_MAX || body + len > max) {
            groups.push(start..i);
            start = i;
            body = 4;
        }
        body += len;
    }
    if start < copies.len() {
        groups.push(start..copies.len());
    }
    groups
}

/// Each copy's answer from the answer to the frame that carried them (`hashes`, in order): a
/// ReplicateBatchAck gives one outcome per copy (it must list exactly these sessions, in this
/// order, or none is trusted); a ReplicateAck or an error answers a lone Replicate or the whole
/// frame.
fn copy_answers(
    hashes: impl ExactSizeIterator<Item = [u8; 16]>,
    answer: Option<Incoming>,
) -> Vec<CopyAnswer> {
    let n = hashes.len();
    let all = |a: &dyn Fn() -> CopyAnswer| (0..n).map(|_| a()).collect();
    match answer {
        Some(Incoming::ReplicateBatchAck(outcomes)) => {
            let hashes: Vec<[u8; 16]> = hashes.collect();
            if outcomes.len() != n || outcomes.iter().zip(&hashes).any(|((h, _), w)| h != w) {
                return all(&|| {
                    CopyAnswer::Failed("the batch's answer does not list its copies".into())
                });
            }
            outcomes
                .into_iter()
                .map(|(_, o)| match o {
                    BatchOutcome::Held { .. } => CopyAnswer::Held,
                    BatchOutcome::Refused(ErrorCode::StaleEpoch) => CopyAnswer::Stale,
                    BatchOutcome::Refused(code) => CopyAnswer::Failed(format!("refused: {code}")),
                })
                .collect()
        }
        Some(Incoming::ReplicateAck) if n == 1 => vec![CopyAnswer::Held],
        Some(Incoming::Error {
            code: ErrorCode::StaleEpoch,
            ..
        }) => all(&|| CopyAnswer::Stale),
        other => {
            let why = format!("{other:?}");
            all(&|| CopyAnswer::Failed(why.clone()))
        }
    }
}

fn unavailable(message: impl Into<String>) -> OwnedReply {
    OwnedReply::Error {
        code: ErrorCode::Unavailable,
        message: message.into(),
    }
}

/// Whether a relayed answer says the node does not hold the session (a search may find it
/// elsewhere).
fn not_held(r: &OwnedReply) -> bool {
    matches!(
        r,
        OwnedReply::NotFound { .. } | OwnedReply::Existence(false)
    )
}

/// Sends `r` (with `new_id` set on Data/NotFound when given) to `reply`.
fn answer(reply: ReplyTo, r: &OwnedReply, new_id: Option<SessionId>) {
    let wire = match r {
        OwnedReply::Data {
            token,
            version,
            new_id: theirs,
            data,
        } => Reply::Data {
            token: *token,
            version: *version,
            new_id: theirs.or(new_id),
            data,
        },
        OwnedReply::NotFound {
            token,
            new_id: theirs,
        } => Reply::NotFound {
            token: *token,
            new_id: theirs.or(new_id),
        },
        OwnedReply::Done { version } => Reply::Done { version: *version },
        OwnedReply::Existence(e) => Reply::Existence { exists: *e },
        OwnedReply::IdCreated(id) => Reply::IdCreated { id: *id },
        OwnedReply::Error { code, message } => Reply::Error {
            code: *code,
            message,
        },
        OwnedReply::HelloOk(_) | OwnedReply::Stats(_) => Reply::Error {
            code: ErrorCode::Internal,
            message: "unexpected relayed reply",
        },
    };
    let frame = proto::encode_reply(reply.request_id(), wire);
    reply.send_frame(frame);
}

/// The local request for `op` on `id` (None for the cluster's own operations).
fn to_request(id: SessionId, op: &Op<Vec<u8>>) -> Option<Request<'_>> {
    Some(match op {
        Op::ReadLock { wait_ms, lease_ms } => Request::ReadLock {
            id,
            wait_ms: *wait_ms,
            lease_ms: *lease_ms,
        },
        Op::Read => Request::Read { id },
        Op::WriteUnlock {
            token,
            lifetime_s,
            data,
        } => Request::WriteUnlock {
            id,
            token: *token,
            lifetime_s: *lifetime_s,
            data,
        },
        Op::Touch { token, lifetime_s } => Request::Touch {
            id,
            token: *token,
            lifetime_s: *lifetime_s,
        },
        Op::Unlock { token } => Request::Unlock { id, token: *token },
        Op::Destroy { token } => Request::Destroy { id, token: *token },
        Op::Exists => Request::Exists { id },
        // The hold ops are the cluster thread's and the cores' own (a master's local write).
        Op::WriteHold { .. }
        | Op::DestroyHold { .. }
        | Op::Release { .. }
        | Op::Create { .. }
        | Op::ApplyReplica { .. }
        | Op::Remove
        | Op::Peek => return None,
    })
}

/// A forwarded request as (ID, operation), or None for requests that are never forwarded:
/// the same mapping (and caps) as a local client's request.
fn from_request(
    r: &Request<'_>,
    wait_max: u32,
    lease_max: u32,
) -> Option<(SessionId, Op<Vec<u8>>)> {
    crate::conn::session_op(r, wait_max, lease_max).map(|(id, op)| (id, op.to_owned()))
}

/// Where the copy of a write comes from.
enum CopySource {
    /// A WriteUnlock's data and lifetime.
    Data { lifetime_s: u32, data: Vec<u8> },
    /// Read back from the shard (a Touch changes only the lifetime).
    Peek,
}

/// Why a copy did not reach the backup.
enum ReplError {
    /// The backup knows a newer placement: this node is no longer the master.
    Fenced,
    Unreachable(String),
}

impl State {
    pub fn shared(&self) -> &ClusterShared {
        self.node.cluster.as_ref().expect("clustering on")
    }

    pub fn next_owner(&self) -> OwnerId {
        let n = self.owner_seq.get() + 1;
        self.owner_seq.set(n);
        OwnerId(RELAY_OWNER_BASE | (n & ((1 << 48) - 1)))
    }

    /// A relay connection closed: the locks its requests took go, on every core.
    pub async fn release_owner(&self, owner: OwnerId) {
        for c in &self.cores {
            let _ = c.send_async(CoreMsg::ReleaseOwner(owner)).await;
        }
    }

    /// Sessions held (heartbeat load), asked of every core.
    pub async fn refresh_load(&self) {
        let n = self.ask_cores(CoreMsg::Sessions).await.into_iter().sum();
        self.sessions_held.set(n);
    }

    /// The data versions of the copies held here of `hashes` (those held), from the shards'
    /// indexes: no session data is read or copied.
    async fn versions(&self, hashes: &[[u8; 16]]) -> HashMap<[u8; 16], u64> {
        self.ask_cores(|tx| CoreMsg::Versions(hashes.to_vec(), tx))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Sends every core the message `make` builds around a reply channel and gathers their
    /// answers (one per core that is still running).
    async fn ask_cores<T>(&self, make: impl Fn(flume::Sender<T>) -> CoreMsg) -> Vec<T> {
        let (tx, rx) = flume::bounded(self.cores.len());
        for c in &self.cores {
            let _ = c.send_async(make(tx.clone())).await;
        }
        drop(tx);
        let mut answers = Vec::with_capacity(self.cores.len());
        while let Ok(v) = rx.recv_async().await {
            answers.push(v);
        }
        answers
    }

    /// A verified heartbeat.
    pub fn heard(self: &Rc<Self>, hb: &Heartbeat, now_ms: u64) {
        let mut changes = Vec::new();
        self.members.borrow_mut().heard(hb, now_ms, &mut changes);
        if changes.is_empty() {
            // The load changed: the backup choice at CreateId reads it from the shared view.
            self.publish_view();
        }
        self.apply_changes(changes);
    }

    fn apply_changes(self: &Rc<Self>, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut lost = Vec::new();
        for c in changes {
            if self.alone.get() && !matches!(c, Change::Down(_)) {
                // Heard a peer again after losing sight of them all: this node may be the one
                // that was cut off, and its sessions may have been taken over meanwhile. Rejoin
                // before anything below acts on what this node knows (new backups, epochs).
                self.alone.set(false);
                self.request_rejoin(format!(
                    "heard {} again after losing sight of every peer",
                    c.addr()
                ));
            }
            match c {
                Change::Up(a) => {
                    info!("cluster: node {a} is up");
                    if let Some(c) = &self.node.resolved.cluster {
                        if let Some(w) =
                            witness::unlisted_peer_warning(&c.peers, c.broadcast.is_some(), a)
                        {
                            warn!("{w}");
                        }
                    }
                    self.add_missing_backups();
                }
                Change::Down(a) => {
                    warn!("cluster: node {a} is down (no heartbeat within the node timeout)");
                    // The calls waiting on its connection (a relayed request, a copy) would wait
                    // out their relay timeout (plus a lock's wait) for a node that may be hung:
                    // they fail now, and their callers fail over or retry at once. The socket stays
                    // open (if the node lives, closing it would release its locks held for us).
                    if let Some(conn) = self.pool.borrow_mut().remove(&a) {
                        conn.fail_pending();
                    }
                    // (Its lease has lapsed by now anyway: it was not heard for longer.)
                    self.shared().leases.revoke(a);
                    lost.push(a);
                    if self.ready.get()
                        && !self.alone.get()
                        && self.members.borrow().up_count() == 0
                    {
                        self.alone.set(true);
                        warn!(
                            "cluster: every peer is down: if this node is the one cut off, its \
                             sessions may be taken over; it rejoins when it hears a peer again"
                        );
                    }
                }
                Change::Restarted(a) => {
                    info!("cluster: node {a} restarted");
                    // Calls to the old incarnation are never answered.
                    if let Some(conn) = self.pool.borrow_mut().remove(&a) {
                        conn.fail_pending();
                    }
                    // A new incarnation grants its own leases (it rejoins before serving).
                    self.shared().leases.revoke(a);
                    self.add_missing_backups();
                }
                Change::Returned(a) => {
                    // Same incarnation heard again after it was declared down (a healed
                    // partition): sessions it mastered may have been taken over meanwhile, so it
                    // must rejoin before it serves again (RejoinNeeded). Its pooled connection
                    // is likely half-open.
                    warn!("cluster: node {a} returned after it was declared down");
                    self.pool.borrow_mut().remove(&a);
                    if self.rejoining.get() {
                        // This node's own sync round did not include it.
                        self.rejoin_again.set(true);
                    }
                    self.send_rejoin_needed(a);
                    // No new backups here: if this node is the one that was away (its peers
                    // return to it), what it believes it masters may have been taken over, and a
                    // copy at a new epoch would outbid the new master's. It is told to rejoin;
                    // sessions without a backup get one when a rejoin ends (a node that had
                    // lost every peer rejoins by itself) or at their next write.
                }
                Change::Draining(a) => {
                    info!("cluster: node {a} is draining");
                    lost.push(a);
                }
            }
        }
        self.publish_view();
        for a in lost {
            self.replace_backup_everywhere(a);
        }
    }

    fn publish_view(&self) {
        let m = self.members.borrow();
        let shared = self.shared();
        shared
            .counters
            .peers_up
            .store(m.up_count() as u64, Ordering::Relaxed);
        shared
            .counters
            .peers_down
            .store(m.down_count() as u64, Ordering::Relaxed);
        let view = m.candidates();
        if let Ok(mut v) = shared.view.lock() {
            *v = view;
        }
    }

    // ----- local work ----------------------------------------------------------------------

    async fn local_to(&self, hash: [u8; 16], owner: OwnerId, op: Op<Vec<u8>>, reply: ReplyTo) {
        let key = SessionKey(hash);
        let shards = self.node.resolved.shards as usize;
        let shard = shard_for(&key, shards) as u32;
        let core = shard as usize % self.cores.len();
        let msg = CoreMsg::Request(ShardRequest {
            shard,
            key,
            owner,
            op,
            reply,
        });
        if let Err(flume::SendError(CoreMsg::Request(r))) = self.cores[core].send_async(msg).await {
            answer(r.reply, &unavailable("the daemon is stopping"), None);
        }
    }

    /// Runs `op` on the local shard and returns its answer.
    async fn local(&self, hash: [u8; 16], owner: OwnerId, op: Op<Vec<u8>>) -> OwnedReply {
        let (tx, rx) = flume::bounded(1);
        self.local_to(hash, owner, op, ReplyTo::new(tx, 0)).await;
        self.local_answer(rx).await
    }

    /// The decoded answer of a local request sent with `local_to`.
    async fn local_answer(&self, rx: flume::Receiver<Vec<u8>>) -> OwnedReply {
        match rx.recv_async().await {
            Ok(frame) => match decode_reply(&frame, &self.limits) {
                Ok((f, _)) => OwnedReply::from_wire(&f.message),
                Err(e) => OwnedReply::Error {
                    code: ErrorCode::Internal,
                    message: format!("local reply: {e:?}"),
                },
            },
            Err(_) => unavailable("the daemon is stopping"),
        }
    }

    /// The local copy of a session (its version, seconds left and data), labelled with `epoch`,
    /// as a replica ready to send; None if this node does not hold it.
    async fn copy_of(&self, hash: [u8; 16], epoch: u32) -> Option<OwnedReplica> {
        match self.local(hash, self.next_owner(), Op::Peek).await {
            OwnedReply::Data {
                token,
                version,
                data,
                ..
            } => Some(OwnedReplica {
                hash,
                version,
                epoch,
                lifetime_s: u32::try_from(token).unwrap_or(u32::MAX),
                data,
            }),
            _ => None,
        }
    }

    // ----- calls to peers ------------------------------------------------------------------

    async fn conn(self: &Rc<Self>, addr: SocketAddr) -> Result<Rc<PeerConn>, CallError> {
        let existing = self.pool.borrow().get(&addr).cloned();
        if let Some(c) = existing {
            if !c.is_broken() {
                return Ok(c);
            }
        }
        let c = relay::connect(self, addr).await?;
        self.pool.borrow_mut().insert(addr, c.clone());
        Ok(c)
    }

    /// One request, one answer (bounded by `wait_ms` + the relay timeout).
    async fn call(
        self: &Rc<Self>,
        addr: SocketAddr,
        message: RelayMessage<'_>,
        wait_ms: u64,
    ) -> Result<Incoming, CallError> {
        let c = self.conn(addr).await?;
        let (id, rx) = c.send(message)?;
        let limit = Duration::from_millis(wait_ms + self.timeout_ms);
        let r = monoio::time::timeout(limit, rx.recv_async()).await;
        c.forget(id);
        match r {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(CallError::Unreachable(format!("connection to {addr} lost"))),
            Err(_) => Err(CallError::Unreachable(format!(
                "{addr} did not answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    async fn forward(
        self: &Rc<Self>,
        to: SocketAddr,
        id: SessionId,
        op: &Op<Vec<u8>>,
        owner: OwnerId,
    ) -> Result<OwnedReply, CallError> {
        let Some(request) = to_request(id, op) else {
            return Ok(OwnedReply::Error {
                code: ErrorCode::Internal,
                message: "not a forwardable request".into(),
            });
        };
        let wait = match op {
            Op::ReadLock { wait_ms, .. } => u64::from(*wait_ms),
            _ => 0,
        };
        let counters = &self.shared().counters;
        let r = self
            .call(
                to,
                // The client's lock owner here: the master gives each (connection, origin)
                // its own owner, so two clients relayed over one pooled connection never
                // share a lock.
                RelayMessage::Forward {
                    origin: owner.0,
                    request,
                },
                wait,
            )
            .await;
        match r {
            Ok(Incoming::Reply(reply)) => {
                Counters::bump(&counters.relayed_out);
                self.track_relayed_lock(to, id, op, owner, &reply);
                Ok(reply)
            }
            Ok(Incoming::Error { code, message }) => {
                Counters::bump(&counters.relayed_out);
                Ok(OwnedReply::Error { code, message })
            }
            Ok(other) => Err(CallError::Unreachable(format!(
                "{to} answered a Forward with {other:?}"
            ))),
            Err(e) => {
                Counters::bump(&counters.relay_failures);
                Err(e)
            }
        }
    }

    /// Keeps `relayed_locks` up to date with a relayed request's outcome (local clients only:
    /// owners made for relay peers are released when their relay connection closes).
    fn track_relayed_lock(
        &self,
        to: SocketAddr,
        id: SessionId,
        op: &Op<Vec<u8>>,
        owner: OwnerId,
        reply: &OwnedReply,
    ) {
        if owner.0 & RELAY_OWNER_BASE == RELAY_OWNER_BASE {
            return;
        }
        let mut all = self.relayed_locks.borrow_mut();
        match (op, reply) {
            (
                Op::ReadLock { .. },
                OwnedReply::Data { token, new_id, .. } | OwnedReply::NotFound { token, new_id },
            ) if *token != 0 => {
                let id = new_id.unwrap_or(id);
                all.entry(owner).or_default().push((to, id, *token));
            }
            // These end the lock (or failed because it had ended already); a Touch keeps it.
            (Op::WriteUnlock { token, .. } | Op::Unlock { token } | Op::Destroy { token }, _) => {
                if let Some(held) = all.get_mut(&owner) {
                    held.retain(|(_, h, t)| !(h.hash == id.hash && t == token));
                    if held.is_empty() {
                        all.remove(&owner);
                    }
                }
            }
            _ => {}
        }
    }

    /// A local client's connection closed: unlock, on their masters, the locks it holds there.
    pub async fn owner_gone(self: Rc<Self>, owner: OwnerId) {
        let Some(held) = self.relayed_locks.borrow_mut().remove(&owner) else {
            return;
        };
        for (to, id, token) in held {
            let op = Op::Unlock { token };
            if let Err(e) = self.forward(to, id, &op, owner).await {
                debug!("cluster: could not release a relayed lock on {to}: {e}");
            }
        }
    }

    async fn replicate(
        self: &Rc<Self>,
        to: SocketAddr,
        copy: Replica<'_>,
    ) -> Result<(), ReplError> {
        let counters = &self.shared().counters;
        match self.call(to, RelayMessage::Replicate(copy), 0).await {
            Ok(Incoming::ReplicateAck) => {
                Counters::bump(&counters.replications);
                Ok(())
            }
            Ok(Incoming::Error {
                code: ErrorCode::StaleEpoch,
                ..
            }) => {
                Counters::bump(&counters.replication_failures);
                Err(ReplError::Fenced)
            }
            Ok(other) => {
                Counters::bump(&counters.replication_failures);
                Err(ReplError::Unreachable(format!("{to} answered {other:?}")))
            }
            Err(e) => {
                Counters::bump(&counters.replication_failures);
                Err(ReplError::Unreachable(e.to_string()))
            }
        }
    }

    fn placement(&self, hash: &[u8; 16]) -> Option<Placement> {
        self.placements.borrow().get(hash).copied()
    }

    /// Records the placement of `hash` and submits its journal record, if it needs one: the
    /// caller awaits the returned commit before it acts on the change.
    fn set_placement(&self, hash: [u8; 16], p: Placement) -> Commit {
        let _ = self.stage_placement(hash, p);
        self.submit_for(&[hash])
    }

    /// Records the placement of `hash` and stages its journal record, if it needs one (true):
    /// the caller submits the group (`journal_submit`) before its next await.
    fn stage_placement(&self, hash: [u8; 16], p: Placement) -> bool {
        let before = self.placements.borrow_mut().insert(hash, p);
        // Journaled unless a session ID says it all: this node master (or the master's backup)
        // at epoch 1, taken over from none, and nothing else known before. A placement the
        // journal holds is always rewritten (its record would otherwise outlive the change).
        let plain = p.epoch == 1
            && p.prev.is_none()
            && (p.master == Some(self.me) || p.backup == Some(self.me))
            && before.is_none_or(|b| b == p);
        let staged = {
            let mut j = self.journal.borrow_mut();
            (!plain || j.placement(&hash).is_some()) && j.add(Entry::Place(hash, p))
        };
        self.keep(hash, 0);
        let regular = p.master == Some(self.me) && p.epoch == 1 && p.prev.is_none();
        let shared = self.shared();
        if let Ok(mut set) = shared.irregular.lock() {
            if regular {
                set.remove(&hash);
            } else {
                set.insert(hash);
            }
            shared.irregular_count.store(set.len(), Ordering::Release);
        }
        staged
    }

    /// Keeps the placement of `hash` at least `PLACEMENT_KEEP_MS`, and `lifetime_s` from now.
    fn keep(&self, hash: [u8; 16], lifetime_s: u32) {
        let until = clock_ms() + (u64::from(lifetime_s) * 1000).max(PLACEMENT_KEEP_MS);
        let mut k = self.keep_until.borrow_mut();
        let e = k.entry(hash).or_insert(0);
        *e = (*e).max(until);
    }

    fn forget_placement(&self, hash: &[u8; 16]) -> Commit {
        let _ = self.stage_forget(hash);
        self.submit_for(&[*hash])
    }

    /// Forgets the placement of `hash` and stages its journal removal, if it needs one (true).
    fn stage_forget(&self, hash: &[u8; 16]) -> bool {
        self.placements.borrow_mut().remove(hash);
        let staged = self.journal.borrow_mut().add(Entry::Remove(*hash));
        self.keep_until.borrow_mut().remove(hash);
        let shared = self.shared();
        if let Ok(mut set) = shared.irregular.lock() {
            set.remove(hash);
            shared.irregular_count.store(set.len(), Ordering::Release);
        }
        staged
    }

    /// Drops placements kept past their time (sessions nobody used for that long); their
    /// journal removals are one batch (one fdatasync), awaited before this returns.
    async fn sweep(&self, now_ms: u64) -> usize {
        let old: Vec<[u8; 16]> = self
            .keep_until
            .borrow()
            .iter()
            .filter(|(_, until)| **until < now_ms)
            .map(|(h, _)| *h)
            .collect();
        for h in &old {
            self.stage_forget(h);
        }
        let c = self.journal_submit();
        self.committed(c).await;
        old.len()
    }

    /// Hands the journal records staged so far to the writer thread as one batch (one
    /// fdatasync, shared with the batches submitted while the last one ran): the caller awaits
    /// the returned commit before it acts on those changes. Nothing staged: the last batch
    /// submitted (a change found already made may be in it).
    fn journal_submit(&self) -> Commit {
        Commit(self.journal.borrow_mut().submit())
    }

    /// Submits what is staged (changes of `hashes` only) and returns what to await before
    /// acting on those sessions: that batch, or with nothing staged (no change needed a
    /// record), the batch still in flight with the latest change of one of them (the same
    /// change made by another task a moment ago), or nothing.
    fn submit_for(&self, hashes: &[[u8; 16]]) -> Commit {
        let mut j = self.journal.borrow_mut();
        if j.has_staged() {
            return Commit(j.submit());
        }
        Commit(
            hashes
                .iter()
                .filter_map(|h| j.unsynced(h))
                .max()
                .unwrap_or(0),
        )
    }

    /// Returns once the journal batch `c` was written and fdatasync'ed by the writer thread
    /// (or failed: logged and counted by `journal_answers`); other tasks run meanwhile.
    async fn committed(&self, c: Commit) {
        if c.0 > self.journal.borrow().committed_seq() {
            journal::committed(&self.journal, c.0).await;
        }
    }

    /// Returns once no journal change of `hash` is in flight: a task that acts on the session's
    /// placement (serves, relays, copies, answers for it) never acts on one that a crash now
    /// could still take back.
    async fn settled(&self, hash: &[u8; 16]) {
        // Again after each wait: another task may have submitted a newer change of the session
        // meanwhile (the cluster thread runs other tasks while this one waits).
        loop {
            let pending = self.journal.borrow().unsynced(hash);
            match pending {
                Some(seq) => journal::committed(&self.journal, seq).await,
                None => return,
            }
        }
    }

    /// Returns once every journal batch submitted so far is committed: before this node tells a
    /// peer what it knows of many sessions at once.
    async fn settled_all(&self) {
        let c = Commit(self.journal.borrow().submitted_seq());
        self.committed(c).await;
    }

    /// Takes the writer thread's answers (runs for the life of the cluster thread): counts the
    /// records, syncs and failures, and logs a group that could not be made durable.
    async fn journal_answers(self: Rc<Self>) {
        let shared = self.shared();
        journal::pump(&self.journal, |j, d| {
            let counters = &shared.counters;
            counters.journal_records.store(j.records, Ordering::Relaxed);
            counters.journal_syncs.store(j.syncs, Ordering::Relaxed);
            if let Some(e) = &d.error {
                Counters::bump(&counters.journal_errors);
                error!(
                    "cluster: cannot write the placement journal: {e} ({} changes hold until a \
                     restart only)",
                    d.records
                );
            }
        })
        .await;
    }

    /// Shutdown: every journal batch submitted is committed (or its failure logged and
    /// counted) before the cluster thread ends.
    fn journal_finish(&self) {
        let done = self.journal.borrow_mut().finish();
        let counters = &self.shared().counters;
        for d in done {
            if let Some(e) = &d.error {
                Counters::bump(&counters.journal_errors);
                error!("cluster: cannot write the placement journal at shutdown: {e}");
            }
        }
        let j = self.journal.borrow();
        counters.journal_records.store(j.records, Ordering::Relaxed);
        counters.journal_syncs.store(j.syncs, Ordering::Relaxed);
    }

    /// This node took a session over from `peer` or replaced it (after declaring it down): its
    /// lease requests are denied until it syncs, also across a restart of this node (journaled:
    /// the caller awaits the commit before it acts on the takeover).
    fn deny_leases(&self, peer: SocketAddr, why: String) -> Commit {
        self.stage_deny(peer, why);
        self.journal_submit()
    }

    fn stage_deny(&self, peer: SocketAddr, why: String) {
        self.lease_grants.borrow_mut().took_over(peer, why.clone());
        self.journal.borrow_mut().add(Entry::Deny(peer, why));
    }

    /// `peer` synced with this node: it may have leases again. True if it was denied them (the
    /// clearing is journaled; losing it in a crash only denies again, so nothing waits for it).
    fn leases_synced(&self, peer: SocketAddr) -> bool {
        let was = self.lease_grants.borrow_mut().synced(peer);
        if was {
            self.journal.borrow_mut().add(Entry::Clear(peer));
            let _ = self.journal_submit();
        }
        was
    }

    /// Puts back what the journal held at the start (before anything is served): used exactly
    /// as placements set while running (the rejoin then refreshes them).
    fn restore(&self, live: super::journal::Live) {
        for (hash, p) in live.placements {
            // Already in the journal: nothing is staged.
            let staged = self.stage_placement(hash, p);
            assert!(!staged, "a restored placement was journaled again");
        }
        for (peer, why) in live.denied {
            self.lease_grants.borrow_mut().took_over(peer, why);
        }
    }

    // ----- one request -----------------------------------------------------------------------

    /// Serves one session request (from a local client, or forwarded by a peer).
    pub async fn handle(
        self: Rc<Self>,
        id: SessionId,
        op: Op<Vec<u8>>,
        owner: OwnerId,
        reply: ReplyTo,
        forwarded: bool,
    ) {
        if self.node.settings.cluster.witness_only {
            // (A peer never relays here: no ID names a witness. A forged or stale one might.)
            let no = OwnedReply::Error {
                code: ErrorCode::BadRequest,
                message: super::WITNESS_ONLY.into(),
            };
            return answer(reply, &no, None);
        }
        if !self.ready.get() {
            // A peer's relayed request gets its answer well within the peer's relay timeout:
            // a peer that waited longer would take this node for unreachable and fail the
            // session over to its backup while this node lives. Its "still rejoining" error is
            // a relayed answer (the client retries), not a failover.
            let wait = if forwarded {
                self.timeout_ms / 2
            } else {
                self.timeout_ms * 4 + 10_000
            };
            let deadline = clock_ms() + wait;
            while !self.ready.get() && clock_ms() < deadline {
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
            if !self.ready.get() {
                return answer(
                    reply,
                    &unavailable("this node is still rejoining the cluster"),
                    None,
                );
            }
        }
        let hash = id.hash;
        // A placement change of this session still on its way to the disk is not acted on.
        self.settled(&hash).await;
        if self.placements.borrow().contains_key(&hash) {
            let lifetime = match op {
                Op::WriteUnlock { lifetime_s, .. } | Op::Touch { lifetime_s, .. } => lifetime_s,
                _ => 0,
            };
            self.keep(hash, lifetime);
        }
        let mut id = id;
        let mut moved_to: Option<SessionId> = None;
        if let Some(p) = self.placement(&hash) {
            if p.master == Some(self.me) && p.epoch >= id.version {
                return self.serve_master(p, id, op, owner, reply, forwarded).await;
            }
            if p.epoch > id.version || (p.epoch == id.version && id.master == self.me) {
                // This node knows a newer home: route by it, and hand the client its new ID.
                if let Some(newer) = p.id(hash) {
                    if newer.master == self.me {
                        return self.serve_master(p, id, op, owner, reply, forwarded).await;
                    }
                    id = newer;
                    moved_to = Some(newer);
                }
            }
        }
        if id.master == self.me {
            let p = Placement::named_by(&id);
            let c = self.set_placement(hash, p);
            self.committed(c).await;
            return self.serve_master(p, id, op, owner, reply, forwarded).await;
        }
        // The master is elsewhere. A forwarded request goes on only from the session's backup
        // to its master (the origin could not reach the master; maybe the backup can).
        let onward = !forwarded || id.backup == Some(self.me) || moved_to.is_some();
        let down = self.members.borrow().known_down(id.master);
        // A node the ID names that answered it does not hold the session (the search below may
        // find it elsewhere; if it does not, this is the answer).
        let mut absent: Option<(SocketAddr, OwnedReply)> = None;
        let mut why = format!("the session's master {} cannot be reached", id.master);
        // The connection to the master was refused (nothing listens there): the promotion
        // rule's fast path.
        let mut refused = false;
        if onward && !down {
            match self.forward(id.master, id, &op, owner).await {
                Ok(r) if forwarded || !not_held(&r) => return answer(reply, &r, moved_to),
                Ok(r) => absent = Some((id.master, r)),
                Err(e) => {
                    refused = e.refused();
                    warn!(
                        "cluster: master {} of a session unreachable: {e}",
                        id.master
                    );
                }
            }
        }
        if absent.is_none() {
            match id.backup {
                None if forwarded => {
                    return answer(
                        reply,
                        &unavailable(format!("{why} and the session has no backup")),
                        None,
                    );
                }
                None => why.push_str(" and the session has no backup"),
                Some(b) if b == self.me => {
                    if !self.may_promote(id.master, refused) {
                        return answer(
                            reply,
                            &unavailable(format!(
                                "{why}, but it is not down in the view of its backup (this \
                                 node: heard within the node timeout) and did not refuse the \
                                 connection, so it may be alive and serving; retry"
                            )),
                            None,
                        );
                    }
                    // On silence alone (no refused connection: the master's process may be
                    // alive behind a partial partition), another node must witness it. Failing
                    // that, a refused connection still shows the process is gone (probed only
                    // then: a connection attempt to a silent host may take the relay timeout,
                    // and a forwarded request must be answered within the origin's).
                    if !(refused && self.node.settings.cluster.failover_on_refused) {
                        let known = self.placement(&hash).map_or(0, |p| p.epoch);
                        let epoch = id.version.max(known) + 1;
                        let w = self.witness(id.master, WitnessChange::Promote, epoch).await;
                        let decided = witness::decide(w, self.node.settings.cluster.allow_alone);
                        let decided = match decided {
                            Err(_) if self.refuses(id.master).await => Ok(()),
                            other => other,
                        };
                        if let Err(no) = decided {
                            warn!(
                                "cluster: not taking over a session from silent master {}: {no}",
                                id.master
                            );
                            return answer(
                                reply,
                                &unavailable(format!(
                                    "{why}; its backup (this node) does not take the session \
                                     over: {no}; retry"
                                )),
                                None,
                            );
                        }
                        // Another request may have taken it over while this one asked.
                        if let Some(p) = self.placement(&hash) {
                            if p.master == Some(self.me) && p.epoch > id.version {
                                return self.serve_master(p, id, op, owner, reply, forwarded).await;
                            }
                        }
                    }
                    return self
                        .promote_and_serve(id, op, owner, reply, forwarded)
                        .await;
                }
                Some(_) if forwarded => {
                    return answer(
                        reply,
                        &unavailable("neither the session's master nor its backup can be reached"),
                        None,
                    );
                }
                Some(b) => match self.forward(b, id, &op, owner).await {
                    Ok(r) if !not_held(&r) => return answer(reply, &r, moved_to),
                    Ok(r) => absent = Some((b, r)),
                    Err(e) => {
                        why = format!(
                            "the session's master {} and backup {b} cannot be reached ({e})",
                            id.master
                        );
                    }
                },
            }
        }
        // Only the node the client talks to searches (a forwarded request was answered above).
        self.locate_and_serve(id, op, owner, reply, moved_to, absent, why)
            .await
    }

    /// The nodes the session's ID names cannot serve it (unreachable, down, or they answered
    /// that they do not hold it): ask every live node where it is (`Locate`, in parallel, each
    /// answer awaited at most the relay timeout), and relay the request to the newest placement
    /// found (highest epoch, then data version) whose master, or else backup, is up. That node
    /// serves it (a backup whose master is gone takes it over), and the client gets the
    /// session's current ID. Found nowhere: the answer of the node that does not hold it
    /// (NotFound, with the lock it took) if every live node answered, else Unavailable (a node
    /// that did not answer may hold it; and when the ID's nodes could not be reached, they may
    /// come back with the session on their disks).
    #[allow(clippy::too_many_arguments)]
    async fn locate_and_serve(
        self: &Rc<Self>,
        id: SessionId,
        op: Op<Vec<u8>>,
        owner: OwnerId,
        reply: ReplyTo,
        moved_to: Option<SessionId>,
        absent: Option<(SocketAddr, OwnedReply)>,
        why: String,
    ) {
        let counters = &self.shared().counters;
        Counters::bump(&counters.locates);
        let (answers, silent) = self.locate(id.hash).await;
        let usable = |a: SocketAddr| a != self.me && self.members.borrow().table().is_up(a);
        let best = answers
            .into_iter()
            // Never an older placement than the client's, nor the one that just failed.
            .filter(|l| l.epoch >= id.version)
            .filter(|l| (l.master, l.backup, l.epoch) != (id.master, id.backup, id.version))
            .filter(|l| usable(l.master) || l.backup.is_some_and(usable))
            .max_by_key(|l| (l.epoch, l.version));
        if let Some(l) = best {
            let found = SessionId::new(l.master, l.backup, l.epoch, id.hash);
            let targets = [Some(l.master), l.backup];
            for to in targets.into_iter().flatten().filter(|a| usable(*a)) {
                match self.forward(to, found, &op, owner).await {
                    Ok(r) => {
                        Counters::bump(&counters.locates_found);
                        info!(
                            "cluster: located a session its ID's nodes did not serve: relayed \
                             to {to} (epoch {}, master {})",
                            l.epoch, l.master
                        );
                        self.give_back_lock(&absent, id, owner).await;
                        return answer(reply, &r, Some(found));
                    }
                    Err(e) => warn!("cluster: located session's node {to} unreachable: {e}"),
                }
            }
        }
        match absent {
            // Every live node answered and none holds it: it does not exist.
            Some((_, r)) if silent == 0 => answer(reply, &r, moved_to),
            // A node that did not answer may hold it: a NotFound would let the client start a
            // new session over it.
            Some((at, _)) => {
                self.give_back_lock(&absent, id, owner).await;
                answer(
                    reply,
                    &unavailable(format!(
                        "{at} does not hold the session and {silent} live nodes did not answer \
                         the search for it"
                    )),
                    None,
                )
            }
            None => answer(
                reply,
                &unavailable(format!(
                    "{why}, and no live node could serve the session ({silent} did not answer \
                     the search)"
                )),
                None,
            ),
        }
    }

    /// A node the ID names answered a ReadLock with NotFound: it took a lock on a new, empty
    /// session there. The search answers otherwise, so that lock is given back.
    async fn give_back_lock(
        self: &Rc<Self>,
        absent: &Option<(SocketAddr, OwnedReply)>,
        id: SessionId,
        owner: OwnerId,
    ) {
        if let Some((at, OwnedReply::NotFound { token, .. })) = absent {
            if *token != 0 {
                let _ = self
                    .forward(*at, id, &Op::Unlock { token: *token }, owner)
                    .await;
            }
        }
    }

    /// Asks every live peer where session `hash` lives (in parallel): the places they know, and
    /// how many peers did not answer (unreachable, or not within the relay timeout).
    async fn locate(self: &Rc<Self>, hash: [u8; 16]) -> (Vec<Location>, usize) {
        let peers = self.members.borrow().live();
        let (tx, rx) = flume::unbounded();
        for peer in peers {
            let me = self.clone();
            let tx = tx.clone();
            monoio::spawn(async move {
                let r = me.call(peer, RelayMessage::Locate { hash }, 0).await;
                let _ = tx.send(r);
            });
        }
        drop(tx);
        let mut found = Vec::new();
        let mut silent = 0;
        while let Ok(r) = rx.recv_async().await {
            match r {
                Ok(Incoming::Located(Some(l))) => found.push(l),
                Ok(Incoming::Located(None)) => {}
                _ => silent += 1,
            }
        }
        (found, silent)
    }

    /// Where this node knows session `hash` to live, for a peer's Locate: its placement here,
    /// with the data version of the copy this node holds (0 if none); with no placement, a copy
    /// in a shard is a session this node masters and that never moved (epoch 1; its backup, if
    /// any, is not recorded).
    async fn where_is(&self, hash: [u8; 16]) -> Option<Location> {
        if self.node.settings.cluster.witness_only {
            // A witness serves nothing, even sessions left in its data folder from before.
            return None;
        }
        self.settled(&hash).await;
        let copy = self.versions(&[hash]).await.get(&hash).copied();
        match self.placement(&hash) {
            Some(Placement {
                master: Some(master),
                backup,
                epoch,
                ..
            }) => Some(Location {
                master,
                backup,
                epoch,
                version: copy.unwrap_or(0),
            }),
            _ => copy.map(|version| Location {
                master: self.me,
                backup: None,
                epoch: 1,
                version,
            }),
        }
    }

    /// This node is the master: run it here (under a valid read lease from the session's
    /// backup: `await_lease`), replicate writes. A token refused on a session that moved here
    /// says why (the lock stayed on the old master).
    async fn serve_master(
        self: &Rc<Self>,
        p: Placement,
        id: SessionId,
        op: Op<Vec<u8>>,
        owner: OwnerId,
        reply: ReplyTo,
        forwarded: bool,
    ) {
        let p = match self.await_lease(id.hash, p, forwarded).await {
            Ok(p) => p,
            Err(r) => return answer(reply, &r, None),
        };
        let token_op = matches!(
            op,
            Op::WriteUnlock { .. }
                | Op::Touch { .. }
                | Op::Unlock { .. }
                | Op::Destroy { token: 1.. }
        );
        if p.prev.is_none() || !token_op {
            return self.serve_master_inner(p, id, op, owner, reply).await;
        }
        let (tx, rx) = flume::bounded(1);
        let inner = ReplyTo::new(tx, reply.request_id());
        self.serve_master_inner(p, id, op, owner, inner).await;
        let Ok(frame) = rx.recv_async().await else {
            return answer(reply, &unavailable("the daemon is stopping"), None);
        };
        match decode_reply(&frame, &self.limits) {
            Ok((f, _)) => match f.message {
                Reply::Error {
                    code: ErrorCode::NotLocked,
                    ..
                } => answer(
                    reply,
                    &OwnedReply::Error {
                        code: ErrorCode::NotLocked,
                        message: format!(
                            "the session moved to a new master ({}), and the lock taken on the \
                             old one ({}) is gone: this change was not applied",
                            self.me,
                            p.prev.map_or("?".to_string(), |a| a.to_string())
                        ),
                    },
                    None,
                ),
                _ => reply.send_frame(frame),
            },
            Err(_) => reply.send_frame(frame),
        }
    }

    async fn serve_master_inner(
        self: &Rc<Self>,
        p: Placement,
        id: SessionId,
        op: Op<Vec<u8>>,
        owner: OwnerId,
        reply: ReplyTo,
    ) {
        let hash = id.hash;
        let ha = self.node.settings.cluster.ha;
        let mut p = p;
        if ha && p.backup.is_none() && matches!(op, Op::WriteUnlock { .. } | Op::Touch { .. }) {
            // A session without a backup (none was up when it was created, or its backup went
            // and no other was up) gets one as soon as one is up: this write goes there.
            let nb = self.members.borrow().choose_backup(&[self.me]);
            if let Some(nb) = nb {
                p = Placement {
                    epoch: p.epoch + 1,
                    backup: Some(nb),
                    ..p
                };
                let c = self.set_placement(hash, p);
                self.committed(c).await;
                Counters::bump(&self.shared().counters.backups_replaced);
                info!(
                    "cluster: a session without a backup gets {nb} (epoch {})",
                    p.epoch
                );
            }
        }
        let current = p.id(hash);
        let new_id = current
            .filter(|c| c.master != id.master || c.backup != id.backup || c.version != id.version);
        match op {
            Op::WriteUnlock {
                token,
                lifetime_s,
                data,
            } if ha && p.backup.is_some() => {
                // Under write-through the lock outlasts the flush: it is released (after the
                // answer) only once the backup holds the copy, so that the next holder never
                // reads a write the backup could lose. A write the shard refused leaves the
                // lock as it was, as WriteUnlock does.
                let hold = self.write_through();
                let op = if hold {
                    Op::WriteHold {
                        token,
                        lifetime_s,
                        data: data.clone(),
                    }
                } else {
                    Op::WriteUnlock {
                        token,
                        lifetime_s,
                        data: data.clone(),
                    }
                };
                let source = CopySource::Data { lifetime_s, data };
                let (r, applied) = self.write_replicated(p, hash, owner, op, source).await;
                answer(reply, &r, new_id);
                if hold && applied {
                    // Ends the WriteHold's pin (its answer tells nothing the client needs).
                    let failed = !matches!(r, OwnedReply::Done { .. });
                    let (tx, _) = flume::bounded(1);
                    let release = Op::Release { token, failed };
                    self.local_to(hash, owner, release, ReplyTo::new(tx, 0))
                        .await;
                }
            }
            Op::Touch { token, lifetime_s } if ha && p.backup.is_some() => {
                let op = Op::Touch { token, lifetime_s };
                let (r, _) = self
                    .write_replicated(p, hash, owner, op, CopySource::Peek)
                    .await;
                answer(reply, &r, new_id)
            }
            Op::Destroy { token } if p.backup.is_some() => {
                // Under write-through a Destroy with a token keeps the lock pinned until the
                // backup dropped its copy and the client has its answer (as a WriteUnlock's
                // WriteHold), so that nobody finds the session gone before the backup does.
                let hold = self.write_through() && token != 0;
                let op = if hold {
                    Op::DestroyHold { token }
                } else {
                    Op::Destroy { token }
                };
                let r = self.local(hash, owner, op).await;
                // Whether the backup confirmed the drop (under write-through).
                let mut dropped = true;
                if let (OwnedReply::Done { .. }, Some(b)) = (&r, p.backup) {
                    if !self.write_through() {
                        // Through the queue, after the session's queued copy (which it replaces):
                        // the backup sees the changes of one session in order.
                        self.take_core_copies().await;
                        // Copies taken by another task may still wait for room in a queue.
                        while self.copies_moving.get() > 0 {
                            monoio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let (tx, rx) = flume::bounded(1);
                        let q = self.dw_queue(b);
                        self.dw_enqueue(&q, hash, DwChange::Drop(tx)).await;
                        let _ = rx.recv_async().await;
                        return answer(reply, &r, new_id);
                    }
                    match self.call(b, RelayMessage::DropReplica { hash }, 0).await {
                        Ok(Incoming::Ack) => {}
                        other => {
                            dropped = false;
                            debug!(
                                "cluster: backup {b} did not drop a destroyed session: {other:?}"
                            )
                        }
                    }
                }
                if self.write_through() && !dropped {
                    // As a write whose copy failed: the client is told. The session is gone
                    // here, but the backup may still hold it and serve it after a failover; a
                    // retried Destroy (without the lock, now released) drops it there.
                    let failed = unavailable(
                        "the session was destroyed on its master, but its backup did not confirm \
                         that it dropped its copy (it could come back if the master fails); \
                         retry the destroy",
                    );
                    answer(reply, &failed, new_id);
                } else {
                    answer(reply, &r, new_id);
                }
                if hold {
                    // Whatever the outcome: a Release of a lock the DestroyHold did not pin
                    // (refused) changes nothing.
                    let (tx, _) = flume::bounded(1);
                    let release = Op::Release {
                        token,
                        failed: !dropped,
                    };
                    self.local_to(hash, owner, release, ReplyTo::new(tx, 0))
                        .await;
                }
            }
            op => {
                // A ReadLock may wait in the lock queue longer than the lease it was served
                // under: checked again when granted.
                let check = match (&op, p.backup) {
                    (Op::ReadLock { .. } | Op::Read | Op::Exists, Some(b)) => {
                        Some(self.shared().lease_check(b))
                    }
                    _ => None,
                };
                if new_id.is_none() {
                    let reply = match check {
                        Some(c) => reply.with_grant_check(c),
                        None => reply,
                    };
                    return self.local_to(hash, owner, op, reply).await;
                }
                let (tx, rx) = flume::bounded(1);
                let inner = ReplyTo::new(tx, 0);
                let inner = match check {
                    Some(c) => inner.with_grant_check(c),
                    None => inner,
                };
                self.local_to(hash, owner, op, inner).await;
                let r = self.local_answer(rx).await;
                answer(reply, &r, new_id)
            }
        }
    }

    // ----- relay frames from peers -----------------------------------------------------------

    /// One frame on a served relay connection. False: not a request (the connection closes).
    pub fn on_relay_frame(
        self: Rc<Self>,
        conn: &Rc<ServedConn>,
        frame: Frame<RelayMessage<'_>>,
    ) -> bool {
        let rid = frame.request_id;
        let counters = &self.shared().counters;
        let mut changes = Vec::new();
        let sender = self.members.borrow_mut().relay_traffic(
            conn.peer_node_id,
            membership::now_ms(),
            &mut changes,
        );
        self.apply_changes(changes);
        if self.node.settings.cluster.witness_only
            && matches!(
                frame.message,
                RelayMessage::Replicate(_)
                    | RelayMessage::ReplicateBatch { .. }
                    | RelayMessage::Promote { .. }
            )
        {
            // A witness never holds a copy: the sender (a client-made ID may name this node as
            // backup) finds the copy refused and gives the session another backup.
            let no = Out::Error {
                code: ErrorCode::BadRequest,
                message: super::WITNESS_ONLY.into(),
            };
            let _ = conn.relay.send((rid, no));
            return true;
        }
        match frame.message {
            RelayMessage::Forward { origin, request } => {
                Counters::bump(&counters.relayed_in);
                let owner = conn.owner_for(origin, || self.next_owner());
                let locks = &self.node.settings.locks;
                let reply = ReplyTo::new(conn.local.clone(), rid);
                match from_request(&request, locks.wait_max_ms, locks.lease_max_ms) {
                    Some((id, op)) => {
                        monoio::spawn(self.handle(id, op, owner, reply, true));
                    }
                    None => answer(
                        reply,
                        &OwnedReply::Error {
                            code: ErrorCode::BadRequest,
                            message: "this request is not relayed".into(),
                        },
                        None,
                    ),
                }
            }
            RelayMessage::Replicate(r) => {
                let copy = OwnedReplica {
                    hash: r.hash,
                    version: r.version,
                    epoch: r.epoch,
                    lifetime_s: r.lifetime_s,
                    data: r.data.to_vec(),
                };
                let conn = conn.clone();
                monoio::spawn(async move {
                    let out = self.on_replicate(copy, sender).await;
                    let _ = conn.relay.send((rid, out));
                });
            }
            RelayMessage::ReplicateBatch { copies } => {
                let copies: Vec<OwnedReplica> =
                    copies.iter().map(|r| OwnedReplica::from_wire(&r)).collect();
                let conn = conn.clone();
                monoio::spawn(async move {
                    let out = self.on_replicate_batch(copies, sender).await;
                    let _ = conn.relay.send((rid, out));
                });
            }
            RelayMessage::DropReplica { hash } => {
                let conn = conn.clone();
                monoio::spawn(async move {
                    let p = self.placement(&hash);
                    let out = if sender.is_none() {
                        // Only a node whose heartbeat was heard may make this node drop a copy
                        // (as SyncHashes and RejoinNeeded).
                        Out::Error {
                            code: ErrorCode::Unavailable,
                            message: "no heartbeat from you yet".into(),
                        }
                    } else if p.is_some_and(|p| p.master == Some(self.me)) {
                        Out::Error {
                            code: ErrorCode::StaleEpoch,
                            message: "this node is the session's master now".into(),
                        }
                    } else if let Some(m) = p.and_then(|p| p.master).filter(|m| sender != Some(*m))
                    {
                        // From a node that is not the master this node knows (an old master's
                        // late destroy, after the session was taken over): dropping would leave
                        // the current master without its backup copy.
                        Out::Error {
                            code: ErrorCode::StaleEpoch,
                            message: format!("this node backs the session up for {m}"),
                        }
                    } else {
                        let c = self.forget_placement(&hash);
                        self.committed(c).await;
                        let _ = self.local(hash, self.next_owner(), Op::Remove).await;
                        Out::Ack
                    };
                    let _ = conn.relay.send((rid, out));
                });
            }
            RelayMessage::Promote { hash, epoch } => {
                let conn = conn.clone();
                monoio::spawn(async move {
                    let out = self.on_promote(hash, epoch, sender).await;
                    let _ = conn.relay.send((rid, out));
                });
            }
            RelayMessage::SyncRequest { .. } => {
                // Answered whatever this node's state, also while it is not ready itself (two
                // nodes rejoining at once each wait for the other's answer).
                let conn = conn.clone();
                monoio::spawn(async move {
                    self.on_sync_request(&conn, rid, sender).await;
                });
            }
            RelayMessage::Locate { hash } => {
                Counters::bump(&counters.locates_answered);
                let conn = conn.clone();
                monoio::spawn(async move {
                    let location = self.where_is(hash).await;
                    let live_nodes = self.members.borrow().up_count() as u32 + 1;
                    let out = Out::Located(Located {
                        hash,
                        live_nodes,
                        location,
                    });
                    let _ = conn.relay.send((rid, out));
                });
            }
            RelayMessage::SyncHashes { hashes } => {
                // Answered whatever this node's state, as SyncRequest; and, as SyncRequest, only
                // to a node one of whose heartbeats was heard (the asker retries).
                if sender.is_none() {
                    let out = Out::Error {
                        code: ErrorCode::Unavailable,
                        message: "no heartbeat from you yet".into(),
                    };
                    let _ = conn.relay.send((rid, out));
                    return true;
                }
                let hashes: Vec<[u8; 16]> = hashes.iter().collect();
                let conn = conn.clone();
                monoio::spawn(async move {
                    // What it is told is durable here first (no placement a crash could take
                    // back), before its leases are cleared: no await from the clearing to the
                    // answer's reading of the placements but the cores' versions, as before.
                    self.settled_all().await;
                    if let Some(from) = sender {
                        // Its rejoin: it learns here where its sessions went, so it may have
                        // leases again.
                        self.leases_synced(from);
                    }
                    let out = self.on_sync_hashes(hashes).await;
                    let _ = conn.relay.send((rid, out));
                });
            }
            RelayMessage::LeaseRequest { sent_ms } => {
                // Granted unless this node took a session over from the sender (or replaced
                // it) since it last synced here. A grant is safe by itself: this node promotes
                // none of the sender's sessions before it has not heard the sender for the
                // node timeout (this request counts as hearing it), or its connection is
                // refused (its process is gone).
                let answer = self.lease_grants.borrow().answer(sender);
                let out = match answer {
                    LeaseAnswer::Grant => Out::LeaseGrant(sent_ms),
                    LeaseAnswer::Denied(why) => Out::LeaseDenied(sent_ms, why),
                    LeaseAnswer::NotHeard => Out::Error {
                        code: ErrorCode::Unavailable,
                        message: "no heartbeat from you yet".into(),
                    },
                };
                let _ = conn.relay.send((rid, out));
            }
            RelayMessage::WitnessRequest {
                suspect,
                change,
                epoch,
            } => {
                let (out, commit) = self.on_witness_request(suspect, change, epoch, sender);
                match commit {
                    None => {
                        let _ = conn.relay.send((rid, out));
                    }
                    Some(c) => {
                        // The agreement goes out once the denial it made is durable.
                        let conn = conn.clone();
                        monoio::spawn(async move {
                            self.committed(c).await;
                            let _ = conn.relay.send((rid, out));
                        });
                    }
                }
            }
            RelayMessage::RejoinNeeded => {
                let out = match sender {
                    Some(from) => {
                        self.request_rejoin(format!(
                            "{from} declared this node down and hears it again"
                        ));
                        Out::Ack
                    }
                    None => Out::Error {
                        code: ErrorCode::Unavailable,
                        message: "no heartbeat from you yet".into(),
                    },
                };
                let _ = conn.relay.send((rid, out));
            }
            _ => return false,
        }
        true
    }
}

fn cluster_retry_ms(state: &State) -> u64 {
    state.node.settings.cluster.heartbeat_interval_ms
}

/// The cluster thread's root future.
pub async fn main(start: ClusterStart) {
    let ClusterStart {
        node,
        inbox,
        cores,
        relay: relay_listener,
        heartbeat,
        started_ms,
        journal,
        recovered,
    } = start;
    let cluster = node.resolved.cluster.clone().expect("clustering on");
    let shared = node.cluster.as_ref().expect("clustering on");
    if node.settings.cluster.witness_only {
        info!(
            "cluster: this node is a witness only (cluster.witness_only): it holds no sessions, \
             refuses session requests, and counts among the nodes that witness a silent node"
        );
    } else if let Some(w) = witness::alone_warning(
        &cluster.peers,
        node.relay_addr.ip(),
        node.settings.cluster.ha,
        node.settings.cluster.allow_alone,
    ) {
        warn!("{w}");
    }
    let state = Rc::new(State {
        me: node.relay_addr,
        node_id: node.node_id,
        key: shared.key.clone(),
        timeout_ms: node.settings.cluster.relay_timeout_ms,
        limits: proto::limits(node.settings.storage.session_size_max),
        cores,
        members: RefCell::new(Members::new(
            node.relay_addr,
            node.settings.cluster.heartbeat_interval_ms,
            cluster.node_timeout_ms,
            membership::now_ms(),
        )),
        pool: RefCell::new(HashMap::new()),
        placements: RefCell::new(HashMap::new()),
        keep_until: RefCell::new(HashMap::new()),
        owner_seq: Cell::new(0),
        relayed_locks: RefCell::new(HashMap::new()),
        sessions_held: Cell::new(0),
        ready: Cell::new(false),
        rejoining: Cell::new(true),
        rejoin_again: Cell::new(false),
        alone: Cell::new(false),
        rejoin_gen: Cell::new(0),
        queued: RefCell::new(HashMap::new()),
        copies_moving: Cell::new(0),
        lease_ms: cluster
            .node_timeout_ms
            .saturating_sub(node.settings.cluster.lease_margin_ms),
        lease_grants: RefCell::new(Grants::default()),
        lease_inflight: RefCell::new(HashSet::new()),
        round_started_ms: Cell::new(0),
        arrivals: RefCell::new(HashMap::new()),
        journal: RefCell::new(journal),
        node,
    });
    state.restore(recovered);
    state.refresh_load().await;
    match monoio::net::udp::UdpSocket::from_std(heartbeat) {
        Ok(sock) => {
            let sock = Rc::new(sock);
            monoio::spawn(super::heartbeat::recv_loop(state.clone(), sock.clone()));
            monoio::spawn(super::heartbeat::send_loop(state.clone(), sock, started_ms));
        }
        Err(e) => error!("cluster: cannot use the heartbeat socket: {e}"),
    }
    match monoio::net::TcpListener::from_std(relay_listener) {
        Ok(l) => {
            monoio::spawn(relay::accept(state.clone(), l));
        }
        Err(e) => error!("cluster: cannot use the relay listener: {e}"),
    }
    {
        let s = state.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_millis(PLACEMENT_SWEEP_MS)).await;
                let n = s.sweep(clock_ms()).await;
                if n > 0 {
                    debug!("cluster: forgot {n} placements of sessions unused for a day");
                }
            }
        });
    }
    {
        let s = state.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_millis(50)).await;
                let mut changes = Vec::new();
                s.members
                    .borrow_mut()
                    .tick(membership::now_ms(), &mut changes);
                s.apply_changes(changes);
            }
        });
    }
    if !state.node.settings.cluster.witness_only {
        // Read leases: every heartbeat interval, one request to every live peer (a peer that
        // backs up none of this node's sessions answers too: the table stays warm for the
        // sessions a new backup choice gives it). A witness masters nothing and needs none;
        // the others ask it too, which is how a master it denied learns to rejoin.
        let s = state.clone();
        monoio::spawn(async move {
            let interval = s.node.settings.cluster.heartbeat_interval_ms;
            loop {
                let peers = s.members.borrow().live();
                for peer in peers {
                    s.request_lease(peer);
                }
                monoio::time::sleep(Duration::from_millis(interval)).await;
            }
        });
    }
    monoio::spawn(state.clone().journal_answers());
    monoio::spawn(state.clone().rejoin(true));
    while let Ok(msg) = inbox.recv_async().await {
        match msg {
            ClusterMsg::Request {
                id,
                op,
                owner,
                reply,
            } => {
                monoio::spawn(state.clone().handle(id, op, owner, reply, false));
            }
            ClusterMsg::Copied {
                id,
                version,
                lifetime_s,
                data,
                done,
            } => {
                monoio::spawn(state.clone().copied(id, version, lifetime_s, data, done));
            }
            ClusterMsg::CopiesWaiting => {
                let s = state.clone();
                monoio::spawn(async move {
                    let linger = DW_LINGER_MS.min(s.node.settings.storage.flush_interval_ms);
                    monoio::time::sleep(Duration::from_millis(linger)).await;
                    s.take_core_copies().await;
                });
            }
            ClusterMsg::OwnerGone(owner) => {
                monoio::spawn(state.clone().owner_gone(owner));
            }
            ClusterMsg::Drain(done) => {
                monoio::spawn(state.clone().drain(done));
            }
            ClusterMsg::Stop => break,
        }
    }
    // Every journal batch submitted is committed (or its failure logged) before the thread
    // ends; the tasks still waiting for one are dropped with the event loop.
    state.journal_finish();
    info!("cluster: stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the session whose HASH is all `b` (with 2 shards: `b` < 0x80 is shard 0, else
    /// shard 1), at `epoch`, with `len` bytes of data.
    fn copy(b: u8, epoch: u32, len: usize) -> OwnedReplica {
        OwnedReplica {
            hash: [b; 16],
            version: 1,
            epoch,
            lifetime_s: 600,
            data: vec![b; len],
        }
    }

    fn placement() -> Placement {
        Placement {
            epoch: 1,
            master: None,
            backup: None,
            prev: None,
        }
    }

    /// A received batch: a stale copy is refused alone (StaleEpoch), the others go to the core
    /// owning their shard, two cores, each with its copies in batch order.
    #[test]
    fn a_batch_splits_into_stale_refusals_and_one_group_per_core() {
        let copies = vec![
            copy(0x01, 1, 10), // shard 0
            copy(0xf0, 1, 10), // shard 1
            copy(0x02, 0, 10), // stale
            copy(0x03, 1, 10), // shard 0
            copy(0xf1, 1, 10), // shard 1
        ];
        let (outcomes, by_core) = split_batch(copies, 2, 2, |c| c.epoch == 0);
        assert_eq!(
            outcomes[2],
            BatchOutcome::Refused(ErrorCode::StaleEpoch),
            "the stale copy is refused"
        );
        assert_eq!(by_core.len(), 2);
        let on = |core: usize| -> Vec<(usize, u32, u8)> {
            by_core[core]
                .iter()
                .map(|(i, shard, c)| (*i, *shard, c.hash[0]))
                .collect()
        };
        assert_eq!(on(0), vec![(0, 0, 0x01), (3, 0, 0x03)]);
        assert_eq!(on(1), vec![(1, 1, 0xf0), (4, 1, 0xf1)]);
        // Every copy is in exactly one place: refused, or in one core's group.
        let grouped: usize = by_core.iter().map(Vec::len).sum();
        assert_eq!(grouped + 1, outcomes.len());
        // One core: every fresh copy in its group.
        let (_, one) = split_batch(vec![copy(1, 1, 1), copy(0xff, 1, 1)], 2, 1, |_| false);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].len(), 2);
    }

    /// The sender's frames: at most REPLICATE_BATCH_MAX copies and batch_body_max bytes each,
    /// in order, a copy too large for a batch alone.
    #[test]
    fn copies_are_cut_into_batches_within_the_limits() {
        let limits = Limits {
            body_max: 200,
            data_max: 150,
            batch_body_max: (4 + 3 * (Replica::HEAD_LEN + 50)) as u32,
        };
        let entry = |len: usize| ([0u8; 16], placement(), copy(1, 1, len), true);
        // Three 50-byte copies fill a batch exactly; the fourth starts the next.
        let copies: Vec<_> = (0..7).map(|_| entry(50)).collect();
        assert_eq!(batch_groups(&copies, &limits), vec![0..3, 3..6, 6..7]);
        // A copy larger than a batch is a group of its own.
        let copies = vec![entry(10), entry(400), entry(10)];
        assert_eq!(batch_groups(&copies, &limits), vec![0..1, 1..2, 2..3]);
        // The count limit.
        let wide = Limits::default();
        let copies: Vec<_> = (0..REPLICATE_BATCH_MAX * 2 + 1).map(|_| entry(1)).collect();
        assert_eq!(
            batch_groups(&copies, &wide),
            vec![
                0..REPLICATE_BATCH_MAX,
                REPLICATE_BATCH_MAX..2 * REPLICATE_BATCH_MAX,
                2 * REPLICATE_BATCH_MAX..2 * REPLICATE_BATCH_MAX + 1
            ]
        );
        assert!(batch_groups(&[], &wide).is_empty());
    }

    /// Each copy's answer keeps the meaning of a single Replicate's: held, stale (fenced), or
    /// failed (retried, then repaired); an answer that does not list the batch's copies in order
    /// is trusted for none.
    #[test]
    fn a_batch_answer_gives_each_copy_the_outcome_a_single_copy_would_get() {
        let hashes = [[1u8; 16], [2; 16], [3; 16]];
        let ack = |o: Vec<([u8; 16], BatchOutcome)>| Some(Incoming::ReplicateBatchAck(o));
        let got = copy_answers(
            hashes.iter().copied(),
            ack(vec![
                (hashes[0], BatchOutcome::Held { version: 4 }),
                (hashes[1], BatchOutcome::Refused(ErrorCode::StaleEpoch)),
                (hashes[2], BatchOutcome::Refused(ErrorCode::Storage)),
            ]),
        );
        assert_eq!(got[0], CopyAnswer::Held);
        assert_eq!(got[1], CopyAnswer::Stale);
        assert!(matches!(got[2], CopyAnswer::Failed(_)));
        // Out of order, or one missing: none trusted.
        let swapped = copy_answers(
            hashes.iter().copied(),
            ack(vec![
                (hashes[1], BatchOutcome::Held { version: 4 }),
                (hashes[0], BatchOutcome::Held { version: 4 }),
                (hashes[2], BatchOutcome::Held { version: 4 }),
            ]),
        );
        assert!(swapped.iter().all(|a| matches!(a, CopyAnswer::Failed(_))));
        let short = copy_answers(
            hashes.iter().copied(),
            ack(vec![(hashes[0], BatchOutcome::Held { version: 4 })]),
        );
        assert_eq!(short.len(), 3);
        assert!(short.iter().all(|a| matches!(a, CopyAnswer::Failed(_))));
        // No answer (timeout, broken connection): every copy failed.
        let none = copy_answers(hashes.iter().copied(), None);
        assert!(none.iter().all(|a| matches!(a, CopyAnswer::Failed(_))));
        // A whole-frame StaleEpoch, and a lone Replicate's answers.
        let stale = copy_answers(
            hashes.iter().copied(),
            Some(Incoming::Error {
                code: ErrorCode::StaleEpoch,
                message: String::new(),
            }),
        );
        assert!(stale.iter().all(|a| *a == CopyAnswer::Stale));
        assert_eq!(
            copy_answers([hashes[0]].into_iter(), Some(Incoming::ReplicateAck)),
            vec![CopyAnswer::Held]
        );
        assert!(matches!(
            copy_answers(hashes.iter().copied(), Some(Incoming::ReplicateAck))[0],
            CopyAnswer::Failed(_)
        ));
    }
}
