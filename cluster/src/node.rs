//! The per-node state machine: routing, replication, failover, fencing, leases, rejoin, drain.
//! The protocol is stated in docs/ARCHITECTURE.md, "The cluster"; comments here name its rules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use scd_wire::{ErrorCode, SessionId};

use crate::membership::{Membership, PeerBeat, PeerEvent};
use crate::placement::{Placement, choose_backup};
use crate::types::{Action, Change, Config, Copy, FlushPolicy, Intent, Msg, Reply, Request, Store};
use crate::{Addr, Hash};

/// Re-routes of one client request before it fails with `Unavailable`.
const HOPS_MAX: u8 = 6;

/// Where the answer to a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyTo {
    Local(u64),
    Remote(Addr, u64),
}

#[derive(Clone, Debug)]
struct Queued {
    to: ReplyTo,
    request: Request,
    failover: bool,
    deadline_ms: u64,
}

/// A write-through write applied here, waiting for the backup's ack before its reply goes.
#[derive(Clone, Debug)]
struct Inflight {
    version: u64,
    replies: Vec<(ReplyTo, Reply)>,
    sent_ms: u64,
}

/// A placement change proposed to `target`, waiting for its ack.
#[derive(Clone, Debug)]
struct Pending {
    base_epoch: u32,
    copy: Copy,
    change: Change,
    target: Addr,
    sent_ms: u64,
}

/// Volatile per-session state (lost on restart, on purpose: locks die with their master).
#[derive(Clone, Debug, Default)]
struct Live {
    lock: Option<(u64, u64)>,
    waiting: VecDeque<Queued>,
    inflight: Option<Inflight>,
    pending: Option<Pending>,
    /// The highest placement epoch ever proposed for the session here: a later proposal uses
    /// a higher one, so that no epoch names two placements.
    floor: u32,
    /// A node a proposal went to that never answered before it went down: it may hold (and
    /// later promote) the proposed placement, so the session is served only under a lease from
    /// it too, until a later placement is committed.
    shadow: Option<Addr>,
    /// A proposal was refused: propose again only after this time (epochs are not reused, so
    /// retrying every tick would only inflate them).
    retry_after_ms: u64,
    /// Delayed-write: version last acked by the backup, and when we last sent.
    acked: u64,
    dirty_sent_ms: Option<u64>,
}

#[derive(Clone, Debug)]
enum Stage {
    Master,
    Backup,
    Locate {
        loc: u64,
        asked: BTreeSet<Addr>,
        best: Option<Placement>,
        /// Every node we know of was asked.
        everyone: bool,
        /// Every node asked (`asked` holds those yet to answer).
        all: BTreeSet<Addr>,
    },
}

#[derive(Clone, Debug)]
struct Fwd {
    to: ReplyTo,
    request: Request,
    placement: Placement,
    stage: Stage,
    target: Option<Addr>,
    hops: u8,
    deadline_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// Restarted: learn who is alive for one node timeout, then sync.
    Starting {
        until_ms: u64,
    },
    /// Syncing with these peers; serving nothing as master.
    Rejoining {
        sync: u64,
        pending: BTreeSet<Addr>,
        sent_ms: u64,
    },
    Serving,
}

/// What a node is doing, for statistics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Just started: listening to heartbeats for one node timeout before syncing.
    Starting,
    /// Syncing with the live nodes; serves no session as master.
    Rejoining,
    /// Normal operation.
    Serving,
}

#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    until_ms: u64,
}

/// Counters, for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sessions this node took over as a backup.
    pub promotions: u64,
    /// Backups replaced (backup down or draining).
    pub rehomes: u64,
    /// Backups added to sessions that had none.
    pub backups_added: u64,
    /// Rejoins started.
    pub rejoins: u64,
    /// Copies dropped because a higher epoch exists elsewhere.
    pub fenced: u64,
    /// Requests relayed to another node.
    pub forwarded: u64,
    /// Sessions handed to another node while draining.
    pub handed_over: u64,
}

/// One node of the cluster, as a deterministic state machine.
///
/// Feed it events — [`on_heartbeat`](Self::on_heartbeat), [`on_client`](Self::on_client),
/// [`on_message`](Self::on_message), [`on_unreachable`](Self::on_unreachable),
/// [`tick`](Self::tick) — and execute the [`Action`]s each returns, in order. Every call takes
/// `now_ms` (a monotonic clock of this node); nothing reads a clock or draws randomness.
pub struct Node<S: Store> {
    cfg: Config,
    store: S,
    members: Membership,
    mode: Mode,
    draining: bool,
    drain_reported: bool,
    sessions: BTreeMap<Hash, Live>,
    leases: BTreeMap<Addr, Lease>,
    lease_asks: BTreeMap<u64, (Addr, u64)>,
    last_lease_round_ms: Option<u64>,
    last_flush_ms: u64,
    /// Nodes whose sessions we took over, or that we replaced as backup: they must sync with
    /// us before serving (their lease requests are denied until then).
    taken_over: BTreeSet<Addr>,
    /// Sessions that left this node (drain): where they went.
    moved: BTreeMap<Hash, Placement>,
    /// Mastered sessions that need a new epoch (rejoin) before they are served.
    unconfirmed: BTreeSet<Hash>,
    /// Replicas not confirmed by their master at their current placement — held since before
    /// a rejoin, or taken as the witness of a placement change whose commit we have not seen
    /// (the proposer may have abandoned it and committed a later placement elsewhere): they
    /// are never promoted.
    doubtful: BTreeSet<Hash>,
    fwds: BTreeMap<u64, Fwd>,
    /// Rejoin: per peer, the hashes received in its sync stream and the count it announced.
    sync_progress: BTreeMap<Addr, (BTreeSet<Hash>, Option<u64>)>,
    /// Rejoin: the highest `(epoch, version)` any peer reported per session.
    sync_seen: BTreeMap<Hash, (u32, u64)>,
    /// The highest proposal epoch we refused, per session: never accepted later.
    refused: BTreeMap<Hash, u32>,
    /// Every peer we knew went down: when one comes back, we rejoin.
    alone: bool,
    next_id: u64,
    token_counter: u32,
    stats: Stats,
    out: Vec<Action>,
}

impl<S: Store> Node<S> {
    /// A node starting at `now_ms` over `store` (which may hold copies from before a restart).
    /// It serves nothing as master until it has listened to heartbeats for one node timeout
    /// and synced with every live node (rejoin); a brand-new cluster's first node simply finds
    /// nobody to sync with.
    pub fn new(cfg: Config, store: S, now_ms: u64) -> Self {
        let mut node = Self::bare(cfg, store, now_ms);
        node.restore_intents(now_ms);
        node
    }

    /// Proposals made before a restart whose answers never came: a handover is asked again
    /// (the session stays blocked until the target answers); for any other change the target
    /// shadows the session.
    fn restore_intents(&mut self, now_ms: u64) {
        let me = self.cfg.me;
        for hash in self.store.hashes() {
            let Some(copy) = self.store.get(&hash) else {
                continue;
            };
            let Some(intent) = copy.intent else {
                continue;
            };
            let live = self.live(hash);
            live.floor = live.floor.max(intent.epoch);
            if intent.handover {
                let mut proposal = copy.clone();
                proposal.intent = None;
                proposal.placement = Placement {
                    master: intent.target,
                    backup: None,
                    epoch: intent.epoch,
                };
                live.pending = Some(Pending {
                    base_epoch: copy.placement.epoch,
                    copy: proposal,
                    change: Change::Handover { old_master: me },
                    target: intent.target,
                    sent_ms: 0,
                });
            } else {
                live.shadow = Some(intent.target);
            }
        }
        let _ = now_ms;
    }

    fn bare(cfg: Config, store: S, now_ms: u64) -> Self {
        let mut members = Membership::new(cfg.me, cfg.membership, now_ms);
        members.configure(cfg.peers.iter().copied());
        // Like lock tokens, correlation numbers carry our node ID's low 32 bits: a late answer
        // to a previous incarnation never matches a request of this one.
        let next_id = u64::from(cfg.node_id as u32) << 32;
        Node {
            members,
            mode: Mode::Starting {
                until_ms: now_ms + cfg.membership.node_timeout_ms,
            },
            cfg,
            store,
            draining: false,
            drain_reported: false,
            sessions: BTreeMap::new(),
            leases: BTreeMap::new(),
            lease_asks: BTreeMap::new(),
            last_lease_round_ms: None,
            last_flush_ms: now_ms,
            taken_over: BTreeSet::new(),
            moved: BTreeMap::new(),
            unconfirmed: BTreeSet::new(),
            doubtful: BTreeSet::new(),
            fwds: BTreeMap::new(),
            sync_progress: BTreeMap::new(),
            sync_seen: BTreeMap::new(),
            refused: BTreeMap::new(),
            alone: false,
            next_id,
            token_counter: 0,
            stats: Stats::default(),
            out: Vec::new(),
        }
    }

    /// A node that starts serving at once: for the first node of a new cluster, whose store
    /// is empty. (With copies from before, use [`new`](Self::new).)
    pub fn new_cluster(cfg: Config, store: S, now_ms: u64) -> Self {
        let mut node = Self::new(cfg, store, now_ms);
        node.mode = Mode::Serving;
        node
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (e.g. for the driver's expiry). Changing placements behind the
    /// node's back breaks its guarantees.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back (the node is gone: a crash or a stop).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The membership table.
    pub fn membership(&self) -> &Membership {
        &self.members
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// What the node is doing.
    pub fn phase(&self) -> Phase {
        match self.mode {
            Mode::Starting { .. } => Phase::Starting,
            Mode::Rejoining { .. } => Phase::Rejoining,
            Mode::Serving => Phase::Serving,
        }
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// What our next heartbeat carries: `(sessions held, draining)`. The driver adds its
    /// socket count and the HA flag.
    pub fn heartbeat_fields(&self) -> (u64, bool) {
        (self.store.hashes().len() as u64, self.draining)
    }

    /// Whether this node would serve `hash` as its master right now (copy names us master,
    /// serving, no placement change in flight, lease valid). For tests and statistics.
    pub fn serves(&self, hash: &Hash, now_ms: u64) -> Option<Placement> {
        let copy = self.store.get(hash)?;
        (self.servable(hash, &copy, now_ms) == Ok(())).then_some(copy.placement)
    }

    // ----------------------------------------------------------------------------------
    // Events

    /// A verified heartbeat (MAC checked, replay refused by `HeartbeatVerifier`). Never
    /// answered; the actions are protocol reactions (e.g. telling a returned node to rejoin).
    pub fn on_heartbeat(&mut self, beat: &PeerBeat, now_ms: u64) -> Vec<Action> {
        for event in self.members.on_heartbeat(beat, now_ms) {
            self.on_peer_event(event, now_ms);
        }
        self.take()
    }

    /// A request from a local client, numbered `req` by the driver (the reply carries it).
    pub fn on_client(&mut self, req: u64, request: Request, now_ms: u64) -> Vec<Action> {
        let to = ReplyTo::Local(req);
        match request {
            Request::Create { hash, lifetime_s } => self.create(to, hash, lifetime_s, now_ms),
            request => {
                let hash = request.hash();
                match self.store.get(&hash) {
                    Some(copy) if copy.placement.master == self.cfg.me => {
                        self.serve(to, request, false, now_ms)
                    }
                    _ => self.forward_start(to, request, now_ms),
                }
            }
        }
        self.take()
    }

    /// A message from the node at relay address `from` (authenticated by the relay handshake;
    /// `from` is the relay address the peer announced).
    pub fn on_message(&mut self, from: Addr, msg: Msg, now_ms: u64) -> Vec<Action> {
        if let Some(event) = self.members.on_heard(from, now_ms) {
            self.on_peer_event(event, now_ms);
        }
        match msg {
            Msg::Forward {
                fwd,
                request,
                failover,
            } => self.serve(ReplyTo::Remote(from, fwd), request, failover, now_ms),
            Msg::ForwardReply { fwd, reply } => self.forward_reply(from, fwd, reply, now_ms),
            Msg::Replicate { hash, copy, change } => {
                self.on_replicate(from, hash, copy, change, now_ms)
            }
            Msg::ReplicateAck {
                hash,
                epoch,
                version,
            } => self.on_ack(from, hash, epoch, version, now_ms),
            Msg::StaleEpoch { hash, epoch } => self.on_stale(from, hash, Some(epoch), now_ms),
            Msg::NotAgreed { hash, epoch } => self.on_refused(from, hash, epoch, now_ms),
            Msg::DropReplica { hash, epoch } => {
                if let Some(copy) = self.store.get(&hash)
                    && copy.placement.epoch < epoch
                    && copy.placement.master != self.cfg.me
                    && self.sessions.get(&hash).is_none_or(|l| l.pending.is_none())
                {
                    self.store.remove(&hash);
                    self.sessions.remove(&hash);
                }
            }
            Msg::LeaseRequest { nonce } => {
                // No promise not to take over while a takeover from the asker is in flight.
                let promoting = self.sessions.values().any(|l| {
                    l.pending.as_ref().is_some_and(|p| {
                        matches!(p.change, Change::Promote { old_master } if old_master == from)
                    })
                });
                let msg = if self.taken_over.contains(&from) || promoting {
                    Msg::LeaseDenied
                } else {
                    Msg::LeaseGrant { nonce }
                };
                self.send(from, msg);
            }
            Msg::LeaseGrant { nonce } => {
                if let Some((peer, sent_ms)) = self.lease_asks.remove(&nonce)
                    && peer == from
                {
                    let until = sent_ms + self.lease_len();
                    let lease = self.leases.entry(from).or_default();
                    lease.until_ms = lease.until_ms.max(until);
                    self.wake_all(now_ms);
                }
            }
            Msg::LeaseDenied | Msg::RejoinNeeded => self.enter_rejoin(now_ms, false),
            Msg::SyncRequest { sync, hashes } => self.on_sync_request(from, sync, hashes),
            Msg::SyncItem { sync, hash, copy } => self.on_sync_item(from, sync, hash, copy, now_ms),
            Msg::SyncEnd { sync, count } => {
                if let Mode::Rejoining { sync: current, .. } = &self.mode
                    && *current == sync
                {
                    self.sync_progress.entry(from).or_default().1 = Some(count);
                    self.sync_check(from, now_ms);
                }
            }
            Msg::Locate { loc, hash } => {
                let placement = self
                    .store
                    .get(&hash)
                    .map(|c| c.placement)
                    .or_else(|| self.moved.get(&hash).copied());
                let known = self.members.known().into_iter().collect();
                self.send(
                    from,
                    Msg::Located {
                        loc,
                        hash,
                        placement,
                        known,
                    },
                );
            }
            Msg::Located {
                loc,
                hash: _,
                placement,
                known,
            } => self.on_located(from, loc, placement, &known, now_ms),
        }
        self.take()
    }

    /// The connection to `to` could not be made or broke: requests relayed there are re-routed
    /// (to the backup, then by search).
    pub fn on_unreachable(&mut self, to: Addr, now_ms: u64) -> Vec<Action> {
        let ids: Vec<u64> = self
            .fwds
            .iter()
            .filter(|(_, f)| f.target == Some(to))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.forward_next(id, now_ms);
        }
        self.take()
    }

    /// Time passes. Call every `heartbeat_interval_ms / 4` or so (and at the flush interval
    /// under delayed-write).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        for event in self.members.tick(now_ms) {
            self.on_peer_event(event, now_ms);
        }
        self.tick_mode(now_ms);
        self.tick_leases(now_ms);
        self.tick_sessions(now_ms);
        self.tick_forwards(now_ms);
        self.tick_drain();
        self.take()
    }

    /// Starts draining: every session is handed to other nodes (as master: to its backup or
    /// the least-loaded node; as backup: its master replaces us), then
    /// [`Action::DrainComplete`]. Heartbeats should carry the draining flag from now on.
    pub fn start_drain(&mut self, now_ms: u64) -> Vec<Action> {
        self.draining = true;
        self.tick(now_ms)
    }

    // ----------------------------------------------------------------------------------
    // Helpers

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, to: Addr, msg: Msg) {
        self.out.push(Action::Send { to, msg });
    }

    fn reply(&mut self, to: ReplyTo, reply: Reply) {
        match to {
            ReplyTo::Local(req) => self.out.push(Action::Reply { req, reply }),
            ReplyTo::Remote(node, fwd) => self.send(node, Msg::ForwardReply { fwd, reply }),
        }
    }

    fn error(&mut self, to: ReplyTo, code: ErrorCode, reason: &'static str) {
        self.reply(to, Reply::Error { code, reason });
    }

    fn id(&mut self) -> u64 {
        // Wrapping: the count starts at `node_id(low 32 bits) << 32`, which may be near the top.
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn lease_len(&self) -> u64 {
        self.cfg
            .membership
            .node_timeout_ms
            .saturating_sub(self.cfg.lease_margin_ms)
    }

    fn lease_valid(&self, backup: Addr, now_ms: u64) -> bool {
        self.leases
            .get(&backup)
            .is_some_and(|l| l.until_ms > now_ms)
    }

    fn new_token(&mut self) -> u64 {
        self.token_counter = self.token_counter.wrapping_add(1).max(1);
        (u64::from(self.cfg.node_id as u32) << 32) | u64::from(self.token_counter)
    }

    fn live(&mut self, hash: Hash) -> &mut Live {
        self.sessions.entry(hash).or_default()
    }

    /// `copy` as it goes to another node outside a proposal (an update, a flush, a resend, a
    /// sync item): its `intent` names the placement change we proposed above its epoch and
    /// whose target may hold it — in flight, left unanswered (the shadow) or restored from
    /// before a restart — or is `None`. Such a copy confirms nothing to its backup (see
    /// [`confirms`]): the backup at epoch `e` must not become promotable (to `e + 1`) while
    /// `e + 1` or above may be held elsewhere.
    fn outgoing(&self, hash: &Hash, mut copy: Copy) -> Copy {
        let epoch = copy.placement.epoch;
        let live = self.sessions.get(hash);
        let pending = live.and_then(|l| l.pending.as_ref()).map(|p| Intent {
            target: p.target,
            epoch: p.copy.placement.epoch,
            handover: matches!(p.change, Change::Handover { .. }),
        });
        let shadow = live.and_then(|l| {
            l.shadow.map(|target| Intent {
                target,
                epoch: l.floor,
                handover: false,
            })
        });
        copy.intent = pending
            .into_iter()
            .chain(copy.intent)
            .chain(shadow)
            .find(|i| i.epoch > epoch);
        copy
    }

    fn on_peer_event(&mut self, event: PeerEvent, now_ms: u64) {
        if matches!(event, PeerEvent::Draining { .. }) {
            // Nothing to do at once: backup choice and placement upkeep read the table's
            // draining flag (`candidates`, `is_draining`) at their next step. The same
            // heartbeat's `Up`, `Restarted` or `Returned`, if any, came first.
            return;
        }
        if matches!(event, PeerEvent::Down { .. })
            && self.members.live_peers().next().is_none()
            && self.mode == Mode::Serving
        {
            // Everyone we know is gone: either they all died or we are the one cut off, in
            // which case the others may take over our sessions meanwhile.
            self.alone = true;
        }
        if self.alone && !matches!(event, PeerEvent::Down { .. }) {
            // Contact again after being alone: sync before acting on stale knowledge.
            self.alone = false;
            self.enter_rejoin(now_ms, false);
        }
        match event {
            PeerEvent::Up { .. } => {}
            PeerEvent::Down { addr, .. } => {
                self.leases.remove(&addr);
                let ids: Vec<u64> = self
                    .fwds
                    .iter()
                    .filter(|(_, f)| f.target == Some(addr))
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.forward_next(id, now_ms);
                }
            }
            PeerEvent::Returned { addr, .. } => {
                // We declared it down; whatever it mastered may have been taken over meanwhile.
                self.send(addr, Msg::RejoinNeeded);
                self.reconfirm_backed_by(addr);
            }
            PeerEvent::Restarted { addr, .. } => {
                // The new incarnation syncs before serving; its old lease is void, and it does
                // not remember what its old incarnation took over from us.
                self.leases.remove(&addr);
                self.reconfirm_backed_by(addr);
            }
            PeerEvent::Draining { .. } => {}
        }
    }

    /// Our sessions backed by `peer`, which we lost sight of (or which restarted), may have
    /// been taken over by it meanwhile: serve them again only after it witnesses a new epoch
    /// (`Resume`), which it refuses if it holds a later one.
    fn reconfirm_backed_by(&mut self, peer: Addr) {
        for hash in self.store.hashes() {
            if let Some(c) = self.store.get(&hash)
                && c.placement.master == self.cfg.me
                && c.placement.backup == Some(peer)
            {
                self.unconfirmed.insert(hash);
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Serving

    fn create(&mut self, to: ReplyTo, hash: Hash, lifetime_s: u32, now_ms: u64) {
        if self.mode != Mode::Serving || self.draining {
            return self.error(to, ErrorCode::Unavailable, "node not serving");
        }
        if self.store.get(&hash).is_some() {
            return self.error(to, ErrorCode::BadRequest, "hash in use");
        }
        let backup = if self.cfg.ha {
            choose_backup(self.members.candidates(), self.cfg.me, &[])
        } else {
            None
        };
        let placement = Placement {
            master: self.cfg.me,
            backup,
            epoch: 1,
        };
        self.store.put(
            hash,
            Copy {
                placement,
                version: 0,
                lifetime_s,
                deleted: false,
                data: Vec::new(),
                intent: None,
            },
        );
        if let Some(b) = backup
            && !self.lease_valid(b, now_ms)
        {
            self.ask_lease(b, now_ms);
        }
        self.reply(
            to,
            Reply::Created {
                id: placement.id(hash),
            },
        );
    }

    /// Why this node cannot serve `hash` as master now (`Err(true)`: wait, it may soon).
    fn servable(&self, hash: &Hash, copy: &Copy, now_ms: u64) -> Result<(), bool> {
        if copy.placement.master != self.cfg.me {
            return Err(false);
        }
        if self.mode != Mode::Serving || self.unconfirmed.contains(hash) {
            return Err(true);
        }
        if let Some(live) = self.sessions.get(hash)
            && (live.pending.is_some() || live.inflight.is_some())
        {
            return Err(true);
        }
        if let Some(b) = copy.placement.backup
            && !self.lease_valid(b, now_ms)
        {
            return Err(true);
        }
        if let Some(t) = self.sessions.get(hash).and_then(|l| l.shadow)
            && !self.lease_valid(t, now_ms)
        {
            return Err(true);
        }
        Ok(())
    }

    fn queue(&mut self, to: ReplyTo, request: Request, failover: bool, now_ms: u64) {
        let deadline_ms = now_ms + self.cfg.request_timeout_ms;
        let hash = request.hash();
        self.live(hash).waiting.push_back(Queued {
            to,
            request,
            failover,
            deadline_ms,
        });
    }

    /// Serves `request` here if this node is (or becomes, by failover) its master.
    fn serve(&mut self, to: ReplyTo, request: Request, failover: bool, now_ms: u64) {
        if let Request::Create { .. } = request {
            return self.error(to, ErrorCode::BadRequest, "create is never relayed");
        }
        let hash = request.hash();
        let Some(copy) = self.store.get(&hash) else {
            let hint = self.moved.get(&hash).map(|p| p.id(hash));
            return self.not_here(to, request, hint, now_ms);
        };
        let asked_epoch = request.id().map_or(0, |id| id.version);
        if copy.placement.master != self.cfg.me {
            if copy.placement.backup == Some(self.cfg.me)
                && failover
                && copy.placement.epoch >= asked_epoch
            {
                return self.promote(to, request, copy, now_ms);
            }
            let hint = (copy.placement.epoch > asked_epoch).then(|| copy.placement.id(hash));
            return self.not_here(to, request, hint, now_ms);
        }
        if asked_epoch > copy.placement.epoch {
            // The client knows a later placement than ours: ours is stale. Never serve it.
            return self.not_here(to, request, None, now_ms);
        }
        match self.servable(&hash, &copy, now_ms) {
            Ok(()) => self.execute(to, request, copy, now_ms),
            Err(true) => {
                if let Some(b) = copy.placement.backup
                    && !self.lease_valid(b, now_ms)
                {
                    self.ask_lease(b, now_ms);
                }
                self.queue(to, request, failover, now_ms);
            }
            Err(false) => self.not_here(to, request, None, now_ms),
        }
    }

    /// This node does not serve the session: a remote origin is told where it lives (if we
    /// know better), a local request is routed.
    fn not_here(&mut self, to: ReplyTo, request: Request, hint: Option<SessionId>, now_ms: u64) {
        match to {
            ReplyTo::Remote(..) => self.reply(to, Reply::Moved { id: hint }),
            ReplyTo::Local(_) => self.forward_start(to, request, now_ms),
        }
    }

    fn execute(&mut self, to: ReplyTo, request: Request, mut copy: Copy, now_ms: u64) {
        let hash = request.hash();
        let id = copy.placement.id(hash);
        if copy.deleted {
            return self.error(to, ErrorCode::NotFound, "destroyed");
        }
        let lock = self.sessions.get(&hash).and_then(|l| l.lock);
        let held = lock.filter(|(_, until)| *until > now_ms).map(|(t, _)| t);
        match request {
            Request::Create { .. } => self.error(to, ErrorCode::BadRequest, "create"),
            Request::Read { .. } => self.reply(
                to,
                Reply::Data {
                    id,
                    version: copy.version,
                    data: copy.data,
                    token: None,
                },
            ),
            Request::ReadLock { lease_ms, .. } => {
                if held.is_some() {
                    return self.error(to, ErrorCode::LockTimeout, "locked");
                }
                let token = self.new_token();
                self.live(hash).lock = Some((token, now_ms + u64::from(lease_ms)));
                self.reply(
                    to,
                    Reply::Data {
                        id,
                        version: copy.version,
                        data: copy.data,
                        token: Some(token),
                    },
                );
            }
            Request::Unlock { token, .. } => {
                if held != Some(token) {
                    return self.error(to, ErrorCode::NotLocked, "token not issued here");
                }
                self.live(hash).lock = None;
                self.reply(to, Reply::Done { id });
            }
            Request::Write {
                token,
                lifetime_s,
                data,
                ..
            } => {
                if held != Some(token) {
                    return self.error(to, ErrorCode::NotLocked, "token not issued here");
                }
                if self.queue_full(&copy, &hash) {
                    return self.queue(
                        to,
                        Request::Write {
                            id,
                            token,
                            lifetime_s,
                            data,
                        },
                        false,
                        now_ms,
                    );
                }
                copy.version += 1;
                copy.lifetime_s = lifetime_s;
                copy.data = data;
                let version = copy.version;
                self.store.put(hash, copy.clone());
                self.live(hash).lock = None;
                self.after_write(to, hash, copy, Reply::Written { id, version }, now_ms);
            }
            Request::Destroy { token, .. } => {
                if token != 0 && held != Some(token) {
                    return self.error(to, ErrorCode::NotLocked, "token not issued here");
                }
                if self.queue_full(&copy, &hash) {
                    return self.queue(to, Request::Destroy { id, token }, false, now_ms);
                }
                copy.version += 1;
                copy.deleted = true;
                copy.data = Vec::new();
                self.store.put(hash, copy.clone());
                self.live(hash).lock = None;
                self.after_write(to, hash, copy, Reply::Done { id }, now_ms);
            }
        }
    }

    /// Delayed-write: the backup's queue is full and this session is not in it yet.
    fn queue_full(&self, copy: &Copy, hash: &Hash) -> bool {
        let Some(backup) = copy.placement.backup else {
            return false;
        };
        if self.cfg.policy != FlushPolicy::DelayedWrite {
            return false;
        }
        let dirty = |c: &Copy, l: &Live| l.acked < c.version;
        if let Some(l) = self.sessions.get(hash)
            && dirty(copy, l)
        {
            return false;
        }
        let mut n = 0;
        for (h, l) in &self.sessions {
            if let Some(c) = self.store.get(h)
                && c.placement.backup == Some(backup)
                && c.placement.master == self.cfg.me
                && dirty(&c, l)
            {
                n += 1;
            }
        }
        n >= self.cfg.replication_queue_max
    }

    fn after_write(&mut self, to: ReplyTo, hash: Hash, copy: Copy, reply: Reply, now_ms: u64) {
        let Some(backup) = copy.placement.backup else {
            let version = copy.version;
            self.live(hash).acked = version;
            return self.reply(to, reply);
        };
        match self.cfg.policy {
            FlushPolicy::WriteThrough => {
                self.live(hash).inflight = Some(Inflight {
                    version: copy.version,
                    replies: vec![(to, reply)],
                    sent_ms: now_ms,
                });
                let copy = self.outgoing(&hash, copy);
                self.send(
                    backup,
                    Msg::Replicate {
                        hash,
                        copy,
                        change: Change::Update,
                    },
                );
            }
            FlushPolicy::DelayedWrite => self.reply(to, reply),
        }
    }

    fn wake(&mut self, hash: Hash, now_ms: u64) {
        let Some(live) = self.sessions.get_mut(&hash) else {
            return;
        };
        let waiting = std::mem::take(&mut live.waiting);
        for q in waiting {
            if q.deadline_ms <= now_ms {
                self.error(q.to, ErrorCode::Unavailable, "timed out");
                continue;
            }
            // Re-dispatch: serve here, or tell a remote origin where it went.
            match q.to {
                ReplyTo::Local(_) => match self.store.get(&hash) {
                    Some(c) if c.placement.master == self.cfg.me => {
                        self.serve(q.to, q.request, q.failover, now_ms)
                    }
                    _ => self.forward_start(q.to, q.request, now_ms),
                },
                ReplyTo::Remote(..) => self.serve(q.to, q.request, q.failover, now_ms),
            }
        }
    }

    fn wake_all(&mut self, now_ms: u64) {
        let hashes: Vec<Hash> = self
            .sessions
            .iter()
            .filter(|(_, l)| !l.waiting.is_empty())
            .map(|(h, _)| *h)
            .collect();
        for h in hashes {
            let servable = match self.store.get(&h) {
                Some(c) => self.servable(&h, &c, now_ms) != Err(true),
                None => true,
            };
            if servable {
                self.wake(h, now_ms);
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Failover and placement changes

    fn promote(&mut self, to: ReplyTo, request: Request, copy: Copy, now_ms: u64) {
        let hash = request.hash();
        if self.mode != Mode::Serving || self.draining {
            return self.error(to, ErrorCode::Unavailable, "backup not serving");
        }
        if self
            .sessions
            .get(&hash)
            .is_some_and(|l| l.pending.is_some())
        {
            return self.queue(to, request, true, now_ms);
        }
        if self
            .sessions
            .get(&hash)
            .is_some_and(|l| l.retry_after_ms > now_ms)
        {
            return self.error(to, ErrorCode::Unavailable, "failover refused; retry later");
        }
        let old_master = copy.placement.master;
        if self.doubtful.contains(&hash) {
            // Our master never confirmed this copy at its placement (it predates our rejoin,
            // or the proposal that made us its backup may have been abandoned): it may have
            // replaced us as its backup meanwhile.
            return self.error(
                to,
                ErrorCode::Unavailable,
                "replica not confirmed by its master",
            );
        }
        if !self.members.silent_long(old_master, now_ms) {
            // Rule: promote only after node_timeout without hearing the master (its lease
            // has run out by then).
            return self.error(to, ErrorCode::Unavailable, "master still heard");
        }
        let witness = choose_backup(self.members.candidates(), self.cfg.me, &[old_master]);
        let mut new = copy.clone();
        new.placement = Placement {
            master: self.cfg.me,
            backup: witness,
            epoch: copy.placement.epoch + 1,
        };
        match witness {
            Some(w) => {
                self.propose(
                    hash,
                    copy.placement.epoch,
                    new,
                    Change::Promote { old_master },
                    w,
                    now_ms,
                );
                self.queue(to, request, false, now_ms);
            }
            None if self.cfg.allow_alone => {
                // Two-node cluster: nobody can witness. Documented split-brain risk on a
                // symmetric partition of a two-node cluster.
                self.store.put(hash, new);
                self.taken_over.insert(old_master);
                self.stats.promotions += 1;
                self.serve(to, request, false, now_ms);
            }
            None => self.error(to, ErrorCode::Unavailable, "no witness for failover"),
        }
    }

    fn propose(
        &mut self,
        hash: Hash,
        base_epoch: u32,
        mut copy: Copy,
        change: Change,
        target: Addr,
        now_ms: u64,
    ) {
        let live = self.live(hash);
        copy.placement.epoch = copy.placement.epoch.max(live.floor + 1);
        live.floor = copy.placement.epoch;
        copy.intent = None;
        // The intent is durable before the proposal leaves: a restart must not forget that
        // the target may hold this placement.
        if let Some(mut cur) = self.store.get(&hash) {
            cur.intent = Some(Intent {
                target,
                epoch: copy.placement.epoch,
                handover: matches!(change, Change::Handover { .. }),
            });
            self.store.put(hash, cur);
        }
        self.send(
            target,
            Msg::Replicate {
                hash,
                copy: copy.clone(),
                change,
            },
        );
        self.live(hash).pending = Some(Pending {
            base_epoch,
            copy,
            change,
            target,
            sent_ms: now_ms,
        });
    }

    fn on_replicate(
        &mut self,
        from: Addr,
        hash: Hash,
        mut copy: Copy,
        change: Change,
        now_ms: u64,
    ) {
        let confirming = confirms(&copy);
        copy.intent = None;
        let me = self.cfg.me;
        let cur = self.store.get(&hash);
        let epoch = copy.placement.epoch;
        if let Some(cur) = &cur {
            if cur.placement.epoch > epoch {
                return self.send(
                    from,
                    Msg::StaleEpoch {
                        hash,
                        epoch: cur.placement.epoch,
                    },
                );
            }
            if cur.placement.epoch == epoch {
                if cur.placement != copy.placement {
                    return self.send(from, Msg::StaleEpoch { hash, epoch });
                }
                let version = cur.version.max(copy.version);
                if from == cur.placement.master
                    && matches!(change, Change::Update | Change::Refresh)
                {
                    // Confirmed by the master (a resent proposal confirms nothing: it may
                    // still abandon it) — unless the master has a placement change of its own
                    // outstanding above this epoch (a Rehome replacing us, say), which its
                    // target may hold: then we must not promote to that epoch, and hold the
                    // copy as doubtful until a later confirmation.
                    if confirming {
                        self.doubtful.remove(&hash);
                    } else {
                        self.doubtful.insert(hash);
                    }
                }
                if copy.version > cur.version {
                    copy.intent = cur.intent;
                    self.store.put(hash, copy);
                }
                return self.send(
                    from,
                    Msg::ReplicateAck {
                        hash,
                        epoch,
                        version,
                    },
                );
            }
            if self
                .sessions
                .get(&hash)
                .is_some_and(|l| l.pending.is_some())
            {
                return self.refuse(from, hash, epoch);
            }
        }
        // A placement epoch new to us: we are the witness of a placement change. One we
        // refused stays refused (a late duplicate must not be accepted after the proposer
        // took our refusal and went on serving).
        if self.refused.get(&hash).is_some_and(|r| *r >= epoch) {
            return self.refuse(from, hash, epoch);
        }
        // Nor do we accept an epoch we proposed ourselves (or one below): that proposal's
        // target may hold it, and a placement it holds at a higher epoch than the one we would
        // accept now would later win over every write made under ours.
        if self.sessions.get(&hash).is_some_and(|l| l.floor >= epoch) {
            return self.refuse(from, hash, epoch);
        }
        if !copy.placement.names(me)
            || copy.placement.master != from && !matches!(change, Change::Handover { .. })
        {
            return self.refuse(from, hash, epoch);
        }
        // A witness must be serving (it knows the cluster) and must have heard the proposer
        // without interruption for a node timeout: a node that was cut off (or restarted) is
        // told to rejoin before it may change any placement.
        let serving = self.mode == Mode::Serving
            && !self.draining
            && (matches!(change, Change::Update)
                || self.members.up_for(from, now_ms) >= self.cfg.membership.node_timeout_ms);
        let agreed = serving
            && match change {
                Change::Update => copy.placement.backup == Some(me) && cur.is_none(),
                // Never a new replica: only a copy held at this placement is refreshed.
                Change::Refresh => false,
                Change::AddBackup => true,
                Change::Promote { old_master } => self.members.silent_long(old_master, now_ms),
                Change::Rehome { old_backup } => {
                    self.members.silent_long(old_backup, now_ms)
                        || self.members.is_draining(old_backup)
                }
                Change::Resume => cur.as_ref().is_some_and(|c| c.placement.master == from),
                Change::Handover { old_master } => {
                    old_master == from && copy.placement.master == me && !self.draining
                }
            };
        if !agreed {
            return self.refuse(from, hash, epoch);
        }
        match change {
            Change::Promote { old_master } => {
                self.taken_over.insert(old_master);
            }
            Change::Rehome { old_backup } => {
                self.taken_over.insert(old_backup);
            }
            _ => {}
        }
        let version = copy.version;
        let handed = copy.placement.master == me;
        if handed || matches!(change, Change::Update) && confirming {
            self.doubtful.remove(&hash);
        } else {
            // We are the backup of a proposed placement: our answer may be lost and the
            // proposer may commit a later one elsewhere. Promotable only once the master
            // confirms this one (its next Replicate at this epoch; it sends one on commit).
            self.doubtful.insert(hash);
        }
        self.refused.remove(&hash);
        self.store.put(hash, copy);
        if handed {
            // We are the new master (handover): serve at once (no backup yet, no lease needed).
            self.sessions.remove(&hash);
        }
        self.send(
            from,
            Msg::ReplicateAck {
                hash,
                epoch,
                version,
            },
        );
    }

    fn refuse(&mut self, to: Addr, hash: Hash, epoch: u32) {
        let r = self.refused.entry(hash).or_default();
        *r = (*r).max(epoch);
        self.send(to, Msg::NotAgreed { hash, epoch });
    }

    fn on_ack(&mut self, from: Addr, hash: Hash, epoch: u32, version: u64, now_ms: u64) {
        let Some(cur) = self.store.get(&hash) else {
            return;
        };
        // A placement change?
        let pending = self.sessions.get(&hash).and_then(|l| l.pending.clone());
        if let Some(p) = pending
            && p.target == from
            && p.copy.placement.epoch == epoch
        {
            self.live(hash).pending = None;
            if cur.placement.epoch != p.base_epoch {
                // Something else changed the session meanwhile: drop the proposal.
                return self.wake(hash, now_ms);
            }
            self.commit(hash, cur, p, now_ms);
            return self.wake(hash, now_ms);
        }
        if cur.placement.master != self.cfg.me
            || cur.placement.epoch != epoch
            || cur.placement.backup != Some(from)
        {
            return;
        }
        let live = self.live(hash);
        live.acked = live.acked.max(version);
        if let Some(inf) = &live.inflight
            && inf.version <= version
        {
            let inf = live.inflight.take().expect("checked");
            for (to, reply) in inf.replies {
                self.reply(to, reply);
            }
            self.wake(hash, now_ms);
        }
    }

    fn commit(&mut self, hash: Hash, cur: Copy, p: Pending, now_ms: u64) {
        let me = self.cfg.me;
        let mut new = p.copy;
        // The session was blocked while the change was in flight, except for a write-through
        // write whose ack was pending: the proposal was taken after it, so it holds it.
        new.version = new.version.max(cur.version);
        match p.change {
            Change::Handover { .. } => {
                self.store.remove(&hash);
                self.moved.insert(hash, new.placement);
                self.stats.handed_over += 1;
                if let Some(b) = cur.placement.backup
                    && Some(b) != Some(new.placement.master)
                {
                    self.send(
                        b,
                        Msg::DropReplica {
                            hash,
                            epoch: new.placement.epoch,
                        },
                    );
                }
                if let Some(live) = self.sessions.get_mut(&hash)
                    && let Some(inf) = live.inflight.take()
                {
                    for (to, reply) in inf.replies {
                        self.reply(to, reply);
                    }
                }
                return;
            }
            Change::Promote { old_master } => {
                self.taken_over.insert(old_master);
                self.stats.promotions += 1;
            }
            Change::Rehome { old_backup } => {
                self.taken_over.insert(old_backup);
                self.stats.rehomes += 1;
                self.send(
                    old_backup,
                    Msg::DropReplica {
                        hash,
                        epoch: new.placement.epoch,
                    },
                );
            }
            Change::AddBackup => self.stats.backups_added += 1,
            Change::Resume | Change::Update | Change::Refresh => {}
        }
        debug_assert_eq!(new.placement.master, me);
        let acked = new.version;
        self.store.put(hash, new.clone());
        if let Some(b) = new.placement.backup {
            // Confirms the placement to the backup, which may promote only from a confirmed
            // copy (a write resends it too).
            self.send(
                b,
                Msg::Replicate {
                    hash,
                    copy: new.clone(),
                    change: Change::Update,
                },
            );
        }
        self.unconfirmed.remove(&hash);
        self.live(hash).shadow = None;
        if let Some(b) = new.placement.backup
            && !self.lease_valid(b, now_ms)
        {
            self.ask_lease(b, now_ms);
        }
        let live = self.live(hash);
        live.acked = live.acked.max(acked);
        if let Some(inf) = live.inflight.take() {
            // The new backup holds the proposal, which holds the write.
            for (to, mut reply) in inf.replies {
                if let Reply::Written { id, .. } | Reply::Done { id } = &mut reply {
                    *id = new.placement.id(hash);
                }
                self.reply(to, reply);
            }
        }
    }

    /// The target of our proposal at `epoch` did not agree (an answer to an older proposal is
    /// ignored: duplicates must not start new proposals).
    fn on_refused(&mut self, from: Addr, hash: Hash, epoch: u32, now_ms: u64) {
        let current = self
            .sessions
            .get(&hash)
            .and_then(|l| l.pending.as_ref())
            .is_some_and(|p| p.target == from && p.copy.placement.epoch == epoch);
        if current {
            self.on_stale(from, hash, None, now_ms);
        }
    }

    fn on_stale(&mut self, from: Addr, hash: Hash, epoch: Option<u32>, now_ms: u64) {
        let Some(cur) = self.store.get(&hash) else {
            return;
        };
        let pending = self.sessions.get(&hash).and_then(|l| l.pending.clone());
        if let Some(p) = pending
            && p.target == from
            // A StaleEpoch below our proposal's epoch answers an older message (e.g. a late
            // duplicate of an update): the proposal may still be accepted, keep waiting.
            && epoch.is_none_or(|e| e >= p.copy.placement.epoch)
        {
            let retry = now_ms + self.cfg.membership.heartbeat_interval_ms;
            let live = self.live(hash);
            live.pending = None;
            live.retry_after_ms = retry;
            if epoch.is_some_and(|e| e > cur.placement.epoch) {
                self.fence(hash, now_ms);
            } else {
                // Answered: the target does not hold the proposal.
                let mut cur = cur;
                cur.intent = None;
                self.store.put(hash, cur);
                self.wake(hash, now_ms);
            }
            return;
        }
        if epoch.is_some_and(|e| e > cur.placement.epoch)
            && cur.placement.master == self.cfg.me
            && cur.placement.backup == Some(from)
            && self.sessions.get(&hash).is_none_or(|l| l.pending.is_none())
        {
            // Our backup knows a later placement: we are an old master. Fenced.
            self.fence(hash, now_ms);
        }
    }

    /// Drops our copy: a later placement exists elsewhere. Held requests are re-routed.
    fn fence(&mut self, hash: Hash, now_ms: u64) {
        self.stats.fenced += 1;
        self.store.remove(&hash);
        self.unconfirmed.remove(&hash);
        self.doubtful.remove(&hash);
        if let Some(mut live) = self.sessions.remove(&hash) {
            if let Some(inf) = live.inflight.take() {
                for (to, _) in inf.replies {
                    self.error(
                        to,
                        ErrorCode::Unavailable,
                        "master fenced before the backup acked",
                    );
                }
            }
            for q in live.waiting {
                match q.to {
                    ReplyTo::Local(_) => self.forward_start(q.to, q.request, now_ms),
                    ReplyTo::Remote(..) => self.reply(q.to, Reply::Moved { id: None }),
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Leases

    fn ask_lease(&mut self, peer: Addr, now_ms: u64) {
        let nonce = self.id();
        self.lease_asks.insert(nonce, (peer, now_ms));
        self.send(peer, Msg::LeaseRequest { nonce });
    }

    fn tick_leases(&mut self, now_ms: u64) {
        let interval = self.cfg.membership.heartbeat_interval_ms;
        // Forget unanswered asks older than a lease.
        let horizon = now_ms.saturating_sub(self.lease_len());
        self.lease_asks.retain(|_, (_, sent)| *sent >= horizon);
        if self
            .last_lease_round_ms
            .is_some_and(|t| now_ms < t + interval / 2)
        {
            return;
        }
        self.last_lease_round_ms = Some(now_ms);
        let peers: Vec<Addr> = self.members.live_peers().map(|(a, _)| a).collect();
        for p in peers {
            self.ask_lease(p, now_ms);
        }
    }

    // ----------------------------------------------------------------------------------
    // Periodic work on sessions

    fn tick_sessions(&mut self, now_ms: u64) {
        let me = self.cfg.me;
        let resend_ms = self.cfg.membership.heartbeat_interval_ms;
        let serving = self.mode == Mode::Serving;
        let flush_due = now_ms >= self.last_flush_ms + self.cfg.flush_interval_ms;
        for hash in self.store.hashes() {
            // Fast path on the metadata: most sessions need nothing.
            let Some(meta) = self.store.meta(&hash) else {
                continue;
            };
            let live = self.sessions.get(&hash);
            let busy = live.is_some_and(|l| {
                l.pending.is_some()
                    || l.inflight.is_some()
                    || !l.waiting.is_empty()
                    || l.retry_after_ms > now_ms
            });
            let mastered = meta.placement.master == me;
            let dirty = self.cfg.policy == FlushPolicy::DelayedWrite
                && meta.placement.backup.is_some()
                && live.map_or(0, |l| l.acked) < meta.version;
            let upkeep = self.unconfirmed.contains(&hash)
                || self.draining
                || match meta.placement.backup {
                    None => self.cfg.ha && self.members.candidates().next().is_some(),
                    Some(b) => self.members.silent_long(b, now_ms) || self.members.is_draining(b),
                };
            if !busy && !(mastered && serving && (upkeep || (dirty && flush_due))) {
                continue;
            }
            let Some(copy) = self.store.get(&hash) else {
                continue;
            };
            // Expired waiters.
            if let Some(live) = self.sessions.get_mut(&hash)
                && live.waiting.iter().any(|q| q.deadline_ms <= now_ms)
            {
                let (gone, keep): (Vec<_>, Vec<_>) = live
                    .waiting
                    .drain(..)
                    .partition(|q| q.deadline_ms <= now_ms);
                live.waiting = keep.into();
                for q in gone {
                    self.error(q.to, ErrorCode::Unavailable, "timed out");
                }
            }
            // A pending placement change: resend until answered; give up only on a target
            // that went down (it may have accepted: it becomes the session's shadow).
            if let Some(p) = self.sessions.get(&hash).and_then(|l| l.pending.clone()) {
                let handover = matches!(p.change, Change::Handover { .. });
                if !self.members.is_up(p.target) && !handover {
                    let live = self.live(hash);
                    live.pending = None;
                    live.shadow = Some(p.target);
                    self.wake(hash, now_ms);
                } else if now_ms >= p.sent_ms + resend_ms && self.members.is_up(p.target) {
                    self.send(
                        p.target,
                        Msg::Replicate {
                            hash,
                            copy: p.copy.clone(),
                            change: p.change,
                        },
                    );
                    if let Some(pp) = self.live(hash).pending.as_mut() {
                        pp.sent_ms = now_ms;
                    }
                }
                continue;
            }
            if copy.placement.master != me {
                continue;
            }
            if !serving {
                continue;
            }
            // A session waiting for its Resume sends no Update: its copy may be stale (taken
            // over meanwhile), and a node without a copy would take it as a new replica, then
            // witness the Resume with it. The Resume carries the copy.
            let confirmed = !self.unconfirmed.contains(&hash);
            // Nor does a delayed-write flush go to a backup seen down: the first flush after a
            // heal would reach the backup before we hear it return (which makes the session
            // wait for its Resume). (A write-through resend still goes: the unacked write's
            // client waits for it; seed 51700 lost an acked write when resends stopped too. But
            // as a `Change::Refresh`, which never makes a new replica.)
            let backup_up = copy.placement.backup.is_none_or(|b| self.members.is_up(b));
            // Write-through: resend the unacked write.
            if let Some(b) = copy.placement.backup.filter(|_| confirmed) {
                let resend = self
                    .sessions
                    .get(&hash)
                    .and_then(|l| l.inflight.as_ref())
                    .is_some_and(|i| now_ms >= i.sent_ms + resend_ms);
                if resend {
                    if let Some(inf) = self
                        .sessions
                        .get_mut(&hash)
                        .and_then(|l| l.inflight.as_mut())
                    {
                        inf.sent_ms = now_ms;
                    }
                    let copy = self.outgoing(&hash, copy.clone());
                    // To a backup seen down it may only refresh a copy held there: see
                    // `Change::Refresh`.
                    let change = if backup_up {
                        Change::Update
                    } else {
                        Change::Refresh
                    };
                    self.send(b, Msg::Replicate { hash, copy, change });
                }
            }
            // Delayed-write: replicate dirty sessions each flush interval.
            if self.cfg.policy == FlushPolicy::DelayedWrite
                && confirmed
                && backup_up
                && let Some(b) = copy.placement.backup
                && now_ms >= self.last_flush_ms + self.cfg.flush_interval_ms
            {
                let live = self.live(hash);
                if live.acked < copy.version {
                    live.dirty_sent_ms = Some(now_ms);
                    let copy = self.outgoing(&hash, copy.clone());
                    self.send(
                        b,
                        Msg::Replicate {
                            hash,
                            copy,
                            change: Change::Update,
                        },
                    );
                }
            }
            // Placement upkeep.
            if self
                .sessions
                .get(&hash)
                .is_some_and(|l| l.retry_after_ms > now_ms)
            {
                continue;
            }
            let mut next = copy.clone();
            next.placement.epoch = copy.placement.epoch + 1;
            if self.unconfirmed.contains(&hash) {
                self.resume(hash, copy, now_ms);
                continue;
            }
            if self.draining {
                // Hand over only what we legitimately serve now (lease held): a node that was
                // cut off must rejoin first, whatever its operator asked.
                if self.servable(&hash, &copy, now_ms) != Ok(()) {
                    continue;
                }
                let target = copy
                    .placement
                    .backup
                    .filter(|b| self.members.is_up(*b) && !self.members.is_draining(*b))
                    .or_else(|| choose_backup(self.members.candidates(), me, &[]));
                if let Some(t) = target {
                    next.placement = Placement {
                        master: t,
                        backup: None,
                        epoch: copy.placement.epoch + 1,
                    };
                    self.propose(
                        hash,
                        copy.placement.epoch,
                        next,
                        Change::Handover { old_master: me },
                        t,
                        now_ms,
                    );
                }
                continue;
            }
            if !self.cfg.ha {
                continue;
            }
            match copy.placement.backup {
                None => {
                    self.propose_new_backup(hash, &copy, now_ms);
                }
                Some(b) => {
                    let gone = self.members.silent_long(b, now_ms) || self.members.is_draining(b);
                    if gone {
                        match choose_backup(self.members.candidates(), me, &[b]) {
                            Some(c) => {
                                next.placement.backup = Some(c);
                                self.propose(
                                    hash,
                                    copy.placement.epoch,
                                    next,
                                    Change::Rehome { old_backup: b },
                                    c,
                                    now_ms,
                                );
                            }
                            None if self.cfg.allow_alone => {
                                next.placement.backup = None;
                                self.taken_over.insert(b);
                                self.store.put(hash, next);
                                self.stats.rehomes += 1;
                                if let Some(live) = self.sessions.get_mut(&hash)
                                    && let Some(inf) = live.inflight.take()
                                {
                                    for (to, reply) in inf.replies {
                                        self.reply(to, reply);
                                    }
                                }
                                self.wake(hash, now_ms);
                            }
                            None => {}
                        }
                    }
                }
            }
        }
        if self.cfg.policy == FlushPolicy::DelayedWrite
            && now_ms >= self.last_flush_ms + self.cfg.flush_interval_ms
        {
            self.last_flush_ms = now_ms;
        }
    }

    /// For a session without a usable backup (`copy`, its current copy; placement upkeep and
    /// `resume`): with HA on, chooses a backup among the live, non-draining peers (least load,
    /// ties by address) and proposes it at the next epoch (`Change::AddBackup`; the backup
    /// witnesses the new epoch). Returns whether it proposed: false when HA is off or no peer
    /// can take it.
    fn propose_new_backup(&mut self, hash: Hash, copy: &Copy, now_ms: u64) -> bool {
        if !self.cfg.ha {
            return false;
        }
        let Some(backup) = choose_backup(self.members.candidates(), self.cfg.me, &[]) else {
            return false;
        };
        let mut next = copy.clone();
        next.placement.epoch = copy.placement.epoch + 1;
        next.placement.backup = Some(backup);
        self.propose(
            hash,
            copy.placement.epoch,
            next,
            Change::AddBackup,
            backup,
            now_ms,
        );
        true
    }

    /// A rejoined master takes its session back under a new epoch, witnessed by its backup.
    fn resume(&mut self, hash: Hash, copy: Copy, now_ms: u64) {
        if self
            .sessions
            .get(&hash)
            .is_some_and(|l| l.pending.is_some())
        {
            // A proposal is in flight (e.g. a handover left unanswered across the rejoin): its
            // target may serve the session now. Resume only once it is answered (or, for
            // anything but a handover, its target went down and shadows the session).
            return;
        }
        let me = self.cfg.me;
        let mut next = copy.clone();
        next.placement.epoch = copy.placement.epoch + 1;
        let backup = copy.placement.backup.filter(|b| *b != me && self.cfg.ha);
        match backup {
            Some(b) if self.members.is_up(b) && !self.members.silent_long(b, now_ms) => {
                self.propose(hash, copy.placement.epoch, next, Change::Resume, b, now_ms);
            }
            Some(_) => {
                // The backup is down: it may have taken over while we were away, and only it
                // (or its witness, also unheard in our sync) would know. Wait for it.
            }
            None => {
                if self.propose_new_backup(hash, &copy, now_ms) {
                    // Resume witnessed by the new backup.
                } else if self.sessions.get(&hash).is_none_or(|l| l.shadow.is_none()) {
                    let live = self.live(hash);
                    next.placement.epoch = next.placement.epoch.max(live.floor + 1);
                    live.floor = next.placement.epoch;
                    next.placement.backup = None;
                    self.store.put(hash, next);
                    self.unconfirmed.remove(&hash);
                    self.wake(hash, now_ms);
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Rejoin

    fn enter_rejoin(&mut self, now_ms: u64, wait: bool) {
        match self.mode {
            Mode::Starting { .. } | Mode::Rejoining { .. } => return,
            Mode::Serving => {}
        }
        self.stats.rejoins += 1;
        self.leases.clear();
        self.mode = if wait {
            Mode::Starting {
                until_ms: now_ms + self.cfg.membership.node_timeout_ms,
            }
        } else {
            Mode::Starting { until_ms: now_ms }
        };
        self.tick_mode(now_ms);
    }

    fn tick_mode(&mut self, now_ms: u64) {
        match &self.mode {
            Mode::Starting { until_ms } if now_ms >= *until_ms => {
                let sync = self.id();
                let me = self.cfg.me;
                for hash in self.store.hashes() {
                    if let Some(c) = self.store.get(&hash)
                        && c.placement.master != me
                    {
                        self.doubtful.insert(hash);
                    }
                }
                self.sync_progress.clear();
                self.sync_seen.clear();
                let peers: BTreeSet<Addr> = self.members.live_peers().map(|(a, _)| a).collect();
                if peers.is_empty() {
                    self.mode = Mode::Rejoining {
                        sync,
                        pending: peers,
                        sent_ms: now_ms,
                    };
                    self.finish_rejoin(now_ms);
                } else {
                    self.request_sync(sync, peers, now_ms);
                }
            }
            Mode::Rejoining {
                sync,
                pending,
                sent_ms,
            } => {
                let sync = *sync;
                let sent_ms = *sent_ms;
                let still: BTreeSet<Addr> = pending
                    .iter()
                    .copied()
                    .filter(|p| self.members.is_up(*p))
                    .collect();
                if still.is_empty() {
                    return self.finish_rejoin(now_ms);
                }
                if now_ms >= sent_ms + self.cfg.membership.heartbeat_interval_ms * 2 {
                    // Unanswered for two heartbeat intervals: asked again.
                    self.request_sync(sync, still, now_ms);
                } else {
                    self.mode = Mode::Rejoining {
                        sync,
                        pending: still,
                        sent_ms,
                    };
                }
            }
            _ => {}
        }
    }

    fn on_sync_request(&mut self, from: Addr, sync: u64, hashes: Vec<Hash>) {
        let asked: BTreeSet<Hash> = hashes.into_iter().collect();
        self.taken_over.remove(&from);
        let mut count = 0;
        for hash in self.store.hashes() {
            let Some(copy) = self.store.get(&hash) else {
                continue;
            };
            if copy.placement.names(from) || asked.contains(&hash) {
                count += 1;
                let copy = self.outgoing(&hash, copy);
                self.send(from, Msg::SyncItem { sync, hash, copy });
            }
        }
        for (hash, placement) in &self.moved {
            if asked.contains(hash) && self.store.get(hash).is_none() {
                count += 1;
                let copy = Copy {
                    placement: *placement,
                    version: 0,
                    lifetime_s: 0,
                    deleted: true,
                    data: Vec::new(),
                    intent: None,
                };
                self.out.push(Action::Send {
                    to: from,
                    msg: Msg::SyncItem {
                        sync,
                        hash: *hash,
                        copy,
                    },
                });
            }
        }
        self.send(from, Msg::SyncEnd { sync, count });
    }

    /// A peer's sync stream is complete once every item it announced has arrived (items and
    /// the end may be reordered or duplicated).
    fn sync_check(&mut self, from: Addr, now_ms: u64) {
        let done = self
            .sync_progress
            .get(&from)
            .is_some_and(|(got, want)| want.is_some_and(|w| got.len() as u64 >= w));
        if !done {
            return;
        }
        if let Mode::Rejoining { pending, .. } = &mut self.mode {
            pending.remove(&from);
            if pending.is_empty() {
                self.finish_rejoin(now_ms);
            }
        }
    }

    fn on_sync_item(&mut self, from: Addr, sync: u64, hash: Hash, mut copy: Copy, now_ms: u64) {
        let confirming = confirms(&copy);
        copy.intent = None;
        let me = self.cfg.me;
        if let Mode::Rejoining { sync: current, .. } = self.mode
            && current == sync
        {
            self.sync_progress.entry(from).or_default().0.insert(hash);
            let seen = self.sync_seen.entry(hash).or_default();
            if copy.order() < *seen {
                // An older copy than one another peer reported: a stale replica.
                return self.sync_check(from, now_ms);
            }
            *seen = copy.order();
            if from == copy.placement.master
                && copy.placement.backup == Some(me)
                && self
                    .store
                    .get(&hash)
                    .is_none_or(|c| c.order() <= copy.order())
            {
                // Our master's own copy confirms ours, unless it has a placement change of
                // its own outstanding above that epoch (`confirms`).
                if confirming {
                    self.doubtful.remove(&hash);
                } else {
                    self.doubtful.insert(hash);
                }
            }
            // Never adopt a copy we do not hold: placements are durable, so not holding it
            // means we dropped it (fenced, handed over), whatever a stale replica elsewhere
            // still says.
            if let Some(cur) = self.store.get(&hash)
                && copy.order() > cur.order()
            {
                if copy.placement.names(me) {
                    self.store.put(hash, copy);
                } else {
                    self.stats.fenced += 1;
                    self.store.remove(&hash);
                    self.sessions.remove(&hash);
                }
            }
            return self.sync_check(from, now_ms);
        }
        // Outside a rejoin (a peer pushing): only a fresher copy of one we back up.
        let _ = from;
    }

    /// Asks each of `peers` for the copies that concern this node (rejoin), and waits for them.
    fn request_sync(&mut self, sync: u64, peers: BTreeSet<Addr>, now_ms: u64) {
        let hashes = self.store.hashes();
        for p in &peers {
            self.send(
                *p,
                Msg::SyncRequest {
                    sync,
                    hashes: hashes.clone(),
                },
            );
        }
        self.mode = Mode::Rejoining {
            sync,
            pending: peers,
            sent_ms: now_ms,
        };
    }

    fn finish_rejoin(&mut self, now_ms: u64) {
        self.mode = Mode::Serving;
        let me = self.cfg.me;
        // Copies older than what a peer holds were taken over (or are stale replicas).
        let seen = std::mem::take(&mut self.sync_seen);
        for (hash, order) in seen {
            if let Some(c) = self.store.get(&hash)
                && c.order() < order
                && !(c.placement.epoch == order.0 && c.placement.master == me)
            {
                self.stats.fenced += 1;
                self.store.remove(&hash);
                self.sessions.remove(&hash);
            }
        }
        for hash in self.store.hashes() {
            if let Some(c) = self.store.get(&hash)
                && c.placement.master == me
            {
                self.unconfirmed.insert(hash);
            }
        }
        let hashes: Vec<Hash> = self.unconfirmed.iter().copied().collect();
        for hash in hashes {
            if let Some(c) = self.store.get(&hash) {
                self.resume(hash, c, now_ms);
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Drain

    fn tick_drain(&mut self) {
        if self.draining && !self.drain_reported && self.store.hashes().is_empty() {
            self.drain_reported = true;
            self.out.push(Action::DrainComplete);
        }
    }

    // ----------------------------------------------------------------------------------
    // Routing (origin side)

    fn forward_start(&mut self, to: ReplyTo, request: Request, now_ms: u64) {
        let Some(id) = request.id() else {
            return self.error(to, ErrorCode::BadRequest, "no session");
        };
        let hash = id.hash;
        let mut placement = Placement::of(&id);
        // A later placement known here beats the client's.
        if let Some(c) = self.store.get(&hash)
            && c.placement.epoch > placement.epoch
        {
            placement = c.placement;
        }
        if let Some(p) = self.moved.get(&hash)
            && p.epoch > placement.epoch
        {
            placement = *p;
        }
        let fid = self.id();
        self.fwds.insert(
            fid,
            Fwd {
                to,
                request,
                placement,
                stage: Stage::Master,
                target: None,
                hops: 0,
                deadline_ms: now_ms + self.cfg.request_timeout_ms,
            },
        );
        self.forward_go(fid, now_ms);
    }

    /// Sends the forward to the target of its current stage (or moves on).
    fn forward_go(&mut self, fid: u64, now_ms: u64) {
        let me = self.cfg.me;
        let Some(f) = self.fwds.get_mut(&fid) else {
            return;
        };
        f.hops += 1;
        if f.hops > HOPS_MAX {
            let f = self.fwds.remove(&fid).expect("present");
            return self.error(f.to, ErrorCode::Unavailable, "session not reachable");
        }
        match f.stage {
            Stage::Master => {
                let m = f.placement.master;
                if m == me || !self.members.is_up(m) && self.members.silent_long(m, now_ms) {
                    return self.forward_next(fid, now_ms);
                }
                f.target = Some(m);
                let request = f.request.clone();
                self.stats.forwarded += 1;
                self.send(
                    m,
                    Msg::Forward {
                        fwd: fid,
                        request,
                        failover: false,
                    },
                );
            }
            Stage::Backup => {
                let Some(b) = f.placement.backup else {
                    return self.forward_next(fid, now_ms);
                };
                let mut request = f.request.clone();
                if let Some(id) = request.id() {
                    // Ask at the placement we believe in.
                    let id = id.moved(f.placement.master, f.placement.backup, f.placement.epoch);
                    set_id(&mut request, id);
                }
                if b == me {
                    // We are the backup the client's request names: take over if we may.
                    match self.store.get(&request.hash()) {
                        Some(copy)
                            if copy.placement.backup == Some(me) && copy.placement.master != me =>
                        {
                            let f = self.fwds.remove(&fid).expect("present");
                            return self.promote(f.to, request, copy, now_ms);
                        }
                        _ => return self.forward_next(fid, now_ms),
                    }
                }
                f.target = Some(b);
                self.stats.forwarded += 1;
                self.send(
                    b,
                    Msg::Forward {
                        fwd: fid,
                        request,
                        failover: true,
                    },
                );
            }
            Stage::Locate { loc, .. } => {
                let peers: BTreeSet<Addr> = self.members.live_peers().map(|(a, _)| a).collect();
                if peers.is_empty() {
                    let f = self.fwds.remove(&fid).expect("present");
                    return self.error(f.to, ErrorCode::Unavailable, "no live node has it");
                }
                let hash = f.request.hash();
                f.target = None;
                // Everyone we know of (heard of or configured, up or down), including the nodes
                // the ID names (a node restarted during a partition may not know them).
                let me = self.cfg.me;
                let named = [Some(f.placement.master), f.placement.backup];
                let everyone = self
                    .members
                    .known()
                    .iter()
                    .chain(named.iter().flatten())
                    .all(|n| *n == me || peers.contains(n));
                f.stage = Stage::Locate {
                    loc,
                    all: peers.clone(),
                    asked: peers.clone(),
                    best: None,
                    everyone,
                };
                for p in peers {
                    self.send(p, Msg::Locate { loc: fid, hash });
                }
            }
        }
    }

    fn forward_next(&mut self, fid: u64, now_ms: u64) {
        let Some(f) = self.fwds.get_mut(&fid) else {
            return;
        };
        f.stage = match f.stage {
            Stage::Master => Stage::Backup,
            Stage::Backup => Stage::Locate {
                loc: fid,
                asked: BTreeSet::new(),
                best: None,
                everyone: false,
                all: BTreeSet::new(),
            },
            Stage::Locate { .. } => {
                let f = self.fwds.remove(&fid).expect("present");
                return self.error(f.to, ErrorCode::Unavailable, "session not reachable");
            }
        };
        self.forward_go(fid, now_ms);
    }

    fn forward_reply(&mut self, from: Addr, fid: u64, reply: Reply, now_ms: u64) {
        let Some(f) = self.fwds.get(&fid) else {
            return;
        };
        if f.target != Some(from) {
            return;
        }
        match reply {
            Reply::Moved { id: Some(id) } if id.version > f.placement.epoch => {
                let f = self.fwds.get_mut(&fid).expect("present");
                f.placement = Placement::of(&id);
                f.stage = Stage::Master;
                self.forward_go(fid, now_ms);
            }
            Reply::Moved { .. } => self.forward_next(fid, now_ms),
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            } if matches!(f.stage, Stage::Master) => self.forward_next(fid, now_ms),
            reply => {
                let f = self.fwds.remove(&fid).expect("present");
                self.reply(f.to, reply);
            }
        }
    }

    fn on_located(
        &mut self,
        from: Addr,
        loc: u64,
        placement: Option<Placement>,
        known: &[Addr],
        now_ms: u64,
    ) {
        let me = self.cfg.me;
        let Some(f) = self.fwds.get_mut(&loc) else {
            return;
        };
        let Stage::Locate {
            asked,
            best,
            everyone,
            all,
            ..
        } = &mut f.stage
        else {
            return;
        };
        if !asked.remove(&from) {
            return;
        }
        if known.iter().any(|n| *n != me && !all.contains(n)) {
            // The answering node knows a node we did not ask (up or down there: a node down
            // now may hold the only copy).
            *everyone = false;
        }
        if let Some(p) = placement
            && best.is_none_or(|b| p.epoch > b.epoch)
        {
            *best = Some(p);
        }
        if !asked.is_empty() {
            return;
        }
        let best = *best;
        let everyone = *everyone;
        match best {
            Some(p) if p.epoch > f.placement.epoch => {
                f.placement = p;
                f.stage = Stage::Master;
                self.forward_go(loc, now_ms);
            }
            _ => {
                let f = self.fwds.remove(&loc).expect("present");
                // "Not found" only when every node we know of answered: a down node may hold it.
                // Nor while we are (re)starting: we may not know every node yet.
                let hash = f.request.hash();
                let sure =
                    everyone && self.mode == Mode::Serving && self.store.get(&hash).is_none();
                let code = if best.is_none() && sure {
                    ErrorCode::NotFound
                } else {
                    ErrorCode::Unavailable
                };
                self.error(f.to, code, "session not found on any live node");
            }
        }
    }

    fn tick_forwards(&mut self, now_ms: u64) {
        let late: Vec<u64> = self
            .fwds
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let f = self.fwds.remove(&id).expect("present");
            self.error(f.to, ErrorCode::Unavailable, "timed out");
        }
    }
}

/// Whether `copy`, received from its master outside a proposal, confirms the receiver's copy
/// at its placement: not when it names a placement change its master proposed above that
/// epoch and whose target may hold it ([`Node::outgoing`]). A backup confirmed at epoch `e`
/// may promote to `e + 1`; while its master may have `e + 1` (or above) accepted elsewhere,
/// that would make two placements at one epoch.
fn confirms(copy: &Copy) -> bool {
    copy.intent.is_none_or(|i| i.epoch <= copy.placement.epoch)
}

fn set_id(request: &mut Request, new: SessionId) {
    match request {
        Request::Create { .. } => {}
        Request::ReadLock { id, .. }
        | Request::Read { id }
        | Request::Write { id, .. }
        | Request::Unlock { id, .. }
        | Request::Destroy { id, .. } => *id = new,
    }
}
