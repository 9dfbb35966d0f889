//! Who is alive, and how loaded: a deterministic table fed with verified heartbeats and the time
//! (no sockets, no clock: `now_ms` is an argument). A node not heard from for `timeout_ms` is
//! down. The backup for a session is the live, non-draining node with the least load (sessions +
//! open sockets) other than the excluded ones (the master), ties broken by address.

use std::collections::HashMap;
use std::net::SocketAddr;

use scd_wire::heartbeat::Heartbeat;

/// What this node knows of one other node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: u64,
    pub relay: SocketAddr,
    /// The sender's start epoch: a higher one means it restarted.
    pub epoch: u64,
    pub last_heard_ms: u64,
    pub sessions: u64,
    pub sockets: u32,
    pub draining: bool,
    pub ha: bool,
    pub up: bool,
}

impl Peer {
    pub fn load(&self) -> u64 {
        self.sessions.saturating_add(u64::from(self.sockets))
    }
}

/// A change worth logging and acting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Up(SocketAddr),
    Down(SocketAddr),
    /// Heard again under a new start epoch (it restarted, maybe faster than the timeout).
    Restarted(SocketAddr),
    /// It announced that it is draining.
    Draining(SocketAddr),
}

#[derive(Debug)]
pub struct Membership {
    timeout_ms: u64,
    peers: HashMap<u64, Peer>,
}

impl Membership {
    pub fn new(timeout_ms: u64) -> Self {
        Membership {
            timeout_ms,
            peers: HashMap::new(),
        }
    }

    /// A verified heartbeat (MAC checked, not a replay) arrived at `now_ms`.
    pub fn heard(&mut self, hb: &Heartbeat, now_ms: u64, changes: &mut Vec<Change>) {
        // A node that restarted under a new node ID but the same relay address replaces the old
        // entry: one entry per address.
        let stale: Vec<u64> = self
            .peers
            .values()
            .filter(|p| p.relay == hb.relay && p.node_id != hb.node_id)
            .map(|p| p.node_id)
            .collect();
        for id in stale {
            self.peers.remove(&id);
        }
        let entry = self.peers.entry(hb.node_id).or_insert(Peer {
            node_id: hb.node_id,
            relay: hb.relay,
            epoch: hb.epoch,
            last_heard_ms: now_ms,
            sessions: 0,
            sockets: 0,
            draining: false,
            ha: false,
            up: false,
        });
        if !entry.up {
            changes.push(Change::Up(hb.relay));
        } else if hb.epoch > entry.epoch {
            changes.push(Change::Restarted(hb.relay));
        }
        if hb.draining() && !entry.draining {
            changes.push(Change::Draining(hb.relay));
        }
        entry.relay = hb.relay;
        entry.epoch = hb.epoch;
        entry.last_heard_ms = now_ms;
        entry.sessions = hb.sessions;
        entry.sockets = hb.sockets;
        entry.draining = hb.draining();
        entry.ha = hb.ha();
        entry.up = true;
    }

    /// Marks nodes silent for longer than the timeout as down.
    pub fn tick(&mut self, now_ms: u64, changes: &mut Vec<Change>) {
        for p in self.peers.values_mut() {
            if p.up && now_ms.saturating_sub(p.last_heard_ms) > self.timeout_ms {
                p.up = false;
                changes.push(Change::Down(p.relay));
            }
        }
    }

    pub fn peer(&self, relay: SocketAddr) -> Option<&Peer> {
        self.peers.values().find(|p| p.relay == relay)
    }

    pub fn by_id(&self, node_id: u64) -> Option<&Peer> {
        self.peers.get(&node_id)
    }

    /// Known down: heard before, silent for longer than the timeout. A node never heard from is
    /// not known down (it may have started a moment ago): callers try to reach it.
    pub fn known_down(&self, relay: SocketAddr) -> bool {
        self.peer(relay).is_some_and(|p| !p.up)
    }

    pub fn is_up(&self, relay: SocketAddr) -> bool {
        self.peer(relay).is_some_and(|p| p.up)
    }

    /// Usable as a backup: up and not draining.
    pub fn usable(&self, relay: SocketAddr) -> bool {
        self.peer(relay).is_some_and(|p| p.up && !p.draining)
    }

    pub fn up_count(&self) -> usize {
        self.peers.values().filter(|p| p.up).count()
    }

    pub fn down_count(&self) -> usize {
        self.peers.values().filter(|p| !p.up).count()
    }

    /// Live peers, in address order.
    pub fn live(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self.peers.values().filter(|p| p.up).copied().collect();
        v.sort_by_key(|p| p.relay);
        v
    }

    /// The least-loaded live, non-draining node not in `exclude`; ties by address.
    pub fn choose_backup(&self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        self.peers
            .values()
            .filter(|p| p.up && !p.draining && !exclude.contains(&p.relay))
            .min_by_key(|p| (p.load(), p.relay))
            .map(|p| p.relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: u64, ip: u8, sessions: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            flags: 0,
            node_id: id,
            relay: SocketAddr::from(([127, 0, 0, ip], 34567)),
            epoch: 1,
            seq,
            sessions,
            sockets: 0,
        }
    }

    #[test]
    fn up_down_and_backup_choice() {
        let mut m = Membership::new(1000);
        let mut ch = Vec::new();
        m.heard(&hb(2, 2, 10, 1), 0, &mut ch);
        m.heard(&hb(3, 3, 5, 1), 0, &mut ch);
        m.heard(&hb(4, 4, 5, 1), 0, &mut ch);
        assert_eq!(ch.len(), 3);
        let a3 = SocketAddr::from(([127, 0, 0, 3], 34567));
        let a4 = SocketAddr::from(([127, 0, 0, 4], 34567));
        // Least load, ties by address.
        assert_eq!(m.choose_backup(&[]), Some(a3));
        assert_eq!(m.choose_backup(&[a3]), Some(a4));
        ch.clear();
        m.tick(1000, &mut ch);
        assert!(ch.is_empty(), "not down at exactly the timeout");
        m.heard(&hb(4, 4, 5, 2), 1500, &mut ch);
        m.tick(1001 + 500, &mut ch);
        assert_eq!(ch.len(), 2);
        assert!(m.known_down(a3));
        assert!(!m.known_down(a4));
        assert!(!m.known_down(SocketAddr::from(([127, 0, 0, 9], 34567))));
        assert_eq!(m.choose_backup(&[]), Some(a4));
        assert_eq!(m.up_count(), 1);
        assert_eq!(m.down_count(), 2);
    }

    #[test]
    fn draining_nodes_are_not_backups_and_restarts_are_seen() {
        let mut m = Membership::new(1000);
        let mut ch = Vec::new();
        let mut h = hb(2, 2, 0, 1);
        m.heard(&h, 0, &mut ch);
        h.flags = scd_wire::heartbeat::FLAG_DRAINING;
        h.seq = 2;
        m.heard(&h, 10, &mut ch);
        assert_eq!(m.choose_backup(&[]), None);
        assert!(ch.contains(&Change::Draining(h.relay)));
        let mut again = hb(2, 2, 0, 1);
        again.epoch = 2;
        m.heard(&again, 20, &mut ch);
        assert!(ch.contains(&Change::Restarted(h.relay)));
        // A new node ID on the same address replaces the old entry.
        m.heard(&hb(7, 2, 0, 1), 30, &mut ch);
        assert_eq!(m.live().len(), 1);
        assert_eq!(m.peer(h.relay).unwrap().node_id, 7);
    }
}
