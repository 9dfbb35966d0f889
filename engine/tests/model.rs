//! Model test: long random sequences of operations (put, get, destroy, touch, lock, unlock,
//! owner gone, time passing, expiry sweeps, compaction, reopen) checked step by step against a
//! simple in-memory model, on the simulated disk and on real files. A failure prints its seed
//! and step; the run replays exactly from the seed.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};

use common::{TempDir, blob};
use scd_engine::sim::{SimRng, SimStorage};
use scd_engine::{
    EngineError, Event, FlushPolicy, LockOutcome, LockToken, OwnerId, SessionKey, Shard,
    ShardConfig, Storage, Ticket, WaitId, WriteAck,
};

const T0: u64 = 1_700_000_000_000;
const KEYS: u64 = 12;
const OWNERS: u64 = 3;
const SIZE_MAX: usize = 8000;
const LEASE_MS_MAX: u64 = 24 * 3600 * 1000;

struct MHolder {
    owner: u64,
    token: LockToken,
    lease_until: u64,
}

#[derive(Default)]
struct MLock {
    holder: Option<MHolder>,
    queue: VecDeque<WaitId>,
}

struct MWait {
    key: SessionKey,
    owner: u64,
    deadline: u64,
    lease: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Expect {
    Granted(WaitId),
    TimedOut(WaitId),
}

#[derive(Default)]
struct Model {
    sessions: HashMap<SessionKey, (Vec<u8>, u64)>,
    locks: BTreeMap<SessionKey, MLock>,
    waits: BTreeMap<WaitId, MWait>,
    /// Grants decided by the model whose token only the engine's event will tell.
    expected: Vec<Expect>,
    /// Write-through put_unlocks: the lock is handed on when the write's ticket is durable.
    deferred: Vec<(Ticket, SessionKey, LockToken)>,
}

impl Model {
    fn live(&self, k: &SessionKey, now: u64) -> Option<&Vec<u8>> {
        self.sessions
            .get(k)
            .filter(|(_, e)| *e > now)
            .map(|(d, _)| d)
    }

    /// Fires due leases and deadlines in the engine's order: by time, leases before waits,
    /// leases by key, waits by id.
    fn advance(&mut self, now: u64) {
        loop {
            let lease = self
                .locks
                .iter()
                .filter_map(|(k, l)| l.holder.as_ref().map(|h| (h.lease_until, *k)))
                .filter(|(t, _)| *t <= now)
                .min();
            let wait = self
                .waits
                .iter()
                .map(|(id, w)| (w.deadline, *id))
                .filter(|(t, _)| *t <= now)
                .min();
            match (lease, wait) {
                (Some((lt, k)), w) if w.is_none_or(|(wt, _)| lt <= wt) => {
                    self.release(k, now);
                }
                (_, Some((_, id))) => {
                    let w = self.waits.remove(&id).unwrap();
                    let l = self.locks.get_mut(&w.key).unwrap();
                    l.queue.retain(|&x| x != id);
                    self.expected.push(Expect::TimedOut(id));
                }
                _ => return,
            }
        }
    }

    fn release(&mut self, k: SessionKey, now: u64) {
        let l = self.locks.get_mut(&k).unwrap();
        l.holder = None;
        if let Some(id) = l.queue.pop_front() {
            let w = self.waits.remove(&id).unwrap();
            // Token filled in from the engine's event.
            l.holder = Some(MHolder {
                owner: w.owner,
                token: LockToken::from_u64(u64::MAX).unwrap(),
                lease_until: now + w.lease.clamp(1, LEASE_MS_MAX),
            });
            self.expected.push(Expect::Granted(id));
        } else {
            self.locks.remove(&k);
        }
    }

    fn check(&self, k: &SessionKey, token: LockToken) -> Result<(), EngineError> {
        match self.locks.get(k).and_then(|l| l.holder.as_ref()) {
            Some(h) if h.token == token => Ok(()),
            Some(_) => Err(EngineError::WrongToken),
            None => Err(EngineError::NotLocked),
        }
    }
}

struct Run<S: Storage> {
    shard: Option<Shard<S>>,
    model: Model,
    rng: SimRng,
    now: u64,
    keys: Vec<SessionKey>,
    /// Tokens the clients hold (possibly stale).
    tokens: HashMap<(u64, SessionKey), LockToken>,
    seen_tokens: Vec<LockToken>,
    tickets_open: u64,
    /// Which (key, owner) each queued wait belongs to.
    granted_to: HashMap<WaitId, (SessionKey, u64)>,
    seed: u64,
    step: usize,
}

impl<S: Storage> Run<S> {
    fn s(&mut self) -> &mut Shard<S> {
        self.shard.as_mut().unwrap()
    }

    fn ctx(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    /// Polls the engine like the daemon's loop does and compares lock events with the model.
    fn poll(&mut self) {
        let now = self.now;
        self.s().flush(now);
        let mut ev = Vec::new();
        self.s().poll_events(now, &mut ev);
        self.model.advance(now);
        let mut got = Vec::new();
        let mut grants = HashMap::new();
        for e in ev {
            match e {
                Event::LockGranted { wait, token } => {
                    got.push(Expect::Granted(wait));
                    grants.insert(wait, token);
                }
                Event::LockTimedOut { wait } => got.push(Expect::TimedOut(wait)),
                Event::Durable { ticket } => {
                    self.tickets_open -= 1;
                    if let Some(i) = self.model.deferred.iter().position(|d| d.0 == ticket) {
                        let (_, k, t) = self.model.deferred.remove(i);
                        if self.model.check(&k, t).is_ok() {
                            self.model.release(k, now);
                        }
                    }
                }
                Event::WriteFailed { .. } => panic!("{}: write failed", self.ctx()),
            }
        }
        let mut want = std::mem::take(&mut self.model.expected);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}: lock events differ", self.ctx());
        // Learn the tokens of the grants.
        for (wait, token) in grants {
            self.seen_tokens.push(token);
            let (key, owner) = self.granted_to.remove(&wait).unwrap();
            let ctx = self.ctx();
            let h = self
                .model
                .locks
                .get_mut(&key)
                .unwrap()
                .holder
                .as_mut()
                .unwrap();
            assert_eq!(h.owner, owner, "{ctx}");
            h.token = token;
            self.tokens.insert((owner, key), token);
        }
    }

    fn ack(&mut self, a: WriteAck) {
        if let WriteAck::Pending(_) = a {
            self.tickets_open += 1;
        }
    }

    fn pick_token(&mut self, owner: u64, k: SessionKey) -> LockToken {
        if self.rng.chance(1, 10) && !self.seen_tokens.is_empty() {
            let i = self.rng.below(self.seen_tokens.len() as u64) as usize;
            return self.seen_tokens[i];
        }
        self.tokens
            .get(&(owner, k))
            .copied()
            .unwrap_or(LockToken::from_u64(7).unwrap())
    }

    fn compare_all(&mut self) {
        let now = self.now;
        for i in 0..self.keys.len() {
            let k = self.keys[i];
            let want = self.model.live(&k, now).cloned();
            let got = self.s().get(&k, now).map(|r| r.data().to_vec());
            assert_eq!(got, want, "{}: session {i}", self.ctx());
            assert_eq!(self.s().exists(&k, now), want.is_some(), "{}", self.ctx());
        }
        let n = self.s().iter(now).count();
        let m = self
            .model
            .sessions
            .values()
            .filter(|(_, e)| *e > now)
            .count();
        assert_eq!(n, m, "{}: iteration count", self.ctx());
    }

    fn step_once(&mut self, reopen: &mut dyn FnMut(Shard<S>, u64) -> Shard<S>) {
        let now = self.now;
        let ki = self.rng.below(KEYS) as usize;
        let k = self.keys[ki];
        let owner = 1 + self.rng.below(OWNERS);
        match self.rng.below(100) {
            0..=14 => {
                let deadline = now + self.rng.below(3000);
                let lease = 1 + self.rng.below(6000);
                let got = self
                    .s()
                    .lock(k, OwnerId(owner), now, deadline, lease)
                    .unwrap();
                self.model.advance(now);
                let holder = self
                    .model
                    .locks
                    .get(&k)
                    .and_then(|l| l.holder.as_ref())
                    .map(|h| h.owner);
                match (holder, got) {
                    (None, LockOutcome::Granted(t)) | (Some(_), LockOutcome::Granted(t))
                        if holder.is_none_or(|o| o == owner) =>
                    {
                        let l = self.model.locks.entry(k).or_default();
                        l.holder = Some(MHolder {
                            owner,
                            token: t,
                            lease_until: now + lease,
                        });
                        self.tokens.insert((owner, k), t);
                        self.seen_tokens.push(t);
                    }
                    (Some(_), LockOutcome::TimedOut) if deadline <= now => {}
                    (Some(_), LockOutcome::Queued(w)) if deadline > now => {
                        self.model.waits.insert(
                            w,
                            MWait {
                                key: k,
                                owner,
                                deadline,
                                lease,
                            },
                        );
                        self.model.locks.get_mut(&k).unwrap().queue.push_back(w);
                        self.granted_to.insert(w, (k, owner));
                    }
                    (h, g) => panic!("{}: lock: model holder {h:?}, engine {g:?}", self.ctx()),
                }
            }
            15..=22 => {
                let t = self.pick_token(owner, k);
                let got = self.s().unlock(k, t, now);
                self.model.advance(now);
                let want = self.model.check(&k, t);
                assert_eq!(got, want, "{}: unlock", self.ctx());
                if want.is_ok() {
                    self.model.release(k, now);
                }
            }
            23..=42 => {
                let t = self.pick_token(owner, k);
                let len = match self.rng.below(20) {
                    0 => SIZE_MAX + 1 + self.rng.below(100) as usize,
                    1..=3 => 2000 + self.rng.below(6000) as usize,
                    _ => self.rng.below(600) as usize,
                };
                let data = blob(self.rng.next_u64(), len);
                let life = 1 + self.rng.below(30) as u32;
                let unlock = self.rng.chance(1, 2);
                let got = if unlock {
                    self.s().put_unlock(k, t, &data, life, now)
                } else {
                    self.s().put(k, t, &data, life, now)
                };
                self.model.advance(now);
                let want = match self.model.check(&k, t) {
                    Ok(()) if len > SIZE_MAX => Err(EngineError::TooLarge {
                        size: len,
                        max: SIZE_MAX,
                    }),
                    other => other,
                };
                match (got, want) {
                    (Ok(a), Ok(())) => {
                        self.ack(a);
                        self.model
                            .sessions
                            .insert(k, (data, now + u64::from(life) * 1000));
                        match a {
                            WriteAck::Pending(ticket) if unlock => {
                                self.model.deferred.push((ticket, k, t))
                            }
                            _ if unlock => self.model.release(k, now),
                            _ => {}
                        }
                    }
                    (Err(g), Err(w)) => assert_eq!(g, w, "{}: put", self.ctx()),
                    (g, w) => panic!("{}: put: engine {g:?}, model {w:?}", self.ctx()),
                }
            }
            43..=62 => {
                let got = self.s().get(&k, now).map(|r| r.data().to_vec());
                let want = self.model.live(&k, now).cloned();
                assert_eq!(got, want, "{}: get", self.ctx());
            }
            63..=67 => {
                let t = self.pick_token(owner, k);
                let life = 1 + self.rng.below(30) as u32;
                let got = self.s().touch(k, t, life, now);
                self.model.advance(now);
                let want = self.model.check(&k, t).and_then(|()| {
                    if self.model.live(&k, now).is_some() {
                        Ok(())
                    } else {
                        Err(EngineError::NotFound)
                    }
                });
                match (got, want) {
                    (Ok(a), Ok(())) => {
                        self.ack(a);
                        self.model.sessions.get_mut(&k).unwrap().1 = now + u64::from(life) * 1000;
                    }
                    (Err(g), Err(w)) => assert_eq!(g, w, "{}: touch", self.ctx()),
                    (g, w) => panic!("{}: touch: engine {g:?}, model {w:?}", self.ctx()),
                }
            }
            68..=72 => {
                let t = if self.rng.chance(1, 3) {
                    None
                } else {
                    Some(self.pick_token(owner, k))
                };
                let got = self.s().destroy(k, t, now);
                self.model.advance(now);
                let want = match t {
                    Some(t) => self.model.check(&k, t),
                    None if self.model.locks.get(&k).is_some_and(|l| l.holder.is_some()) => {
                        Err(EngineError::WrongToken)
                    }
                    None => Ok(()),
                };
                match (got, want) {
                    (Ok(a), Ok(())) => {
                        self.ack(a);
                        self.model.sessions.remove(&k);
                    }
                    (Err(g), Err(w)) => assert_eq!(g, w, "{}: destroy", self.ctx()),
                    (g, w) => panic!("{}: destroy: engine {g:?}, model {w:?}", self.ctx()),
                }
            }
            73..=75 => {
                self.s().release_owner(OwnerId(owner), now);
                self.model.advance(now);
                let gone: Vec<WaitId> = self
                    .model
                    .waits
                    .iter()
                    .filter(|(_, w)| w.owner == owner)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    let w = self.model.waits.remove(&id).unwrap();
                    let l = self.model.locks.get_mut(&w.key).unwrap();
                    l.queue.retain(|&x| x != id);
                    self.granted_to.remove(&id);
                }
                let held: Vec<SessionKey> = self
                    .model
                    .locks
                    .iter()
                    .filter(|(_, l)| l.holder.as_ref().is_some_and(|h| h.owner == owner))
                    .map(|(k, _)| *k)
                    .collect();
                for k in held {
                    self.model.release(k, now);
                }
            }
            76..=89 => {
                // Time passes: sometimes to exactly the next expiry, lease end or deadline,
                // where off-by-one mistakes live.
                let next_edge = self
                    .model
                    .sessions
                    .values()
                    .map(|(_, e)| *e)
                    .chain(
                        self.model
                            .locks
                            .values()
                            .filter_map(|l| l.holder.as_ref().map(|h| h.lease_until)),
                    )
                    .chain(self.model.waits.values().map(|w| w.deadline))
                    .filter(|&t| t > now)
                    .min();
                self.now = match (self.rng.below(10), next_edge) {
                    (0, _) => now + 5000 + self.rng.below(20_000),
                    (1..=3, Some(t)) => t,
                    _ => now + self.rng.below(700),
                };
            }
            90..=93 => {
                let budget = 1 + self.rng.below(300) as usize;
                self.s().expire_step(now, budget);
            }
            94..=95 => {
                let budget = 1 + self.rng.below(50) as usize;
                self.s().compact_step(now, budget);
            }
            96 => {
                // Full sweep: afterwards the session count is exact.
                self.s().expire_step(now, usize::MAX);
                let want = self
                    .model
                    .sessions
                    .values()
                    .filter(|(_, e)| *e > now)
                    .count() as u64;
                let st = self.s().stats();
                assert_eq!(st.sessions, want, "{}: stats.sessions", self.ctx());
            }
            97 => {
                self.compare_all();
            }
            _ => {
                // Restart: locks are memory only; sessions come back from disk.
                let shard = self.shard.take().unwrap();
                let opened = reopen(shard, now);
                self.shard = Some(opened);
                self.model.locks.clear();
                self.model.waits.clear();
                self.model.expected.clear();
                self.model.deferred.clear();
                self.granted_to.clear();
                self.tokens.clear();
                self.tickets_open = 0;
                self.compare_all();
            }
        }
        self.poll();
    }
}

impl<S: Storage> Run<S> {
    fn start(shard: Shard<S>, seed: u64) -> Run<S> {
        let mut rng = SimRng::new(seed);
        let keys = (0..KEYS).map(|_| common::key(&mut rng)).collect();
        Run {
            shard: Some(shard),
            model: Model::default(),
            rng,
            now: T0,
            keys,
            tokens: HashMap::new(),
            seen_tokens: Vec::new(),
            tickets_open: 0,
            seed,
            step: 0,
            granted_to: HashMap::new(),
        }
    }
}

fn cfg(flush: FlushPolicy) -> ShardConfig {
    ShardConfig {
        flush,
        shards: 1,
        session_size_max: SIZE_MAX,
        ..ShardConfig::default()
    }
}

fn policies() -> [FlushPolicy; 2] {
    [
        FlushPolicy::WriteThrough,
        FlushPolicy::DelayedWrite { interval_ms: 1000 },
    ]
}

fn drive<S: Storage>(
    run: &mut Run<S>,
    steps: usize,
    reopen: &mut dyn FnMut(Shard<S>, u64) -> Shard<S>,
) {
    for i in 0..steps {
        run.step = i;
        run.step_once(reopen);
    }
    run.s().sync().unwrap();
    run.poll();
    assert_eq!(
        run.tickets_open,
        0,
        "{}: a write-through write never became durable",
        run.ctx()
    );
    run.compare_all();
}

#[test]
fn model_on_simulated_disk() {
    for policy in policies() {
        let c = cfg(policy);
        for seed in 0..24u64 {
            let shard = Shard::open_with(SimStorage::new(), &c, 0, T0).unwrap().0;
            let mut run = Run::start(shard, seed);
            let c2 = c.clone();
            let mut reopen = move |mut s: Shard<SimStorage>, now: u64| {
                s.sync().unwrap();
                // Only what is durable survives: a sync that missed something shows here.
                let disk = s.storage().durable_image();
                drop(s);
                let (s, report) =
                    Shard::open_with(SimStorage::from_disk(disk), &c2, 0, now).unwrap();
                assert_eq!(report.damaged, 0);
                s
            };
            drive(&mut run, 3000, &mut reopen);
        }
    }
}

#[test]
fn model_on_real_files() {
    for policy in policies() {
        let c = cfg(policy);
        for seed in 100..103u64 {
            let dir = TempDir::new("model");
            let shard = Shard::open_at(&c, dir.path(), 0, T0).unwrap().0;
            let mut run = Run::start(shard, seed);
            let c2 = c.clone();
            let path = dir.path().to_path_buf();
            let mut reopen = move |s: Shard<_>, now: u64| {
                drop(s);
                let (s, report) = Shard::open_at(&c2, &path, 0, now).unwrap();
                assert_eq!(report.damaged, 0);
                s
            };
            drive(&mut run, 1500, &mut reopen);
        }
    }
}
