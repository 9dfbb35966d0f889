//! One core: a thread with its own monoio event loop (io_uring, or epoll where io_uring is blocked)
//! that owns some engine shards and serves the connections handed to it (connections are spread
//! over the cores round robin, whichever core accepted them).
//!
//! Tasks on a core:
//! - the **driver** (the core's root future): once per pass it reads the clock, collects the
//!   shards' events (lock grants and timeouts, durable writes), runs bounded expiry (and, a few
//!   times a second, compaction), and flushes (group commit: every write of the pass shares one
//!   flush); then it sleeps until kicked or until the shards' next deadline;
//! - the **inbox**: requests from other cores for this core's shards, owner releases, connections
//!   handed over, statistics queries and shutdown steps, over a bounded channel;
//! - one **watcher** per shard with a completion fd, which kicks the driver when the engine's
//!   io_uring has completions;
//! - **accept loops** and one reader and one writer task per connection (`conn`).
//!
//! Nothing here is shared with other threads except the channels and the read-only `Node`.

use std::cell::{Cell, RefCell};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};
use monoio::io::{CancelHandle, Canceller};
use scd_engine::{OwnerId, SessionKey};

use crate::constants;
use crate::daemon::Node;
use crate::exec::{Op, ReplyTo, ShardSlot};
use crate::notify::Notify;
use crate::settings::IoDriver;
use crate::stats::{CoreCounters, CoreStats};

/// Sent to a core over its inbox channel.
pub enum CoreMsg {
    /// A request for one of this core's shards, from a connection on another core.
    Request(ShardRequest),
    /// Several requests for this core's shards in one message (the cluster thread's batch of
    /// delayed-write copies: one message and one wake-up per core per batch, not one per copy).
    /// Each is run as if it came alone, in order; their `ReplyTo`s usually answer one batch.
    Batch(Vec<ShardRequest>),
    /// A client connection closed: drop every lock and queued wait it had on this core's shards.
    ReleaseOwner(OwnerId),
    /// A connection another core accepted, for this core to serve (spreads connections evenly).
    Adopt(crate::conn::Handoff),
    /// Send this core's statistics back.
    Stats(flume::Sender<CoreStats>),
    /// Cluster: copy out every live session of this core's shards.
    Dump(flume::Sender<Vec<crate::exec::DumpItem>>),
    /// Cluster: the number of sessions this core's shards hold (heartbeat load).
    Sessions(flume::Sender<u64>),
    /// Cluster: the HASH of every live session of this core's shards (rejoin).
    Hashes(flume::Sender<Vec<[u8; 16]>>),
    /// Cluster: the data version of each listed session this core's shards hold (a peer's
    /// rejoin asks); sessions held elsewhere or not at all are left out.
    Versions(Vec<[u8; 16]>, flume::Sender<Vec<([u8; 16], u64)>>),
    /// Shutdown, phase 1: stop accepting, finish the connections, then report `Drained`.
    StopAccepting,
    /// Shutdown, phase 2: flush everything and end the event loop.
    Finish,
}

/// A request routed to the core that owns the session's shard.
pub struct ShardRequest {
    pub shard: u32,
    pub key: SessionKey,
    pub owner: OwnerId,
    pub op: Op<Vec<u8>>,
    pub reply: ReplyTo,
}

/// What a core tells the main thread.
pub enum CoreEvent {
    Ready { core: usize, summary: String },
    Failed { core: usize, reason: String },
    Drained { core: usize, forced: usize },
}

/// Everything a core thread starts with.
pub struct CoreStart {
    pub index: usize,
    pub node: Arc<Node>,
    pub peers: Vec<flume::Sender<CoreMsg>>,
    pub inbox: flume::Receiver<CoreMsg>,
    pub events: mpsc::Sender<CoreEvent>,
    pub unix: Option<UnixListener>,
    pub tcp: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// A core's state, shared by its tasks (single thread: `Rc` + `Cell`/`RefCell`, never borrowed
/// across an `.await`).
pub struct Core {
    pub index: usize,
    pub node: Arc<Node>,
    /// Inbox senders of every core (including this one), indexed by core.
    pub peers: Vec<flume::Sender<CoreMsg>>,
    /// This core's shards; global shard `s` is at `s / cores` (its owner is `s % cores`).
    pub shards: RefCell<Vec<ShardSlot>>,
    /// Wakes the driver for a pass (new writes to flush, completions to collect).
    pub kick: Notify,
    /// Each watcher waits on its own flag, set after every driver pass.
    watchers: RefCell<Vec<Rc<Notify>>>,
    pub stopping: Cell<bool>,
    finishing: Cell<bool>,
    canceller: RefCell<Option<Canceller>>,
    /// Given to every accept and read: cancelled once at shutdown.
    stop_handle: CancelHandle,
    pub conns_open: Cell<usize>,
    pub conns_changed: Notify,
    owner_seq: Cell<u64>,
    now_ms: Cell<u64>,
    pub counters: CoreCounters,
    pub driver_name: &'static str,
    /// The main thread's channel for start-up and shutdown reports.
    events: mpsc::Sender<CoreEvent>,
}

/// Milliseconds since the UNIX epoch: the engine's notion of time.
pub fn clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Core {
    pub fn cores(&self) -> usize {
        self.node.resolved.cores
    }

    pub fn shard_count(&self) -> u32 {
        self.node.resolved.shards
    }

    /// The core owning global shard `shard`.
    pub fn owner_core(&self, shard: u32) -> usize {
        shard as usize % self.cores()
    }

    /// The clock read once per pass (readers refresh it when they get bytes, the driver per pass).
    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    pub fn refresh_now(&self) -> u64 {
        let now = clock_ms();
        self.now_ms.set(now);
        now
    }

    /// A lock owner ID unique across cores: the core index in the top 16 bits, a counter below.
    pub fn next_owner(&self) -> OwnerId {
        let n = self.owner_seq.get() + 1;
        self.owner_seq.set(n);
        OwnerId(((self.index as u64) << 48) | (n & ((1 << 48) - 1)))
    }

    pub fn stop_handle(&self) -> CancelHandle {
        self.stop_handle.clone()
    }

    /// Runs `op` on local shard `shard` (owned by this core). Operations that change a session or
    /// a lock kick the driver, so the pass ends with a flush (group commit) and the events they
    /// cause (a lock handed to the next waiter, a new wait deadline) are collected.
    pub fn execute_local(
        &self,
        shard: u32,
        key: SessionKey,
        owner: OwnerId,
        op: Op<&[u8]>,
        reply: ReplyTo,
    ) {
        let slot_index = shard as usize / self.cores();
        let now = self.now_ms();
        let kick = !matches!(op, Op::Read | Op::Exists | Op::Create { .. } | Op::Peek);
        {
            let mut shards = self.shards.borrow_mut();
            match shards.get_mut(slot_index) {
                Some(slot) => slot.execute(now, key, owner, op, reply),
                None => {
                    // Routing guarantees the shard is ours; a miss is a bug, answered, not a panic.
                    error!("shard {shard} is not on core {}", self.index);
                    reply.internal("shard routed to the wrong core");
                }
            }
        }
        if kick {
            self.kick.notify();
        }
    }

    /// Tells every core (this one directly) that `owner`'s connection closed.
    pub async fn release_owner_everywhere(&self, owner: OwnerId) {
        let now = self.refresh_now();
        {
            let mut shards = self.shards.borrow_mut();
            for slot in shards.iter_mut() {
                slot.release_owner(owner, now);
            }
        }
        self.kick.notify();
        for (i, peer) in self.peers.iter().enumerate() {
            if i != self.index {
                // Bounded channel: wait for room rather than drop the release (a dropped release
                // would leave the lock held until its lease ends).
                let _ = peer.send_async(CoreMsg::ReleaseOwner(owner)).await;
            }
        }
    }

    fn handle(self: &Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::Request(r) => {
                let ShardRequest {
                    shard,
                    key,
                    owner,
                    op,
                    reply,
                } = r;
                self.refresh_now();
                self.execute_local(shard, key, owner, op.as_ref(), reply);
            }
            CoreMsg::Batch(requests) => {
                self.refresh_now();
                for r in requests {
                    self.execute_local(r.shard, r.key, r.owner, r.op.as_ref(), r.reply);
                }
            }
            CoreMsg::ReleaseOwner(owner) => {
                let now = self.refresh_now();
                let mut shards = self.shards.borrow_mut();
                for slot in shards.iter_mut() {
                    slot.release_owner(owner, now);
                }
                // Released locks pass to their next waiters through events.
                self.kick.notify();
            }
            CoreMsg::Stats(tx) => {
                let _ = tx.send(self.stats());
            }
            CoreMsg::Dump(tx) => {
                let now = self.refresh_now();
                let mut out = Vec::new();
                for slot in self.shards.borrow().iter() {
                    slot.dump(now, &mut out);
                }
                let _ = tx.send(out);
            }
            CoreMsg::Hashes(tx) => {
                let now = self.refresh_now();
                let mut out = Vec::new();
                for slot in self.shards.borrow().iter() {
                    slot.hashes(now, &mut out);
                }
                let _ = tx.send(out);
            }
            CoreMsg::Versions(hashes, tx) => {
                let now = self.refresh_now();
                let shards = self.shard_count() as usize;
                let mut out = Vec::new();
                for slot in self.shards.borrow_mut().iter_mut() {
                    slot.versions(&hashes, shards, now, &mut out);
                }
                let _ = tx.send(out);
            }
            CoreMsg::Sessions(tx) => {
                let n = self.shards.borrow().iter().map(|s| s.sessions()).sum();
                let _ = tx.send(n);
            }
            CoreMsg::Adopt(handoff) => crate::conn::adopt(self, handoff),
            CoreMsg::StopAccepting => self.begin_stop(),
            CoreMsg::Finish => {
                self.finishing.set(true);
                self.kick.notify();
            }
        }
    }

    pub fn stats(&self) -> CoreStats {
        let shards = self.shards.borrow();
        CoreStats {
            core: self.index,
            driver: self.driver_name,
            connections_open: self.conns_open.get() as u64,
            counters: self.counters.snapshot(),
            shards: shards.iter().map(|s| s.stats()).collect(),
        }
    }

    /// Shutdown phase 1: cancel every accept and read (readers then finish what they decoded,
    /// release their locks and close), and report to the main thread once no connection is left.
    fn begin_stop(self: &Rc<Self>) {
        if self.stopping.replace(true) {
            return;
        }
        if let Some(c) = self.canceller.borrow_mut().take() {
            let _ = c.cancel();
        }
        let core = self.clone();
        monoio::spawn(async move {
            let deadline = clock_ms() + constants::SHUTDOWN_DRAIN_MS_MAX;
            while core.conns_open.get() > 0 {
                let left = deadline.saturating_sub(clock_ms());
                if left == 0 {
                    break;
                }
                monoio::select! {
                    _ = core.conns_changed.notified() => {}
                    _ = monoio::time::sleep(Duration::from_millis(left)) => {}
                }
            }
            let forced = core.conns_open.get();
            let _ = core.events.send(CoreEvent::Drained {
                core: core.index,
                forced,
            });
        });
    }
}

/// The core thread's body: build the runtime, open the shards, serve until `Finish`.
pub fn run(start: CoreStart) {
    let index = start.index;
    let events = start.events.clone();
    let driver = start.node.settings.node.io_driver;
    match build_runtime(index, driver) {
        Ok((mut rt, name)) => match &mut rt {
            Runtime::Uring(rt) => rt.block_on(core_main(start, name)),
            Runtime::Legacy(rt) => rt.block_on(core_main(start, name)),
        },
        Err(reason) => {
            let _ = events.send(CoreEvent::Failed {
                core: index,
                reason,
            });
        }
    }
}

enum Runtime {
    Uring(monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>),
    Legacy(monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>),
}

fn build_runtime(index: usize, want: IoDriver) -> Result<(Runtime, &'static str), String> {
    let legacy = || {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(Runtime::Legacy)
            .map_err(|e| format!("cannot build the epoll event loop: {e}"))
    };
    let uring = || {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .map(Runtime::Uring)
    };
    match want {
        IoDriver::Epoll => {
            info!("core {index}: event loop on epoll (io_driver = epoll)");
            Ok((legacy()?, "epoll"))
        }
        IoDriver::IoUring => {
            let rt = uring()
                .map_err(|e| format!("io_driver = io-uring, but io_uring is unavailable: {e}"))?;
            info!("core {index}: event loop on io_uring");
            Ok((rt, "io_uring"))
        }
        IoDriver::Auto => {
            if monoio::utils::detect_uring() {
                match uring() {
                    Ok(rt) => {
                        info!("core {index}: event loop on io_uring");
                        return Ok((rt, "io_uring"));
                    }
                    Err(e) => warn!(
                        "core {index}: io_uring is unavailable ({e}); running on the epoll fallback"
                    ),
                }
            } else {
                warn!(
                    "core {index}: io_uring is unavailable (disabled by sysctl or seccomp, or the \
                     kernel lacks operations scd needs); running on the epoll fallback"
                );
            }
            Ok((legacy()?, "epoll"))
        }
    }
}

async fn core_main(start: CoreStart, driver_name: &'static str) {
    let CoreStart {
        index,
        node,
        peers,
        inbox,
        events,
        unix,
        tcp,
        metrics,
    } = start;
    let cores = node.resolved.cores;
    let shards_total = node.resolved.shards;

    // Open this core's shards on this thread: a shard is single-threaded and stays here.
    let mut slots = Vec::new();
    let mut summary = Vec::new();
    let mut shard = index as u32;
    while shard < shards_total {
        match ShardSlot::open(&node, shard) {
            Ok((slot, report)) => {
                summary.push(format!("shard {shard}: {report}"));
                slots.push(slot);
            }
            Err(reason) => {
                let _ = events.send(CoreEvent::Failed {
                    core: index,
                    reason: format!("shard {shard}: {reason}"),
                });
                return;
            }
        }
        shard += cores as u32;
    }

    let canceller = Canceller::new();
    let stop_handle = canceller.handle();
    let core = Rc::new(Core {
        index,
        node: node.clone(),
        peers,
        shards: RefCell::new(slots),
        kick: Notify::default(),
        watchers: RefCell::new(Vec::new()),
        stopping: Cell::new(false),
        finishing: Cell::new(false),
        canceller: RefCell::new(Some(canceller)),
        stop_handle,
        conns_open: Cell::new(0),
        conns_changed: Notify::default(),
        owner_seq: Cell::new(0),
        now_ms: Cell::new(clock_ms()),
        counters: CoreCounters::default(),
        driver_name,
        events: events.clone(),
    });

    // One watcher per shard whose engine signals completions through a file descriptor.
    let fds: Vec<_> = core
        .shards
        .borrow()
        .iter()
        .filter_map(|s| s.completion_fd())
        .collect();
    for fd in fds {
        match crate::sys::pollable_dup(fd).and_then(monoio::net::unix::UnixDatagram::from_std) {
            Ok(pollable) => {
                let flag = Rc::new(Notify::default());
                core.watchers.borrow_mut().push(flag.clone());
                let c = core.clone();
                monoio::spawn(async move {
                    loop {
                        if pollable.readable(false).await.is_err() {
                            // Fall back to the driver's periodic wake-up.
                            warn!("core {}: cannot wait on a shard's completion fd", c.index);
                            return;
                        }
                        c.kick.notify();
                        // The driver resets the fd when it collects the events; wait for that pass
                        // so a still-readable fd does not spin.
                        flag.notified().await;
                    }
                });
            }
            Err(e) => {
                warn!(
                    "core {index}: cannot watch a completion fd ({e}); completions are collected on the driver's timer"
                )
            }
        }
    }

    {
        let c = core.clone();
        monoio::spawn(async move {
            while let Ok(msg) = inbox.recv_async().await {
                c.handle(msg);
                // Take what is already queued in the same pass, so the pass ends with one flush
                // (each message kicks the driver if it needs a pass).
                for _ in 0..constants::INBOX_BATCH_MAX {
                    match inbox.try_recv() {
                        Ok(m) => c.handle(m),
                        Err(_) => break,
                    }
                }
            }
        });
    }

    if let Some(l) = unix {
        match monoio::net::UnixListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(crate::conn::accept_unix(core.clone(), l));
            }
            Err(e) => error!("core {index}: cannot use the Unix listener: {e}"),
        }
    }
    if let Some(l) = tcp {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(crate::conn::accept_tcp(core.clone(), l));
            }
            Err(e) => error!("core {index}: cannot use the TCP listener: {e}"),
        }
    }
    if let Some(l) = metrics {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(crate::metrics::serve(core.clone(), l));
            }
            Err(e) => error!("core {index}: cannot use the metrics listener: {e}"),
        }
    }

    let _ = events.send(CoreEvent::Ready {
        core: index,
        summary: format!(
            "{driver_name}, {}",
            if summary.is_empty() {
                "no shards".to_string()
            } else {
                summary.join("; ")
            }
        ),
    });

    drive(core).await;
}

/// The driver: one pass per wake-up. Returns after `Finish`, once every write is durable.
async fn drive(core: Rc<Core>) {
    // Larger housekeeping (expiry, compaction) runs at most once per DRIVER_IDLE_WAKE_MS,
    // whether the core is busy or idle: bounded work at a bounded rate.
    let mut housekeeping_at_ms = 0;
    loop {
        let now = core.refresh_now();
        let housekeeping = now >= housekeeping_at_ms;
        if housekeeping {
            housekeeping_at_ms = now + constants::DRIVER_IDLE_WAKE_MS;
        }
        let mut next_ms = now + constants::DRIVER_IDLE_WAKE_MS;
        let mut pending_durable = 0;
        {
            let mut shards = core.shards.borrow_mut();
            for slot in shards.iter_mut() {
                slot.pass(now, housekeeping);
                if let Some(d) = slot.next_deadline_ms() {
                    next_ms = next_ms.min(d);
                }
                pending_durable += slot.pending_durable();
            }
        }
        for w in core.watchers.borrow().iter() {
            w.notify();
        }
        if core.finishing.get() && pending_durable == 0 {
            let mut shards = core.shards.borrow_mut();
            for slot in shards.iter_mut() {
                slot.close(core.now_ms());
            }
            shards.clear();
            return;
        }
        let wait_ms = next_ms.saturating_sub(clock_ms());
        if wait_ms > 0 {
            monoio::select! {
                _ = core.kick.notified() => {}
                _ = monoio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        } else {
            // A deadline already due: run the next pass, but let the connections go first.
            crate::notify::yield_now().await;
        }
    }
}
