//! The load generator: one design for every target.
//!
//! `connections` connections are spread over `threads` client threads, each running its own
//! monoio event loop (io_uring where the kernel allows it, epoll otherwise: the same runtime scd
//! uses). A connection is one task that owns its socket: it writes every request its lanes have
//! ready in one write, then reads, parses every complete reply and hands each to its lane (by
//! request ID for scd, in order for Redis and memcached). With `in_flight = 1` a connection is
//! one PHP worker; with more, that many workers share it, pipelined.
//!
//! Cycle latencies go into one HDR histogram per thread (nanoseconds), merged at the end. The
//! orchestrating thread runs the clock: warm-up, the measured window, stop. Nothing is dropped in
//! the middle of a read: a connection ends only between replies, or when the server goes away.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpStream, UnixStream};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use scd_wire::frame::Limits;
use scd_wire::local::{Reply, Request};
use scd_wire::{Frame, SessionId};

use crate::constants::{
    HISTOGRAM_NS_MAX, PREFILL_MS_MAX, PROGRESS_MS, READ_BUFFER_BYTES, REPLY_BYTES_MAX,
    SERVER_READY_MS, WIND_DOWN_MS,
};
use crate::lane::{
    CycleEnd, Env, Handler, Keyspace, Lane, Mode, Next, REDIS_UNLOCK_SCRIPT, Scratch,
};
use crate::pin::{self, CpuSet};
use crate::proto::{self, Answer, Parse, Wire, resp};
use crate::sys;
use crate::workload::KeyPicker;

/// Where a target listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// One run of the generator against one server.
pub struct LoadSpec {
    pub label: String,
    pub endpoint: Endpoint,
    pub handler: Handler,
    pub mode: Mode,
    pub size_bytes: usize,
    pub touch_share: f64,
    pub connections: usize,
    pub threads: usize,
    pub in_flight: usize,
    pub seed: u64,
    pub keys: Arc<Keyspace>,
    pub picker: KeyPicker,
    pub warmup: Duration,
    pub duration: Duration,
    /// Processes whose CPU time is measured over the window (the server).
    pub server_pids: Vec<u32>,
    /// Print a progress line.
    pub progress: bool,
    /// `--pin-nodes`: the CPUs the client threads run on (None: anywhere).
    pub client_cpus: Option<CpuSet>,
}

/// What one run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Latency of successful cycles in the measured window, nanoseconds.
    pub hist: Histogram<u64>,
    /// Successful cycles in the window.
    pub cycles: u64,
    /// Round trips (request + reply) in the window.
    pub ops: u64,
    /// Cycles in the window that wrote data (not touches, not read-only).
    pub writes: u64,
    /// Cycles that ended in an error reply, in any phase.
    pub errors: u64,
    /// Cycles that could not get their lock, in any phase.
    pub lock_failures: u64,
    /// Cycles that found their session missing, in the window.
    pub misses: u64,
    /// Lock retry sleeps in the window (Redis and memcached handlers).
    pub retries: u64,
    /// Connections that failed (connect, handshake, I/O or protocol).
    pub failed_connections: u64,
    /// The first few distinct error messages.
    pub first_errors: Vec<String>,
    /// The measured window.
    pub window: Duration,
    /// CPU seconds of the server processes over the window.
    pub server_cpu_s: f64,
    /// CPU seconds of this process (the client) over the window.
    pub client_cpu_s: f64,
    /// Prefill: the scd session IDs created, by session index.
    pub created: Vec<(usize, SessionId)>,
    /// The event loop the client threads got.
    pub driver: &'static str,
    /// The CPU sets the client threads were allowed on (each distinct set once), as the kernel
    /// reported them at the end of the run.
    pub client_cpus: Vec<String>,
}

const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;
const FIRST_ERRORS_MAX: usize = 5;

#[derive(Default)]
struct Control {
    phase: AtomicU8,
    /// Cycles completed in any phase (for the progress line).
    cycles: AtomicU64,
    ready: AtomicUsize,
    ended: AtomicUsize,
}

struct ThreadStats {
    hist: Histogram<u64>,
    cycles: u64,
    ops: u64,
    writes: u64,
    errors: u64,
    lock_failures: u64,
    misses: u64,
    retries: u64,
    failed_connections: u64,
    first_errors: Vec<String>,
    created: Vec<(usize, SessionId)>,
    /// The CPUs the thread was allowed on, as the kernel reports them.
    cpus: Option<String>,
}

impl ThreadStats {
    fn new() -> ThreadStats {
        ThreadStats {
            hist: new_histogram(),
            cycles: 0,
            ops: 0,
            writes: 0,
            errors: 0,
            lock_failures: 0,
            misses: 0,
            retries: 0,
            failed_connections: 0,
            first_errors: Vec::new(),
            created: Vec::new(),
            cpus: None,
        }
    }

    fn note_error(&mut self, what: String) {
        if self.first_errors.len() < FIRST_ERRORS_MAX && !self.first_errors.contains(&what) {
            self.first_errors.push(what);
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure would be a bug here.
    Histogram::new_with_bounds(1, HISTOGRAM_NS_MAX, 3).expect("valid histogram bounds")
}

/// Runs the generator. `stop_server` is called if the client threads do not wind down in time
/// after the window (a server that stopped answering): stopping the server ends every connection.
pub fn run_load(spec: LoadSpec, stop_server: &mut dyn FnMut()) -> anyhow::Result<LoadResult> {
    let spec = Arc::new(spec);
    let ctl = Arc::new(Control::default());
    // Prefill counts from the start; a measured run warms up first.
    let first = if spec.mode == Mode::Prefill {
        PHASE_MEASURE
    } else {
        PHASE_WARMUP
    };
    ctl.phase.store(first, Ordering::Relaxed);
    let mut joins = Vec::new();
    for t in 0..spec.threads {
        let conns: Vec<usize> = (t..spec.connections).step_by(spec.threads).collect();
        let (spec, ctl) = (spec.clone(), ctl.clone());
        let join = std::thread::Builder::new()
            .name(format!("bench-client-{t}"))
            .spawn(move || client_thread(conns, spec, ctl))
            .context("spawning a client thread")?;
        joins.push(join);
    }

    // Every connection set up (or failed) before the clock starts.
    let ready_by = Instant::now() + Duration::from_millis(SERVER_READY_MS);
    while ctl.ready.load(Ordering::Acquire) + ctl.ended.load(Ordering::Acquire) < spec.connections
        && Instant::now() < ready_by
    {
        std::thread::sleep(Duration::from_millis(2));
    }

    let window;
    let (mut server_cpu_s, mut client_cpu_s) = (0.0, 0.0);
    if spec.mode == Mode::Prefill {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(PREFILL_MS_MAX);
        let mut progress = Progress::new(&spec, &ctl);
        while ctl.ended.load(Ordering::Acquire) < spec.connections && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            progress.tick("prefill", None);
        }
        progress.finish();
        window = started.elapsed();
        if ctl.ended.load(Ordering::Acquire) < spec.connections {
            ctl.phase.store(PHASE_STOP, Ordering::Release);
            stop_server();
        }
    } else {
        let mut progress = Progress::new(&spec, &ctl);
        let warm_end = Instant::now() + spec.warmup;
        while Instant::now() < warm_end {
            std::thread::sleep(Duration::from_millis(5).min(spec.warmup));
            progress.tick("warm-up", None);
        }
        let cpu0 = (
            sys::cpu_seconds(&spec.server_pids),
            sys::cpu_seconds(&[std::process::id()]),
        );
        let t0 = Instant::now();
        ctl.phase.store(PHASE_MEASURE, Ordering::Release);
        let end = t0 + spec.duration;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
            progress.tick("measuring", Some((t0, spec.duration)));
        }
        ctl.phase.store(PHASE_STOP, Ordering::Release);
        window = t0.elapsed();
        server_cpu_s = sys::cpu_seconds(&spec.server_pids) - cpu0.0;
        client_cpu_s = sys::cpu_seconds(&[std::process::id()]) - cpu0.1;
        progress.finish();
        let wind_down = Instant::now() + Duration::from_millis(WIND_DOWN_MS);
        while ctl.ended.load(Ordering::Acquire) < spec.connections && Instant::now() < wind_down {
            std::thread::sleep(Duration::from_millis(2));
        }
        if ctl.ended.load(Ordering::Acquire) < spec.connections {
            stop_server();
        }
    }

    let mut total = ThreadStats::new();
    let mut driver = "epoll";
    let mut client_cpus: Vec<String> = Vec::new();
    for join in joins {
        let (stats, d) = match join.join() {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("a client thread panicked"),
        };
        driver = d;
        total.hist.add(&stats.hist).context("merging histograms")?;
        total.cycles += stats.cycles;
        total.ops += stats.ops;
        total.writes += stats.writes;
        total.errors += stats.errors;
        total.lock_failures += stats.lock_failures;
        total.misses += stats.misses;
        total.retries += stats.retries;
        total.failed_connections += stats.failed_connections;
        for e in stats.first_errors {
            total.note_error(e);
        }
        total.created.extend(stats.created);
        if let Some(cpus) = stats.cpus {
            if !client_cpus.contains(&cpus) {
                client_cpus.push(cpus);
            }
        }
    }
    Ok(LoadResult {
        hist: total.hist,
        cycles: total.cycles,
        ops: total.ops,
        writes: total.writes,
        errors: total.errors,
        lock_failures: total.lock_failures,
        misses: total.misses,
        retries: total.retries,
        failed_connections: total.failed_connections,
        first_errors: total.first_errors,
        window,
        server_cpu_s,
        client_cpu_s,
        created: total.created,
        driver,
        client_cpus,
    })
}

struct Progress<'a> {
    spec: &'a LoadSpec,
    ctl: &'a Control,
    last: Instant,
    last_cycles: u64,
    printed: bool,
}

impl<'a> Progress<'a> {
    fn new(spec: &'a LoadSpec, ctl: &'a Control) -> Progress<'a> {
        Progress {
            spec,
            ctl,
            last: Instant::now(),
            last_cycles: 0,
            printed: false,
        }
    }

    fn tick(&mut self, phase: &str, window: Option<(Instant, Duration)>) {
        if !self.spec.progress || self.last.elapsed() < Duration::from_millis(PROGRESS_MS) {
            return;
        }
        let cycles = self.ctl.cycles.load(Ordering::Relaxed);
        let rate = (cycles - self.last_cycles) as f64 / self.last.elapsed().as_secs_f64();
        let when = match window {
            Some((t0, d)) => format!(
                " {:.0}/{:.0} s",
                t0.elapsed().as_secs_f64(),
                d.as_secs_f64()
            ),
            None => String::new(),
        };
        eprint!(
            "\r  {:<24} {phase}{when}: {:>9.0} req/s      ",
            self.spec.label, rate
        );
        self.printed = true;
        self.last = Instant::now();
        self.last_cycles = cycles;
    }

    fn finish(&mut self) {
        if self.printed {
            eprint!("\r{:<78}\r", "");
        }
    }
}

type ThreadOutcome = anyhow::Result<(ThreadStats, &'static str)>;

fn client_thread(conns: Vec<usize>, spec: Arc<LoadSpec>, ctl: Arc<Control>) -> ThreadOutcome {
    if let Some(set) = &spec.client_cpus {
        // Before the event loop exists: its kernel helpers (io_uring workers) inherit the set.
        pin::set_current_thread(set)
            .with_context(|| format!("moving a client thread onto CPU {set}"))?;
    }
    let driver = if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    };
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .context("building the client event loop")?;
    let stats = rt.block_on(async move {
        let stats = Rc::new(RefCell::new(ThreadStats::new()));
        let mut tasks = Vec::new();
        for c in conns {
            tasks.push(monoio::spawn(conn_task(
                c,
                spec.clone(),
                ctl.clone(),
                stats.clone(),
            )));
        }
        for t in tasks {
            t.await;
        }
        stats
    });
    let mut stats = Rc::try_unwrap(stats)
        .map_err(|_| anyhow::anyhow!("client statistics still shared after every task ended"))?
        .into_inner();
    stats.cpus = pin::allowed().ok().map(|set| set.to_string());
    Ok((stats, driver))
}

async fn conn_task(
    conn: usize,
    spec: Arc<LoadSpec>,
    ctl: Arc<Control>,
    stats: Rc<RefCell<ThreadStats>>,
) {
    let outcome = match &spec.endpoint {
        Endpoint::Unix(path) => match UnixStream::connect(path).await {
            Ok(s) => drive(s, conn, &spec, &ctl, &stats).await,
            Err(e) => Err(format!("connect to {}: {e}", path.display())),
        },
        Endpoint::Tcp(addr) => match TcpStream::connect(*addr).await {
            Ok(s) => {
                // Requests are small and latency matters: as redis-benchmark and PHP clients do.
                let _ = s.set_nodelay(true);
                drive(s, conn, &spec, &ctl, &stats).await
            }
            Err(e) => Err(format!("connect to {addr}: {e}")),
        },
    };
    if let Err(e) = outcome {
        // A connection ended by the harness stopping an unresponsive server is not news.
        let mut s = stats.borrow_mut();
        s.failed_connections += 1;
        s.note_error(format!("connection {conn}: {e}"));
    }
    ctl.ended.fetch_add(1, Ordering::AcqRel);
}

/// Connection-level I/O state.
struct Io<S> {
    stream: S,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

impl<S: AsyncReadRent + AsyncWriteRent> Io<S> {
    async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.stream.write_all(out).await;
        res.map_err(|e| format!("write: {e}"))?;
        out.clear();
        self.out = out;
        Ok(())
    }

    /// Reads more bytes (at least one) into `inbuf`.
    async fn fill(&mut self) -> Result<(), String> {
        if self.inbuf.len() > REPLY_BYTES_MAX {
            return Err("a reply larger than any session".into());
        }
        if self.inbuf.capacity() - self.inbuf.len() < READ_BUFFER_BYTES / 2 {
            self.inbuf.reserve(READ_BUFFER_BYTES / 2);
        }
        let buf = std::mem::take(&mut self.inbuf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = self.stream.read(buf.slice_mut(len..cap)).await;
        self.inbuf = slice.into_inner();
        match res {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Sends what `out` holds and waits for one whole reply, for the handshake.
    async fn round_trip(&mut self, wire: Wire, limits: &Limits) -> Result<OwnedHandshake, String> {
        self.flush().await?;
        loop {
            match proto::parse(wire, &self.inbuf, limits) {
                Parse::Done(answer, used) => {
                    let owned = OwnedHandshake::from(&answer);
                    self.inbuf.drain(..used);
                    return Ok(owned);
                }
                Parse::Incomplete => self.fill().await?,
                Parse::Invalid(e) => return Err(e),
            }
        }
    }
}

enum OwnedHandshake {
    HelloOk,
    Bulk(Vec<u8>),
    Other(String),
}

impl OwnedHandshake {
    fn from(answer: &Answer<'_>) -> OwnedHandshake {
        match answer {
            Answer::Scd(_, Reply::HelloOk(_)) => OwnedHandshake::HelloOk,
            Answer::Resp(resp::Value::Bulk(b)) => OwnedHandshake::Bulk(b.to_vec()),
            other => OwnedHandshake::Other(format!("{other:?}")),
        }
    }
}

async fn drive<S: AsyncReadRent + AsyncWriteRent>(
    stream: S,
    conn: usize,
    spec: &LoadSpec,
    ctl: &Control,
    stats: &RefCell<ThreadStats>,
) -> Result<(), String> {
    let wire = spec.handler.wire();
    let limits = Limits::default();
    let mut io = Io {
        stream,
        inbuf: Vec::with_capacity(READ_BUFFER_BYTES),
        out: Vec::with_capacity(spec.size_bytes + 1024),
    };

    // Handshake: what a PHP worker's first request does once.
    let mut unlock_sha = Vec::new();
    match spec.handler {
        Handler::Scd => {
            let hello = Request::Hello {
                version_min: 1,
                version_max: 1,
                client_name: "scd-bench",
            };
            Frame::new(0, hello).encode(&mut io.out);
            match io.round_trip(wire, &limits).await? {
                OwnedHandshake::HelloOk => {}
                OwnedHandshake::Bulk(_) | OwnedHandshake::Other(_) => {
                    return Err("Hello was not answered with HelloOk".into());
                }
            }
        }
        Handler::RedisLocked => {
            resp::command(
                &mut io.out,
                &[b"SCRIPT", b"LOAD", REDIS_UNLOCK_SCRIPT.as_bytes()],
            );
            match io.round_trip(wire, &limits).await? {
                OwnedHandshake::Bulk(sha) => unlock_sha = sha,
                OwnedHandshake::HelloOk => return Err("SCRIPT LOAD answered oddly".into()),
                OwnedHandshake::Other(o) => return Err(format!("SCRIPT LOAD answered {o}")),
            }
        }
        Handler::RedisPlain | Handler::MemcachePlain | Handler::MemcacheLocked => {}
    }
    ctl.ready.fetch_add(1, Ordering::AcqRel);

    let env = Env {
        handler: spec.handler,
        mode: spec.mode,
        size_bytes: spec.size_bytes,
        touch_share: spec.touch_share,
        keys: spec.keys.clone(),
        picker: spec.picker.clone(),
        lanes_total: spec.connections * spec.in_flight,
        unlock_sha,
    };
    let mut rng = SmallRng::seed_from_u64(spec.seed ^ (conn as u64).wrapping_mul(0x9E37_79B9));
    let mut data = vec![0u8; spec.size_bytes * 2 + 1];
    rng.fill_bytes(&mut data);
    let mut scratch = Scratch::new(rng, data);
    let mut lanes: Vec<Lane> = (0..spec.in_flight)
        .map(|i| Lane::new(&env, i as u16, conn * spec.in_flight + i))
        .collect();

    // Lanes with a request on the wire, in send order (Redis and memcached answer in order).
    let mut fifo: VecDeque<u16> = VecDeque::with_capacity(spec.in_flight);
    let mut outstanding = 0usize;
    let mut sleepers: Vec<(Instant, u16)> = Vec::new();
    for lane in lanes.iter_mut() {
        if lane.begin(&env, &mut scratch, &mut io.out) {
            fifo.push_back(lane.index);
            outstanding += 1;
        }
    }

    loop {
        io.flush().await?;
        if outstanding == 0 {
            let Some(&(wake, _)) = sleepers.iter().min_by_key(|(t, _)| *t) else {
                break;
            };
            let now = Instant::now();
            if wake > now {
                monoio::time::sleep(wake - now).await;
            }
        } else {
            io.fill().await?;
            let mut pos = 0;
            loop {
                let answer = match proto::parse(wire, &io.inbuf[pos..], &limits) {
                    Parse::Done(answer, used) => {
                        pos += used;
                        answer
                    }
                    Parse::Incomplete => break,
                    Parse::Invalid(e) => return Err(e),
                };
                let li = match answer {
                    Answer::Scd(request_id, _) => {
                        let li = (request_id & 0xFFFF) as usize;
                        match lanes.get(li) {
                            Some(lane) if lane.expect_id == request_id => li,
                            _ => return Err(format!("reply to unknown request {request_id:#x}")),
                        }
                    }
                    Answer::Resp(_) | Answer::Memcache(_) => match fifo.pop_front() {
                        Some(li) => usize::from(li),
                        None => return Err("a reply with no request outstanding".into()),
                    },
                };
                outstanding -= 1;
                let measuring = ctl.phase.load(Ordering::Relaxed) == PHASE_MEASURE;
                if measuring {
                    stats.borrow_mut().ops += 1;
                }
                let lane = &mut lanes[li];
                match lane.on_reply(&env, &mut scratch, &answer, &mut io.out) {
                    Next::Sent => {
                        fifo.push_back(lane.index);
                        outstanding += 1;
                    }
                    Next::Sleep(at) => sleepers.push((at, lane.index)),
                    Next::End(end) => {
                        record(stats, ctl, lane, end, measuring);
                        if ctl.phase.load(Ordering::Relaxed) != PHASE_STOP
                            && lane.begin(&env, &mut scratch, &mut io.out)
                        {
                            fifo.push_back(lane.index);
                            outstanding += 1;
                        }
                    }
                    Next::Protocol(e) => return Err(e),
                }
            }
            io.inbuf.drain(..pos);
        }
        // Wake the lanes whose retry sleep is over (or drop them once the run is stopping).
        if !sleepers.is_empty() {
            let now = Instant::now();
            let stopping = ctl.phase.load(Ordering::Relaxed) == PHASE_STOP;
            let mut i = 0;
            while i < sleepers.len() {
                if stopping {
                    sleepers.swap_remove(i);
                } else if sleepers[i].0 <= now {
                    let (_, li) = sleepers.swap_remove(i);
                    let lane = &mut lanes[usize::from(li)];
                    lane.resume(&env, &mut scratch, &mut io.out);
                    fifo.push_back(li);
                    outstanding += 1;
                } else {
                    i += 1;
                }
            }
        }
    }
    let mut s = stats.borrow_mut();
    for lane in lanes.iter_mut() {
        s.created.append(&mut lane.created);
    }
    Ok(())
}

fn record(
    stats: &RefCell<ThreadStats>,
    ctl: &Control,
    lane: &Lane,
    end: CycleEnd,
    measuring: bool,
) {
    ctl.cycles.fetch_add(1, Ordering::Relaxed);
    let mut s = stats.borrow_mut();
    match end {
        CycleEnd::Ok => {
            if measuring {
                s.cycles += 1;
                let ns = lane
                    .started
                    .elapsed()
                    .as_nanos()
                    .min(u128::from(HISTOGRAM_NS_MAX)) as u64;
                // Values are clamped into the histogram's range, so recording cannot fail.
                let _ = s.hist.record(ns.max(1));
                s.writes += u64::from(lane.wrote);
                s.misses += u64::from(lane.miss);
                s.retries += u64::from(lane.retries);
            }
        }
        CycleEnd::LockFailure => s.lock_failures += 1,
        CycleEnd::Error(e) => {
            s.errors += 1;
            s.note_error(e);
        }
    }
}
