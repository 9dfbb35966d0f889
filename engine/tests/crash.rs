//! Crash test: random writes on the simulated disk, a power loss at a random point (every
//! write not covered by a completed flush may or may not reach the disk, sector by sector,
//! some sectors torn), then recovery, checked against the history of every session:
//! - write-through: every write whose `Durable` event arrived is there, bytes exact (or a
//!   later write of the same session is);
//! - delayed-write: nothing written more than the flush interval before the crash is lost
//!   (allowing for the flush's own completion, one or two event-loop passes);
//! - nothing else is ever returned: every recovered session is exactly one of its versions.
//!
//! Each seed chains several crashes on the same disk. A failure names its seed and round.

mod common;

use std::collections::HashMap;

use common::{blob, events, lock_now};
use scd_engine::sim::{SimRng, SimStorage};
use scd_engine::{Event, FlushPolicy, SessionKey, Shard, ShardConfig, Ticket, WriteAck};

const T0: u64 = 1_700_000_000_000;
const KEYS: usize = 24;
const INTERVAL_MS: u64 = 1000;
const STEP_MS_MAX: u64 = 300;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Absent,
    Present(Vec<u8>, u64),
}

#[derive(Clone, Debug)]
struct State {
    data: Option<Vec<u8>>,
    expires: u64,
    t: u64,
}

impl State {
    fn seen_at(&self, now: u64) -> Seen {
        match &self.data {
            Some(d) if self.expires > now => Seen::Present(d.clone(), self.expires),
            _ => Seen::Absent,
        }
    }
}

struct Hist {
    states: Vec<State>,
    /// Index of the newest state the engine promised to keep.
    kept: usize,
}

struct Crash {
    shard: Option<Shard<SimStorage>>,
    cfg: ShardConfig,
    rng: SimRng,
    now: u64,
    keys: Vec<SessionKey>,
    hist: Vec<Hist>,
    tickets: HashMap<Ticket, (usize, usize)>,
    ctx: String,
}

impl Crash {
    fn s(&mut self) -> &mut Shard<SimStorage> {
        self.shard.as_mut().unwrap()
    }

    fn poll(&mut self) {
        let now = self.now;
        self.s().flush(now);
        for e in events(self.s(), now) {
            match e {
                Event::Durable { ticket } => {
                    let (k, i) = self.tickets.remove(&ticket).unwrap();
                    let h = &mut self.hist[k];
                    h.kept = h.kept.max(i);
                }
                Event::WriteFailed { .. } => panic!("{}: write failed", self.ctx),
                _ => {}
            }
        }
    }

    /// Time passes; the loop wakes at every deadline the shard asks for, as the daemon would.
    fn advance(&mut self, delta: u64) {
        let target = self.now + delta;
        while let Some(d) = self.s().next_deadline_ms() {
            if d > target {
                break;
            }
            self.now = self.now.max(d);
            self.poll();
            if self.s().next_deadline_ms() == Some(d) {
                break;
            }
        }
        self.now = target;
        self.poll();
    }

    fn record(&mut self, k: usize, ack: WriteAck, data: Option<Vec<u8>>, expires: u64) {
        let h = &mut self.hist[k];
        h.states.push(State {
            data,
            expires,
            t: self.now,
        });
        if let WriteAck::Pending(t) = ack {
            self.tickets.insert(t, (k, h.states.len() - 1));
        }
    }

    fn step(&mut self) {
        let now = self.now;
        let k = self.rng.below(KEYS as u64) as usize;
        let key = self.keys[k];
        match self.rng.below(100) {
            0..=49 => {
                let len = match self.rng.below(4) {
                    0 => self.rng.below(60) as usize,
                    1 | 2 => 300 + self.rng.below(100) as usize,
                    _ => 3500 + self.rng.below(600) as usize,
                };
                let data = blob(self.rng.next_u64(), len);
                let life: u32 = if self.rng.chance(1, 8) {
                    2 + self.rng.below(10) as u32
                } else {
                    600
                };
                let t = lock_now(self.s(), key, 1, now);
                let ack = self.s().put_unlock(key, t, &data, life, now).unwrap();
                self.record(k, ack, Some(data), now + u64::from(life) * 1000);
            }
            50..=57 => {
                let t = lock_now(self.s(), key, 1, now);
                let life = 600;
                match self.s().touch(key, t, life, now) {
                    Ok(ack) => {
                        let last = self.hist[k].states.last().unwrap().clone();
                        self.record(k, ack, last.data, now + u64::from(life) * 1000);
                    }
                    Err(scd_engine::EngineError::NotFound) => {}
                    Err(e) => panic!("{}: touch: {e}", self.ctx),
                }
                self.s().unlock(key, t, now).unwrap();
            }
            58..=65 => {
                let t = lock_now(self.s(), key, 1, now);
                let existed = self.s().exists(&key, now);
                let ack = self.s().destroy(key, Some(t), now).unwrap();
                self.s().unlock(key, t, now).unwrap();
                if existed {
                    self.record(k, ack, None, 0);
                }
            }
            66..=70 => {
                let budget = 1 + self.rng.below(200) as usize;
                self.s().expire_step(now, budget);
            }
            71..=73 => {
                let budget = 1 + self.rng.below(40) as usize;
                self.s().compact_step(now, budget);
            }
            74..=75 if self.cfg.flush == FlushPolicy::WriteThrough => {
                // A slow disk: flushes stay in flight for a while, so crashes also land while
                // writes wait for their flush. (Not under delayed-write: its promise is about
                // a disk that completes flushes; a stalled one delays any store's flush.)
                let hold = self.rng.chance(1, 2);
                self.s().storage_mut().hold_flushes(hold);
            }
            _ => {
                let delta = self.rng.below(STEP_MS_MAX + 1);
                self.advance(delta);
                return;
            }
        }
        self.poll();
    }

    fn crash_and_check(&mut self, round: usize) {
        let crash_now = self.now;
        if let FlushPolicy::DelayedWrite { interval_ms } = self.cfg.flush {
            for h in &mut self.hist {
                for (i, st) in h.states.iter().enumerate() {
                    if st.t + interval_ms + 2 * STEP_MS_MAX <= crash_now {
                        h.kept = h.kept.max(i);
                    }
                }
            }
        }
        let mut shard = self.shard.take().unwrap();
        let disk = shard.storage_mut().crash(&mut self.rng);
        drop(shard);
        // Reopening after a crash may happen a little later.
        self.now += self.rng.below(2000);
        let now = self.now;
        let (s, report) = Shard::open_with(SimStorage::from_disk(disk), &self.cfg, 0, now)
            .unwrap_or_else(|e| panic!("{} round {round}: reopen failed: {e}", self.ctx));
        assert_eq!(report.misplaced, 0);
        for (k, h) in self.hist.iter_mut().enumerate() {
            let got = match s.get(&self.keys[k], now) {
                Some(r) => Seen::Present(r.data().to_vec(), r.expires_at_ms()),
                None => Seen::Absent,
            };
            let allowed: Vec<Seen> = h.states[h.kept..]
                .iter()
                .map(|st| st.seen_at(now))
                .collect();
            assert!(
                allowed.contains(&got),
                "{} round {round}: session {k} recovered as {:?}, allowed {} states from #{} of {}",
                self.ctx,
                got_short(&got),
                allowed.len(),
                h.kept,
                h.states.len()
            );
            // The recovered state is the new baseline (it is on disk now).
            let base = match got {
                Seen::Present(d, e) => State {
                    data: Some(d),
                    expires: e,
                    t: now,
                },
                Seen::Absent => State {
                    data: None,
                    expires: 0,
                    t: now,
                },
            };
            h.states = vec![base];
            h.kept = 0;
        }
        self.tickets.clear();
        self.shard = Some(s);
    }
}

fn got_short(s: &Seen) -> String {
    match s {
        Seen::Absent => "absent".into(),
        Seen::Present(d, e) => format!("{} bytes expiring at {e}", d.len()),
    }
}

fn run(policy: FlushPolicy, seeds: std::ops::Range<u64>, rounds: usize) -> usize {
    let cfg = ShardConfig {
        flush: policy,
        shards: 1,
        ..ShardConfig::default()
    };
    let mut crashes = 0;
    for seed in seeds {
        let mut rng = SimRng::new(seed);
        let keys: Vec<SessionKey> = (0..KEYS).map(|_| common::key(&mut rng)).collect();
        let shard = Shard::open_with(SimStorage::new(), &cfg, 0, T0).unwrap().0;
        let mut c = Crash {
            shard: Some(shard),
            cfg: cfg.clone(),
            rng,
            now: T0,
            keys,
            hist: (0..KEYS)
                .map(|_| Hist {
                    states: vec![State {
                        data: None,
                        expires: 0,
                        t: T0,
                    }],
                    kept: 0,
                })
                .collect(),
            tickets: HashMap::new(),
            ctx: format!("{policy:?} seed {seed}"),
        };
        for round in 0..rounds {
            let steps = 20 + c.rng.below(120);
            for _ in 0..steps {
                c.step();
            }
            c.crash_and_check(round);
            crashes += 1;
        }
    }
    crashes
}

#[test]
fn crash_write_through() {
    let n = run(FlushPolicy::WriteThrough, 0..60, 10);
    assert!(n >= 600);
}

#[test]
fn crash_delayed_write() {
    let n = run(
        FlushPolicy::DelayedWrite {
            interval_ms: INTERVAL_MS,
        },
        1000..1060,
        10,
    );
    assert!(n >= 600);
}

/// Compaction moves records between files and removes files; a crash at any point of it keeps
/// every session exactly and brings back none that was deleted.
#[test]
fn crash_during_compaction() {
    let cfg = ShardConfig {
        flush: FlushPolicy::WriteThrough,
        shards: 1,
        ..ShardConfig::default()
    };
    let mut crashes = 0;
    for seed in 0..60u64 {
        let mut rng = SimRng::new(seed);
        let n = 2500u64;
        let keys: Vec<SessionKey> = (0..n).map(|_| common::key(&mut rng)).collect();
        let (mut s, _) = Shard::open_with(SimStorage::new(), &cfg, 0, T0).unwrap();
        for (i, &k) in keys.iter().enumerate() {
            let t = lock_now(&mut s, k, 1, T0);
            s.put_unlock(k, t, &blob(seed * n + i as u64, 350), 600, T0)
                .unwrap();
        }
        s.sync().unwrap();
        let kept = |i: usize| i % 10 == 0;
        for (i, &k) in keys.iter().enumerate() {
            if !kept(i) {
                s.remove(k, T0).unwrap();
            }
        }
        s.sync().unwrap();
        let files_before = s.stats().slab_files;
        // Compact for a random while, flushes completing or not, then lose power.
        let steps = rng.below(16);
        for _ in 0..steps {
            // Sometimes several compaction steps in one loop pass, before any flush.
            for _ in 0..1 + rng.below(3) {
                s.compact_step(T0, 1 + rng.below(200) as usize);
            }
            if rng.chance(1, 2) {
                s.flush(T0);
            }
            let _ = events(&mut s, T0);
        }
        let moved = s.stats().moved;
        let disk = s.storage_mut().crash(&mut rng);
        drop(s);
        let (s, report) = Shard::open_with(SimStorage::from_disk(disk), &cfg, 0, T0).unwrap();
        for (i, k) in keys.iter().enumerate() {
            let got = s.get(k, T0).map(|r| r.data().to_vec());
            if kept(i) {
                assert_eq!(
                    got,
                    Some(blob(seed * n + i as u64, 350)),
                    "seed {seed}: session {i}"
                );
            } else {
                assert_eq!(got, None, "seed {seed}: deleted session {i} came back");
            }
        }
        assert_eq!(report.sessions, n / 10);
        if steps > 0 {
            assert!(
                moved > 0,
                "seed {seed}: compaction never moved anything ({files_before} files)"
            );
        }
        crashes += 1;
    }
    assert_eq!(crashes, 60);
}
