//! `--failover`: what a client sees when a master dies.
//!
//! A cluster of `nodes` scd processes with HA on. `sessions` sessions are created through node 1
//! (so node 1 masters them all). `workers` client threads, each a PHP worker doing one request
//! at a time through node 2, run the session cycle (ReadLock, then WriteUnlock of the next value
//! of a counter kept in the session's data) on their own share of the sessions, so every worker
//! knows the last value the cluster acknowledged for each of its sessions. After a warm-up and a
//! few seconds of steady load, node 1 is killed with SIGKILL. The load goes on until every worker
//! has succeeded again, and a few seconds more; then every session is read back.
//!
//! Reported: the time from the kill to the first successful request (one that started after the
//! kill) and until every worker had one; the failed requests until the first success and overall;
//! acknowledged writes missing afterwards, or seen missing by a read during the run (lost
//! writes). A request that fails is not retried: the worker goes on with its next session after
//! [`FAILOVER_RETRY_PAUSE_MS`] (as the next page view would come), and the session's value is
//! then either the acknowledged one or the one whose write got no answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use scd_wire::SessionId;
use scd_wire::local::Request;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterSpec};
use crate::constants::*;
use crate::load::{Endpoint, new_histogram};
use crate::scd_client::{self, Client, Owned};
use crate::servers::ScdPolicy;

/// How node 1 is taken down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: the process is gone, its ports refuse connections at once (a crash, an OOM kill).
    Kill,
    /// SIGSTOP: the process is frozen; the kernel still accepts connections but nothing answers,
    /// and its heartbeats stop (a hung node, or a host cut off: a relay must time out).
    Stop,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Stop => "kill -STOP",
        }
    }
}

/// What `--failover` runs.
#[derive(Clone, Debug)]
pub struct FailoverPlan {
    pub nodes: usize,
    pub policies: Vec<ScdPolicy>,
    pub faults: Vec<Fault>,
    pub sessions: usize,
    pub workers: usize,
    pub size_bytes: usize,
    pub warmup: Duration,
    pub steady: Duration,
    pub after: Duration,
    pub seed: u64,
}

/// The figures of one failover run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FailoverResult {
    pub policy: String,
    /// How node 1 was taken down (`kill -9` or `kill -STOP`).
    pub fault: String,
    pub nodes: usize,
    pub sessions: usize,
    pub workers: usize,
    pub size_bytes: usize,
    /// Node timeout the nodes ran with (from `--scd-args`, else scd's default 3 × interval + 500).
    pub node_timeout_ms: u64,
    /// Set when the run could not be made (the cluster would not start, ...).
    pub error: Option<String>,
    /// Steady load before the kill.
    pub steady_requests_per_s: f64,
    pub steady_p50_us: f64,
    pub steady_p99_us: f64,
    /// From the kill to the end of the first successful request that started after it.
    pub first_success_ms: Option<f64>,
    /// From the kill until every worker had a successful request that started after it.
    pub all_workers_back_ms: Option<f64>,
    /// From the kill until every session had been served again (a successful request that
    /// started after the kill); None if some session was not served again before the end.
    pub all_sessions_back_ms: Option<f64>,
    /// Requests that ended between the kill and the first success, and how many of them failed.
    pub requests_until_first_success: u64,
    pub failed_until_first_success: u64,
    /// Requests that ended between the kill and every worker's recovery, and the failed ones.
    pub requests_until_all_back: u64,
    pub failed_until_all_back: u64,
    /// Requests that ended after the warm-up, and the failed ones.
    pub requests_total: u64,
    pub failed_total: u64,
    /// Throughput once every worker had recovered.
    pub after_requests_per_s: f64,
    pub after_p99_us: f64,
    /// Writes the cluster acknowledged (whole run, warm-up included).
    pub acknowledged_writes: u64,
    /// Reads during the run that found a session older than its last acknowledged write.
    pub stale_reads: u64,
    /// Acknowledged writes those reads were missing (counter values): lost writes.
    pub lost_writes_seen: u64,
    /// Reads that found a value no write ever sent (must be 0).
    pub unknown_values: u64,
    /// Sessions whose read-back is older than their last acknowledged write, or missing.
    pub lost_sessions: u64,
    /// Sessions the read-back could not read at all (kept answering an error).
    pub unreadable_sessions: u64,
    /// Replies that carried a new session ID (the client switched to it, as PHP would).
    pub new_ids: u64,
    /// The first few distinct errors the workers got.
    pub first_errors: Vec<String>,
}

impl FailoverResult {
    pub fn failed_share_until_first_success(&self) -> Option<f64> {
        share(
            self.failed_until_first_success,
            self.requests_until_first_success,
        )
    }
    pub fn failed_share_until_all_back(&self) -> Option<f64> {
        share(self.failed_until_all_back, self.requests_until_all_back)
    }
    pub fn failed_share_total(&self) -> Option<f64> {
        share(self.failed_total, self.requests_total)
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The node timeout `--scd-args` gives the nodes (scd's rule: 0 or unset = 3 × interval + 500).
pub fn node_timeout_ms(extra: &[String]) -> u64 {
    let value = |flag: &str| {
        extra
            .iter()
            .position(|a| a == flag)
            .and_then(|i| extra.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let interval = value("--heartbeat-interval-ms").unwrap_or(SCD_HEARTBEAT_INTERVAL_MS_DEFAULT);
    match value("--node-timeout-ms") {
        Some(t) if t > 0 => t,
        _ => interval * 3 + 500,
    }
}

/// One session as its worker knows it.
struct Sess {
    index: u64,
    id: SessionId,
    /// The last value the cluster acknowledged.
    acked: u64,
    /// The highest value a write was sent for (acknowledged or not).
    attempted: u64,
}

/// One finished request, times from the run's start.
#[derive(Clone, Copy)]
struct Rec {
    session: u32,
    start_ns: u64,
    end_ns: u64,
    ok: bool,
}

struct Shared {
    t0: Instant,
    stop: AtomicBool,
    /// Nanoseconds from t0 to the kill; u64::MAX before it.
    kill_ns: AtomicU64,
    /// When the fault had taken effect (node 1 reaped, or every thread of it stopped): only
    /// requests started from then on count as "back" (a request that raced the signal and was
    /// served by node 1 itself says nothing about the failover).
    effective_ns: AtomicU64,
    /// Workers with a successful request started after the kill.
    back: AtomicUsize,
}

struct WorkerOut {
    recs: Vec<Rec>,
    sessions: Vec<Sess>,
    acknowledged: u64,
    /// (reads older than acknowledged, acknowledged writes they were missing, values never written)
    stale: (u64, u64, u64),
    new_ids: u64,
    errors: Vec<String>,
}

fn encode(index: u64, value: u64, size: usize, filler: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(size.max(16));
    d.extend_from_slice(&index.to_le_bytes());
    d.extend_from_slice(&value.to_le_bytes());
    let rest = size.saturating_sub(16);
    d.extend_from_slice(&filler[..rest.min(filler.len())]);
    d.resize(size.max(16), 0);
    d
}

fn decode(index: u64, data: &[u8]) -> Result<u64, String> {
    if data.len() < 16 {
        return Err(format!("session {index}: {} bytes of data", data.len()));
    }
    let got = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    if got != index {
        return Err(format!("session {index} holds the data of session {got}"));
    }
    Ok(u64::from_le_bytes(data[8..16].try_into().expect("8 bytes")))
}

fn note(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 && !errors.contains(&e) {
        errors.push(e);
    }
}

fn io_timeout() -> Duration {
    Duration::from_millis(FAILOVER_IO_TIMEOUT_MS)
}

/// One session cycle. `Err` when a request failed (the session state says what may be stored).
fn cycle(
    client: &mut Client,
    s: &mut Sess,
    size: usize,
    filler: &[u8],
    stale: &mut (u64, u64, u64),
    new_ids: &mut u64,
) -> Result<(), String> {
    let read = client
        .call(Request::ReadLock {
            id: s.id,
            wait_ms: FAILOVER_LOCK_WAIT_MS,
            lease_ms: SCD_LOCK_LEASE_MS,
        })
        .map_err(|e| format!("ReadLock: {e:#}"))?;
    let (token, current) = match read {
        Owned::Data {
            token,
            new_id,
            data,
            ..
        } => {
            if let Some(n) = new_id {
                s.id = n;
                *new_ids += 1;
            }
            (token, Some(decode(s.index, &data)?))
        }
        Owned::NotFound { token, new_id } => {
            if let Some(n) = new_id {
                s.id = n;
                *new_ids += 1;
            }
            (token, None)
        }
        Owned::Error { code, message } => return Err(format!("ReadLock: {code}: {message}")),
        other => return Err(format!("ReadLock answered {other:?}")),
    };
    let current = current.unwrap_or(0);
    if current < s.acked || current > s.attempted {
        // Older than acknowledged (a lost write), or a value never written: counted once, then
        // the stored value is the new baseline.
        if current < s.acked {
            stale.0 += 1;
            stale.1 += s.acked - current;
        } else {
            stale.2 += 1;
        }
        s.acked = current;
        s.attempted = current;
    }
    let next = current + 1;
    s.attempted = s.attempted.max(next);
    let data = encode(s.index, next, size, filler);
    match client
        .call(Request::WriteUnlock {
            id: s.id,
            token,
            lifetime_s: LIFETIME_S,
            data: &data,
        })
        .map_err(|e| format!("WriteUnlock: {e:#}"))?
    {
        Owned::Done { .. } => {
            s.acked = next;
            Ok(())
        }
        Owned::Error { code, message } => Err(format!("WriteUnlock: {code}: {message}")),
        other => Err(format!("WriteUnlock answered {other:?}")),
    }
}

fn worker(
    entry: Endpoint,
    mut sessions: Vec<Sess>,
    size: usize,
    filler: Vec<u8>,
    shared: Arc<Shared>,
) -> WorkerOut {
    let mut out = WorkerOut {
        recs: Vec::with_capacity(1 << 16),
        sessions: Vec::new(),
        acknowledged: 0,
        stale: (0, 0, 0),
        new_ids: 0,
        errors: Vec::new(),
    };
    let mut client: Option<Client> = None;
    let mut k = 0usize;
    let mut counted_back = false;
    while !shared.stop.load(Ordering::Relaxed) && !sessions.is_empty() {
        let start = Instant::now();
        let n = sessions.len();
        let s = &mut sessions[k % n];
        let index = s.index;
        k += 1;
        let result = match client.as_mut() {
            Some(c) => cycle(c, s, size, &filler, &mut out.stale, &mut out.new_ids),
            None => match scd_client::connect(&entry, io_timeout()) {
                Ok(mut c) => {
                    let r = cycle(&mut c, s, size, &filler, &mut out.stale, &mut out.new_ids);
                    client = Some(c);
                    r
                }
                Err(e) => Err(format!("connect: {e:#}")),
            },
        };
        let end = Instant::now();
        let start_ns = start.duration_since(shared.t0).as_nanos() as u64;
        let ok = result.is_ok();
        out.recs.push(Rec {
            session: index as u32,
            start_ns,
            end_ns: end.duration_since(shared.t0).as_nanos() as u64,
            ok,
        });
        match result {
            Ok(()) => {
                out.acknowledged += 1;
                if !counted_back && start_ns >= shared.effective_ns.load(Ordering::Acquire) {
                    counted_back = true;
                    shared.back.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(e) => {
                // A broken connection is opened again; an error reply leaves it usable.
                if e.contains(": read")
                    || e.contains(": write")
                    || e.contains("closed")
                    || e.contains("bad reply")
                {
                    client = None;
                }
                note(&mut out.errors, e);
                std::thread::sleep(Duration::from_millis(FAILOVER_RETRY_PAUSE_MS));
            }
        }
    }
    out.sessions = sessions;
    out
}

/// Creates `n` sessions through `endpoint` (node 1), each holding value 0.
fn create_sessions(
    endpoint: &Endpoint,
    n: usize,
    size: usize,
    filler: &[u8],
) -> anyhow::Result<Vec<Sess>> {
    let mut c = scd_client::connect(endpoint, io_timeout())?;
    let mut out = Vec::with_capacity(n);
    for index in 0..n as u64 {
        let id = match c.call(Request::CreateId)? {
            Owned::IdCreated(id) => id,
            other => bail!("CreateId answered {other:?}"),
        };
        let (token, id) = match c.call(Request::ReadLock {
            id,
            wait_ms: FAILOVER_LOCK_WAIT_MS,
            lease_ms: SCD_LOCK_LEASE_MS,
        })? {
            Owned::NotFound { token, new_id } => (token, new_id.unwrap_or(id)),
            other => bail!("ReadLock of a new session answered {other:?}"),
        };
        match c.call(Request::WriteUnlock {
            id,
            token,
            lifetime_s: LIFETIME_S,
            data: &encode(index, 0, size, filler),
        })? {
            Owned::Done { .. } => {}
            other => bail!("WriteUnlock of a new session answered {other:?}"),
        }
        out.push(Sess {
            index,
            id,
            acked: 0,
            attempted: 0,
        });
    }
    Ok(out)
}

/// Reads a session back through `endpoint`: its value, or why not.
fn read_back(
    client: &mut Option<Client>,
    endpoint: &Endpoint,
    s: &mut Sess,
) -> Result<Option<u64>, String> {
    let mut last = String::new();
    for _ in 0..READBACK_ATTEMPTS {
        if client.is_none() {
            match scd_client::connect(endpoint, io_timeout()) {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    last = format!("connect: {e:#}");
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        let reply = c.call(Request::ReadLock {
            id: s.id,
            wait_ms: FAILOVER_LOCK_WAIT_MS,
            lease_ms: SCD_LOCK_LEASE_MS,
        });
        let (token, value) = match reply {
            Ok(Owned::Data {
                token,
                new_id,
                data,
                ..
            }) => {
                if let Some(n) = new_id {
                    s.id = n;
                }
                (token, Some(decode(s.index, &data)?))
            }
            Ok(Owned::NotFound { token, new_id }) => {
                if let Some(n) = new_id {
                    s.id = n;
                }
                (token, None)
            }
            Ok(other) => {
                last = format!("{other:?}");
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
            Err(e) => {
                last = format!("{e:#}");
                *client = None;
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
        };
        let _ = c.call(Request::Unlock { id: s.id, token });
        return Ok(value);
    }
    Err(last)
}

/// Runs the failover once per policy.
pub fn run(
    plan: &FailoverPlan,
    scd_bin: &std::path::Path,
    extra: &[String],
    work: &std::path::Path,
    interrupted: &AtomicBool,
) -> Vec<FailoverResult> {
    let mut out = Vec::new();
    for (&fault, &policy) in plan
        .faults
        .iter()
        .flat_map(|f| plan.policies.iter().map(move |p| (f, p)))
    {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        eprintln!("failover, {}, {} ...", fault.name(), policy.flag());
        let mut r = FailoverResult {
            policy: policy.flag().into(),
            fault: fault.name().into(),
            nodes: plan.nodes,
            sessions: plan.sessions,
            workers: plan.workers,
            size_bytes: plan.size_bytes,
            node_timeout_ms: node_timeout_ms(extra),
            ..FailoverResult::default()
        };
        if let Err(e) = run_one(plan, policy, fault, scd_bin, extra, work, &mut r) {
            eprintln!("  failover {}: {e:#}", policy.flag());
            r.error = Some(format!("{e:#}"));
        } else {
            eprintln!(
                "  first success {} ms after the kill, every worker back after {} ms; failed {}/{} until then; lost {} of {} sessions",
                r.first_success_ms
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or("-".into()),
                r.all_workers_back_ms
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or("-".into()),
                r.failed_until_all_back,
                r.requests_until_all_back,
                r.lost_sessions,
                r.sessions
            );
        }
        out.push(r);
    }
    out
}

fn run_one(
    plan: &FailoverPlan,
    policy: ScdPolicy,
    fault: Fault,
    scd_bin: &std::path::Path,
    extra: &[String],
    work: &std::path::Path,
    r: &mut FailoverResult,
) -> anyhow::Result<()> {
    let dir = work.join(format!("failover-{}", policy.short()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = ClusterSpec {
        nodes: plan.nodes,
        policy,
        ha: true,
        extra: extra.to_vec(),
        pinned: None,
    };
    let mut cluster = Cluster::start(scd_bin, &dir, &spec)?;
    let mut filler = vec![0u8; plan.size_bytes];
    let mut x = plan.seed | 1;
    for b in filler.iter_mut() {
        // xorshift: incompressible enough for a filler, no RNG state to share.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let node1 = cluster.endpoint(0, true)?;
    let entry = cluster.endpoint(1, true)?;
    let sessions = create_sessions(&node1, plan.sessions, plan.size_bytes, &filler)
        .context("creating the sessions on node 1")?;

    let shared = Arc::new(Shared {
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        kill_ns: AtomicU64::new(u64::MAX),
        effective_ns: AtomicU64::new(u64::MAX),
        back: AtomicUsize::new(0),
    });
    let workers = plan.workers.min(plan.sessions).max(1);
    let mut shares: Vec<Vec<Sess>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, s) in sessions.into_iter().enumerate() {
        shares[i % workers].push(s);
    }
    let mut joins = Vec::new();
    for (w, share) in shares.into_iter().enumerate() {
        let (entry, filler, shared) = (entry.clone(), filler.clone(), shared.clone());
        let size = plan.size_bytes;
        joins.push(
            std::thread::Builder::new()
                .name(format!("failover-{w}"))
                .spawn(move || worker(entry, share, size, filler, shared))
                .context("spawning a worker")?,
        );
    }

    std::thread::sleep(plan.warmup + plan.steady);
    let warm_ns = plan.warmup.as_nanos() as u64;
    let kill_at = Instant::now();
    let kill_ns = kill_at.duration_since(shared.t0).as_nanos() as u64;
    shared.kill_ns.store(kill_ns, Ordering::Release);
    match fault {
        Fault::Kill => cluster.nodes[0].stop(), // SIGKILL, reaped
        Fault::Stop => {
            let pid = cluster.nodes[0].pid().context("node 1 is not running")?;
            let status = std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .context("running kill -STOP")?;
            anyhow::ensure!(status.success(), "kill -STOP {pid} failed: {status}");
            // `kill` returns before every thread has stopped: wait until they have.
            wait_stopped(pid);
            // Dropping the cluster kills it (SIGKILL ends a stopped process too).
        }
    }
    let effective_ns = shared.t0.elapsed().as_nanos() as u64;
    shared.effective_ns.store(effective_ns, Ordering::Release);
    let deadline = kill_at + Duration::from_millis(FAILOVER_RECOVERY_MS_MAX);
    while shared.back.load(Ordering::Acquire) < workers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(plan.after);
    shared.stop.store(true, Ordering::Release);
    let end_ns = shared.t0.elapsed().as_nanos() as u64;

    let mut outs = Vec::new();
    for j in joins {
        outs.push(
            j.join()
                .map_err(|_| anyhow::anyhow!("a failover worker panicked"))?,
        );
    }

    // Figures.
    let steady: Vec<&Rec> = outs
        .iter()
        .flat_map(|o| o.recs.iter())
        .filter(|x| x.end_ns >= warm_ns && x.end_ns < kill_ns)
        .collect();
    let steady_s = (kill_ns - warm_ns.min(kill_ns)) as f64 / 1e9;
    let mut hist = new_histogram();
    for x in steady.iter().filter(|x| x.ok) {
        let _ = hist.record((x.end_ns - x.start_ns).max(1));
    }
    r.steady_requests_per_s = steady.iter().filter(|x| x.ok).count() as f64 / steady_s.max(1e-9);
    r.steady_p50_us = hist.value_at_quantile(0.5) as f64 / 1000.0;
    r.steady_p99_us = hist.value_at_quantile(0.99) as f64 / 1000.0;

    let first_ok_after = |recs: &[Rec]| {
        recs.iter()
            .filter(|x| x.ok && x.start_ns >= effective_ns)
            .map(|x| x.end_ns)
            .min()
    };
    let per_worker: Vec<Option<u64>> = outs.iter().map(|o| first_ok_after(&o.recs)).collect();
    let first = per_worker.iter().flatten().min().copied();
    let all_back = if per_worker.iter().all(Option::is_some) {
        per_worker.iter().flatten().max().copied()
    } else {
        None
    };
    let mut session_back: Vec<Option<u64>> = vec![None; plan.sessions];
    for x in outs.iter().flat_map(|o| o.recs.iter()) {
        if x.ok && x.start_ns >= effective_ns {
            if let Some(slot) = session_back.get_mut(x.session as usize) {
                *slot = Some(slot.map_or(x.end_ns, |t| t.min(x.end_ns)));
            }
        }
    }
    r.all_sessions_back_ms = if session_back.iter().all(Option::is_some) {
        session_back
            .iter()
            .flatten()
            .max()
            .map(|t| (t - kill_ns) as f64 / 1e6)
    } else {
        None
    };
    r.first_success_ms = first.map(|t| (t - kill_ns) as f64 / 1e6);
    r.all_workers_back_ms = all_back.map(|t| (t - kill_ns) as f64 / 1e6);
    let window = |until: u64| {
        let recs: Vec<&Rec> = outs
            .iter()
            .flat_map(|o| o.recs.iter())
            .filter(|x| x.end_ns >= kill_ns && x.end_ns <= until)
            .collect();
        (
            recs.len() as u64,
            recs.iter().filter(|x| !x.ok).count() as u64,
        )
    };
    (r.requests_until_first_success, r.failed_until_first_success) =
        window(first.unwrap_or(end_ns));
    (r.requests_until_all_back, r.failed_until_all_back) = window(all_back.unwrap_or(end_ns));
    let measured: Vec<&Rec> = outs
        .iter()
        .flat_map(|o| o.recs.iter())
        .filter(|x| x.end_ns >= warm_ns)
        .collect();
    r.requests_total = measured.len() as u64;
    r.failed_total = measured.iter().filter(|x| !x.ok).count() as u64;
    if let Some(back) = all_back {
        let after: Vec<&Rec> = outs
            .iter()
            .flat_map(|o| o.recs.iter())
            .filter(|x| x.ok && x.start_ns >= back)
            .collect();
        let mut h: Histogram<u64> = new_histogram();
        for x in &after {
            let _ = h.record((x.end_ns - x.start_ns).max(1));
        }
        r.after_requests_per_s = after.len() as f64 / ((end_ns - back) as f64 / 1e9).max(1e-9);
        r.after_p99_us = h.value_at_quantile(0.99) as f64 / 1000.0;
    }
    let mut errors = Vec::new();
    for o in &outs {
        r.acknowledged_writes += o.acknowledged;
        r.stale_reads += o.stale.0;
        r.lost_writes_seen += o.stale.1;
        r.unknown_values += o.stale.2;
        r.new_ids += o.new_ids;
        for e in &o.errors {
            note(&mut errors, e.clone());
        }
    }
    r.first_errors = errors;

    // Every session read back through node 2: nothing acknowledged may be missing.
    let mut client = None;
    for o in outs.iter_mut() {
        for s in o.sessions.iter_mut() {
            match read_back(&mut client, &entry, s) {
                Ok(Some(v)) if v >= s.acked && v <= s.attempted => {}
                Ok(Some(_)) | Ok(None) => r.lost_sessions += 1,
                Err(e) => {
                    r.unreadable_sessions += 1;
                    note(&mut r.first_errors, format!("read-back: {e}"));
                }
            }
        }
    }
    cluster.stop();
    Ok(())
}

/// Waits (at most 2 s) until every thread of `pid` is stopped (`T`/`t` in its stat), leaving out
/// io_uring's kernel workers (`iou-*`), which a SIGSTOP does not stop.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        let all_stopped = tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // "tid (comm) S ...": the state follows the last ')'.
            let Some(close) = stat.rfind(')') else {
                return true;
            };
            let comm = stat
                .get(stat.find('(').map_or(0, |o| o + 1)..close)
                .unwrap_or("");
            let state = stat[close + 1..].trim_start().chars().next();
            comm.starts_with("iou-") || matches!(state, Some('T' | 't'))
        });
        if all_stopped {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_data_carries_its_index_and_value() {
        let d = encode(7, 42, 4096, &[1u8; 4096]);
        assert_eq!(d.len(), 4096);
        assert_eq!(decode(7, &d), Ok(42));
        assert!(decode(8, &d).is_err());
        assert!(decode(7, &d[..10]).is_err());
        assert_eq!(encode(1, 2, 8, &[]).len(), 16);
    }

    #[test]
    fn node_timeout_follows_scd_rules() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(node_timeout_ms(&[]), 3500);
        assert_eq!(node_timeout_ms(&args("--heartbeat-interval-ms 200")), 1100);
        assert_eq!(
            node_timeout_ms(&args("--heartbeat-interval-ms 200 --node-timeout-ms 900")),
            900
        );
        assert_eq!(node_timeout_ms(&args("--node-timeout-ms 0")), 3500);
    }
}
