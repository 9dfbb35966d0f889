//! One request against one engine shard, on the thread that owns the shard.
//!
//! A request either gets its answer at once, or waits inside the shard: a ReadLock queued behind
//! another holder (until `Event::LockGranted` / `Event::LockTimedOut`), or a write-through write
//! waiting for its group flush (until `Event::Durable`). The waiting ones are kept here with their
//! `ReplyTo`, keyed by the engine's `WaitId` / `Ticket`, and answered when the event comes.
//!
//! Invariant: every `ReplyTo` is answered exactly once. Dropping one unanswered sends an Internal
//! error (so a bug costs one request an error, never a client hung for ever).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use log::{error, warn};
use scd_engine::{
    EngineError, Event, FlushPolicy, LockOutcome, LockToken, OwnerId, RecoveryReport,
    ReplicaOutcome, SessionKey, Shard, ShardConfig, Ticket, WaitId, WriteAck, shard_for,
};

use crate::answer::{Answer, ErrCode};
use crate::daemon::Node;
use crate::proto;
use crate::settings::StorageModel;
use crate::stats::ShardFigures;

/// A request's operation on its session. `D` is the write's data: borrowed from the connection's
/// buffer when the shard is on the same core, owned when the request crosses to another core.
#[derive(Clone, Debug)]
pub enum Op<D> {
    ReadLock {
        wait_ms: u32,
        lease_ms: u32,
    },
    Read,
    WriteUnlock {
        token: u64,
        lifetime_s: u32,
        data: D,
    },
    /// A WriteUnlock that keeps the lock, pinned (engine `pin`): the caller releases it later
    /// with `Release` and the same token. Under write-through with HA the lock must outlast the
    /// flush until the backup holds the copy (`conn::write_replicated`, the cluster thread's
    /// `write_replicated`), so that no other holder reads a write the backup could still lose:
    /// until the `Release`, the lock survives its lease, its connection's close and its holder's
    /// own Unlock, and a lockless `Read` of the session waits. Never sent by a client.
    WriteHold {
        token: u64,
        lifetime_s: u32,
        data: D,
    },
    Touch {
        token: u64,
        lifetime_s: u32,
    },
    Unlock {
        token: u64,
    },
    /// Ends the pin a `WriteHold` or `DestroyHold` with this token put on the lock, which
    /// releases it (to the next waiter) unless another such pin remains. A lock not pinned is
    /// left as it is. Never sent by a client: the daemon's, once the copy resolved.
    /// `failed`: the copy did not reach the backup (or the write was not made durable): the
    /// reads held back by the pin are answered Unavailable rather than with a write the backup
    /// may not hold (or, after a fenced copy, a session this node no longer has).
    Release {
        token: u64,
        failed: bool,
    },
    Destroy {
        token: u64,
    },
    /// A Destroy with a token (non-zero) that keeps the lock pinned, like `WriteHold`, until
    /// `Release`: under write-through with HA, until the backup dropped its copy. Never sent by
    /// a client.
    DestroyHold {
        token: u64,
    },
    Exists,
    /// Hand out this (freshly drawn) HASH as a new session ID, if no session or lock has it, with
    /// this backup (HA) in it.
    Create {
        backup: Option<std::net::SocketAddr>,
    },
    /// Cluster: hold this copy from the session's master (kept only if `version` is newer than
    /// the copy here). Answered `Done` with the version now held: with `durable`, under
    /// write-through only once the copy is on disk (the master's write waits for that); without,
    /// at once (a rejoin's sync; the pass's flush follows).
    ApplyReplica {
        version: u64,
        lifetime_s: u32,
        data: D,
        durable: bool,
    },
    /// Cluster: the session's data for copying elsewhere: answered `Data` whose token field
    /// carries the seconds it has left to live (no lock is taken), or `NotFound`.
    Peek,
    /// Cluster: forget the session, with no lock check (the master decided, or the copy was
    /// taken over elsewhere). Answered `Done`.
    Remove,
}

impl Op<&[u8]> {
    pub fn to_owned(&self) -> Op<Vec<u8>> {
        match *self {
            Op::ReadLock { wait_ms, lease_ms } => Op::ReadLock { wait_ms, lease_ms },
            Op::Read => Op::Read,
            Op::WriteUnlock {
                token,
                lifetime_s,
                data,
            } => Op::WriteUnlock {
                token,
                lifetime_s,
                data: data.to_vec(),
            },
            Op::WriteHold {
                token,
                lifetime_s,
                data,
            } => Op::WriteHold {
                token,
                lifetime_s,
                data: data.to_vec(),
            },
            Op::Touch { token, lifetime_s } => Op::Touch { token, lifetime_s },
            Op::Unlock { token } => Op::Unlock { token },
            Op::Release { token, failed } => Op::Release { token, failed },
            Op::Destroy { token } => Op::Destroy { token },
            Op::DestroyHold { token } => Op::DestroyHold { token },
            Op::Exists => Op::Exists,
            Op::Create { backup } => Op::Create { backup },
            Op::ApplyReplica {
                version,
                lifetime_s,
                data,
                durable,
            } => Op::ApplyReplica {
                version,
                lifetime_s,
                data: data.to_vec(),
                durable,
            },
            Op::Remove => Op::Remove,
            Op::Peek => Op::Peek,
        }
    }
}

impl Op<Vec<u8>> {
    pub fn as_ref(&self) -> Op<&[u8]> {
        match self {
            Op::ReadLock { wait_ms, lease_ms } => Op::ReadLock {
                wait_ms: *wait_ms,
                lease_ms: *lease_ms,
            },
            Op::Read => Op::Read,
            Op::WriteUnlock {
                token,
                lifetime_s,
                data,
            } => Op::WriteUnlock {
                token: *token,
                lifetime_s: *lifetime_s,
                data: data.as_slice(),
            },
            Op::WriteHold {
                token,
                lifetime_s,
                data,
            } => Op::WriteHold {
                token: *token,
                lifetime_s: *lifetime_s,
                data: data.as_slice(),
            },
            Op::Touch { token, lifetime_s } => Op::Touch {
                token: *token,
                lifetime_s: *lifetime_s,
            },
            Op::Unlock { token } => Op::Unlock { token: *token },
            Op::Release { token, failed } => Op::Release {
                token: *token,
                failed: *failed,
            },
            Op::Destroy { token } => Op::Destroy { token: *token },
            Op::DestroyHold { token } => Op::DestroyHold { token: *token },
            Op::Exists => Op::Exists,
            Op::Create { backup } => Op::Create { backup: *backup },
            Op::ApplyReplica {
                version,
                lifetime_s,
                data,
                durable,
            } => Op::ApplyReplica {
                version: *version,
                lifetime_s: *lifetime_s,
                data: data.as_slice(),
                durable: *durable,
            },
            Op::Remove => Op::Remove,
            Op::Peek => Op::Peek,
        }
    }
}

/// Where a request's reply goes: its connection's writer (on whichever core), under its request
/// ID, or one entry of a batch. `Send`, so a shard on another core can answer directly.
pub struct ReplyTo {
    sink: Sink,
    request_id: u64,
    answered: bool,
    /// Told the written version as soon as a write-through write is applied in memory and waits
    /// for its flush (the cluster thread sends the copy to the backup meanwhile). Dropped
    /// unused when the write is answered at once (delayed-write, or an error).
    applied: Option<flume::Sender<u64>>,
    /// A ReadLock that may wait in the shard's lock queue: checked again when the lock is
    /// granted (see `GrantCheck`).
    grant_check: Option<GrantCheck>,
}

pub use crate::cluster::GrantCheck;

/// Where a `ReplyTo` delivers its encoded reply frame.
enum Sink {
    /// A connection's writer (or any single waiter).
    One(flume::Sender<Vec<u8>>),
    /// Entry `index` of a batch: the batch is answered once, when its last entry is.
    Batch {
        batch: Arc<BatchAnswers>,
        index: usize,
    },
}

/// The answers of one batch of requests sent to a core in one message (`CoreMsg::Batch`): each
/// entry's reply frame is kept in its place, and the whole list goes back in one message when the
/// last entry is answered (at once under delayed-write; a write-through entry waits for its
/// flush, as any write does).
pub struct BatchAnswers {
    /// (reply frame of each entry, entries not answered yet). Only ever locked by the core
    /// thread answering, so never contended.
    state: Mutex<(Vec<Vec<u8>>, usize)>,
    done: flume::Sender<Vec<Vec<u8>>>,
}

impl ReplyTo {
    pub fn new(tx: flume::Sender<Vec<u8>>, request_id: u64) -> ReplyTo {
        ReplyTo {
            sink: Sink::One(tx),
            request_id,
            answered: false,
            applied: None,
            grant_check: None,
        }
    }

    /// Like `new`, and a write that waits for its flush says so on `applied` first.
    pub fn with_applied(
        tx: flume::Sender<Vec<u8>>,
        request_id: u64,
        applied: flume::Sender<u64>,
    ) -> ReplyTo {
        ReplyTo {
            sink: Sink::One(tx),
            request_id,
            answered: false,
            applied: Some(applied),
            grant_check: None,
        }
    }

    /// An answer that must pass `check` when it is given later than admitted: a ReadLock granted
    /// from the queue, a lockless Read or Exists held back by a pin.
    pub fn with_grant_check(mut self, check: GrantCheck) -> ReplyTo {
        self.grant_check = Some(check);
        self
    }

    /// Whether a lock granted from the queue may be handed to this waiter (see `GrantCheck`).
    fn grant_allowed(&self) -> bool {
        self.grant_check.as_ref().is_none_or(GrantCheck::holds)
    }

    /// One `ReplyTo` per entry of a batch of `count` requests: `done` gets every entry's reply
    /// frame, in entry order, in one message once the last one is answered (every `ReplyTo` is
    /// answered exactly once, by its request or by its drop, so that always happens).
    pub fn batch(count: usize, done: flume::Sender<Vec<Vec<u8>>>) -> Vec<ReplyTo> {
        let batch = Arc::new(BatchAnswers {
            state: Mutex::new((vec![Vec::new(); count], count)),
            done,
        });
        (0..count)
            .map(|index| ReplyTo {
                sink: Sink::Batch {
                    batch: batch.clone(),
                    index,
                },
                request_id: 0,
                answered: false,
                applied: None,
                grant_check: None,
            })
            .collect()
    }

    /// Hands the reply frame to its sink.
    fn deliver(&self, frame: Vec<u8>) {
        match &self.sink {
            // The connection may be gone; then nobody needs the reply.
            Sink::One(tx) => {
                let _ = tx.send(frame);
            }
            Sink::Batch { batch, index } => {
                // A poisoned lock means a panic elsewhere on this thread, which aborts: recover
                // the data rather than lose the batch's answer.
                let mut state = batch.state.lock().unwrap_or_else(|e| e.into_inner());
                let (frames, left) = &mut *state;
                if let Some(slot) = frames.get_mut(*index) {
                    *slot = frame;
                }
                *left = left.saturating_sub(1);
                if *left == 0 {
                    let _ = batch.done.send(std::mem::take(frames));
                }
            }
        }
    }

    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    pub fn send(mut self, answer: Answer<'_>) {
        let mut out = Vec::new();
        proto::encode_answer(self.request_id, &answer, &mut out);
        self.answered = true;
        self.deliver(out);
    }

    /// An already encoded reply frame.
    pub fn send_frame(mut self, frame: Vec<u8>) {
        self.answered = true;
        self.deliver(frame);
    }

    pub fn internal(self, what: &str) {
        self.send(Answer::error(ErrCode::Internal, what));
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.answered {
            let mut out = Vec::new();
            let answer = Answer::error(ErrCode::Internal, "request dropped without an answer");
            proto::encode_answer(self.request_id, &answer, &mut out);
            self.deliver(out);
        }
    }
}

/// One session copied out of a shard (cluster sync and drain).
#[derive(Clone, Debug)]
pub struct DumpItem {
    pub hash: [u8; 16],
    pub version: u64,
    pub lifetime_s: u32,
    pub data: Vec<u8>,
}

struct PendingLock {
    key: SessionKey,
    owner: OwnerId,
    reply: ReplyTo,
}

/// A lockless request held back by a pin (`ShardSlot::held_reads`).
struct HeldRead {
    owner: OwnerId,
    /// Exists rather than Read.
    exists: bool,
    reply: ReplyTo,
}

struct PendingWrite {
    /// The answer once durable: the written version (Done) or Done with the current version.
    version: u64,
    reply: ReplyTo,
    /// Answers that wait for the same flush: copies refused as stale (a newer version is held)
    /// while that version may not be on disk yet; each gets Done with its version.
    followers: Vec<(u64, ReplyTo)>,
}

/// One engine shard and the requests waiting inside it.
pub struct ShardSlot {
    index: u32,
    /// This node's relay endpoint: the master of the IDs this shard hands out.
    relay_addr: std::net::SocketAddr,
    shard: Shard,
    locks: HashMap<WaitId, PendingLock>,
    writes: HashMap<Ticket, PendingWrite>,
    /// Lockless Reads (and Exists) of sessions whose lock is pinned (a write's copy on its way
    /// to the backup), with their owners: answered once the pin ended (`answer_held_reads`).
    /// Empty, so never allocated, unless write-through with HA pins a lock.
    held_reads: HashMap<SessionKey, Vec<HeldRead>>,
    events: Vec<Event>,
    /// Requests answered with an error by this shard (the engine counts the rest).
    errors: u64,
    /// Set after a flush failure was logged, so it is logged once, not once per pass.
    flush_failure_logged: bool,
    /// Engine reads made only to learn a version (see `version_of`).
    version_lookups: u64,
    version_lookup_misses: u64,
}

/// The owner used to probe whether a lock is free (no connection ever gets ID 0: owner IDs
/// start at 1 on every core).
const PROBE_OWNER: OwnerId = OwnerId(0);

fn recovery_summary(r: &RecoveryReport) -> String {
    format!(
        "{} sessions recovered from {} files ({} bytes scanned in {} ms, {:.0} MB/s), {} damaged \
         records and {} damaged files skipped, {} expired dropped; flush by {}",
        r.sessions,
        r.files,
        r.bytes_scanned,
        r.elapsed.as_millis(),
        r.mb_per_s(),
        r.damaged,
        r.damaged_files,
        r.expired,
        r.flush_mechanism
    )
}

impl ShardSlot {
    /// Opens (and recovers) shard `index` on the calling thread.
    pub fn open(node: &Node, index: u32) -> Result<(ShardSlot, String), String> {
        let s = &node.settings.storage;
        let cfg = ShardConfig {
            flush: match s.model {
                StorageModel::WriteThrough => FlushPolicy::WriteThrough,
                StorageModel::DelayedWrite => FlushPolicy::DelayedWrite {
                    interval_ms: s.flush_interval_ms,
                },
            },
            session_size_max: s.session_size_max as usize,
            shards: node.resolved.shards,
            ..ShardConfig::default()
        };
        let (shard, report) =
            Shard::open(&cfg, &node.settings.node.data_dir, index).map_err(|e| e.to_string())?;
        for d in &report.damage {
            warn!(
                "shard {index}: recovery skipped damage in {} slot {}: {}",
                d.file,
                d.slot.map_or("-".to_string(), |s| s.to_string()),
                d.reason
            );
        }
        let summary = recovery_summary(&report);
        Ok((
            ShardSlot {
                index,
                relay_addr: node.relay_addr,
                shard,
                locks: HashMap::new(),
                writes: HashMap::new(),
                held_reads: HashMap::new(),
                events: Vec::new(),
                errors: 0,
                flush_failure_logged: false,
                version_lookups: 0,
                version_lookup_misses: 0,
            },
            summary,
        ))
    }

    pub fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.shard.completion_fd()
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.shard.next_deadline_ms()
    }

    pub fn pending_durable(&self) -> usize {
        self.writes.len()
    }

    fn fail(&mut self, reply: ReplyTo, e: &EngineError) {
        self.errors += 1;
        reply.send(Answer::error(error_code(e), e.to_string()));
    }

    /// Runs one request. `now_ms` is the pass's clock reading.
    pub fn execute(
        &mut self,
        now_ms: u64,
        key: SessionKey,
        owner: OwnerId,
        op: Op<&[u8]>,
        reply: ReplyTo,
    ) {
        match op {
            Op::ReadLock { wait_ms, lease_ms } => {
                let deadline_ms = now_ms.saturating_add(u64::from(wait_ms));
                match self
                    .shard
                    .lock(key, owner, now_ms, deadline_ms, u64::from(lease_ms))
                {
                    Ok(LockOutcome::Granted(token)) => {
                        self.answer_read(key, token.get(), now_ms, reply)
                    }
                    Ok(LockOutcome::Queued(wait)) => {
                        self.locks.insert(wait, PendingLock { key, owner, reply });
                    }
                    Ok(LockOutcome::TimedOut) => {
                        self.errors += 1;
                        reply.send(Answer::error(ErrCode::LockTimeout, "the session is locked"));
                    }
                    Err(e) => self.fail(reply, &e),
                }
            }
            // A write (or Destroy) whose copy is in flight to the backup is seen by nobody (the
            // lock's pin): wait for it to resolve. `is_pinned` costs nothing while no lock is
            // pinned.
            Op::Read | Op::Exists if self.shard.is_pinned(&key) => {
                let exists = matches!(op, Op::Exists);
                let held = HeldRead {
                    owner,
                    exists,
                    reply,
                };
                self.held_reads.entry(key).or_default().push(held);
            }
            Op::Read => self.answer_read(key, 0, now_ms, reply),
            Op::WriteUnlock {
                token,
                lifetime_s,
                data,
            } => {
                let Some(token) = LockToken::from_u64(token) else {
                    return self.fail(reply, &EngineError::NotLocked);
                };
                let ack = self.shard.put_unlock(key, token, data, lifetime_s, now_ms);
                self.acknowledge(key, now_ms, ack, reply);
            }
            Op::WriteHold {
                token,
                lifetime_s,
                data,
            } => {
                let Some(token) = LockToken::from_u64(token) else {
                    return self.fail(reply, &EngineError::NotLocked);
                };
                // The engine's put checks the token like put_unlock and leaves the lock held;
                // the pin keeps it held until `Release` (the same token: cannot fail here).
                let ack = self
                    .shard
                    .put(key, token, data, lifetime_s, now_ms)
                    .and_then(|ack| {
                        self.shard.pin(key, token, now_ms)?;
                        Ok(ack)
                    });
                self.acknowledge(key, now_ms, ack, reply);
            }
            Op::Touch { token, lifetime_s } => {
                let Some(token) = LockToken::from_u64(token) else {
                    return self.fail(reply, &EngineError::NotLocked);
                };
                // The protocol's Touch also releases the lock (PHP's update_timestamp ends the
                // request); the engine's touch keeps it, so unlock after a successful touch.
                let ack = self
                    .shard
                    .touch(key, token, lifetime_s, now_ms)
                    .and_then(|ack| {
                        self.shard.unlock(key, token, now_ms)?;
                        Ok(ack)
                    });
                self.acknowledge(key, now_ms, ack, reply);
            }
            Op::Unlock { token } => {
                let Some(token) = LockToken::from_u64(token) else {
                    return self.fail(reply, &EngineError::NotLocked);
                };
                match self.shard.unlock(key, token, now_ms) {
                    Ok(()) => {
                        let version = self.version_of(&key, now_ms);
                        reply.send(Answer::Done { version });
                    }
                    Err(e) => self.fail(reply, &e),
                }
            }
            Op::Release { token, failed } => {
                let Some(token) = LockToken::from_u64(token) else {
                    return self.fail(reply, &EngineError::NotLocked);
                };
                if failed && self.shard.is_pinned(&key) {
                    for held in self.held_reads.remove(&key).unwrap_or_default() {
                        self.errors += 1;
                        held.reply.send(Answer::error(
                            ErrCode::Unavailable,
                            "a write of this session did not reach its backup; retry",
                        ));
                    }
                }
                // Reads held back by the pin are answered in this pass's `collect`.
                match self.shard.unpin(key, token, now_ms) {
                    Ok(()) => {
                        let version = self.version_of(&key, now_ms);
                        reply.send(Answer::Done { version });
                    }
                    Err(e) => self.fail(reply, &e),
                }
            }
            Op::Destroy { token } => {
                // With a token, Destroy ends the request like WriteUnlock does: the session goes
                // and the lock is released (PHP's session_destroy() is followed by no write, and
                // the PHP module forgets the lock). With token 0 the caller holds no lock, and
                // the destroy is refused while anyone else holds one (the engine's rule).
                let token = LockToken::from_u64(token);
                let ack = self.shard.destroy(key, token, now_ms).and_then(|ack| {
                    if let Some(t) = token {
                        self.shard.unlock(key, t, now_ms)?;
                    }
                    Ok(ack)
                });
                self.acknowledge(key, now_ms, ack, reply);
            }
            Op::DestroyHold { token } => {
                let Some(token) = LockToken::from_u64(token) else {
                    return self.fail(reply, &EngineError::NotLocked);
                };
                // As Destroy with a token, but the lock stays, pinned until `Release`.
                let ack = self
                    .shard
                    .destroy(key, Some(token), now_ms)
                    .and_then(|ack| {
                        self.shard.pin(key, token, now_ms)?;
                        Ok(ack)
                    });
                self.acknowledge(key, now_ms, ack, reply);
            }
            Op::Exists => {
                let exists = self.shard.exists(&key, now_ms);
                reply.send(Answer::Existence(exists));
            }
            Op::ApplyReplica {
                version,
                lifetime_s,
                data,
                durable,
            } => {
                let expires = now_ms.saturating_add(u64::from(lifetime_s) * 1000);
                match self
                    .shard
                    .apply_replica(key, version, expires, data, now_ms)
                {
                    // Under write-through a backup acknowledges a master's copy once it is
                    // durable here too (this pass's group-committed flush), so an acknowledged
                    // write is on both disks. The copy left the master while the master's own
                    // flush ran, so the two flushes overlap rather than follow each other.
                    Ok(ReplicaOutcome::Applied(ack)) if durable => {
                        self.acknowledge(key, now_ms, Ok(ack), reply)
                    }
                    // A sync item: answered at once (its flush follows in this pass), so a
                    // rejoin does not wait for one flush per session in turn.
                    Ok(ReplicaOutcome::Applied(_)) => {
                        let version = self.version_of(&key, now_ms);
                        reply.send(Answer::Done { version });
                    }
                    Ok(ReplicaOutcome::Stale) => {
                        let version = self.version_of(&key, now_ms);
                        // The newer version held may still wait for its flush: a master's copy
                        // is then answered with the newest write pending here (flushes complete
                        // in order, so that covers it).
                        let newest = self.writes.keys().max().copied();
                        match newest.and_then(|t| self.writes.get_mut(&t)) {
                            Some(p) if durable => p.followers.push((version, reply)),
                            _ => reply.send(Answer::Done { version }),
                        }
                    }
                    Err(e) => self.fail(reply, &e),
                }
            }
            Op::Peek => match self.shard.get(&key, now_ms) {
                Some(s) => {
                    let left_s = s.expires_at_ms().saturating_sub(now_ms).div_ceil(1000);
                    reply.send(Answer::Data {
                        token: left_s.max(1),
                        version: s.version(),
                        data: s.data(),
                    })
                }
                None => reply.send(Answer::NotFound { token: 0 }),
            },
            Op::Remove => {
                let ack = self.shard.remove(key, now_ms);
                self.acknowledge(key, now_ms, ack, reply);
            }
            Op::Create { backup } => {
                if self.shard.exists(&key, now_ms) || self.lock_in_use(key, now_ms) {
                    // 2^-128 odds; refused rather than hand out an ID that is in use.
                    warn!(
                        "shard {}: a freshly drawn session hash is already in use",
                        self.index
                    );
                    self.errors += 1;
                    reply.send(Answer::error(
                        ErrCode::Internal,
                        "drawn session hash in use; ask again",
                    ));
                } else {
                    reply.send(Answer::IdCreated {
                        master: self.relay_addr,
                        backup,
                        hash: key.0,
                    });
                }
            }
        }
    }

    /// Answers a write-like request: at once (delayed-write), or once its flush is durable.
    fn acknowledge(
        &mut self,
        key: SessionKey,
        now_ms: u64,
        ack: Result<WriteAck, EngineError>,
        reply: ReplyTo,
    ) {
        match ack {
            Ok(WriteAck::Done) => {
                let version = self.version_of(&key, now_ms);
                reply.send(Answer::Done { version });
            }
            Ok(WriteAck::Pending(ticket)) => {
                let version = self.version_of(&key, now_ms);
                let mut reply = reply;
                if let Some(applied) = reply.applied.take() {
                    let _ = applied.send(version);
                }
                self.writes.insert(
                    ticket,
                    PendingWrite {
                        version,
                        reply,
                        followers: Vec::new(),
                    },
                );
            }
            Err(e) => self.fail(reply, &e),
        }
    }

    /// The session's data version now (0 if there is none). The engine has no accessor that
    /// leaves its read counters alone, so these lookups are counted and taken off again in `stats`.
    fn version_of(&mut self, key: &SessionKey, now_ms: u64) -> u64 {
        self.version_lookups += 1;
        match self.shard.get(key, now_ms) {
            Some(s) => s.version(),
            None => {
                self.version_lookup_misses += 1;
                0
            }
        }
    }

    /// Whether anyone holds the lock on `key`, probed by asking for it without waiting (the
    /// engine has no read-only lock query): granted means it was free, and it is given back at
    /// once.
    fn lock_in_use(&mut self, key: SessionKey, now_ms: u64) -> bool {
        match self.shard.lock(key, PROBE_OWNER, now_ms, now_ms, 1) {
            Ok(LockOutcome::Granted(token)) => {
                let _ = self.shard.unlock(key, token, now_ms);
                false
            }
            _ => true,
        }
    }

    fn answer_read(&mut self, key: SessionKey, token: u64, now_ms: u64, reply: ReplyTo) {
        match self.shard.get(&key, now_ms) {
            Some(s) => reply.send(Answer::Data {
                token,
                version: s.version(),
                data: s.data(),
            }),
            None => reply.send(Answer::NotFound { token }),
        }
    }

    /// Answers the Reads held back by a pin that has ended (nothing to do, and no cost, while
    /// none waits).
    fn answer_held_reads(&mut self, now_ms: u64) {
        if self.held_reads.is_empty() {
            return;
        }
        let ended: Vec<SessionKey> = self
            .held_reads
            .keys()
            .filter(|k| !self.shard.is_pinned(k))
            .copied()
            .collect();
        for key in ended {
            for held in self.held_reads.remove(&key).unwrap_or_default() {
                if !held.reply.grant_allowed() {
                    // Admitted under a read lease from the session's backup that has lapsed
                    // while it waited: the backup may have taken the session over meanwhile.
                    self.errors += 1;
                    held.reply.send(Answer::error(
                        ErrCode::Unavailable,
                        "this node no longer holds a valid read lease from the session's \
                         backup; retry",
                    ));
                } else if held.exists {
                    let exists = self.shard.exists(&key, now_ms);
                    held.reply.send(Answer::Existence(exists));
                } else {
                    self.answer_read(key, 0, now_ms, held.reply);
                }
            }
        }
    }

    /// A client connection closed: its locks and queued waits go; each queued wait is answered.
    /// A lock pinned for a write's copy stays until its `Release` (engine `release_owner`).
    pub fn release_owner(&mut self, owner: OwnerId, now_ms: u64) {
        self.shard.release_owner(owner, now_ms);
        if !self.held_reads.is_empty() {
            for reads in self.held_reads.values_mut() {
                let mut i = 0;
                while i < reads.len() {
                    if reads[i].owner == owner {
                        let held = reads.remove(i);
                        held.reply
                            .send(Answer::error(ErrCode::Unavailable, "connection closed"));
                    } else {
                        i += 1;
                    }
                }
            }
            self.held_reads.retain(|_, reads| !reads.is_empty());
        }
        let gone: Vec<WaitId> = self
            .locks
            .iter()
            .filter(|(_, p)| p.owner == owner)
            .map(|(w, _)| *w)
            .collect();
        for w in gone {
            if let Some(p) = self.locks.remove(&w) {
                p.reply
                    .send(Answer::error(ErrCode::Unavailable, "connection closed"));
            }
        }
    }

    /// End of a driver pass: collect events (grants, timeouts, durable writes), expire a bounded
    /// number of sessions (more, and compaction, on housekeeping passes), flush (group commit),
    /// and collect what the flush completed at once.
    pub fn pass(&mut self, now_ms: u64, housekeeping: bool) {
        self.collect(now_ms);
        if housekeeping {
            // A larger slice of the bounded housekeeping, a few times a second.
            self.shard
                .expire_step(now_ms, crate::constants::EXPIRE_BUDGET_HOUSEKEEPING);
            self.shard
                .compact_step(now_ms, crate::constants::COMPACT_BUDGET_HOUSEKEEPING);
        } else {
            self.shard
                .expire_step(now_ms, crate::constants::EXPIRE_BUDGET_PER_PASS);
        }
        self.shard.flush(now_ms);
        self.collect(now_ms);
        if !self.flush_failure_logged {
            if let Some(reason) = self.shard.failure() {
                error!(
                    "shard {}: flush failed, the shard refuses writes from now on: {reason}",
                    self.index
                );
                self.flush_failure_logged = true;
            }
        }
    }

    fn collect(&mut self, now_ms: u64) {
        // A grant given back (its waiter's check failed) hands the lock to the next waiter:
        // poll again so that it is answered in this pass.
        let mut again = true;
        while std::mem::take(&mut again) {
            self.collect_once(now_ms, &mut again);
        }
        self.answer_held_reads(now_ms);
    }

    fn collect_once(&mut self, now_ms: u64, given_back: &mut bool) {
        let mut events = std::mem::take(&mut self.events);
        self.shard.poll_events(now_ms, &mut events);
        for ev in events.drain(..) {
            match ev {
                Event::LockGranted { wait, token } => {
                    if let Some(p) = self.locks.remove(&wait) {
                        if p.reply.grant_allowed() {
                            self.answer_read(p.key, token.get(), now_ms, p.reply);
                            continue;
                        }
                        // Its lease lapsed while it waited: the lock goes on to the next
                        // waiter (checked the same way), and this one may retry.
                        if self.shard.unlock(p.key, token, now_ms).is_ok() {
                            *given_back = true;
                        }
                        self.errors += 1;
                        p.reply.send(Answer::error(
                            ErrCode::Unavailable,
                            "this node's read lease from the session's backup lapsed while the \
                             lock was awaited; retry",
                        ));
                    }
                }
                Event::LockTimedOut { wait } => {
                    if let Some(p) = self.locks.remove(&wait) {
                        self.errors += 1;
                        p.reply
                            .send(Answer::error(ErrCode::LockTimeout, "the lock wait ran out"));
                    }
                }
                Event::Durable { ticket } => {
                    if let Some(p) = self.writes.remove(&ticket) {
                        p.reply.send(Answer::Done { version: p.version });
                        for (version, reply) in p.followers {
                            reply.send(Answer::Done { version });
                        }
                    }
                }
                Event::WriteFailed { ticket, error } => {
                    if let Some(p) = self.writes.remove(&ticket) {
                        self.fail(p.reply, &error);
                        for (_, reply) in p.followers {
                            self.fail(reply, &error);
                        }
                    }
                }
            }
        }
        self.events = events;
    }

    /// Every live session of the shard (cluster sync and drain): HASH, version, seconds left to
    /// live, data.
    pub fn dump(&self, now_ms: u64, out: &mut Vec<DumpItem>) {
        for (key, s) in self.shard.iter(now_ms) {
            let left_s = s.expires_at_ms().saturating_sub(now_ms).div_ceil(1000);
            out.push(DumpItem {
                hash: key.0,
                version: s.version(),
                lifetime_s: u32::try_from(left_s).unwrap_or(u32::MAX),
                data: s.data().to_vec(),
            });
        }
    }

    /// The HASH of every live session of the shard (the rejoin's hash list).
    pub fn hashes(&self, now_ms: u64, out: &mut Vec<[u8; 16]>) {
        out.extend(self.shard.iter(now_ms).map(|(key, _)| key.0));
    }

    /// The data version of each of `hashes` that this shard (of `shards`) holds, without
    /// copying the data (counted as `version_of` lookups, not as reads).
    pub fn versions(
        &mut self,
        hashes: &[[u8; 16]],
        shards: usize,
        now_ms: u64,
        out: &mut Vec<([u8; 16], u64)>,
    ) {
        for hash in hashes {
            let key = SessionKey(*hash);
            if shard_for(&key, shards) as u32 != self.index {
                continue;
            }
            let version = self.version_of(&key, now_ms);
            if version != 0 {
                out.push((*hash, version));
            }
        }
    }

    /// Sessions held (the load heartbeats announce).
    pub fn sessions(&self) -> u64 {
        self.shard.stats().sessions
    }

    /// Shutdown: a last flush, then the shard closes (dropped by the caller).
    pub fn close(&mut self, now_ms: u64) {
        if let Err(e) = self.shard.sync() {
            error!("shard {}: final flush failed: {e}", self.index);
        }
        self.collect(now_ms);
    }

    pub fn stats(&self) -> ShardFigures {
        let s = self.shard.stats();
        ShardFigures {
            shard: self.index,
            sessions: s.sessions,
            bytes: s.data_bytes,
            size_smallest: s.size_smallest,
            size_largest: s.size_largest,
            reads: s.reads.saturating_sub(self.version_lookups),
            writes: s.writes,
            lock_waits: s.lock_waits,
            lock_timeouts: s.lock_timeouts,
            flushes: s.flushes,
            errors: self.errors,
            disk_bytes: s.slab_bytes,
        }
    }
}

/// The protocol's error code for an engine error.
pub fn error_code(e: &EngineError) -> ErrCode {
    match e {
        EngineError::TooLarge { .. } => ErrCode::TooLarge,
        EngineError::WrongToken | EngineError::NotLocked => ErrCode::NotLocked,
        EngineError::NotFound => ErrCode::NotFound,
        EngineError::StorageFailed { .. }
        | EngineError::Corrupt { .. }
        | EngineError::Io { .. } => ErrCode::Storage,
        _ => ErrCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize};

    use scd_wire::frame::Frame;
    use scd_wire::local::{Reply, decode_reply};

    use super::*;
    use crate::settings::Settings;

    /// A node of `cores` cores, one shard each, storing in `dir` under `model`.
    fn node(dir: &std::path::Path, model: StorageModel, cores: usize) -> Node {
        let mut settings = Settings::default();
        settings.node.data_dir = dir.to_path_buf();
        settings.node.advertise_address = "127.0.0.1".into();
        settings.node.cores = cores;
        settings.node.shards = cores as u32;
        settings.storage.model = model;
        let resolved = settings.validate().expect("valid settings");
        Node {
            relay_addr: "127.0.0.1:7000".parse().unwrap(),
            settings,
            resolved,
            node_id: 1,
            connections_open: AtomicU32::new(0),
            next_core: AtomicUsize::new(0),
            cluster: None,
        }
    }

    fn slot(dir: &std::path::Path, model: StorageModel) -> (Node, ShardSlot) {
        let node = node(dir, model, 1);
        let (slot, _) = ShardSlot::open(&node, 0).expect("shard opens");
        (node, slot)
    }

    /// Runs `slot`'s passes until every one of `answers` has its answer (the flush completed;
    /// a generous bound, no timing asserted), and returns them in order.
    fn pass_until_answered<T>(
        slot: &mut ShardSlot,
        now: u64,
        answers: &[&flume::Receiver<T>],
    ) -> Vec<T> {
        let mut got: Vec<Option<T>> = answers.iter().map(|_| None).collect();
        for _ in 0..10_000 {
            slot.pass(now, false);
            for (g, rx) in got.iter_mut().zip(answers) {
                if g.is_none() {
                    *g = rx.try_recv().ok();
                }
            }
            if got.iter().all(Option::is_some) {
                return got.into_iter().flatten().collect();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the flush never completed");
    }

    fn done_version(frame: &[u8], node: &Node) -> u64 {
        let limits = proto::limits(node.settings.storage.session_size_max);
        match decode_reply(frame, &limits) {
            Ok((
                Frame {
                    message: Reply::Done { version },
                    ..
                },
                _,
            )) => version,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn apply(slot: &mut ShardSlot, now: u64, version: u64) -> flume::Receiver<Vec<u8>> {
        apply_as(slot, now, version, true)
    }

    fn apply_as(
        slot: &mut ShardSlot,
        now: u64,
        version: u64,
        durable: bool,
    ) -> flume::Receiver<Vec<u8>> {
        let (tx, rx) = flume::bounded(1);
        let op = Op::ApplyReplica {
            version,
            lifetime_s: 600,
            data: &b"copy"[..],
            durable,
        };
        slot.execute(
            now,
            SessionKey([7; 16]),
            OwnerId(1),
            op,
            ReplyTo::new(tx, 1),
        );
        rx
    }

    /// Under write-through a backup acknowledges a copy only once it is durable on its own disk
    /// (so an acknowledged write is on both disks); copies applied in one pass share its flush.
    #[test]
    fn a_write_through_backup_acknowledges_a_copy_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::WriteThrough);
        let now = 1_000;
        let first = apply(&mut slot, now, 1);
        let second = apply(&mut slot, now, 2);
        assert!(first.try_recv().is_err(), "acknowledged before its flush");
        assert!(second.try_recv().is_err(), "acknowledged before its flush");
        assert_eq!(slot.pending_durable(), 2);
        let answers = pass_until_answered(&mut slot, now, &[&first, &second]);
        assert_eq!(done_version(&answers[0], &node), 1);
        assert_eq!(done_version(&answers[1], &node), 2);
        assert_eq!(slot.pending_durable(), 0);
    }

    /// A ReadLock granted from the lock queue is handed over only if its `GrantCheck` still
    /// holds (a clustered master's read lease): one whose check fails gets Unavailable, and the
    /// lock goes on to the next waiter in the same pass.
    #[test]
    fn a_queued_lock_whose_grant_check_fails_is_given_back_to_the_next_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::DelayedWrite);
        let limits = proto::limits(node.settings.storage.session_size_max);
        let key = SessionKey([9; 16]);
        let now = 1_000;
        let lock = |slot: &mut ShardSlot, owner: u64, check: Option<GrantCheck>| {
            let (tx, rx) = flume::bounded(1);
            let reply = ReplyTo::new(tx, owner);
            let reply = match check {
                Some(c) => reply.with_grant_check(c),
                None => reply,
            };
            let op = Op::ReadLock {
                wait_ms: 60_000,
                lease_ms: 60_000,
            };
            slot.execute(now, key, OwnerId(owner), op, reply);
            rx
        };
        let token = |frame: &[u8]| match decode_reply(frame, &limits) {
            Ok((f, _)) => match f.message {
                Reply::Error { code, .. } => Err(code),
                Reply::NotFound { token, .. } => Ok(token),
                other => panic!("unexpected answer {other:?}"),
            },
            Err(e) => panic!("undecodable answer: {e:?}"),
        };
        let first = lock(&mut slot, 1, None);
        let held = token(&first.try_recv().expect("granted at once")).expect("a lock");
        let backup: std::net::SocketAddr = "127.0.0.2:7000".parse().unwrap();
        let none = Arc::new(crate::cluster::Leases::default());
        let granted = Arc::new(crate::cluster::Leases::default());
        granted.grant(backup, u64::MAX);
        let lapsed = lock(&mut slot, 2, Some(GrantCheck::new(none, backup)));
        let next = lock(&mut slot, 3, Some(GrantCheck::new(granted, backup)));
        assert!(
            lapsed.try_recv().is_err() && next.try_recv().is_err(),
            "both wait"
        );
        let (tx, done) = flume::bounded(1);
        slot.execute(
            now,
            key,
            OwnerId(1),
            Op::Unlock { token: held },
            ReplyTo::new(tx, 9),
        );
        slot.pass(now, false);
        assert!(done.try_recv().is_ok(), "the holder unlocked");
        assert_eq!(
            token(&lapsed.try_recv().expect("answered")),
            Err(scd_wire::local::ErrorCode::Unavailable),
            "a waiter whose check fails gets no lock"
        );
        let granted = token(
            &next
                .try_recv()
                .expect("the next waiter is answered in the same pass"),
        );
        assert!(granted.is_ok(), "the next waiter gets the lock");
    }

    /// A write-through `WriteHold` is answered once durable and keeps the lock: a queued
    /// ReadLock is granted only by the later Release with the holder's token (not by the
    /// holder's Unlock, deferred to it), and then reads the written data. A WriteHold with a token that is not the holder's is refused and changes
    /// nothing.
    #[test]
    fn a_write_hold_keeps_the_lock_past_its_flush_until_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::WriteThrough);
        let limits = proto::limits(node.settings.storage.session_size_max);
        let key = SessionKey([7; 16]);
        let now = 1_000;
        let read_lock = |slot: &mut ShardSlot, owner: u64| {
            let (tx, rx) = flume::bounded(1);
            let op = Op::ReadLock {
                wait_ms: 60_000,
                lease_ms: 60_000,
            };
            slot.execute(now, key, OwnerId(owner), op, ReplyTo::new(tx, owner));
            rx
        };
        let decoded = |frame: &[u8]| match decode_reply(frame, &limits) {
            Ok((f, _)) => scd_client::OwnedReply::from_wire(&f.message),
            Err(e) => panic!("undecodable answer: {e:?}"),
        };
        let held = match decoded(&read_lock(&mut slot, 1).try_recv().expect("granted")) {
            scd_client::OwnedReply::NotFound { token, .. } => token,
            other => panic!("unexpected answer {other:?}"),
        };
        let waiter = read_lock(&mut slot, 2);
        let write = |slot: &mut ShardSlot, token: u64| {
            let (tx, rx) = flume::bounded(1);
            let op = Op::WriteHold {
                token,
                lifetime_s: 600,
                data: &b"new"[..],
            };
            slot.execute(now, key, OwnerId(1), op, ReplyTo::new(tx, 3));
            rx
        };
        let refused = write(&mut slot, held + 1);
        assert!(
            matches!(
                decoded(&refused.try_recv().expect("answered at once")),
                scd_client::OwnedReply::Error { .. }
            ),
            "another token is refused"
        );
        let written = write(&mut slot, held);
        let answer = pass_until_answered(&mut slot, now, &[&written]).remove(0);
        assert!(done_version(&answer, &node) > 0);
        for _ in 0..3 {
            slot.pass(now, false);
        }
        assert!(
            waiter.try_recv().is_err(),
            "the lock is still held after the flush"
        );
        // The holder's own Unlock is deferred to the Release (the lock is pinned).
        let (tx, unlocked) = flume::bounded(1);
        slot.execute(
            now,
            key,
            OwnerId(1),
            Op::Unlock { token: held },
            ReplyTo::new(tx, 4),
        );
        slot.pass(now, false);
        assert!(matches!(
            decoded(&unlocked.try_recv().expect("answered")),
            scd_client::OwnedReply::Done { .. }
        ));
        assert!(waiter.try_recv().is_err(), "an Unlock does not end the pin");
        let (tx, released) = flume::bounded(1);
        slot.execute(
            now,
            key,
            OwnerId(1),
            Op::Release {
                token: held,
                failed: false,
            },
            ReplyTo::new(tx, 5),
        );
        slot.pass(now, false);
        assert!(
            matches!(
                decoded(&released.try_recv().expect("answered")),
                scd_client::OwnedReply::Done { .. }
            ),
            "the Release releases it"
        );
        match decoded(
            &waiter
                .try_recv()
                .expect("the waiter is granted in the same pass"),
        ) {
            scd_client::OwnedReply::Data { token, data, .. } => {
                assert_ne!(token, 0);
                assert_eq!(data, b"new");
            }
            other => panic!("the waiter: {other:?}"),
        }
    }

    /// A WriteHold pins the lock: its owner's connection closing leaves it held, a lockless
    /// Read of the session waits, and the `Release` (once the copy resolved) hands the lock to
    /// the queued waiter and answers the Read with the written data in the same pass. A Read
    /// whose own connection closes meanwhile is answered at once.
    #[test]
    fn a_write_hold_s_pin_holds_back_reads_and_survives_its_owner_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::WriteThrough);
        let limits = proto::limits(node.settings.storage.session_size_max);
        let key = SessionKey([5; 16]);
        let now = 1_000;
        let send = |slot: &mut ShardSlot, owner: u64, op: Op<&[u8]>| {
            let (tx, rx) = flume::bounded(1);
            slot.execute(now, key, OwnerId(owner), op, ReplyTo::new(tx, owner));
            rx
        };
        let decoded = |frame: &[u8]| match decode_reply(frame, &limits) {
            Ok((f, _)) => scd_client::OwnedReply::from_wire(&f.message),
            Err(e) => panic!("undecodable answer: {e:?}"),
        };
        let lock = Op::ReadLock {
            wait_ms: 60_000,
            lease_ms: 60_000,
        };
        let held = match decoded(
            &send(&mut slot, 1, lock.clone())
                .try_recv()
                .expect("granted"),
        ) {
            scd_client::OwnedReply::NotFound { token, .. } => token,
            other => panic!("unexpected answer {other:?}"),
        };
        let write = Op::WriteHold {
            token: held,
            lifetime_s: 600,
            data: &b"pinned"[..],
        };
        let written = send(&mut slot, 1, write);
        let waiter = send(&mut slot, 2, lock);
        let read = send(&mut slot, 3, Op::Read);
        let gone_reader = send(&mut slot, 4, Op::Read);
        pass_until_answered(&mut slot, now, &[&written]);
        slot.release_owner(OwnerId(1), now);
        slot.release_owner(OwnerId(4), now);
        slot.pass(now, false);
        assert!(
            matches!(
                decoded(&gone_reader.try_recv().expect("a closed reader is answered")),
                scd_client::OwnedReply::Error { .. }
            ),
            "its connection closed"
        );
        assert!(waiter.try_recv().is_err(), "the pin outlives its owner");
        assert!(read.try_recv().is_err(), "a Read waits for the pin");
        let released = send(
            &mut slot,
            1,
            Op::Release {
                token: held,
                failed: false,
            },
        );
        slot.pass(now, false);
        assert!(matches!(
            decoded(&released.try_recv().expect("answered")),
            scd_client::OwnedReply::Done { .. }
        ));
        match decoded(&waiter.try_recv().expect("granted by the Release")) {
            scd_client::OwnedReply::Data { token, data, .. } => {
                assert_ne!(token, 0);
                assert_eq!(data, b"pinned");
            }
            other => panic!("the waiter: {other:?}"),
        }
        match decoded(&read.try_recv().expect("answered after the Release")) {
            scd_client::OwnedReply::Data { token, data, .. } => {
                assert_eq!(token, 0);
                assert_eq!(data, b"pinned");
            }
            other => panic!("the Read: {other:?}"),
        }
        // The pin is gone: a Read is answered at once, and a second Release changes nothing.
        assert!(send(&mut slot, 3, Op::Read).try_recv().is_ok());
        let again = send(
            &mut slot,
            1,
            Op::Release {
                token: held,
                failed: false,
            },
        );
        assert!(matches!(
            decoded(&again.try_recv().expect("answered")),
            scd_client::OwnedReply::Error { .. }
        ));
    }

    /// Reads held back by a pin are not answered with the write when its copy failed
    /// (`Release { failed: true }`), nor when the read lease they were admitted under has
    /// lapsed meanwhile: both get Unavailable, and the client retries.
    #[test]
    fn held_reads_get_unavailable_after_a_failed_copy_or_a_lapsed_lease() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::WriteThrough);
        let limits = proto::limits(node.settings.storage.session_size_max);
        let now = 1_000;
        let backup: std::net::SocketAddr = "127.0.0.2:7000".parse().unwrap();
        let granted = Arc::new(crate::cluster::Leases::default());
        granted.grant(backup, u64::MAX);
        let none = Arc::new(crate::cluster::Leases::default());
        let code = |frame: &[u8]| match decode_reply(frame, &limits) {
            Ok((f, _)) => match f.message {
                Reply::Error { code, .. } => Some(code),
                _ => None,
            },
            Err(e) => panic!("undecodable answer: {e:?}"),
        };
        for (failed, lease) in [(true, &granted), (false, &none)] {
            let key = SessionKey([if failed { 6 } else { 7 }; 16]);
            let send = |slot: &mut ShardSlot, owner: u64, op: Op<&[u8]>, check: bool| {
                let (tx, rx) = flume::bounded(1);
                let reply = ReplyTo::new(tx, owner);
                let reply = if check {
                    reply.with_grant_check(GrantCheck::new(lease.clone(), backup))
                } else {
                    reply
                };
                slot.execute(now, key, OwnerId(owner), op, reply);
                rx
            };
            let lock = Op::ReadLock {
                wait_ms: 60_000,
                lease_ms: 60_000,
            };
            let held = match decode_reply(
                &send(&mut slot, 1, lock, false).try_recv().expect("granted"),
                &limits,
            ) {
                Ok((f, _)) => match f.message {
                    Reply::NotFound { token, .. } => token,
                    other => panic!("unexpected answer {other:?}"),
                },
                Err(e) => panic!("undecodable answer: {e:?}"),
            };
            let write = Op::WriteHold {
                token: held,
                lifetime_s: 600,
                data: &b"maybe lost"[..],
            };
            let written = send(&mut slot, 1, write, false);
            let read = send(&mut slot, 2, Op::Read, true);
            let exists = send(&mut slot, 3, Op::Exists, true);
            pass_until_answered(&mut slot, now, &[&written]);
            assert!(read.try_recv().is_err(), "held back by the pin");
            let release = Op::Release {
                token: held,
                failed,
            };
            let _ = send(&mut slot, 1, release, false);
            slot.pass(now, false);
            for (what, rx) in [("Read", read), ("Exists", exists)] {
                assert_eq!(
                    code(&rx.try_recv().expect("answered at the Release")),
                    Some(scd_wire::local::ErrorCode::Unavailable),
                    "{what}, copy failed: {failed}"
                );
            }
        }
    }

    /// Under delayed-write a copy is acknowledged at once (it is on disk within the interval).
    #[test]
    fn a_delayed_write_backup_acknowledges_a_copy_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::DelayedWrite);
        let rx = apply(&mut slot, 1_000, 3);
        let frame = rx.try_recv().expect("answered at once");
        assert_eq!(done_version(&frame, &node), 3);
    }

    /// A rejoin's sync item (`durable: false`) is answered at once even under write-through.
    #[test]
    fn a_sync_item_is_acknowledged_at_once_under_write_through() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::WriteThrough);
        let rx = apply_as(&mut slot, 1_000, 4, false);
        let frame = rx.try_recv().expect("answered at once");
        assert_eq!(done_version(&frame, &node), 4);
        assert_eq!(slot.pending_durable(), 0);
    }

    /// A master's copy refused as stale while the newer version held here waits for its flush
    /// is answered only with that flush.
    #[test]
    fn a_stale_copy_waits_for_the_newer_version_s_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut slot) = slot(dir.path(), StorageModel::WriteThrough);
        let now = 1_000;
        let newer = apply(&mut slot, now, 5);
        let older = apply(&mut slot, now, 4);
        assert!(
            older.try_recv().is_err(),
            "stale copy acknowledged before the flush"
        );
        let answers = pass_until_answered(&mut slot, now, &[&newer, &older]);
        assert_eq!(done_version(&answers[0], &node), 5);
        assert_eq!(done_version(&answers[1], &node), 5);
        // Nothing pending: a stale copy is answered at once.
        let again = apply(&mut slot, now, 3);
        assert_eq!(done_version(&again.try_recv().expect("at once"), &node), 5);
    }

    /// Two shards, as two cores would own them (`cores = 2`: shard 0 on core 0, shard 1 on
    /// core 1), opened on this thread.
    fn two_slots(dir: &std::path::Path, model: StorageModel) -> (Node, ShardSlot, ShardSlot) {
        let node = node(dir, model, 2);
        let (s0, _) = ShardSlot::open(&node, 0).expect("shard 0 opens");
        let (s1, _) = ShardSlot::open(&node, 1).expect("shard 1 opens");
        (node, s0, s1)
    }

    /// A key of shard `shard` of 2.
    fn key_of(shard: u8, n: u8) -> SessionKey {
        let mut hash = [n; 16];
        hash[7] = if shard == 0 { 0x10 } else { 0xf0 };
        let key = SessionKey(hash);
        assert_eq!(shard_for(&key, 2), usize::from(shard));
        key
    }

    /// Runs one core's part of a batch of copies `(key, version)` on `slot`, as
    /// `CoreMsg::Batch` does: one `ReplyTo` per entry, all answering one message.
    fn apply_batch(
        slot: &mut ShardSlot,
        now: u64,
        entries: &[(SessionKey, u64)],
    ) -> flume::Receiver<Vec<Vec<u8>>> {
        let (tx, rx) = flume::bounded(1);
        let replies = ReplyTo::batch(entries.len(), tx);
        for (&(key, version), reply) in entries.iter().zip(replies) {
            let op = Op::ApplyReplica {
                version,
                lifetime_s: 600,
                data: &b"batched"[..],
                durable: true,
            };
            // Any owner: a copy takes no lock.
            slot.execute(now, key, OwnerId(9), op, reply);
        }
        rx
    }

    /// A batch of copies over two cores' shards under delayed-write: each core answers its part
    /// once, with every entry's outcome in order; an entry older than the copy held (stale) is
    /// answered with the newer version held, alone, and the fresh ones are applied.
    #[test]
    fn a_batch_of_copies_is_answered_once_per_core_with_each_entry_s_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut s0, mut s1) = two_slots(dir.path(), StorageModel::DelayedWrite);
        let now = 1_000;
        // Shard 0 already holds version 5 of one session.
        let held = key_of(0, 1);
        let rx = apply_batch(&mut s0, now, &[(held, 5)]);
        assert_eq!(rx.try_recv().expect("answered").len(), 1);

        let part0 = apply_batch(&mut s0, now, &[(held, 3), (key_of(0, 2), 1)]);
        let part1 = apply_batch(&mut s1, now, &[(key_of(1, 3), 2), (key_of(1, 4), 7)]);
        let answers0 = part0.try_recv().expect("core 0's part answered at once");
        let answers1 = part1.try_recv().expect("core 1's part answered at once");
        assert!(part0.try_recv().is_err(), "one answer per part");
        assert!(part1.try_recv().is_err(), "one answer per part");
        let versions = |frames: &[Vec<u8>]| -> Vec<u64> {
            frames.iter().map(|f| done_version(f, &node)).collect()
        };
        // The stale entry is answered with the version held (5), the fresh one applied.
        assert_eq!(versions(&answers0), vec![5, 1]);
        assert_eq!(versions(&answers1), vec![2, 7]);
        assert_eq!(
            s0.version_of(&held, now),
            5,
            "the stale copy changed nothing"
        );
        assert_eq!(s0.version_of(&key_of(0, 2), now), 1);
        assert_eq!(s1.version_of(&key_of(1, 4), now), 7);
    }

    /// Under write-through, a batch part is answered once every entry is durable (each entry
    /// keeps ApplyReplica's rule); an entry dropped unanswered still lets the part answer, with
    /// an error in its place.
    #[test]
    fn a_write_through_batch_part_is_answered_once_all_its_entries_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (node, mut s0, _s1) = two_slots(dir.path(), StorageModel::WriteThrough);
        let now = 1_000;
        let part = apply_batch(&mut s0, now, &[(key_of(0, 1), 4), (key_of(0, 2), 6)]);
        assert!(part.try_recv().is_err(), "answered before the flush");
        let answers = pass_until_answered(&mut s0, now, &[&part]).remove(0);
        assert_eq!(done_version(&answers[0], &node), 4);
        assert_eq!(done_version(&answers[1], &node), 6);

        let (tx, rx) = flume::bounded(1);
        let mut replies = ReplyTo::batch(2, tx);
        replies.pop();
        replies.pop().unwrap().send(Answer::Done { version: 9 });
        let frames = rx.try_recv().expect("answered once both entries were");
        assert_eq!(done_version(&frames[0], &node), 9);
        assert!(matches!(
            decode_reply(&frames[1], &proto::limits(1 << 20)),
            Ok((
                Frame {
                    message: Reply::Error { .. },
                    ..
                },
                _
            ))
        ));
    }
}
