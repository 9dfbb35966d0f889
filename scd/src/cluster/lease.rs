//! Read leases: a master serves a session whose backup is B only while it holds a valid lease
//! from B, and B takes none of the master's sessions over while such a lease may be valid.
//!
//! - The master (`route/failover.rs`, `request_lease`) sends `LeaseRequest(t)` to every live peer every
//!   heartbeat interval, `t` on its own monotonic clock (`membership::now_ms`); a grant makes
//!   the lease from that peer valid until `t + L`, `L = node_timeout_ms − lease_margin_ms`
//!   ([`Leases`], read by the cores on every request of a session with a backup).
//! - A peer grants unless it took a session over from the requester (or replaced it as a backup
//!   after declaring it down) since the requester last synced with it ([`Grants`]); then it
//!   denies, and the requester rejoins. A peer that has heard no heartbeat of the requester
//!   refuses (as SyncHashes).
//! - A backup promotes a session only when its master is down in its own view (not heard for
//!   the node timeout: any lease it granted has ended, since a grant answers a request it heard)
//!   or its connection to the master was refused (nothing listens there: the master's process is
//!   gone) ([`may_promote`]).
//!
//! Why it holds: the master stops serving at `t + L = t + T − margin` on its clock; the backup
//! heard the request at or after `t` and promotes at the earliest `T` after it last heard the
//! master, on its clock. So the clocks' rates may differ by less than `margin / T`, and the
//! processing delays inside a node must stay below the rest of the margin (ARCHITECTURE.md,
//! "Serving rule and leases").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Read leases held from peers (as a master): per peer, until when (ms on `membership::now_ms`,
/// the monotonic clock the requests were timed with).
///
/// The map only grows by one entry per peer ever granting a lease (bounded by the cluster's
/// size); each entry is an atomic, so a grant takes the write lock only the first time and the
/// cores never wait for one another.
#[derive(Default)]
pub struct Leases {
    until_ms: RwLock<HashMap<SocketAddr, AtomicU64>>,
}

/// What a ReadLock granted from the lock queue must still satisfy when it is granted, not only
/// when it arrived: this node's read lease from the session's backup. A wait can last
/// `locks.wait_max_ms`, far longer than a lease; a lock granted after the lease lapsed (the
/// backup may have taken the session over meanwhile) would hand out an old value. Failing: the
/// grant is given back and the waiter gets `Unavailable` (`exec::ShardSlot::collect`). A
/// reference to the table and an address: attaching it to a request allocates nothing.
#[derive(Clone)]
pub struct GrantCheck {
    leases: Arc<Leases>,
    backup: SocketAddr,
}

impl GrantCheck {
    pub fn new(leases: Arc<Leases>, backup: SocketAddr) -> GrantCheck {
        GrantCheck { leases, backup }
    }

    /// Whether the lease from the backup is valid now.
    pub fn holds(&self) -> bool {
        self.leases.valid(self.backup, super::membership::now_ms())
    }
}

impl Leases {
    /// Whether the lease from `peer` is valid at `now_ms`.
    pub fn valid(&self, peer: SocketAddr, now_ms: u64) -> bool {
        self.until_ms
            .read()
            .ok()
            .and_then(|m| m.get(&peer).map(|u| now_ms < u.load(Ordering::Acquire)))
            .unwrap_or(false)
    }

    /// A grant from `peer`: the lease lasts until `until_ms` (never shortened by a late answer
    /// to an older request).
    pub fn grant(&self, peer: SocketAddr, until_ms: u64) {
        if let Ok(m) = self.until_ms.read() {
            if let Some(u) = m.get(&peer) {
                u.fetch_max(until_ms, Ordering::AcqRel);
                return;
            }
        }
        if let Ok(mut m) = self.until_ms.write() {
            m.entry(peer)
                .or_insert_with(|| AtomicU64::new(0))
                .fetch_max(until_ms, Ordering::AcqRel);
        }
    }

    /// Ends the lease from `peer` now (it denied one, restarted, or was declared down). A grant
    /// for a request sent before may still arrive and count again: that is safe, since a grant
    /// is safe by itself (the granter promotes nothing of this node's before it ends).
    pub fn revoke(&self, peer: SocketAddr) {
        if let Ok(m) = self.until_ms.read() {
            if let Some(u) = m.get(&peer) {
                u.store(0, Ordering::Release);
            }
        }
    }
}

/// The grant/deny rule of the node answering lease requests: the peers it took a session over
/// from (failover) or replaced as a backup after declaring them down, since they last synced
/// with it, and why. The cluster thread's (single-threaded); every change is also written to the
/// placement journal (`route/mod.rs`, `deny_leases` / `leases_synced`), which puts the marks back
/// at start, so a restart of this node does not grant what it owed a denial.
#[derive(Debug, Default)]
pub struct Grants {
    denied: HashMap<SocketAddr, String>,
}

/// The answer to one lease request.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    Grant,
    Denied(String),
    /// The requester's node ID was named by no heartbeat heard here: not known, refused (it
    /// asks again).
    NotHeard,
}

impl Grants {
    /// This node took a session over from `peer`, or replaced it: deny its leases until it
    /// syncs (the first reason is kept).
    pub fn took_over(&mut self, peer: SocketAddr, why: String) {
        self.denied.entry(peer).or_insert(why);
    }

    /// `peer` synced with this node (its rejoin's SyncRequest or SyncHashes): it learns there
    /// every session taken over from it until now, so it may have leases again. True if it was
    /// denied them until now.
    pub fn synced(&mut self, peer: SocketAddr) -> bool {
        self.denied.remove(&peer).is_some()
    }

    /// The answer to a lease request from `sender` (None: no heartbeat names its node ID).
    pub fn answer(&self, sender: Option<SocketAddr>) -> LeaseAnswer {
        match sender {
            None => LeaseAnswer::NotHeard,
            Some(from) => match self.denied.get(&from) {
                Some(why) => LeaseAnswer::Denied(why.clone()),
                None => LeaseAnswer::Grant,
            },
        }
    }
}

/// What a backup knows about the session's master when it considers taking the session over.
#[derive(Clone, Copy, Debug)]
pub struct MasterView {
    /// Heard within the node timeout.
    pub up: bool,
    /// Heard before and silent for the node timeout since.
    pub known_down: bool,
    /// This node has run (and listened) for at least the node timeout.
    pub ran_node_timeout: bool,
    /// This node's connection attempt to the master was just refused.
    pub refused: bool,
}

/// The promotion rule: take the session over only when the master is down in this node's view
/// (not heard for the node timeout — also when never heard since a start at least that long
/// ago), or, with `failover_on_refused`, when the connection to it was refused. A relay timeout
/// alone is not enough: the master may be alive behind a partition, holding a lease.
pub fn may_promote(m: MasterView, failover_on_refused: bool) -> bool {
    let silent = !m.up && (m.known_down || m.ran_node_timeout);
    silent || (m.refused && failover_on_refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 34567))
    }

    #[test]
    fn a_lease_is_valid_from_its_grant_until_its_end_and_never_shortened() {
        let l = Leases::default();
        assert!(!l.valid(peer(2), 0), "no grant, no lease");
        l.grant(peer(2), 1300);
        assert!(l.valid(peer(2), 1000));
        assert!(l.valid(peer(2), 1299));
        assert!(!l.valid(peer(2), 1300), "ends at its end time");
        assert!(!l.valid(peer(3), 1000), "a lease is per peer");
        // A late answer to an older request does not shorten it; a newer one extends it.
        l.grant(peer(2), 1200);
        assert!(l.valid(peer(2), 1250));
        l.grant(peer(2), 1400);
        assert!(l.valid(peer(2), 1350));
        // Revoked (denied, restarted, down): invalid at once; a later grant counts again.
        l.revoke(peer(2));
        assert!(!l.valid(peer(2), 1000));
        l.revoke(peer(9));
        assert!(!l.valid(peer(9), 0));
        l.grant(peer(2), 2000);
        assert!(l.valid(peer(2), 1999));
    }

    #[test]
    fn a_peer_is_denied_from_a_takeover_until_it_syncs() {
        let mut g = Grants::default();
        assert_eq!(g.answer(Some(peer(1))), LeaseAnswer::Grant);
        assert_eq!(g.answer(None), LeaseAnswer::NotHeard, "no heartbeat heard");
        g.took_over(peer(1), "took over a session (epoch 2)".into());
        g.took_over(peer(1), "replaced you".into());
        assert_eq!(
            g.answer(Some(peer(1))),
            LeaseAnswer::Denied("took over a session (epoch 2)".into()),
            "the first reason is kept"
        );
        assert_eq!(g.answer(Some(peer(3))), LeaseAnswer::Grant, "per peer");
        assert_eq!(g.answer(None), LeaseAnswer::NotHeard);
        // Its rejoin's sync clears it; another sync changes nothing.
        assert!(g.synced(peer(1)));
        assert!(!g.synced(peer(1)));
        assert_eq!(g.answer(Some(peer(1))), LeaseAnswer::Grant);
        // A later takeover denies again.
        g.took_over(peer(1), "again".into());
        assert_eq!(g.answer(Some(peer(1))), LeaseAnswer::Denied("again".into()));
    }

    #[test]
    fn a_backup_promotes_only_a_master_down_in_its_view_or_refusing_connections() {
        let heard = MasterView {
            up: true,
            known_down: false,
            ran_node_timeout: true,
            refused: false,
        };
        // Heard within the node timeout (a relay timeout alone): never.
        assert!(!may_promote(heard, true));
        // Down in its view: yes, whatever the refused setting.
        let down = MasterView {
            up: false,
            known_down: true,
            ..heard
        };
        assert!(may_promote(down, true));
        assert!(may_promote(down, false));
        // Never heard: only once this node has listened for the node timeout.
        let never = MasterView {
            up: false,
            known_down: false,
            ran_node_timeout: false,
            refused: false,
        };
        assert!(!may_promote(never, true));
        assert!(may_promote(
            MasterView {
                ran_node_timeout: true,
                ..never
            },
            true
        ));
        // Refused: the fast path, only with failover_on_refused.
        let refused = MasterView {
            refused: true,
            ..heard
        };
        assert!(may_promote(refused, true));
        assert!(!may_promote(refused, false));
        assert!(may_promote(
            MasterView {
                refused: true,
                ..never
            },
            true
        ));
    }
}
