//! The failover witness: a placement change decided on a peer's *silence* alone needs another
//! node to have noticed the same silence.
//!
//! Silence is ambiguous: in a partial partition (the link master–backup cut, both still reaching
//! a third node C) the backup stops hearing the master and the master stops hearing the backup,
//! while both are alive and serving. Without a witness the backup would take the session over
//! and the master would give it a new backup at the same epoch: two masters. So:
//!
//! - A **decider** (a backup promoting a session whose master it no longer hears, or a master
//!   dropping or replacing a backup it no longer hears) sends `WitnessRequest(suspect, change,
//!   epoch)` to every other live node but the suspect, and goes ahead once enough agree that,
//!   with itself, they are a majority of the nodes it knows ([`needed`], [`decide`]): one witness
//!   in a cluster of three, two in one of four or five. Too few agree, or too few are live to
//!   ask: no change (the session waits; its client gets Unavailable and retries). No other live
//!   node at all: only with `cluster.allow_alone`.
//! - Why a majority and not one witness: with four or more nodes, a partition into two groups
//!   of two, the master with one node and the backup with another, would give each side a
//!   witness: the backup would take the session over while the master gave it a new backup, two
//!   masters. Two majorities of one set of nodes always share a node, and no node is on both
//!   sides of a partition, so at most one side reaches a majority. "The nodes it knows" are
//!   every peer heard since this node started, up or down, except those that announced they are
//!   draining (a draining node never witnesses, so leaving it out cannot let two sides both
//!   reach a majority).
//! - A **witness** agrees only if the suspect is silent in its own view too, it is serving (not
//!   rejoining or draining), and it has heard a heartbeat of the requester ([`agree`]). Agreeing
//!   to a promote, it denies the suspect read leases until the suspect syncs with it (as after a
//!   takeover, `lease.rs`): the old master, if alive, rejoins (and learns of the takeover) as
//!   soon as it asks the witness for a lease, and a lease from the witness — often the session's
//!   new backup — never lets it serve meanwhile.
//!
//! A decision on a *refused* connection (nothing listens: the process is gone,
//! `cluster.failover_on_refused`) or on a peer that announced it is draining needs no witness.

use std::net::{IpAddr, SocketAddr};

/// What the node asked to witness knows when it answers.
#[derive(Clone, Copy, Debug)]
pub struct WitnessView {
    /// The suspect is silent in this node's view: not heard for the node timeout (or never
    /// heard, and this node has listened for at least the node timeout).
    pub suspect_silent: bool,
    /// This node is serving: not rejoining (ready) and not draining.
    pub serving: bool,
    /// The requester's relay address, if a heartbeat naming its node ID was heard here.
    pub requester: Option<SocketAddr>,
    /// The suspect the request names.
    pub suspect: SocketAddr,
}

/// The witness's rule: Ok = agree (answer Ack); Err = why not (answer NotAgreed).
pub fn agree(v: WitnessView) -> Result<(), &'static str> {
    let Some(requester) = v.requester else {
        return Err("no heartbeat of the requester was heard here");
    };
    if requester == v.suspect {
        return Err("the requester names itself as the suspect");
    }
    if !v.serving {
        return Err("this node is not serving (rejoining or draining)");
    }
    if !v.suspect_silent {
        return Err("this node still hears the suspect (heard within the node timeout)");
    }
    Ok(())
}

/// How many other nodes must agree for a decider that knows `known` nodes (itself included):
/// with the decider, more than half of them. 1 in a cluster of two or three, 2 in one of four
/// or five, 3 in one of six or seven.
pub fn needed(known: usize) -> usize {
    (known / 2).max(1)
}

/// What the decider's witness requests gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Witnessed {
    /// Enough nodes agreed (the decider stops asking once `needed` did).
    Agreed {
        /// How many agreed.
        agreed: usize,
    },
    /// Too few agreed (refused, did not answer, or unreachable), or too few live nodes could be
    /// asked (then none was).
    NotAgreed {
        /// How many other live nodes there were to ask.
        asked: usize,
        /// How many agreed.
        agreed: usize,
        /// How many had to ([`needed`]).
        needed: usize,
    },
    /// No live node but the suspect: nobody to ask.
    Alone,
}

/// The decider's rule: Ok = make the change; Err = why not (the session waits).
pub fn decide(w: Witnessed, allow_alone: bool) -> Result<(), String> {
    match w {
        Witnessed::Agreed { .. } => Ok(()),
        Witnessed::NotAgreed { asked, needed, .. } if asked < needed => Err(format!(
            "only {asked} other live nodes can witness that it is silent, fewer than the \
             {needed} that must agree (with this node, a majority of the nodes it knows; it may \
             be alive behind a partition)"
        )),
        Witnessed::NotAgreed {
            asked,
            agreed,
            needed,
        } => Err(format!(
            "{agreed} of the {asked} other live nodes agreed that it is silent, and {needed} \
             must (with this node, a majority of the nodes it knows; it may be alive behind a \
             partition)"
        )),
        Witnessed::Alone if allow_alone => Ok(()),
        Witnessed::Alone => Err(
            "no other live node can witness that it is silent, and cluster.allow_alone is off \
             (a two-node cluster cannot tell a dead host from a partition)"
                .to_string(),
        ),
    }
}

/// The nodes a decider asks: every live peer but the suspect.
pub fn witnesses(live: &[SocketAddr], suspect: SocketAddr) -> Vec<SocketAddr> {
    live.iter().copied().filter(|&a| a != suspect).collect()
}

/// The warning logged when a node is heard that this node's configured `peers` (heartbeat
/// targets) do not name, with no broadcast configured: the peer lists differ between nodes, so
/// nodes count different clusters for the failover majority (and this node sends that one no
/// heartbeats: it will see this node down). None when the lists agree, or without peers.
pub fn unlisted_peer_warning(
    peers: &[SocketAddr],
    broadcast: bool,
    heard: SocketAddr,
) -> Option<String> {
    if broadcast || peers.is_empty() || peers.iter().any(|p| p.ip() == heard.ip()) {
        return None;
    }
    Some(format!(
        "cluster: node {heard} is heard but this node's cluster.peers do not list it: it sees \
         this node as silent (no heartbeats go to it), and the nodes count different clusters \
         for the failover majority; list every node in every node's peers (the same list \
         everywhere), or use broadcast"
    ))
}

/// The warning logged at start when the configured peers (heartbeat targets) name exactly one
/// other node, HA is on and `cluster.allow_alone` is off: nobody can ever witness that node's
/// silence. None otherwise (no peers configured: broadcast discovery, the cluster's size is not
/// known).
pub fn alone_warning(
    peers: &[SocketAddr],
    me: IpAddr,
    ha: bool,
    allow_alone: bool,
) -> Option<String> {
    let mut others: Vec<IpAddr> = peers
        .iter()
        .map(|p| p.ip())
        .filter(|&ip| ip != me)
        .collect();
    others.sort();
    others.dedup();
    if !ha || allow_alone || others.len() != 1 {
        return None;
    }
    Some(format!(
        "cluster: the configured peers name one other node ({}) and cluster.allow_alone is off: \
         if that node's host dies without refusing connections (power off, kernel hang, network \
         cut), the sessions it masters or backs up wait (Unavailable) until it returns, since \
         no third node can witness that it is gone; run scd with cluster.witness_only = true on \
         a third host and list it in peers, or set cluster.allow_alone = true to go on alone \
         instead (then a partition between the two can give a session two masters)",
        others[0]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 34567))
    }

    fn agreeing() -> WitnessView {
        WitnessView {
            suspect_silent: true,
            serving: true,
            requester: Some(node(2)),
            suspect: node(1),
        }
    }

    #[test]
    fn a_witness_agrees_only_to_a_silence_it_sees_itself_while_serving_to_a_known_requester() {
        assert_eq!(agree(agreeing()), Ok(()));
        // It still hears the suspect (the partial partition: only the decider's link is cut).
        assert!(
            agree(WitnessView {
                suspect_silent: false,
                ..agreeing()
            })
            .is_err_and(|why| why.contains("still hears"))
        );
        // Rejoining or draining: its view may be stale, and it is leaving.
        assert!(
            agree(WitnessView {
                serving: false,
                ..agreeing()
            })
            .is_err_and(|why| why.contains("not serving"))
        );
        // A requester whose heartbeat was never heard (not a member it knows).
        assert!(
            agree(WitnessView {
                requester: None,
                ..agreeing()
            })
            .is_err_and(|why| why.contains("no heartbeat"))
        );
        // The suspect asking about itself.
        assert!(
            agree(WitnessView {
                requester: Some(node(1)),
                ..agreeing()
            })
            .is_err()
        );
        // Every condition is needed: any one failing refuses, also together.
        assert!(
            agree(WitnessView {
                suspect_silent: false,
                serving: false,
                requester: None,
                ..agreeing()
            })
            .is_err()
        );
    }

    #[test]
    fn a_decider_goes_on_with_enough_agreements_or_alone_only_when_allowed() {
        for allow_alone in [false, true] {
            assert_eq!(decide(Witnessed::Agreed { agreed: 2 }, allow_alone), Ok(()));
            let too_few = Witnessed::NotAgreed {
                asked: 3,
                agreed: 1,
                needed: 2,
            };
            assert!(
                decide(too_few, allow_alone)
                    .is_err_and(|why| why.contains("1 of the 3") && why.contains("2 must")),
                "too few witnesses: never, whatever allow_alone says"
            );
            let none = Witnessed::NotAgreed {
                asked: 2,
                agreed: 0,
                needed: 1,
            };
            assert!(
                decide(none, allow_alone).is_err_and(|why| why.contains("0 of the 2")),
                "refused by every witness: never"
            );
            let too_few_to_ask = Witnessed::NotAgreed {
                asked: 1,
                agreed: 0,
                needed: 2,
            };
            assert!(
                decide(too_few_to_ask, allow_alone)
                    .is_err_and(|why| why.contains("fewer than the 2")),
                "a minority side: never, whatever allow_alone says"
            );
        }
        assert!(
            decide(Witnessed::Alone, false).is_err_and(|why| why.contains("allow_alone is off"))
        );
        assert_eq!(decide(Witnessed::Alone, true), Ok(()));
    }

    #[test]
    fn the_start_warning_is_for_exactly_one_other_configured_node_with_allow_alone_off() {
        let me: IpAddr = [10, 0, 0, 1].into();
        let hb = |n: u8| SocketAddr::from(([10, 0, 0, n], 45678));
        let w = alone_warning(&[hb(2)], me, true, false).expect("one other node: warned");
        assert!(w.contains("10.0.0.2") && w.contains("allow_alone"), "{w}");
        // This node's own address and a second port of the same host count once.
        let same = [hb(1), hb(2), SocketAddr::from(([10, 0, 0, 2], 4000))];
        assert!(alone_warning(&same, me, true, false).is_some());
        assert_eq!(
            alone_warning(&[hb(2)], me, true, true),
            None,
            "allow_alone on"
        );
        assert_eq!(alone_warning(&[hb(2)], me, false, false), None, "HA off");
        assert_eq!(
            alone_warning(&[hb(2), hb(3)], me, true, false),
            None,
            "a witness exists"
        );
        assert_eq!(
            alone_warning(&[], me, true, false),
            None,
            "no peers configured"
        );
    }

    #[test]
    fn a_majority_of_the_known_nodes_is_needed_so_two_sides_of_a_partition_never_both_decide() {
        assert_eq!(needed(2), 1);
        assert_eq!(needed(3), 1);
        assert_eq!(needed(4), 2);
        assert_eq!(needed(5), 2);
        assert_eq!(needed(6), 3);
        assert_eq!(needed(7), 3);
        // A node that knows nobody else: one, so a decision always needs a witness (or
        // allow_alone's Alone).
        assert_eq!(needed(1), 1);
        assert_eq!(needed(0), 1);
        // Any split of n nodes into two disjoint sides: at most one side holds a decider plus
        // `needed(n)` witnesses. Also when one side left out a draining node the other counted
        // (a draining node never agrees, so it is on neither side).
        for n in 2..=12usize {
            for side in 0..=n {
                let other = n - side;
                let a = side > needed(n);
                let b = other > needed(n);
                assert!(
                    !(a && b),
                    "n = {n}: sides of {side} and {other} both decide"
                );
                if n >= 3 && side < n {
                    let b_rest = n - 1 - side;
                    let a = side > needed(n - 1);
                    let b = b_rest > needed(n);
                    assert!(!(a && b), "n = {n}, one draining: both sides decide");
                }
            }
        }
    }

    #[test]
    fn a_heard_node_missing_from_the_configured_peers_is_warned_about() {
        let hb = |n: u8| SocketAddr::from(([10, 0, 0, n], 45678));
        let peers = [hb(2), hb(3)];
        let w = unlisted_peer_warning(&peers, false, node(4)).expect("node 4 is not listed");
        assert!(w.contains("10.0.0.4:34567") && w.contains("peers"), "{w}");
        // Listed (by IP: the heard address is the relay port, the list the heartbeat port).
        assert_eq!(unlisted_peer_warning(&peers, false, node(2)), None);
        // Broadcast discovery, or no list at all: nothing to compare.
        assert_eq!(unlisted_peer_warning(&peers, true, node(4)), None);
        assert_eq!(unlisted_peer_warning(&[], false, node(4)), None);
    }

    #[test]
    fn the_suspect_is_never_asked() {
        let live = [node(1), node(2), node(3)];
        assert_eq!(witnesses(&live, node(1)), vec![node(2), node(3)]);
        assert_eq!(witnesses(&live, node(9)), live.to_vec());
        assert!(witnesses(&[node(1)], node(1)).is_empty());
        assert!(witnesses(&[], node(1)).is_empty());
    }
}
