//! Who is alive, and how loaded: `scd_cluster::Membership` — the deterministic table the seeded
//! simulation (`cluster/tests/sim.rs`) covers — fed with verified heartbeats and with
//! authenticated relay traffic, and `scd_cluster::choose_backup` for the backup choice. This
//! module only adapts them to the daemon: it keeps no state of its own.
//!
//! The crate's table does what the daemon needs of it: it tells a restart by the heartbeat's
//! incarnation (`scd_cluster::membership::incarnation`: the persistent node ID, from
//! `data_dir/node-id`, mixed with the start epoch), maps a relay handshake's node ID to the
//! peer's relay address (`Membership::addr_of`), and reports the start of a drain
//! (`PeerEvent::Draining`). The adapter turns the crate's `PeerEvent`s into [`Change`]s (no
//! node IDs: the daemon acts on addresses) and keeps the daemon's own questions (`known_down`,
//! `usable`, the counts) in one place.
//!
//! Time is an argument (`now_ms`, from the monotonic [`now_ms`] in the daemon), so the table
//! stays deterministic.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use scd_cluster::{Membership, MembershipConfig, PeerBeat, PeerEvent};
use scd_wire::heartbeat::Heartbeat;

/// Milliseconds on a monotonic clock (since the first call in this process): the membership's
/// time. A wall-clock step (NTP) never declares every peer down, nor keeps a dead one up.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // + 1: a table created at the first call starts at a non-zero time.
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A change worth logging and acting on: the crate's `PeerEvent`s by address. The start of a
/// drain (a heartbeat's draining flag) is acted on like a node going down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// First heard of.
    Up(SocketAddr),
    /// Not heard for `node_timeout_ms`.
    Down(SocketAddr),
    /// Heard under a new incarnation (it restarted, maybe faster than the timeout).
    Restarted(SocketAddr),
    /// Heard again, same incarnation, after it was declared down: a healed partition (or a
    /// process that was stopped and continued).
    Returned(SocketAddr),
    /// It announced that it is draining (once per start of a drain).
    Draining(SocketAddr),
}

impl Change {
    /// The node it is about.
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Change::Up(a)
            | Change::Down(a)
            | Change::Restarted(a)
            | Change::Returned(a)
            | Change::Draining(a) => a,
        }
    }

    fn of(e: PeerEvent) -> Self {
        match e {
            PeerEvent::Up { addr, .. } => Change::Up(addr),
            PeerEvent::Down { addr, .. } => Change::Down(addr),
            PeerEvent::Restarted { addr, .. } => Change::Restarted(addr),
            PeerEvent::Returned { addr, .. } => Change::Returned(addr),
            PeerEvent::Draining { addr, .. } => Change::Draining(addr),
        }
    }
}

/// The cluster thread's membership: the crate's table.
#[derive(Debug)]
pub struct Members {
    table: Membership,
}

impl Members {
    /// The table of the node at relay address `me`: heartbeats every `heartbeat_interval_ms`
    /// (± 20 %), a peer silent for `node_timeout_ms` is down (the resolved setting: `0` in the
    /// configuration means `3 × interval + 500`, the crate's default too).
    pub fn new(
        me: SocketAddr,
        heartbeat_interval_ms: u64,
        node_timeout_ms: u64,
        now_ms: u64,
    ) -> Self {
        let config = MembershipConfig {
            heartbeat_interval_ms,
            node_timeout_ms,
        };
        Members {
            table: Membership::new(me, config, now_ms),
        }
    }

    /// The crate's table (read-only).
    pub fn table(&self) -> &Membership {
        &self.table
    }

    /// A verified heartbeat (allowed host, MAC checked, not a replay) arrived at `now_ms`. Our
    /// own (broadcast loops back) is ignored by the table. The replay check
    /// (`HeartbeatVerifier`) has already refused epochs older than the sender's newest, so a new
    /// incarnation is a restart, never an old datagram.
    pub fn heard(&mut self, hb: &Heartbeat, now_ms: u64, changes: &mut Vec<Change>) {
        let events = self
            .table
            .on_heartbeat(&PeerBeat::from_heartbeat(hb), now_ms);
        changes.extend(events.into_iter().map(Change::of));
    }

    /// An authenticated relay frame arrived from the node with (persistent) ID `node_id`:
    /// counts as hearing it, as a heartbeat does. Returns its relay address, when a heartbeat
    /// of that node was heard (otherwise the sender is not known and nothing changes).
    pub fn relay_traffic(
        &mut self,
        node_id: u64,
        now_ms: u64,
        changes: &mut Vec<Change>,
    ) -> Option<SocketAddr> {
        let addr = self.table.addr_of(node_id)?;
        // The handshake names the node ID, not the start epoch: liveness only, never a restart.
        changes.extend(self.table.on_heard(addr, now_ms).map(Change::of));
        Some(addr)
    }

    /// Declares down the peers silent for the node timeout.
    pub fn tick(&mut self, now_ms: u64, changes: &mut Vec<Change>) {
        changes.extend(self.table.tick(now_ms).into_iter().map(Change::of));
    }

    /// The relay address of the node with this (persistent) ID, if one of its heartbeats was
    /// heard (the latest heartbeat that carried it; one node ID per address).
    pub fn relay_of(&self, node_id: u64) -> Option<SocketAddr> {
        self.table.addr_of(node_id)
    }

    /// Known down: heard before, silent for the node timeout. A node never heard from is not
    /// known down (it may have started a moment ago): callers try to reach it.
    pub fn known_down(&self, relay: SocketAddr) -> bool {
        self.table.node_id(relay).is_some() && !self.table.is_up(relay)
    }

    /// Usable as a backup: another node, up and not draining.
    pub fn usable(&self, relay: SocketAddr) -> bool {
        relay != self.table.me() && self.table.is_up(relay) && !self.table.is_draining(relay)
    }

    /// Peers up.
    pub fn up_count(&self) -> usize {
        self.table.live_peers().count()
    }

    /// Peers heard before and down now.
    pub fn down_count(&self) -> usize {
        (self.table.known_nodes() - 1).saturating_sub(self.up_count())
    }

    /// Live peers' relay addresses, in address order (never this node: `heard` ignores its own
    /// heartbeats).
    pub fn live(&self) -> Vec<SocketAddr> {
        self.table.live_peers().map(|(a, _)| a).collect()
    }

    /// Peers that may take sessions (up, not draining) with their load, in address order.
    pub fn candidates(&self) -> Vec<(SocketAddr, u64)> {
        self.table.candidates().collect()
    }

    /// The backup for a session mastered here: `scd_cluster::choose_backup` over the live,
    /// non-draining peers, not in `exclude` (least load, ties by address).
    pub fn choose_backup(&self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        scd_cluster::choose_backup(self.table.candidates(), self.table.me(), exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, ip], 34567))
    }

    fn hb(id: u64, ip: u8, sessions: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            flags: 0,
            node_id: id,
            relay: addr(ip),
            epoch: 1,
            seq,
            sessions,
            sockets: 0,
        }
    }

    fn members() -> Members {
        Members::new(addr(1), 1000, 3500, 0)
    }

    #[test]
    fn up_down_returned_and_backup_choice() {
        let mut m = members();
        let mut ch = Vec::new();
        m.heard(&hb(2, 2, 10, 1), 0, &mut ch);
        m.heard(&hb(3, 3, 5, 1), 0, &mut ch);
        m.heard(&hb(4, 4, 5, 1), 0, &mut ch);
        assert_eq!(
            ch,
            vec![
                Change::Up(addr(2)),
                Change::Up(addr(3)),
                Change::Up(addr(4))
            ]
        );
        // Least load, ties by address; never ourselves.
        assert_eq!(m.choose_backup(&[]), Some(addr(3)));
        assert_eq!(m.choose_backup(&[addr(3)]), Some(addr(4)));
        assert!(!m.usable(addr(1)));
        ch.clear();
        m.tick(3499, &mut ch);
        assert!(ch.is_empty(), "not down before the timeout");
        m.heard(&hb(4, 4, 5, 2), 3000, &mut ch);
        m.tick(3500, &mut ch);
        assert_eq!(ch, vec![Change::Down(addr(2)), Change::Down(addr(3))]);
        assert!(m.known_down(addr(3)));
        assert!(!m.known_down(addr(4)));
        assert!(!m.known_down(addr(9)), "never heard: not known down");
        assert_eq!(m.choose_backup(&[]), Some(addr(4)));
        assert_eq!((m.up_count(), m.down_count()), (1, 2));
        assert_eq!(m.live(), vec![addr(4)]);
        // Heard again, same incarnation: returned.
        ch.clear();
        m.heard(&hb(3, 3, 5, 2), 4000, &mut ch);
        assert_eq!(ch, vec![Change::Returned(addr(3))]);
        assert_eq!((m.up_count(), m.down_count()), (2, 1));
    }

    #[test]
    fn restarts_draining_and_relay_traffic() {
        let mut m = members();
        let mut ch = Vec::new();
        let mut h = hb(2, 2, 0, 1);
        m.heard(&h, 0, &mut ch);
        h.flags = scd_wire::heartbeat::FLAG_DRAINING;
        h.seq = 2;
        m.heard(&h, 10, &mut ch);
        h.seq = 3;
        m.heard(&h, 20, &mut ch);
        assert_eq!(ch, vec![Change::Up(addr(2)), Change::Draining(addr(2))]);
        assert_eq!(m.choose_backup(&[]), None);
        assert!(!m.usable(addr(2)));
        // The same node ID under a new start epoch: restarted (faster than the timeout).
        ch.clear();
        let mut again = hb(2, 2, 0, 1);
        again.epoch = 2;
        m.heard(&again, 30, &mut ch);
        assert_eq!(ch, vec![Change::Restarted(addr(2))]);
        assert!(m.usable(addr(2)));
        // A new node ID on the same address: restarted too, and the old ID is forgotten.
        ch.clear();
        m.heard(&hb(7, 2, 0, 1), 40, &mut ch);
        assert_eq!(ch, vec![Change::Restarted(addr(2))]);
        assert_eq!(m.live(), vec![addr(2)]);
        assert_eq!(m.relay_of(2), None);
        assert_eq!(m.relay_of(7), Some(addr(2)));
        // Relay traffic keeps it up; an unknown node ID changes nothing.
        assert_eq!(m.relay_traffic(7, 3000, &mut ch), Some(addr(2)));
        assert_eq!(m.relay_traffic(99, 3000, &mut ch), None);
        m.tick(5000, &mut ch);
        assert!(ch.len() == 1 && m.usable(addr(2)), "{ch:?}");
        m.tick(6500, &mut ch);
        assert_eq!(ch.last(), Some(&Change::Down(addr(2))));
        ch.clear();
        assert_eq!(m.relay_traffic(7, 6600, &mut ch), Some(addr(2)));
        assert_eq!(ch, vec![Change::Returned(addr(2))]);
        // Our own heartbeat (broadcast loops back) is ignored.
        ch.clear();
        m.heard(&hb(1, 1, 0, 1), 6700, &mut ch);
        assert!(ch.is_empty());
        assert_eq!(m.relay_of(1), None);
    }
}
