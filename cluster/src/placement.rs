//! Placement: where a session lives, and the choice of a backup.

use scd_wire::SessionId;

use crate::{Addr, Hash};

/// Where a session lives at one placement epoch: the location fields of its session ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The node that serves the session and holds its lock.
    pub master: Addr,
    /// The node holding the copy (HA), if any.
    pub backup: Option<Addr>,
    /// The placement epoch: bumped at every change of master or backup. The ID's VERSION.
    pub epoch: u32,
}

impl Placement {
    /// The placement an ID names.
    pub fn of(id: &SessionId) -> Self {
        Placement {
            master: id.master,
            backup: id.backup,
            epoch: id.version,
        }
    }

    /// The session ID of session `hash` at this placement.
    pub fn id(&self, hash: Hash) -> SessionId {
        SessionId::new(self.master, self.backup, self.epoch, hash)
    }

    /// Whether `node` is this placement's master or backup.
    pub fn names(&self, node: Addr) -> bool {
        self.master == node || self.backup == Some(node)
    }
}

/// The backup for a session mastered by `master`: among `candidates` (address, load), the one
/// with the least load that is not `master` and not in `exclude`; ties go to the lowest address,
/// so every node given the same table picks the same one. `None` when there is no candidate.
pub fn choose_backup(
    candidates: impl IntoIterator<Item = (Addr, u64)>,
    master: Addr,
    exclude: &[Addr],
) -> Option<Addr> {
    candidates
        .into_iter()
        .filter(|(a, _)| *a != master && !exclude.contains(a))
        .min_by(|(a1, l1), (a2, l2)| l1.cmp(l2).then_with(|| a1.cmp(a2)))
        .map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Addr {
        Addr::from(([127, 0, 0, n], 34567))
    }

    #[test]
    fn least_load_then_lowest_address() {
        let c = [(addr(4), 5), (addr(3), 2), (addr(2), 2), (addr(1), 0)];
        assert_eq!(choose_backup(c, addr(1), &[]), Some(addr(2)));
        assert_eq!(choose_backup(c, addr(9), &[]), Some(addr(1)));
        assert_eq!(choose_backup(c, addr(1), &[addr(2)]), Some(addr(3)));
        assert_eq!(choose_backup([(addr(1), 0)], addr(1), &[]), None);
        assert_eq!(choose_backup([], addr(1), &[]), None);
        // Order of the input does not matter.
        let mut r = c;
        r.reverse();
        assert_eq!(choose_backup(r, addr(1), &[]), Some(addr(2)));
    }

    #[test]
    fn placement_round_trips_through_an_id() {
        let p = Placement {
            master: addr(1),
            backup: Some(addr(2)),
            epoch: 7,
        };
        let id = p.id([5; 16]);
        assert_eq!(Placement::of(&id), p);
        assert!(p.names(addr(2)) && p.names(addr(1)) && !p.names(addr(3)));
    }
}
