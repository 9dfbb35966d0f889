//! Seeded simulation of an SCD cluster: several nodes, clients taking locks and writing, message
//! loss, delay, duplication and reordering, partitions (symmetric and one-way), crashes and
//! restarts, under both flush policies. After every step it checks:
//!
//! - at most one master per session per epoch (across all incarnations), and at most one node
//!   serving a session at any instant;
//! - no client reads an `(epoch, version)` lower than one it read or wrote before;
//! - write-through: no client reads a data version lower than its last acknowledged write, and
//!   a session with an acknowledged write is never reported missing while a copy lives;
//! - a write is only applied with a token issued by the applying master's current incarnation.
//!
//! `cargo test -p scd-cluster --test sim` runs `SCD_SIM_SEEDS` seeds (default 1000).
//! `SCD_SIM_SEED=n` replays one seed with a trace of its events (`SCD_SIM_MSGS=1` adds every
//! relay message); `SCD_SIM_SOAK=1` runs 13× longer histories; `SCD_SIM_FIRST=n` starts the
//! seed range at `n` (e.g. `SCD_SIM_FIRST=1000 SCD_SIM_SEEDS=100000`); `SCD_SIM_KEEP_GOING=1`
//! runs every seed and lists the failing ones instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use scd_cluster::{
    Action, Config, Copy, FlushPolicy, Hash, HeartbeatSchedule, MembershipConfig, Msg, Node,
    PeerBeat, Reply, Request, Store,
};
use scd_wire::{ErrorCode, SessionId};

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

// ---------------------------------------------------------------------------------------------
// A store with a disk: under write-through every put is durable at once; under delayed-write
// the disk catches up at each flush, and a crash loses what was not flushed.

#[derive(Clone, Default)]
struct SimStore {
    mem: BTreeMap<Hash, Copy>,
    disk: BTreeMap<Hash, Copy>,
    write_through: bool,
}

impl Store for SimStore {
    fn get(&self, hash: &Hash) -> Option<Copy> {
        self.mem.get(hash).cloned()
    }
    fn put(&mut self, hash: Hash, copy: Copy) {
        let moved = self
            .mem
            .get(&hash)
            .is_none_or(|c| c.placement != copy.placement || c.intent != copy.intent);
        if self.write_through || moved {
            self.disk.insert(hash, copy.clone());
        }
        self.mem.insert(hash, copy);
    }
    fn remove(&mut self, hash: &Hash) {
        self.mem.remove(hash);
        self.disk.remove(hash);
    }
    fn hashes(&self) -> Vec<Hash> {
        self.mem.keys().copied().collect()
    }
}

impl SimStore {
    fn flush(&mut self) {
        self.disk = self.mem.clone();
    }
    fn crash(mut self) -> SimStore {
        self.mem = self.disk.clone();
        self
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Params {
    nodes: usize,
    clients: usize,
    steps: u64,
    policy: FlushPolicy,
    loss: u64,
    dup: u64,
    crash: u64,
    partition: u64,
    /// Per-mille chance per step that a node starts draining (then stops once drained).
    drain: u64,
    ha: bool,
}

enum Payload {
    Msg(Msg),
    Beat(PeerBeat),
}

struct InFlight {
    at: u64,
    seq: u64,
    from: usize,
    to: usize,
    payload: Payload,
}

struct SimNode {
    node: Option<Node<SimStore>>,
    /// Drained at this time (stopped a while later).
    drained_at: Option<u64>,
    crashed_store: Option<SimStore>,
    node_id: u64,
    crashed_at: u64,
    schedule: HeartbeatSchedule,
    last_flush: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientState {
    Idle,
    Waiting { req: u64, since: u64, op: Op },
    Locked { token: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Create,
    ReadLock,
    Read,
    Write { token: u64 },
    Destroy,
}

struct Client {
    id: Option<SessionId>,
    state: ClientState,
    /// Highest (epoch, version) read or written.
    floor: (u32, u64),
    /// Highest data version acknowledged as written (write-through check).
    acked: u64,
    writes: u64,
    /// A Destroy was sent for the current session (its reply may have been lost).
    destroy_sent: bool,
}

struct Sim {
    p: Params,
    seed: u64,
    rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    clients: Vec<Client>,
    net: Vec<InFlight>,
    seq: u64,
    blocked: BTreeSet<(usize, usize)>,
    partition_on: bool,
    next_req: u64,
    reqs: BTreeMap<u64, usize>,
    /// (hash, epoch) → (master addr, node id) seen serving.
    masters: BTreeMap<(Hash, u32), (SocketAddr, u64)>,
    /// token → node id that issued it.
    tokens: BTreeMap<u64, u64>,
    trace: bool,
    log: Vec<String>,
    stats: SimStats,
}

#[derive(Default, Debug, Clone, Copy)]
struct SimStats {
    ok_reads: u64,
    ok_writes: u64,
    errors: u64,
    crashes: u64,
    restarts: u64,
    partitions: u64,
    promotions: u64,
}

const HB_MS: u64 = 100;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i as u8 + 1], 34567))
}

fn index(a: SocketAddr) -> usize {
    match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[3] as usize - 1,
        std::net::IpAddr::V6(_) => unreachable!(),
    }
}

impl Sim {
    fn new(seed: u64, p: Params, trace: bool) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5CD);
        let mut nodes = Vec::new();
        for i in 0..p.nodes {
            let node_id = rng.next() | 1;
            let store = SimStore {
                write_through: p.policy == FlushPolicy::WriteThrough,
                ..SimStore::default()
            };
            nodes.push(SimNode {
                node: Some(Node::new_cluster(config(i, node_id, p), store, 0)),
                drained_at: None,
                crashed_store: None,
                node_id,
                crashed_at: 0,
                schedule: HeartbeatSchedule::new(HB_MS, rng.below(HB_MS)),
                last_flush: 0,
            });
        }
        let clients = (0..p.clients)
            .map(|_| Client {
                id: None,
                state: ClientState::Idle,
                floor: (0, 0),
                acked: 0,
                writes: 0,
                destroy_sent: false,
            })
            .collect();
        Sim {
            p,
            seed,
            rng,
            now: 0,
            nodes,
            clients,
            net: Vec::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            partition_on: false,
            next_req: 1,
            reqs: BTreeMap::new(),
            masters: BTreeMap::new(),
            tokens: BTreeMap::new(),
            trace,
            log: Vec::new(),
            stats: SimStats::default(),
        }
    }

    fn note(&mut self, text: String) {
        if self.trace {
            eprintln!("[{:>6}] {text}", self.now);
        }
        self.log.push(format!("[{:>6}] {text}", self.now));
        if self.log.len() > 60 {
            self.log.remove(0);
        }
    }

    fn fail(&self, what: String) -> String {
        format!(
            "seed {} ({:?}, {} nodes) at t={} ms: {what}\nlast events:\n{}\nreplay: SCD_SIM_SEED={} cargo test -p scd-cluster --test sim",
            self.seed,
            self.p.policy,
            self.p.nodes,
            self.now,
            self.log.join("\n"),
            self.seed
        )
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.p.loss) {
            return;
        }
        let copies = if self.rng.chance(self.p.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(20);
            self.seq += 1;
            let payload = match &payload {
                Payload::Msg(m) => Payload::Msg(m.clone()),
                Payload::Beat(b) => Payload::Beat(*b),
            };
            self.net.push(InFlight {
                at: self.now + delay,
                seq: self.seq,
                from,
                to,
                payload,
            });
        }
    }

    fn run_actions(&mut self, at: usize, actions: Vec<Action>) -> Result<(), String> {
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    let to = index(to);
                    if !self.alive(to) && self.rng.chance(500) {
                        // Connection refused.
                        let now = self.now;
                        let me = addr(to);
                        if let Some(n) = self.nodes[at].node.as_mut() {
                            let more = n.on_unreachable(me, now);
                            self.run_actions(at, more)?;
                        }
                        continue;
                    }
                    self.send(at, to, Payload::Msg(msg));
                }
                Action::Reply { req, reply } => self.on_reply(at, req, reply)?,
                Action::DrainComplete => {
                    self.note(format!("DRAINED n{at}"));
                    self.nodes[at].drained_at = Some(self.now);
                }
            }
        }
        Ok(())
    }

    fn on_reply(&mut self, at: usize, req: u64, reply: Reply) -> Result<(), String> {
        let Some(ci) = self.reqs.remove(&req) else {
            return Ok(());
        };
        let ClientState::Waiting {
            req: expected, op, ..
        } = self.clients[ci].state.clone()
        else {
            return Ok(());
        };
        if expected != req {
            return Ok(());
        }
        self.note(format!(
            "client {ci} via n{at}: {op:?} -> {}",
            short(&reply)
        ));
        let wt = self.p.policy == FlushPolicy::WriteThrough;
        let mut next = ClientState::Idle;
        match reply {
            Reply::Created { id } => {
                self.clients[ci] = Client {
                    id: Some(id),
                    state: ClientState::Idle,
                    floor: (id.version, 0),
                    acked: 0,
                    writes: 0,
                    destroy_sent: false,
                };
            }
            Reply::Data {
                id, version, token, ..
            } => {
                self.check_master(id)?;
                let c = &self.clients[ci];
                if (id.version, version) < c.floor {
                    return Err(self.fail(format!(
                        "client {ci} read (epoch {}, version {version}) after {:?}",
                        id.version, c.floor
                    )));
                }
                if wt && version < c.acked {
                    return Err(self.fail(format!(
                        "write-through: client {ci} read version {version} after its write {} was acked",
                        c.acked
                    )));
                }
                let c = &mut self.clients[ci];
                c.floor = c.floor.max((id.version, version));
                c.id = Some(id);
                self.stats.ok_reads += 1;
                if let Some(t) = token {
                    let issuer = self.nodes[index(id.master)].node_id;
                    self.tokens.insert(t, issuer);
                    next = ClientState::Locked { token: t };
                }
            }
            Reply::Written { id, version } => {
                self.check_master(id)?;
                let Op::Write { token } = op else {
                    return Err(self.fail("Written for a non-write".into()));
                };
                let applier = self.nodes[index(id.master)].node_id;
                if (token >> 32) != u64::from(applier as u32) {
                    return Err(self.fail(format!(
                        "write with token {token:#x} applied by {} (node id {applier:#x}): not its token",
                        id.master
                    )));
                }
                let floor = self.clients[ci].floor;
                if (id.version, version) <= floor {
                    return Err(self.fail(format!(
                        "client {ci} wrote (epoch {}, version {version}) not above {floor:?}",
                        id.version
                    )));
                }
                let c = &mut self.clients[ci];
                c.floor = (id.version, version);
                c.acked = c.acked.max(version);
                c.id = Some(id);
                c.writes += 1;
                self.stats.ok_writes += 1;
            }
            Reply::Done { id } => {
                self.check_master(id)?;
                if op == Op::Destroy {
                    self.clients[ci].id = None;
                } else {
                    self.clients[ci].id = Some(id);
                }
            }
            Reply::Moved { .. } => {
                return Err(self.fail("Moved reached a client".into()));
            }
            Reply::Error { code, .. } => {
                self.stats.errors += 1;
                if code == ErrorCode::NotFound
                    && wt
                    && self.clients[ci].acked > 0
                    && !self.clients[ci].destroy_sent
                {
                    let hash = self.clients[ci].id.expect("has a session").hash;
                    if let Some(holder) = self.live_copy(&hash) {
                        return Err(self.fail(format!(
                            "write-through: session with acked writes reported missing while n{holder} holds it"
                        )));
                    }
                }
                if code == ErrorCode::NotFound {
                    // Gone (e.g. both copies lost under delayed-write): start a new session.
                    self.clients[ci].id = None;
                }
            }
        }
        let _ = at;
        self.clients[ci].state = next;
        Ok(())
    }

    fn live_copy(&self, hash: &Hash) -> Option<usize> {
        (0..self.nodes.len()).find(|i| {
            self.nodes[*i]
                .node
                .as_ref()
                .and_then(|n| n.store().get(hash))
                .is_some_and(|c| !c.deleted)
        })
    }

    fn check_master(&mut self, id: SessionId) -> Result<(), String> {
        let m = index(id.master);
        let node_id = self.nodes[m].node_id;
        let prev = *self
            .masters
            .entry((id.hash, id.version))
            .or_insert((id.master, node_id));
        if prev != (id.master, node_id) {
            return Err(self.fail(format!(
                "two masters at epoch {}: {:?} and {} (node id {node_id:#x})",
                id.version, prev, id.master
            )));
        }
        Ok(())
    }

    /// Checks over every node's state after a step.
    fn check_state(&mut self) -> Result<(), String> {
        let mut hashes = BTreeSet::new();
        for c in &self.clients {
            if let Some(id) = c.id {
                hashes.insert(id.hash);
            }
        }
        for hash in hashes {
            let mut serving = Vec::new();
            for i in 0..self.nodes.len() {
                if let Some(n) = &self.nodes[i].node
                    && let Some(p) = n.serves(&hash, self.now)
                {
                    serving.push((i, p));
                }
            }
            for (i, p) in &serving {
                let id = p.id(hash);
                debug_assert_eq!(index(id.master), *i);
                self.check_master(id)?;
            }
            if serving.len() > 1 && self.p.nodes > 2 {
                return Err(self.fail(format!(
                    "several nodes serve one session at once: {serving:?}"
                )));
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), String> {
        loop {
            let due = self
                .net
                .iter()
                .enumerate()
                .filter(|(_, m)| m.at <= self.now)
                .min_by_key(|(_, m)| (m.at, m.seq))
                .map(|(i, _)| i);
            let Some(i) = due else {
                return Ok(());
            };
            let m = self.net.swap_remove(i);
            if self.blocked.contains(&(m.from, m.to)) {
                continue;
            }
            let now = self.now;
            let from = addr(m.from);
            if self.nodes[m.to].node.is_none() {
                continue;
            }
            if self.trace && std::env::var("SCD_SIM_MSGS").is_ok() {
                if let Payload::Msg(msg) = &m.payload {
                    eprintln!("[{:>6}] n{} -> n{}: {}", now, m.from, m.to, short_msg(msg));
                }
            }
            let Some(node) = self.nodes[m.to].node.as_mut() else {
                continue;
            };
            let actions = match m.payload {
                Payload::Msg(msg) => node.on_message(from, msg, now),
                Payload::Beat(beat) => node.on_heartbeat(&beat, now),
            };
            self.run_actions(m.to, actions)?;
        }
    }

    fn step(&mut self) -> Result<(), String> {
        if self.net.len() > 20_000 {
            return Err(self.fail(format!(
                "message storm: {} messages in flight",
                self.net.len()
            )));
        }
        self.now += 5 + self.rng.below(10);
        let now = self.now;
        self.deliver()?;
        // Heartbeats, flushes, ticks.
        for i in 0..self.nodes.len() {
            let r = self.rng.next();
            let Some(node) = self.nodes[i].node.as_ref() else {
                continue;
            };
            let (sessions, draining) = node.heartbeat_fields();
            if self.nodes[i].schedule.due(now, r) {
                let beat = PeerBeat {
                    relay: addr(i),
                    node_id: self.nodes[i].node_id,
                    // The node ID is random at each start: it is the incarnation.
                    epoch: 0,
                    sessions,
                    sockets: 0,
                    draining,
                    witness_only: false,
                };
                for j in 0..self.nodes.len() {
                    if j != i {
                        self.send(i, j, Payload::Beat(beat));
                    }
                }
            }
            let flush = now >= self.nodes[i].last_flush + 2 * HB_MS;
            if flush {
                self.nodes[i].last_flush = now;
            }
            let node = self.nodes[i].node.as_mut().expect("alive");
            if flush {
                node.store_mut().flush();
            }
            let actions = node.tick(now);
            self.run_actions(i, actions)?;
        }
        self.faults()?;
        self.clients_act()?;
        self.check_state()
    }

    fn faults(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        let crashed = (0..n).filter(|i| !self.alive(*i)).count();
        // Crash (at most two nodes down at once; never all).
        if crashed < 2.min(n - 1) && self.rng.chance(self.p.crash) {
            let i = self.rng.below(n as u64) as usize;
            if let Some(node) = self.nodes[i].node.take() {
                self.note(format!("CRASH n{i}"));
                self.stats.crashes += 1;
                self.stats.promotions += node.stats().promotions;
                self.nodes[i].crashed_store = Some(node.into_store().crash());
                self.nodes[i].crashed_at = self.now;
                self.nodes[i].drained_at = None;
            }
        }
        // Restart.
        for i in 0..n {
            if !self.alive(i) && self.now > self.nodes[i].crashed_at + 500 && self.rng.chance(20) {
                let node_id = self.rng.next() | 1;
                let store = self.nodes[i].crashed_store.take().expect("crashed");
                self.note(format!("RESTART n{i} as {node_id:#x}"));
                self.stats.restarts += 1;
                self.nodes[i].node_id = node_id;
                self.nodes[i].node = Some(Node::new(config(i, node_id, self.p), store, self.now));
                self.nodes[i].schedule = HeartbeatSchedule::new(HB_MS, self.now);
            }
        }
        // Drain: a node hands everything over, then stops (its disk is wiped: a new machine
        // may take its address later).
        let draining = (0..n).any(|i| {
            self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|node| node.is_draining())
        });
        if !draining && crashed == 0 && self.rng.chance(self.p.drain) {
            let i = self.rng.below(n as u64) as usize;
            if !self.alive(i) {
                return Ok(());
            }
            self.note(format!("DRAIN n{i}"));
            let now = self.now;
            let a = self.nodes[i].node.as_mut().expect("alive").start_drain(now);
            self.run_actions(i, a)?;
        }
        for i in 0..n {
            if let Some(t) = self.nodes[i].drained_at
                && self.now > t + 1000
                && self.alive(i)
            {
                self.note(format!("STOP n{i} (drained)"));
                let store = self.nodes[i].node.take().expect("alive").into_store();
                if !store.mem.is_empty() {
                    return Err(self.fail(format!("n{i} stopped after its drain holding sessions")));
                }
                self.nodes[i].drained_at = None;
                self.nodes[i].crashed_store = Some(SimStore {
                    write_through: store.write_through,
                    ..SimStore::default()
                });
                self.nodes[i].crashed_at = self.now;
            }
        }
        // Partitions: one at a time.
        if !self.partition_on && self.rng.chance(self.p.partition) {
            self.partition_on = true;
            self.stats.partitions += 1;
            let a = self.rng.below(n as u64) as usize;
            let mut b = self.rng.below(n as u64 - 1) as usize;
            if b >= a {
                b += 1;
            }
            match self.rng.below(3) {
                0 => {
                    self.note(format!("PARTITION isolate n{a}"));
                    for j in 0..n {
                        if j != a {
                            self.blocked.insert((a, j));
                            self.blocked.insert((j, a));
                        }
                    }
                }
                1 => {
                    self.note(format!("PARTITION one-way n{a} -> n{b}"));
                    self.blocked.insert((a, b));
                }
                _ => {
                    self.note(format!("PARTITION cut n{a} <-> n{b}"));
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                }
            }
        } else if self.partition_on && self.rng.chance(4) {
            self.note("HEAL".into());
            self.partition_on = false;
            self.blocked.clear();
        }
        Ok(())
    }

    fn clients_act(&mut self) -> Result<(), String> {
        for ci in 0..self.clients.len() {
            match self.clients[ci].state.clone() {
                ClientState::Waiting { since, req, .. } => {
                    if self.now > since + 6000 {
                        self.reqs.remove(&req);
                        self.clients[ci].state = ClientState::Idle;
                    }
                    continue;
                }
                ClientState::Idle if !self.rng.chance(150) => continue,
                ClientState::Locked { .. } if !self.rng.chance(300) => continue,
                _ => {}
            }
            let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
            if live.is_empty() {
                continue;
            }
            let at = live[self.rng.below(live.len() as u64) as usize];
            let lifetime_s = 1440;
            let (op, request) = match (self.clients[ci].state.clone(), self.clients[ci].id) {
                (ClientState::Locked { token }, Some(id)) if self.rng.chance(30) => {
                    self.clients[ci].destroy_sent = true;
                    (Op::Destroy, Request::Destroy { id, token })
                }
                (ClientState::Locked { token }, Some(id)) => {
                    let n = self.clients[ci].writes + 1;
                    let data = format!("c{ci}w{n}").into_bytes();
                    (
                        Op::Write { token },
                        Request::Write {
                            id,
                            token,
                            lifetime_s,
                            data,
                        },
                    )
                }
                (_, None) => {
                    let mut hash = [0u8; 16];
                    hash[..8].copy_from_slice(&self.rng.next().to_le_bytes());
                    hash[8..].copy_from_slice(&(ci as u64).to_le_bytes());
                    (Op::Create, Request::Create { hash, lifetime_s })
                }
                (_, Some(id)) => {
                    if self.rng.chance(700) {
                        (Op::ReadLock, Request::ReadLock { id, lease_ms: 5000 })
                    } else {
                        (Op::Read, Request::Read { id })
                    }
                }
            };
            let req = self.next_req;
            self.next_req += 1;
            self.reqs.insert(req, ci);
            self.clients[ci].state = ClientState::Waiting {
                req,
                since: self.now,
                op,
            };
            let now = self.now;
            let actions = self.nodes[at]
                .node
                .as_mut()
                .expect("alive")
                .on_client(req, request, now);
            self.run_actions(at, actions)?;
        }
        Ok(())
    }
}

fn short(reply: &Reply) -> String {
    match reply {
        Reply::Created { id } => format!("Created {id}"),
        Reply::Data {
            id, version, token, ..
        } => format!("Data v{version} token {token:?} {id}"),
        Reply::Written { id, version } => format!("Written v{version} {id}"),
        Reply::Done { id } => format!("Done {id}"),
        Reply::Moved { id } => format!("Moved {id:?}"),
        Reply::Error { code, reason } => format!("Error {code:?} ({reason})"),
    }
}

fn short_msg(msg: &Msg) -> String {
    let h = |h: &Hash| format!("{:02x}{:02x}", h[0], h[1]);
    match msg {
        Msg::Replicate { hash, copy, change } => format!(
            "Replicate {} {:?} e{} v{} m{} b{:?}",
            h(hash),
            change,
            copy.placement.epoch,
            copy.version,
            index(copy.placement.master),
            copy.placement.backup.map(index)
        ),
        Msg::SyncItem { hash, copy, .. } => format!(
            "SyncItem {} e{} v{} m{} b{:?}",
            h(hash),
            copy.placement.epoch,
            copy.version,
            index(copy.placement.master),
            copy.placement.backup.map(index)
        ),
        Msg::Forward {
            request, failover, ..
        } => format!("Forward {} failover {failover}", h(&request.hash())),
        Msg::ForwardReply { reply, .. } => format!("ForwardReply {}", short(reply)),
        Msg::LeaseRequest { .. } | Msg::LeaseGrant { .. } => String::new(),
        other => format!("{other:?}"),
    }
}

fn config(i: usize, node_id: u64, p: Params) -> Config {
    let policy = p.policy;
    let mut cfg = Config::new(addr(i), node_id);
    cfg.ha = p.ha;
    cfg.membership = MembershipConfig {
        heartbeat_interval_ms: HB_MS,
        node_timeout_ms: 3 * HB_MS + 100,
    };
    cfg.lease_margin_ms = 100;
    cfg.policy = policy;
    cfg.flush_interval_ms = 2 * HB_MS;
    cfg.replication_queue_max = 2;
    cfg.request_timeout_ms = 4000;
    // The cluster's members are configured, as the daemon's `peers` list does.
    cfg.peers = (0..p.nodes).map(addr).collect();
    cfg
}

fn params(seed: u64, soak: bool) -> Params {
    let mut r = Rng(seed ^ 0xA5A5_5A5A);
    Params {
        nodes: 3 + r.below(3) as usize,
        clients: 2 + r.below(4) as usize,
        steps: if soak { 20_000 } else { 1_500 },
        policy: if seed % 2 == 0 {
            FlushPolicy::WriteThrough
        } else {
            FlushPolicy::DelayedWrite
        },
        loss: r.below(30),
        dup: r.below(30),
        crash: 1 + r.below(4),
        partition: 1 + r.below(4),
        drain: if r.below(3) == 0 { 2 } else { 0 },
        ha: r.below(8) != 0,
    }
}

fn run_seed(seed: u64, soak: bool, trace: bool) -> Result<SimStats, String> {
    let p = params(seed, soak);
    let mut sim = Sim::new(seed, p, trace);
    for _ in 0..p.steps {
        sim.step()?;
    }
    // Every client must make progress over a history (liveness, loosely).
    Ok(sim.stats)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Seeds that found protocol bugs, kept whatever the default seed range becomes:
/// 5 (sync end overtook its items: rejoin finished early and resumed a taken-over session),
/// 18 and 96 (NotFound while a partitioned node held the session), 117 (a stale replica of a
/// restarted backup let a restarted master reuse an epoch), 212 (a restarting origin said
/// NotFound for a session it held), 348 (a restarted backup forgot what it took over and
/// granted a lease to the old master), 371 (a restarted, isolated node acted alone), 1031 (a
/// master isolated for long rehomed at once on heal, witnessed by an amnesiac restarted node),
/// 1403 (a restarted backup, replaced while away, promoted its stale replica once master and
/// new backup were down), 155 (a restarted master adopted a stale replica of a session it had
/// dropped), 2063 (a proposal accepted but never answered before its target went down: the
/// proposer served a backup-less session while the target could promote), 93 (a refused
/// failover retried at once, and duplicated refusals multiplied the retries into a storm).
/// 71 (the simulation restarted a drained-then-crashed node as drained), 680 (a node restarted
/// during a partition knew too few nodes and said NotFound), 3263 (a node cut off started
/// draining and handed over sessions taken over meanwhile), 4592 (a restarted node in a
/// partition knew fewer nodes than the one it asked), 4829 (a refused proposal accepted later
/// from a duplicate), 4854 (a master cut off from everyone rehomed its session on heal through
/// a witness that no longer held it: a write-through write was lost), 2149 (a late StaleEpoch
/// answering an old update cancelled a handover that the target then accepted), 13108 and
/// 13157 (a proposal accepted but unanswered, then a restart of the proposer: the intent is now
/// durable), 76382 (NotFound for an acked write-through session: its only holder was cut off
/// and every other node was replaced or restarted meanwhile, so no live node had heard of it;
/// configured members now count as known), 120712 (a backup accepted a Resume at an epoch
/// below its own unanswered failover proposal, whose witness then won on heal: an acked
/// write-through write was lost), 136684 (a restarted node numbered its relayed requests from
/// the same start as its previous incarnation: a late `Written` for an old write answered a
/// new client's ReadLock), 153960 (a node that witnessed an AddBackup whose answer was lost
/// promoted its copy of that abandoned placement: two masters at one epoch), 51700 (the first
/// fix for soak seed 9131 also stopped write-through resends to a backup seen down, and an
/// acknowledged write was read back older: only delayed-write flushes wait for the backup now),
/// 299448 (a restarted backup, with no heartbeat yet from its master cut off meanwhile, acked
/// the master's write-through resend after the heal and promoted 25 ms later: a relay message
/// from a peer not yet heard by heartbeat did not count as hearing it, so the master looked
/// silent since the backup's start; the promotion reused the epoch of the master's unanswered
/// Rehome, which its witness had accepted, and the master later resumed from that copy: two
/// nodes served the session).
const REGRESSIONS: &[u64] = &[
    5, 18, 71, 93, 96, 117, 155, 212, 348, 371, 680, 1031, 1403, 2063, 2149, 3263, 4592, 4829,
    4854, 13108, 13157, 51700, 76382, 120712, 136684, 153960, 299448,
];

/// Long-history (`SCD_SIM_SOAK=1`) seeds that found bugs: 782 (a backup granted a lease to a
/// master it was promoting away from: two masters serving at once), 358 (NotFound for an acked
/// write-through session: its only holder was cut off, the asker had been replaced meanwhile
/// and never heard of it, and the node it asked counted only the nodes it saw *up*), 1886 (a
/// drained master cut off from everyone rejoined and resumed, alone, a session whose handover
/// was accepted but unanswered: the new master's acked writes were lost), 3254 and 3454 (a
/// node that witnessed a Rehome whose answer was lost promoted its copy of the abandoned
/// placement: two masters at one epoch), 3363 (a restarted master waiting to resume flushed its
/// stale copy to a backup that no longer held it, which took it as a new replica and then
/// witnessed the Resume: two nodes served the session), 9131 (a master cut off from everyone
/// kept flushing to its backup, which it saw down; on heal that flush reached the backup,
/// restarted meanwhile and no longer holding the session, before the master heard it return:
/// it took the stale copy as a new replica and witnessed the master's Resume at an epoch
/// already used elsewhere, two masters at one epoch).
const SOAK_REGRESSIONS: &[u64] = &[358, 782, 1886, 3254, 3363, 3454, 9131];

#[test]
fn regressions() {
    for &seed in REGRESSIONS {
        if let Err(e) = run_seed(seed, false, false) {
            panic!("{e}");
        }
    }
    for &seed in SOAK_REGRESSIONS {
        if let Err(e) = run_seed(seed, true, false) {
            panic!("{e}\n(soak: add SCD_SIM_SOAK=1 to replay)");
        }
    }
}

#[test]
fn simulation() {
    let soak = std::env::var("SCD_SIM_SOAK").is_ok_and(|v| v != "0");
    if let Some(seed) = env_u64("SCD_SIM_SEED") {
        match run_seed(seed, soak, true) {
            Ok(stats) => eprintln!("seed {seed}: ok {stats:?}"),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let seeds = env_u64("SCD_SIM_SEEDS").unwrap_or(1000);
    let first = env_u64("SCD_SIM_FIRST").unwrap_or(0);
    let keep_going = std::env::var("SCD_SIM_KEEP_GOING").is_ok_and(|v| v != "0");
    let mut failed = Vec::new();
    let mut total = SimStats::default();
    for seed in first..first + seeds {
        match run_seed(seed, soak, false) {
            Ok(s) => {
                total.ok_reads += s.ok_reads;
                total.ok_writes += s.ok_writes;
                total.errors += s.errors;
                total.crashes += s.crashes;
                total.restarts += s.restarts;
                total.partitions += s.partitions;
                total.promotions += s.promotions;
            }
            Err(e) if keep_going => {
                eprintln!("{}", e.lines().next().unwrap_or_default());
                failed.push(seed);
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("{seeds} seeds: {total:?}");
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds failed: {failed:?}",
        failed.len()
    );
    assert!(
        total.ok_writes > seeds,
        "the clients made progress: {total:?}"
    );
    assert!(
        total.crashes > 0 && total.partitions > 0,
        "faults were injected: {total:?}"
    );
}
