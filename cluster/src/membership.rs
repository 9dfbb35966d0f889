//! Membership: who is alive, how loaded, and when to send our own heartbeat.
//!
//! Fed with heartbeats that the driver has already opened and run through
//! [`scd_wire::HeartbeatVerifier`] (MAC checked, replays refused), and with "heard from" notices
//! for every authenticated relay message. Time is the `now_ms` argument; nothing here reads a
//! clock.
//!
//! A peer is told apart across restarts by its [`incarnation`]: its node ID mixed with its start
//! epoch, so that a driver whose node ID is persistent (the daemon's `data_dir/node-id`) and one
//! whose node ID is random at every start (the simulation, epoch 0) are both understood.

use std::collections::{BTreeMap, BTreeSet};

use crate::Addr;

/// The incarnation of a node: its node ID mixed with the epoch of its current start (the
/// heartbeat's `epoch`, strictly larger at every start of its daemon). A restart (new epoch) or a
/// new node ID (a new data directory) on the same address gives a new incarnation, which
/// [`Membership`] reports as [`PeerEvent::Restarted`]; equal inputs give equal incarnations.
///
/// Epoch 0 leaves the node ID as it is (`incarnation(id, 0) == id`): a driver whose node ID is
/// already random at each start passes epoch 0.
pub fn incarnation(node_id: u64, epoch: u64) -> u64 {
    // The golden-ratio multiplier spreads consecutive epochs over all 64 bits, so that two starts
    // of one node ID do not give two incarnations a few bits apart from other nodes' IDs.
    node_id ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One peer's heartbeat, as the membership needs it (see [`PeerBeat::from_heartbeat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerBeat {
    /// The sender's relay address (its identity on the wire, as in session IDs).
    pub relay: Addr,
    /// The sender's node ID, as its heartbeat carries it (persistent in the daemon; what relay
    /// handshakes name, see [`Membership::addr_of`]).
    pub node_id: u64,
    /// The sender's start epoch (the heartbeat's `epoch`); 0 where the node ID alone tells
    /// incarnations apart. See [`incarnation`].
    pub epoch: u64,
    /// Sessions the sender holds.
    pub sessions: u64,
    /// Sockets the sender has open.
    pub sockets: u32,
    /// The sender is draining: never pick it as a backup or a new master.
    pub draining: bool,
    /// The sender is a witness only: it holds no sessions, so it is never picked as a backup or
    /// a new master, but it is a member (it counts in [`Membership::known`] and witnesses).
    pub witness_only: bool,
}

impl PeerBeat {
    /// The fields of a verified wire heartbeat.
    pub fn from_heartbeat(hb: &scd_wire::Heartbeat) -> Self {
        PeerBeat {
            relay: hb.relay,
            node_id: hb.node_id,
            epoch: hb.epoch,
            sessions: hb.sessions,
            sockets: hb.sockets,
            draining: hb.draining(),
            witness_only: hb.witness_only(),
        }
    }

    /// The sender's [`incarnation`].
    pub fn incarnation(&self) -> u64 {
        incarnation(self.node_id, self.epoch)
    }

    /// The load used to choose backups: sessions plus sockets.
    pub fn load(&self) -> u64 {
        self.sessions.saturating_add(u64::from(self.sockets))
    }
}

/// A change in a peer's state, reported by [`Membership::on_heartbeat`], [`Membership::on_heard`]
/// and [`Membership::tick`]. `node_id` is the node ID of the peer's latest heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// First heard of this peer (this node's lifetime).
    Up {
        /// The peer's relay address.
        addr: Addr,
        /// Its node ID.
        node_id: u64,
    },
    /// The peer runs under a new [`incarnation`] (a new start epoch or a new node ID): it
    /// restarted, maybe faster than the node timeout (its old incarnation is gone).
    Restarted {
        /// The peer's relay address.
        addr: Addr,
        /// The incarnation it had.
        old: u64,
        /// The incarnation it has now.
        new: u64,
    },
    /// Not heard for `node_timeout_ms`: down.
    Down {
        /// The peer's relay address.
        addr: Addr,
        /// Its node ID.
        node_id: u64,
    },
    /// Heard again, same node ID, after it was declared down (a healed partition). Whatever it
    /// served meanwhile may have been taken over: it must rejoin before serving.
    Returned {
        /// The peer's relay address.
        addr: Addr,
        /// Its node ID.
        node_id: u64,
    },
    /// The peer announced that it is draining: reported once per start of a drain (its first
    /// heartbeat with the draining flag, including the first one of a new incarnation), after
    /// the `Up`, `Restarted` or `Returned` that the same heartbeat may report.
    Draining {
        /// The peer's relay address.
        addr: Addr,
        /// Its node ID.
        node_id: u64,
    },
}

/// Membership timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Mean interval between our heartbeats (jittered ±20%).
    pub heartbeat_interval_ms: u64,
    /// A peer not heard for this long is down (default `3 × interval + 500`).
    pub node_timeout_ms: u64,
}

impl MembershipConfig {
    /// The defaults for a given heartbeat interval: node timeout `3 × interval + 500`.
    pub fn with_interval(heartbeat_interval_ms: u64) -> Self {
        MembershipConfig {
            heartbeat_interval_ms,
            node_timeout_ms: heartbeat_interval_ms.saturating_mul(3).saturating_add(500),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    /// The node ID of its latest heartbeat.
    node_id: u64,
    /// Its [`incarnation`], from the same heartbeat.
    incarnation: u64,
    last_heard_ms: u64,
    /// When it last came up (first heard, restarted, or returned).
    up_since_ms: u64,
    load: u64,
    draining: bool,
    witness_only: bool,
    up: bool,
}

/// The live-node table of one node.
///
/// A peer is *up* from its first heartbeat until `node_timeout_ms` pass without hearing from it
/// (heartbeat or any relay message). A peer this node never heard of is not up.
#[derive(Clone, Debug)]
pub struct Membership {
    me: Addr,
    started_ms: u64,
    config: MembershipConfig,
    peers: BTreeMap<Addr, Peer>,
    /// Node ID → the address whose latest heartbeat carried it: at most one node ID per address
    /// (a new node ID on an address replaces the old one; a node ID heard on a new address
    /// moves there).
    by_node_id: BTreeMap<u64, Addr>,
    /// Nodes configured as members: known even before (or without) being heard.
    configured: BTreeSet<Addr>,
    /// When we last heard, by an authenticated relay message, a peer we have had no heartbeat
    /// from yet (so not in `peers`): it is not up, but it is not silent either
    /// ([`Membership::silent_for`]). Dropped at its first heartbeat.
    heard_unknown: BTreeMap<Addr, u64>,
}

impl Membership {
    /// A table for the node at relay address `me`, started at `now_ms`.
    pub fn new(me: Addr, config: MembershipConfig, now_ms: u64) -> Self {
        Membership {
            me,
            started_ms: now_ms,
            config,
            peers: BTreeMap::new(),
            by_node_id: BTreeMap::new(),
            configured: BTreeSet::new(),
            heard_unknown: BTreeMap::new(),
        }
    }

    /// Adds configured members (our own address is ignored): they count as known (see
    /// [`Membership::known`]) from now on, heard or not. They are not up until heard.
    pub fn configure(&mut self, peers: impl IntoIterator<Item = Addr>) {
        let me = self.me;
        self.configured
            .extend(peers.into_iter().filter(|a| *a != me));
    }

    /// Our relay address.
    pub fn me(&self) -> Addr {
        self.me
    }

    /// The timing in force.
    pub fn config(&self) -> MembershipConfig {
        self.config
    }

    /// Takes in a verified heartbeat and returns what changed, in order: `Up`, `Restarted` or
    /// `Returned` when it brings the peer (back) up, then `Draining` when it starts a drain. Our
    /// own (looped-back broadcast) is ignored.
    pub fn on_heartbeat(&mut self, beat: &PeerBeat, now_ms: u64) -> Vec<PeerEvent> {
        let mut events = Vec::new();
        let addr = beat.relay;
        if addr == self.me {
            return events;
        }
        let node_id = beat.node_id;
        let incarnation = beat.incarnation();
        self.heard_unknown.remove(&addr);
        // Whether this heartbeat starts a drain: a new incarnation starts not draining.
        let drain_starts = match self.peers.get_mut(&addr) {
            None => {
                self.peers.insert(
                    addr,
                    Peer {
                        node_id,
                        incarnation,
                        last_heard_ms: now_ms,
                        up_since_ms: now_ms,
                        load: beat.load(),
                        draining: beat.draining,
                        witness_only: beat.witness_only,
                        up: true,
                    },
                );
                events.push(PeerEvent::Up { addr, node_id });
                beat.draining
            }
            Some(peer) => {
                peer.last_heard_ms = peer.last_heard_ms.max(now_ms);
                let was_draining = if peer.incarnation != incarnation {
                    events.push(PeerEvent::Restarted {
                        addr,
                        old: peer.incarnation,
                        new: incarnation,
                    });
                    peer.incarnation = incarnation;
                    peer.up = true;
                    peer.up_since_ms = now_ms;
                    false
                } else {
                    if !peer.up {
                        peer.up = true;
                        peer.up_since_ms = now_ms;
                        events.push(PeerEvent::Returned { addr, node_id });
                    }
                    peer.draining
                };
                if peer.node_id != node_id && self.by_node_id.get(&peer.node_id) == Some(&addr) {
                    // One node ID per address: the old one is gone from here.
                    self.by_node_id.remove(&peer.node_id);
                }
                peer.node_id = node_id;
                peer.load = beat.load();
                peer.draining = beat.draining;
                peer.witness_only = beat.witness_only;
                beat.draining && !was_draining
            }
        };
        self.by_node_id.insert(node_id, addr);
        if drain_starts {
            events.push(PeerEvent::Draining { addr, node_id });
        }
        events
    }

    /// Notes that an authenticated message (not a heartbeat) came from `addr`: refreshes its
    /// liveness like a heartbeat. A peer not heard of yet by heartbeat stays unknown (nothing
    /// says which incarnation sent it) but is no longer *silent* ([`Membership::silent_for`]):
    /// a node that just heard its master must not take over from it; a peer that was down is
    /// `Returned`.
    pub fn on_heard(&mut self, addr: Addr, now_ms: u64) -> Option<PeerEvent> {
        if addr == self.me {
            return None;
        }
        let Some(peer) = self.peers.get_mut(&addr) else {
            let last = self.heard_unknown.entry(addr).or_insert(now_ms);
            *last = (*last).max(now_ms);
            return None;
        };
        peer.last_heard_ms = peer.last_heard_ms.max(now_ms);
        if peer.up {
            return None;
        }
        peer.up = true;
        peer.up_since_ms = now_ms;
        Some(PeerEvent::Returned {
            addr,
            node_id: peer.node_id,
        })
    }

    /// Declares down every peer silent for `node_timeout_ms`. Call at least every heartbeat
    /// interval.
    pub fn tick(&mut self, now_ms: u64) -> Vec<PeerEvent> {
        let timeout = self.config.node_timeout_ms;
        let mut events = Vec::new();
        for (addr, peer) in &mut self.peers {
            if peer.up && now_ms.saturating_sub(peer.last_heard_ms) >= timeout {
                peer.up = false;
                events.push(PeerEvent::Down {
                    addr: *addr,
                    node_id: peer.node_id,
                });
            }
        }
        events
    }

    /// Whether `addr` is up (we are always up to ourselves).
    pub fn is_up(&self, addr: Addr) -> bool {
        addr == self.me || self.peers.get(&addr).is_some_and(|p| p.up)
    }

    /// Whether `addr` announced it is a witness only (holds no sessions).
    pub fn is_witness_only(&self, addr: Addr) -> bool {
        self.peers.get(&addr).is_some_and(|p| p.witness_only)
    }

    /// Whether `addr` announced it is draining.
    pub fn is_draining(&self, addr: Addr) -> bool {
        self.peers.get(&addr).is_some_and(|p| p.draining)
    }

    /// How long `addr` has been silent, counting from our own start for a peer never heard (a
    /// restarted node does not assume its peers dead). `0` for ourselves.
    pub fn silent_for(&self, addr: Addr, now_ms: u64) -> u64 {
        if addr == self.me {
            return 0;
        }
        let last = self
            .peers
            .get(&addr)
            .map(|p| p.last_heard_ms)
            .or_else(|| self.heard_unknown.get(&addr).copied())
            .map_or(self.started_ms, |t| t.max(self.started_ms));
        now_ms.saturating_sub(last)
    }

    /// Whether `addr` has been silent for at least `node_timeout_ms` (the condition to take
    /// over from it).
    pub fn silent_long(&self, addr: Addr, now_ms: u64) -> bool {
        self.silent_for(addr, now_ms) >= self.config.node_timeout_ms
    }

    /// How long `addr` has been up without interruption (since we first heard it, or since it
    /// restarted or returned); 0 if it is down or unknown.
    pub fn up_for(&self, addr: Addr, now_ms: u64) -> u64 {
        match self.peers.get(&addr) {
            Some(p) if p.up => now_ms.saturating_sub(p.up_since_ms),
            _ => 0,
        }
    }

    /// The node ID of the latest heartbeat from `addr`.
    pub fn node_id(&self, addr: Addr) -> Option<u64> {
        self.peers.get(&addr).map(|p| p.node_id)
    }

    /// The [`incarnation`] of the latest heartbeat from `addr`.
    pub fn incarnation(&self, addr: Addr) -> Option<u64> {
        self.peers.get(&addr).map(|p| p.incarnation)
    }

    /// The relay address of the node with ID `node_id`: the address whose latest heartbeat
    /// carried it, if any (a relay handshake names the peer's node ID, not its address). Up or
    /// down: the caller asks [`Membership::is_up`].
    pub fn addr_of(&self, node_id: u64) -> Option<Addr> {
        self.by_node_id.get(&node_id).copied()
    }

    /// Load last announced by `addr`.
    pub fn load(&self, addr: Addr) -> Option<u64> {
        self.peers.get(&addr).map(|p| p.load)
    }

    /// Up peers (not us) with their load, in address order.
    pub fn live_peers(&self) -> impl Iterator<Item = (Addr, u64)> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(a, p)| (*a, p.load))
    }

    /// Up peers that may take sessions (not draining, not witnesses only), with their load, in
    /// address order.
    pub fn candidates(&self) -> impl Iterator<Item = (Addr, u64)> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.up && !p.draining && !p.witness_only)
            .map(|(a, p)| (*a, p.load))
    }

    /// Every node we know of: us, the configured members and every peer ever heard of (this
    /// incarnation), up or down.
    pub fn known(&self) -> BTreeSet<Addr> {
        let mut known = self.configured.clone();
        known.extend(self.peers.keys().copied());
        known.insert(self.me);
        known
    }

    /// Nodes ever heard of or configured, plus us: the cluster size as far as we know.
    pub fn known_nodes(&self) -> usize {
        self.known().len()
    }
}

/// When to send our next heartbeat: the interval with ±20% jitter so that nodes do not send in
/// step. Randomness is an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatSchedule {
    interval_ms: u64,
    next_ms: u64,
}

impl HeartbeatSchedule {
    /// A schedule whose first heartbeat is due at once.
    pub fn new(interval_ms: u64, now_ms: u64) -> Self {
        HeartbeatSchedule {
            interval_ms: interval_ms.max(1),
            next_ms: now_ms,
        }
    }

    /// When the next heartbeat is due.
    pub fn next_ms(&self) -> u64 {
        self.next_ms
    }

    /// If a heartbeat is due at `now_ms`, schedules the following one (`random` is any fresh
    /// random value: it picks the jitter) and returns `true`: send one now.
    pub fn due(&mut self, now_ms: u64, random: u64) -> bool {
        if now_ms < self.next_ms {
            return false;
        }
        self.next_ms = now_ms + jittered(self.interval_ms, random);
        true
    }
}

/// `interval` ±20%, picked by `random`.
pub fn jittered(interval_ms: u64, random: u64) -> u64 {
    let span = interval_ms * 2 / 5; // 40% wide
    let low = interval_ms - interval_ms / 5;
    if span == 0 {
        return interval_ms.max(1);
    }
    (low + random % (span + 1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Addr {
        Addr::from(([127, 0, 0, n], 34567))
    }

    fn beat(n: u8, id: u64, sessions: u64) -> PeerBeat {
        PeerBeat {
            relay: addr(n),
            node_id: id,
            epoch: 0,
            sessions,
            sockets: 1,
            draining: false,
            witness_only: false,
        }
    }

    #[test]
    fn up_down_returned_restarted() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        assert_eq!(m.config().node_timeout_ms, 3500);
        assert_eq!(
            m.on_heartbeat(&beat(2, 7, 3), 100),
            vec![PeerEvent::Up {
                addr: addr(2),
                node_id: 7
            }]
        );
        assert!(m.is_up(addr(2)));
        assert_eq!(m.load(addr(2)), Some(4));
        assert_eq!(m.up_for(addr(2), 600), 500);
        assert!(m.on_heartbeat(&beat(2, 7, 3), 1100).is_empty());
        assert!(m.tick(4599).is_empty(), "3499 ms silent is not down yet");
        assert_eq!(
            m.tick(4600),
            vec![PeerEvent::Down {
                addr: addr(2),
                node_id: 7
            }]
        );
        assert!(!m.is_up(addr(2)));
        assert_eq!(m.up_for(addr(2), 4600), 0);
        assert!(m.silent_long(addr(2), 4600));
        assert_eq!(
            m.on_heartbeat(&beat(2, 7, 3), 5000),
            vec![PeerEvent::Returned {
                addr: addr(2),
                node_id: 7
            }]
        );
        assert_eq!(m.up_for(addr(2), 5050), 50, "up again since it returned");
        assert_eq!(
            m.on_heartbeat(&beat(2, 8, 0), 5100),
            vec![PeerEvent::Restarted {
                addr: addr(2),
                old: 7,
                new: 8
            }]
        );
        assert_eq!(m.node_id(addr(2)), Some(8));
    }

    #[test]
    fn relay_messages_count_as_heard_and_own_heartbeat_is_ignored() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        assert!(m.on_heartbeat(&beat(1, 1, 0), 10).is_empty());
        assert_eq!(m.known_nodes(), 1);
        assert_eq!(m.on_heard(addr(3), 10), None, "not heard by heartbeat yet");
        m.on_heartbeat(&beat(3, 9, 0), 10);
        assert_eq!(m.on_heard(addr(3), 3000), None, "up already");
        assert!(m.tick(4000).is_empty());
        assert_eq!(m.silent_for(addr(3), 4000), 1000);
        // A peer never heard counts as silent since our start.
        assert_eq!(m.silent_for(addr(9), 4000), 4000);
        // One heard only by relay message (no heartbeat yet) is not up, but not silent either
        // (seed 299448: a restarted backup took over from a master it had just heard).
        assert_eq!(m.on_heard(addr(9), 3900), None);
        assert!(!m.is_up(addr(9)));
        assert_eq!(m.silent_for(addr(9), 4000), 100);
        assert!(!m.silent_long(addr(9), 4000));
        assert!(m.silent_long(addr(9), 3900 + 3500));
    }

    #[test]
    fn configured_members_are_known_before_they_are_heard() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        m.configure([addr(1), addr(2), addr(3)]);
        assert_eq!(m.known_nodes(), 3, "us and two configured peers");
        assert_eq!(m.live_peers().count(), 0, "configured is not up");
        m.on_heartbeat(&beat(4, 4, 0), 10);
        assert_eq!(
            m.known().into_iter().collect::<Vec<_>>(),
            vec![addr(1), addr(2), addr(3), addr(4)],
            "a peer heard but not configured is known too"
        );
    }

    #[test]
    fn draining_peers_are_no_candidates() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        m.on_heartbeat(&beat(2, 2, 0), 0);
        let mut b = beat(3, 3, 0);
        b.draining = true;
        m.on_heartbeat(&b, 0);
        assert_eq!(m.live_peers().count(), 2);
        assert_eq!(
            m.candidates().map(|c| c.0).collect::<Vec<_>>(),
            vec![addr(2)]
        );
        assert!(m.is_draining(addr(3)));
    }

    #[test]
    fn witnesses_only_are_members_but_never_candidates() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        m.on_heartbeat(&beat(2, 2, 500), 0);
        // The least loaded by far (it holds no sessions), and still never picked.
        let mut w = beat(3, 3, 0);
        w.witness_only = true;
        m.on_heartbeat(&w, 0);
        assert_eq!(m.live_peers().count(), 2, "a witness is live");
        assert_eq!(m.known_nodes(), 3, "and counts among the known nodes");
        assert_eq!(
            m.candidates().map(|c| c.0).collect::<Vec<_>>(),
            vec![addr(2)]
        );
        assert!(m.is_witness_only(addr(3)) && !m.is_witness_only(addr(2)));
        // A node restarted as a session node (no flag) is a candidate again.
        m.on_heartbeat(&beat(3, 33, 0), 10);
        assert!(!m.is_witness_only(addr(3)));
        assert_eq!(m.candidates().count(), 2);
    }

    #[test]
    fn incarnations_differ_by_epoch_and_node_id_and_are_stable() {
        assert_eq!(
            incarnation(7, 5),
            incarnation(7, 5),
            "stable for equal inputs"
        );
        assert_eq!(incarnation(7, 0), 7, "epoch 0: the node ID itself");
        assert_ne!(
            incarnation(7, 5),
            incarnation(7, 6),
            "a restart (new epoch)"
        );
        assert_ne!(incarnation(7, 5), incarnation(8, 5), "a new node ID");
        // Consecutive starts of the daemon (epochs are start times in ms) never collide with
        // each other, nor with the same starts of a neighbouring node ID.
        let mut seen = BTreeSet::new();
        for id in [1u64, 2, 3] {
            for epoch in 1_700_000_000_000u64..1_700_000_001_000 {
                assert!(seen.insert(incarnation(id, epoch)), "{id} {epoch}");
            }
        }
        let b = PeerBeat {
            epoch: 9,
            ..beat(2, 7, 0)
        };
        assert_eq!(b.incarnation(), incarnation(7, 9));
    }

    #[test]
    fn a_new_epoch_under_the_same_node_id_is_a_restart() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        let first = PeerBeat {
            epoch: 1,
            ..beat(2, 7, 0)
        };
        m.on_heartbeat(&first, 0);
        assert!(m.on_heartbeat(&first, 100).is_empty(), "same incarnation");
        let again = PeerBeat { epoch: 2, ..first };
        assert_eq!(
            m.on_heartbeat(&again, 200),
            vec![PeerEvent::Restarted {
                addr: addr(2),
                old: incarnation(7, 1),
                new: incarnation(7, 2)
            }]
        );
        assert_eq!(m.node_id(addr(2)), Some(7), "the node ID is kept as heard");
        assert_eq!(m.incarnation(addr(2)), Some(incarnation(7, 2)));
        assert_eq!(m.up_for(addr(2), 300), 100, "up since the restart");
    }

    #[test]
    fn node_ids_map_to_the_address_of_their_latest_heartbeat() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        assert_eq!(m.addr_of(7), None, "never heard");
        m.on_heartbeat(&beat(2, 7, 0), 0);
        m.on_heartbeat(&beat(3, 8, 0), 0);
        assert_eq!((m.addr_of(7), m.addr_of(8)), (Some(addr(2)), Some(addr(3))));
        // A new node ID on an address (a new data directory) replaces the old one there.
        m.on_heartbeat(&beat(2, 9, 0), 10);
        assert_eq!((m.addr_of(7), m.addr_of(9)), (None, Some(addr(2))));
        // A node ID heard on another address (the node moved) maps there; the address it left
        // keeps no node ID of its own, and a later node ID there takes it without disturbing
        // the moved one.
        m.on_heartbeat(&beat(4, 8, 0), 20);
        assert_eq!(m.addr_of(8), Some(addr(4)));
        m.on_heartbeat(&beat(3, 5, 0), 30);
        assert_eq!((m.addr_of(5), m.addr_of(8)), (Some(addr(3)), Some(addr(4))));
        // Down peers keep their entry: the caller asks whether they are up.
        m.tick(10_000);
        assert_eq!(m.addr_of(9), Some(addr(2)));
        assert!(!m.is_up(addr(2)));
        // Relay traffic never changes the map; our own heartbeat is never in it.
        assert_eq!(
            m.on_heard(addr(2), 10_001),
            Some(PeerEvent::Returned {
                addr: addr(2),
                node_id: 9
            })
        );
        m.on_heartbeat(&beat(1, 1, 0), 10_002);
        assert_eq!(m.addr_of(1), None);
    }

    #[test]
    fn a_drain_is_reported_once_per_start() {
        let mut m = Membership::new(addr(1), MembershipConfig::with_interval(1000), 0);
        let draining = |n: u8, id: u64| PeerBeat {
            draining: true,
            ..beat(n, id, 0)
        };
        let up = PeerEvent::Up {
            addr: addr(2),
            node_id: 7,
        };
        let drain = |id: u64| PeerEvent::Draining {
            addr: addr(2),
            node_id: id,
        };
        // First heard while draining: up, then draining.
        assert_eq!(m.on_heartbeat(&draining(2, 7), 0), vec![up, drain(7)]);
        assert!(
            m.on_heartbeat(&draining(2, 7), 100).is_empty(),
            "once per drain"
        );
        // The drain ends (no event), then starts again.
        assert!(m.on_heartbeat(&beat(2, 7, 0), 200).is_empty());
        assert!(!m.is_draining(addr(2)));
        assert_eq!(m.on_heartbeat(&draining(2, 7), 300), vec![drain(7)]);
        // Down and back while still draining: the same drain, not a new one.
        m.tick(5000);
        assert_eq!(
            m.on_heartbeat(&draining(2, 7), 5100),
            vec![PeerEvent::Returned {
                addr: addr(2),
                node_id: 7
            }]
        );
        // A new incarnation that drains from its start: a new drain.
        assert_eq!(
            m.on_heartbeat(&draining(2, 8), 5200),
            vec![
                PeerEvent::Restarted {
                    addr: addr(2),
                    old: 7,
                    new: 8
                },
                drain(8)
            ]
        );
        // Relay traffic carries no draining flag and reports none.
        assert_eq!(m.on_heard(addr(2), 5300), None);
        assert!(m.is_draining(addr(2)));
    }

    #[test]
    fn schedule_is_jittered_within_20_percent() {
        let mut s = HeartbeatSchedule::new(1000, 0);
        assert!(s.due(0, 0));
        assert_eq!(s.next_ms(), 800);
        assert!(!s.due(799, 1));
        assert!(s.due(800, 400));
        assert_eq!(s.next_ms(), 2000);
        for r in 0..2000u64 {
            let j = jittered(1000, r.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            assert!((800..=1200).contains(&j), "{j}");
        }
        assert_eq!(jittered(1, 5), 1);
    }
}
