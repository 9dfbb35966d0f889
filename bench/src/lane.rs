//! One simulated PHP worker ("lane") on a connection: a small state machine that sends exactly
//! the commands a PHP session handler sends for one request, one round trip at a time.
//!
//! | handler | session cycle | read only | create heavy |
//! | --- | --- | --- | --- |
//! | scd (and the null server) | ReadLock, WriteUnlock (or Touch) | ReadLock, Unlock | CreateId, ReadLock, WriteUnlock |
//! | Redis, plain | GET, SETEX (or EXPIRE) | GET | GET, SETEX |
//! | Redis, as phpredis locks | SET lock NX PX, GET, SETEX (or EXPIRE), EVALSHA unlock | SET NX, GET, EVALSHA | SET NX, GET, SETEX, EVALSHA |
//! | memcached, plain | GET, SET (or TOUCH) | GET | GET, SET |
//! | memcached, as php-memcached locks | ADD lock, GET, SET (or TOUCH), DELETE lock | ADD, GET, DELETE | ADD, GET, SET, DELETE |
//!
//! A lock that is taken makes phpredis sleep 2 ms and retry (10 times) and php-memcached sleep
//! 150 ms and retry (5 times): the lane does the same, then gives up and counts a lock failure.
//! scd waits for the lock inside the daemon, in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;
use scd_wire::local::{ErrorCode, Reply, Request};
use scd_wire::{Frame, SessionId};

use crate::constants::{
    LIFETIME_S, MEMC_LOCK_EXPIRE_S, MEMC_LOCK_RETRIES, MEMC_LOCK_WAIT_MS, MEMC_PREFIX,
    REDIS_LOCK_EXPIRE_MS, REDIS_LOCK_RETRIES, REDIS_LOCK_WAIT_US, REDIS_PREFIX, SCD_LOCK_LEASE_MS,
    SCD_LOCK_WAIT_MS,
};
use crate::proto::memcache::{self, Opcode};
use crate::proto::{Answer, Wire, resp};
use crate::workload::{KeyPicker, hex_id, random_hex_id};

/// Which session handler a target's lanes imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// scd's PHP module (also used against the null server).
    Scd,
    RedisPlain,
    /// phpredis with `redis.session.locking_enabled = 1`.
    RedisLocked,
    MemcachePlain,
    /// php-memcached with `memcached.sess_locking = On` (its default).
    MemcacheLocked,
}

impl Handler {
    pub fn wire(self) -> Wire {
        match self {
            Handler::Scd => Wire::Scd,
            Handler::RedisPlain | Handler::RedisLocked => Wire::Resp,
            Handler::MemcachePlain | Handler::MemcacheLocked => Wire::Memcache,
        }
    }
}

/// What the lanes of a run do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Cycle,
    Read,
    Create,
    /// Before measuring: write every session of the key space once (scd: create it).
    Prefill,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    CreateId,
    Lock,
    Read,
    Write,
    Unlock,
}

fn script(handler: Handler, mode: Mode) -> &'static [Step] {
    use Step::*;
    match (handler, mode) {
        (Handler::Scd, Mode::Cycle) => &[Read, Write],
        (Handler::Scd, Mode::Read) => &[Read, Unlock],
        (Handler::Scd, Mode::Create | Mode::Prefill) => &[CreateId, Read, Write],
        (_, Mode::Prefill) => &[Write],
        (Handler::RedisPlain | Handler::MemcachePlain, Mode::Cycle | Mode::Create) => {
            &[Read, Write]
        }
        (Handler::RedisPlain | Handler::MemcachePlain, Mode::Read) => &[Read],
        (Handler::RedisLocked | Handler::MemcacheLocked, Mode::Cycle | Mode::Create) => {
            &[Lock, Read, Write, Unlock]
        }
        (Handler::RedisLocked | Handler::MemcacheLocked, Mode::Read) => &[Lock, Read, Unlock],
    }
}

/// Where the lanes find their sessions.
pub struct Keyspace {
    /// scd session IDs by index (made by the prefill; synthetic for the null server).
    pub ids: Vec<SessionId>,
    /// Seed of the hex IDs the Redis and memcached handlers use.
    pub seed: u64,
    pub len: usize,
}

/// What every lane of one connection shares.
pub struct Env {
    pub handler: Handler,
    pub mode: Mode,
    pub size_bytes: usize,
    pub touch_share: f64,
    pub keys: Arc<Keyspace>,
    pub picker: KeyPicker,
    /// Prefill: lanes in the whole run (the stride between one lane's session indexes).
    pub lanes_total: usize,
    /// Redis: the SHA1 of the unlock script, as SCRIPT LOAD returned it.
    pub unlock_sha: Vec<u8>,
}

/// The Lua script phpredis runs to release its lock: delete the lock only if it is still ours.
pub const REDIS_UNLOCK_SCRIPT: &str = "if redis.call(\"get\",KEYS[1]) == ARGV[1] then return redis.call(\"del\",KEYS[1]) else return 0 end";

/// Per-connection mutable state the lanes share (they run one at a time).
pub struct Scratch {
    pub rng: SmallRng,
    /// Incompressible bytes; each write sends a window of it at a random offset.
    pub data: Vec<u8>,
    /// Sessions a lane of this connection is in the middle of. Lanes sharing a connection are
    /// PHP workers sharing nothing in real life, but to scd one connection is one lock owner:
    /// two of its lanes on one session would steal each other's lock. So a lane picks another
    /// session instead (for every target alike, so the workload stays the same).
    pub in_use: HashSet<usize>,
}

impl Scratch {
    pub fn new(rng: SmallRng, data: Vec<u8>) -> Scratch {
        Scratch {
            rng,
            data,
            in_use: HashSet::new(),
        }
    }
}

/// Picks left before a lane takes a session another lane of its connection is using (only
/// when the key space is barely larger than the lanes).
const PICKS_MAX: usize = 64;

/// How a cycle ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CycleEnd {
    Ok,
    /// The lock could not be had (scd: LockTimeout; Redis/memcached: retries exhausted).
    LockFailure,
    /// The server answered something a handler treats as a failure.
    Error(String),
}

/// What the connection does after a lane handled a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The lane wrote its next request into the output buffer.
    Sent,
    /// The lane waits (lock retry sleep) and must be resumed at this instant.
    Sleep(Instant),
    /// The cycle is over.
    End(CycleEnd),
    /// The reply makes no sense for the request: the connection cannot go on.
    Protocol(String),
}

/// One simulated PHP worker.
pub struct Lane {
    /// Index on its connection (the low 16 bits of its scd request IDs).
    pub index: u16,
    /// Index among all lanes of the run (prefill assigns sessions by it).
    pub global: usize,
    steps: &'static [Step],
    pos: usize,
    /// When the current cycle began.
    pub started: Instant,
    seq: u64,
    /// The scd request ID the lane waits for.
    pub expect_id: u64,
    key_index: usize,
    touch: bool,
    missed: bool,
    attempts: u32,
    token: u64,
    id: Option<SessionId>,
    key: Vec<u8>,
    lock_key: Vec<u8>,
    secret: Vec<u8>,
    /// Prefill: the next session index to create (None: done).
    prefill_next: Option<usize>,
    /// Prefill (scd): the IDs created, by session index.
    pub created: Vec<(usize, SessionId)>,
    /// Durable writes (data, not touches) completed by this lane in the measured window.
    pub wrote: bool,
    /// Retry sleeps taken in the current cycle.
    pub retries: u32,
    /// The session was missing when the cycle read it.
    pub miss: bool,
    /// This lane's session is in `Scratch::in_use`.
    holds_key: bool,
}

impl Lane {
    pub fn new(env: &Env, index: u16, global: usize) -> Lane {
        let mut secret = b"scd-bench|".to_vec();
        secret.extend_from_slice(global.to_string().as_bytes());
        Lane {
            index,
            global,
            steps: script(env.handler, env.mode),
            pos: 0,
            started: Instant::now(),
            seq: 0,
            expect_id: 0,
            key_index: 0,
            touch: false,
            missed: false,
            attempts: 0,
            token: 0,
            id: None,
            key: Vec::with_capacity(64),
            lock_key: Vec::with_capacity(64),
            secret,
            prefill_next: (env.mode == Mode::Prefill && global < env.keys.len).then_some(global),
            created: Vec::new(),
            wrote: false,
            retries: 0,
            miss: false,
            holds_key: false,
        }
    }

    /// Starts a new cycle and sends its first request; false when the lane has nothing left to
    /// do (a prefill lane past the end of its sessions).
    pub fn begin(&mut self, env: &Env, scratch: &mut Scratch, out: &mut Vec<u8>) -> bool {
        self.key_index = match env.mode {
            Mode::Prefill => match self.prefill_next {
                Some(i) => {
                    let next = i + env.lanes_total;
                    self.prefill_next = (next < env.keys.len).then_some(next);
                    i
                }
                None => return false,
            },
            Mode::Create => 0,
            Mode::Cycle | Mode::Read => {
                let mut key = env.picker.pick(&mut scratch.rng);
                for _ in 0..PICKS_MAX {
                    if !scratch.in_use.contains(&key) {
                        break;
                    }
                    key = env.picker.pick(&mut scratch.rng);
                }
                self.holds_key = scratch.in_use.insert(key);
                key
            }
        };
        self.pos = 0;
        self.started = Instant::now();
        self.touch = env.mode == Mode::Cycle
            && env.touch_share > 0.0
            && scratch.rng.random_bool(env.touch_share.min(1.0));
        self.missed = false;
        self.attempts = 0;
        self.token = 0;
        self.wrote = false;
        self.retries = 0;
        self.miss = false;
        self.id = match env.handler {
            Handler::Scd if env.mode == Mode::Cycle || env.mode == Mode::Read => {
                Some(env.keys.ids[self.key_index])
            }
            _ => None,
        };
        if env.handler != Handler::Scd {
            let hex = match env.mode {
                Mode::Create => random_hex_id(&mut scratch.rng),
                _ => hex_id(env.keys.seed, self.key_index as u64),
            };
            let prefix = if env.handler.wire() == Wire::Resp {
                REDIS_PREFIX
            } else {
                MEMC_PREFIX
            };
            self.key.clear();
            self.key.extend_from_slice(prefix.as_bytes());
            self.key.extend_from_slice(&hex);
            self.lock_key.clear();
            if env.handler == Handler::RedisLocked {
                // phpredis: the session key with "_LOCK" appended.
                self.lock_key.extend_from_slice(&self.key);
                self.lock_key.extend_from_slice(b"_LOCK");
            } else {
                // php-memcached: "lock." + the ID, under the same key prefix.
                self.lock_key.extend_from_slice(MEMC_PREFIX.as_bytes());
                self.lock_key.extend_from_slice(b"lock.");
                self.lock_key.extend_from_slice(&hex);
            }
        }
        self.send(env, scratch, out);
        true
    }

    /// Resends the current step after a lock retry sleep.
    pub fn resume(&mut self, env: &Env, scratch: &mut Scratch, out: &mut Vec<u8>) {
        self.send(env, scratch, out);
    }

    /// This cycle renews the lifetime instead of writing: its data did not change (and the
    /// session was there to be touched).
    fn touching(&self) -> bool {
        self.touch && !self.missed
    }

    fn step(&self) -> Step {
        self.steps[self.pos]
    }

    fn next_scd_id(&mut self) -> u64 {
        self.seq += 1;
        self.expect_id = (self.seq << 16) | u64::from(self.index);
        self.expect_id
    }

    fn send(&mut self, env: &Env, scratch: &mut Scratch, out: &mut Vec<u8>) {
        let step = self.step();
        let opaque = u32::from(self.index);
        match env.handler {
            Handler::Scd => {
                let rid = self.next_scd_id();
                let id = self.id;
                let request = match (step, id) {
                    (Step::CreateId, _) => Request::CreateId,
                    (Step::Read, Some(id)) => Request::ReadLock {
                        id,
                        wait_ms: SCD_LOCK_WAIT_MS,
                        lease_ms: SCD_LOCK_LEASE_MS,
                    },
                    (Step::Write, Some(id)) if self.touching() => Request::Touch {
                        id,
                        token: self.token,
                        lifetime_s: LIFETIME_S,
                    },
                    (Step::Write, Some(id)) => Request::WriteUnlock {
                        id,
                        token: self.token,
                        lifetime_s: LIFETIME_S,
                        data: window(scratch, env.size_bytes),
                    },
                    // PHP's read_and_close: the module unlocks what its read locked.
                    (Step::Unlock, Some(id)) => Request::Unlock {
                        id,
                        token: self.token,
                    },
                    // A step that needs an ID always comes after the step that sets it.
                    (step, None) => unreachable!("scd step {step:?} without a session ID"),
                    (Step::Lock, _) => unreachable!("scd scripts have no Lock step"),
                };
                Frame::new(rid, request).encode(out);
            }
            Handler::RedisPlain | Handler::RedisLocked => match step {
                Step::Lock => {
                    let px = REDIS_LOCK_EXPIRE_MS.to_string();
                    resp::command(
                        out,
                        &[
                            b"SET",
                            &self.lock_key,
                            &self.secret,
                            b"NX",
                            b"PX",
                            px.as_bytes(),
                        ],
                    );
                }
                Step::Read => resp::command(out, &[b"GET", &self.key]),
                Step::Write if self.touching() => {
                    let ttl = LIFETIME_S.to_string();
                    resp::command(out, &[b"EXPIRE", &self.key, ttl.as_bytes()]);
                }
                Step::Write => {
                    let ttl = LIFETIME_S.to_string();
                    let data = window(scratch, env.size_bytes);
                    resp::command(out, &[b"SETEX", &self.key, ttl.as_bytes(), data]);
                }
                Step::Unlock => resp::command(
                    out,
                    &[
                        b"EVALSHA",
                        &env.unlock_sha,
                        b"1",
                        &self.lock_key,
                        &self.secret,
                    ],
                ),
                Step::CreateId => unreachable!("Redis scripts have no CreateId"),
            },
            Handler::MemcachePlain | Handler::MemcacheLocked => match step {
                Step::Lock => memcache::store(
                    out,
                    Opcode::Add,
                    &self.lock_key,
                    b"1",
                    MEMC_LOCK_EXPIRE_S,
                    opaque,
                ),
                Step::Read => memcache::get(out, &self.key, opaque),
                Step::Write if self.touching() => {
                    memcache::touch(out, &self.key, LIFETIME_S, opaque)
                }
                Step::Write => {
                    let data = window(scratch, env.size_bytes);
                    memcache::store(out, Opcode::Set, &self.key, data, LIFETIME_S, opaque)
                }
                Step::Unlock => memcache::delete(out, &self.lock_key, opaque),
                Step::CreateId => unreachable!("memcached scripts have no CreateId"),
            },
        }
    }

    /// Handles the reply to the lane's outstanding request.
    pub fn on_reply(
        &mut self,
        env: &Env,
        scratch: &mut Scratch,
        answer: &Answer<'_>,
        out: &mut Vec<u8>,
    ) -> Next {
        let next = self.handle(env, scratch, answer, out);
        if matches!(next, Next::End(_)) && self.holds_key {
            scratch.in_use.remove(&self.key_index);
            self.holds_key = false;
        }
        next
    }

    fn handle(
        &mut self,
        env: &Env,
        scratch: &mut Scratch,
        answer: &Answer<'_>,
        out: &mut Vec<u8>,
    ) -> Next {
        let step = self.step();
        let outcome = match (env.handler.wire(), answer) {
            (Wire::Scd, Answer::Scd(_, reply)) => self.check_scd(env, step, reply),
            (Wire::Resp, Answer::Resp(value)) => self.check_resp(env, step, value),
            (Wire::Memcache, Answer::Memcache(r)) => self.check_memcache(env, step, r),
            _ => return Next::Protocol("a reply of another protocol".to_string()),
        };
        match outcome {
            Check::Advance => {
                if step == Step::Write && !self.touching() {
                    self.wrote = true;
                }
                self.pos += 1;
                self.attempts = 0;
                if self.pos == self.steps.len() {
                    if env.mode == Mode::Prefill {
                        if let Some(id) = self.id {
                            self.created.push((self.key_index, id));
                        }
                    }
                    return Next::End(CycleEnd::Ok);
                }
                self.send(env, scratch, out);
                Next::Sent
            }
            Check::Busy(retries_max, wait) => {
                if self.attempts >= retries_max {
                    return Next::End(CycleEnd::LockFailure);
                }
                self.attempts += 1;
                self.retries += 1;
                Next::Sleep(Instant::now() + wait)
            }
            Check::End(end) => Next::End(end),
            Check::Protocol(what) => Next::Protocol(what),
        }
    }

    fn check_scd(&mut self, env: &Env, step: Step, reply: &Reply<'_>) -> Check {
        match (step, reply) {
            (Step::CreateId, Reply::IdCreated { id }) => {
                self.id = Some(*id);
                Check::Advance
            }
            (
                Step::Read,
                Reply::Data {
                    token,
                    data,
                    new_id,
                    ..
                },
            ) => {
                if let Some(new) = new_id {
                    self.id = Some(*new);
                }
                self.token = *token;
                if *token == 0 {
                    return Check::Protocol("ReadLock answered without a lock token".into());
                }
                // Create: a fresh ID may only be unknown, but the null server answers Data.
                if env.mode == Mode::Cycle || env.mode == Mode::Read {
                    return self.check_size(env, data.len());
                }
                Check::Advance
            }
            (Step::Read, Reply::NotFound { token, new_id }) => {
                if let Some(new) = new_id {
                    self.id = Some(*new);
                }
                self.token = *token;
                if *token == 0 {
                    return Check::Protocol("ReadLock answered without a lock token".into());
                }
                if env.mode == Mode::Cycle || env.mode == Mode::Read {
                    self.missed = true;
                    self.miss = true;
                }
                Check::Advance
            }
            (
                Step::Read,
                Reply::Error {
                    code: ErrorCode::LockTimeout,
                    ..
                },
            ) => Check::End(CycleEnd::LockFailure),
            (Step::Write | Step::Unlock, Reply::Done { .. }) => Check::Advance,
            (_, Reply::Error { code, message }) => {
                Check::End(CycleEnd::Error(format!("scd {step:?}: {code}: {message}")))
            }
            (_, other) => {
                Check::Protocol(format!("scd answered {step:?} with {}", reply_name(other)))
            }
        }
    }

    fn check_resp(&mut self, env: &Env, step: Step, value: &resp::Value<'_>) -> Check {
        use resp::Value;
        match (step, value) {
            (Step::Lock, Value::Simple(b"OK")) => Check::Advance,
            (Step::Lock, Value::Nil) => Check::Busy(
                REDIS_LOCK_RETRIES,
                Duration::from_micros(REDIS_LOCK_WAIT_US),
            ),
            (Step::Read, Value::Bulk(data)) => match env.mode {
                Mode::Create => Check::Advance,
                _ => self.check_size(env, data.len()),
            },
            (Step::Read, Value::Nil) => self.missing(env),
            (Step::Write, Value::Simple(b"OK")) => Check::Advance,
            (Step::Write, Value::Int(1)) => Check::Advance,
            (Step::Write, Value::Int(0)) => {
                // EXPIRE of a key that vanished: PHP carries on, the session is lost.
                self.miss = true;
                Check::Advance
            }
            (Step::Unlock, Value::Int(1)) => Check::Advance,
            (Step::Unlock, Value::Int(0)) => {
                Check::End(CycleEnd::Error("Redis lock was gone at unlock".into()))
            }
            (_, Value::Error(e)) => Check::End(CycleEnd::Error(format!(
                "Redis {step:?}: {}",
                String::from_utf8_lossy(e)
            ))),
            (_, other) => Check::Protocol(format!("Redis answered {step:?} with {other:?}")),
        }
    }

    fn check_memcache(&mut self, env: &Env, step: Step, r: &memcache::Response<'_>) -> Check {
        if r.opaque != u32::from(self.index) {
            return Check::Protocol("memcached response for another request".into());
        }
        match (step, r.status) {
            (Step::Lock, memcache::STATUS_OK) => Check::Advance,
            (Step::Lock, memcache::STATUS_EXISTS | memcache::STATUS_NOT_STORED) => {
                Check::Busy(MEMC_LOCK_RETRIES, Duration::from_millis(MEMC_LOCK_WAIT_MS))
            }
            (Step::Read, memcache::STATUS_OK) => match env.mode {
                Mode::Create => Check::Advance,
                _ => self.check_size(env, r.value.len()),
            },
            (Step::Read, memcache::STATUS_NOT_FOUND) => self.missing(env),
            (Step::Write, memcache::STATUS_OK) => Check::Advance,
            (Step::Write, memcache::STATUS_NOT_FOUND) if self.touch => {
                self.miss = true;
                Check::Advance
            }
            (Step::Unlock, memcache::STATUS_OK) => Check::Advance,
            (Step::Unlock, memcache::STATUS_NOT_FOUND) => {
                Check::End(CycleEnd::Error("memcached lock was gone at unlock".into()))
            }
            (_, status) => Check::End(CycleEnd::Error(format!(
                "memcached {step:?}: status {status:#06x} {}",
                String::from_utf8_lossy(r.value)
            ))),
        }
    }

    /// A read found no session: expected when creating, a miss otherwise.
    fn missing(&mut self, env: &Env) -> Check {
        match env.mode {
            Mode::Create => Check::Advance,
            Mode::Read => {
                self.miss = true;
                // A read-only request with no session still releases its lock.
                if self.steps.get(self.pos + 1).is_some() {
                    Check::Advance
                } else {
                    Check::End(CycleEnd::Ok)
                }
            }
            Mode::Cycle | Mode::Prefill => {
                self.miss = true;
                self.missed = true;
                Check::Advance
            }
        }
    }

    fn check_size(&mut self, env: &Env, len: usize) -> Check {
        if len == env.size_bytes {
            Check::Advance
        } else {
            Check::End(CycleEnd::Error(format!(
                "read {len} bytes of session data, expected {}",
                env.size_bytes
            )))
        }
    }
}

enum Check {
    Advance,
    Busy(u32, Duration),
    End(CycleEnd),
    Protocol(String),
}

fn window(scratch: &mut Scratch, size: usize) -> &[u8] {
    let room = scratch.data.len() - size;
    let off = if room == 0 {
        0
    } else {
        scratch.rng.random_range(0..=room)
    };
    &scratch.data[off..off + size]
}

fn reply_name(reply: &Reply<'_>) -> &'static str {
    match reply {
        Reply::HelloOk(_) => "HelloOk",
        Reply::IdCreated { .. } => "IdCreated",
        Reply::Data { .. } => "Data",
        Reply::NotFound { .. } => "NotFound",
        Reply::Done { .. } => "Done",
        Reply::Existence { .. } => "Existence",
        Reply::Stats(_) => "StatsReply",
        Reply::Error { .. } => "Error",
    }
}
