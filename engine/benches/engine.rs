//! Engine benchmarks on real files (mmap + io_uring): get, put under both flush policies,
//! lock+get and put+unlock, for 512 B and 4 KiB sessions.
//!
//! Run: `cargo bench -p scd-engine --bench engine` (set SCD_BENCH_DIR to put the store on a
//! particular disk; default: the system temp directory).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scd_engine::{
    FlushPolicy, LockOutcome, LockToken, OwnerId, SessionKey, Shard, ShardConfig, WriteAck,
};

const T0: u64 = 1_700_000_000_000;
const SESSIONS: u64 = 10_000;
const LIFETIME_S: u32 = 1440;

fn key(n: u64) -> SessionKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k[8..].copy_from_slice(&n.to_le_bytes());
    SessionKey(k)
}

struct Store {
    shard: Option<Shard>,
    dir: PathBuf,
    now: u64,
    ops: u64,
}

impl Store {
    fn new(tag: &str, flush: FlushPolicy, verify_reads: bool, size: usize) -> Store {
        let base = std::env::var_os("SCD_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = base.join(format!("scd-engine-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = ShardConfig {
            flush,
            shards: 1,
            verify_reads,
            ..ShardConfig::default()
        };
        let (mut shard, _) = Shard::open_at(&cfg, &dir, 0, T0).unwrap();
        let data = vec![0x5au8; size];
        for i in 0..SESSIONS {
            let t = lock(&mut shard, key(i), T0);
            shard.put_unlock(key(i), t, &data, LIFETIME_S, T0).unwrap();
        }
        shard.sync().unwrap();
        Store {
            shard: Some(shard),
            dir,
            now: T0,
            ops: 0,
        }
    }

    fn s(&mut self) -> &mut Shard {
        self.shard.as_mut().unwrap()
    }

    /// What the daemon's loop does between requests: time moves, flushes are started and
    /// reaped. Every 64 operations, as if 64 requests came in one loop pass.
    fn tick(&mut self) {
        self.ops += 1;
        if self.ops % 64 == 0 {
            self.now += 1;
            let now = self.now;
            let s = self.s();
            s.flush(now);
            let mut ev = Vec::new();
            s.poll_events(now, &mut ev);
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        drop(self.shard.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lock(s: &mut Shard, k: SessionKey, now: u64) -> LockToken {
    match s.lock(k, OwnerId(1), now, now + 1000, 86_400_000).unwrap() {
        LockOutcome::Granted(t) => t,
        o => panic!("{o:?}"),
    }
}

fn delayed() -> FlushPolicy {
    FlushPolicy::DelayedWrite { interval_ms: 1000 }
}

fn bench_get(c: &mut Criterion) {
    let mut g = c.benchmark_group("get");
    for size in [512usize, 4096] {
        for verify in [true, false] {
            let mut st = Store::new("get", delayed(), verify, size);
            g.throughput(Throughput::Bytes(size as u64));
            let name = if verify { "verified" } else { "unverified" };
            let mut i = 0u64;
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    i = (i + 1) % SESSIONS;
                    let now = st.now;
                    let r = st.s().get(&key(i), now).unwrap();
                    black_box(r.data()[0]);
                })
            });
        }
    }
    g.finish();
}

fn bench_put_delayed(c: &mut Criterion) {
    let mut g = c.benchmark_group("put_delayed");
    for size in [512usize, 4096] {
        let mut st = Store::new("putd", delayed(), true, size);
        let data = vec![0xa5u8; size];
        let mut i = 0u64;
        g.throughput(Throughput::Bytes(size as u64));
        // The lock is held across puts: this is the bare write.
        let tokens: Vec<LockToken> = (0..SESSIONS).map(|n| lock(st.s(), key(n), T0)).collect();
        g.bench_function(BenchmarkId::new("put", size), |b| {
            b.iter(|| {
                i = (i + 1) % SESSIONS;
                let now = st.now;
                let ack = st
                    .s()
                    .put(key(i), tokens[i as usize], &data, LIFETIME_S, now)
                    .unwrap();
                black_box(ack);
                st.tick();
            })
        });
    }
    g.finish();
}

/// The PHP request pair: lock+get at session_start, put+unlock at the end. Each half is
/// timed on its own (the other half runs untimed to keep the lock cycle going).
fn bench_lock_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_delayed");
    for size in [512usize, 4096] {
        let mut st = Store::new("pair", delayed(), true, size);
        let data = vec![0x3cu8; size];
        g.throughput(Throughput::Elements(1));
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("lock+get", size), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    i = (i + 1) % SESSIONS;
                    let k = key(i);
                    let now = st.now;
                    let t0 = Instant::now();
                    let t = lock(st.s(), k, now);
                    black_box(st.s().get(&k, now).unwrap().data()[0]);
                    timed += t0.elapsed();
                    st.s().put_unlock(k, t, &data, LIFETIME_S, now).unwrap();
                    st.tick();
                }
                timed
            })
        });
        g.bench_function(BenchmarkId::new("put+unlock", size), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    i = (i + 1) % SESSIONS;
                    let k = key(i);
                    let now = st.now;
                    let t = lock(st.s(), k, now);
                    black_box(st.s().get(&k, now).unwrap().data()[0]);
                    let t0 = Instant::now();
                    let ack = st.s().put_unlock(k, t, &data, LIFETIME_S, now).unwrap();
                    timed += t0.elapsed();
                    black_box(ack);
                    st.tick();
                }
                timed
            })
        });
    }
    g.finish();
}

/// Write-through: each put waits for its flush; in a batch of 64, the 64 puts share one
/// flush (group commit). Figures are per write.
fn bench_put_write_through(c: &mut Criterion) {
    let mut g = c.benchmark_group("put_write_through");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for size in [512usize, 4096] {
        let mut st = Store::new("putwt", FlushPolicy::WriteThrough, true, size);
        let tokens: Vec<LockToken> = (0..SESSIONS).map(|n| lock(st.s(), key(n), T0)).collect();
        let data = vec![0x77u8; size];
        let mut i = 0u64;
        for batch in [1usize, 64] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(BenchmarkId::new(format!("batch{batch}"), size), |b| {
                b.iter(|| {
                    let now = st.now;
                    let mut last = None;
                    for _ in 0..batch {
                        i = (i + 1) % SESSIONS;
                        let ack = st
                            .s()
                            .put(key(i), tokens[i as usize], &data, LIFETIME_S, now)
                            .unwrap();
                        if let WriteAck::Pending(t) = ack {
                            last = Some(t);
                        }
                    }
                    st.s().flush(now);
                    st.s().wait_durable(last.unwrap()).unwrap();
                    let mut ev = Vec::new();
                    st.s().poll_events(now, &mut ev);
                    black_box(ev.len());
                })
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_get,
    bench_put_delayed,
    bench_lock_pairs,
    bench_put_write_through
);
criterion_main!(benches);
