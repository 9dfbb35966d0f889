//! Scenario tests of the node state machine: replication under both policies, leases, fencing,
//! failover rules, lock loss, rejoin, drain. Messages are delivered at once, in order, except
//! over links the test cuts.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;

use scd_cluster::{
    Action, Change, Config, FlushPolicy, MemStore, MembershipConfig, Msg, Node, PeerBeat, Phase,
    Reply, Request, Store,
};
use scd_wire::{ErrorCode, SessionId};

const HB: u64 = 100;
const T: u64 = 400; // node timeout: 3 × 100 + 100

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i as u8 + 1], 34567))
}

fn index(a: SocketAddr) -> usize {
    match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[3] as usize - 1,
        std::net::IpAddr::V6(_) => unreachable!(),
    }
}

fn config(i: usize, node_id: u64, policy: FlushPolicy) -> Config {
    let mut c = Config::new(addr(i), node_id);
    c.membership = MembershipConfig {
        heartbeat_interval_ms: HB,
        node_timeout_ms: T,
    };
    c.lease_margin_ms = 100;
    c.policy = policy;
    c.flush_interval_ms = 200;
    c
}

struct Cluster {
    nodes: Vec<Option<Node<MemStore>>>,
    ids: Vec<u64>,
    policy: FlushPolicy,
    now: u64,
    cut: BTreeSet<(usize, usize)>,
    replies: Vec<(u64, Reply)>,
    /// Messages sent, for inspection: (from, to, msg).
    sent: Vec<(usize, usize, Msg)>,
    /// Hold messages instead of delivering them.
    hold: bool,
    held: VecDeque<(usize, usize, Msg)>,
    req: u64,
}

impl Cluster {
    fn new(n: usize, policy: FlushPolicy) -> Cluster {
        let ids: Vec<u64> = (0..n).map(|i| 0x1000 + i as u64).collect();
        let nodes = (0..n)
            .map(|i| {
                Some(Node::new_cluster(
                    config(i, ids[i], policy),
                    MemStore::default(),
                    0,
                ))
            })
            .collect();
        let mut c = Cluster {
            nodes,
            ids,
            policy,
            now: 0,
            cut: BTreeSet::new(),
            replies: Vec::new(),
            sent: Vec::new(),
            hold: false,
            held: VecDeque::new(),
            req: 0,
        };
        c.advance(HB);
        c
    }

    fn serves(&self, i: usize, hash: &[u8; 16]) -> bool {
        self.nodes[i]
            .as_ref()
            .is_some_and(|n| n.serves(hash, self.now).is_some())
    }

    fn silent(&self, i: usize, of: usize) -> bool {
        self.nodes[i]
            .as_ref()
            .is_some_and(|n| n.membership().silent_long(addr(of), self.now))
    }

    fn node(&mut self, i: usize) -> &mut Node<MemStore> {
        self.nodes[i].as_mut().expect("alive")
    }

    fn run(&mut self, at: usize, actions: Vec<Action>) {
        let mut queue: VecDeque<(usize, Action)> = actions.into_iter().map(|a| (at, a)).collect();
        while let Some((at, action)) = queue.pop_front() {
            match action {
                Action::Send { to, msg } => {
                    let to = index(to);
                    self.sent.push((at, to, msg.clone()));
                    if self.cut.contains(&(at, to)) || self.nodes[to].is_none() {
                        continue;
                    }
                    if self.hold {
                        self.held.push_back((at, to, msg));
                        continue;
                    }
                    let now = self.now;
                    let more = self.node(to).on_message(addr(at), msg, now);
                    queue.extend(more.into_iter().map(|a| (to, a)));
                }
                Action::Reply { req, reply } => self.replies.push((req, reply)),
                Action::DrainComplete => self.replies.push((
                    0,
                    Reply::Done {
                        id: SessionId::new(addr(at), None, 0, [0; 16]),
                    },
                )),
            }
        }
    }

    fn release_held(&mut self) {
        self.hold = false;
        while let Some((from, to, msg)) = self.held.pop_front() {
            if self.nodes[to].is_none() {
                continue;
            }
            let now = self.now;
            let actions = self.node(to).on_message(addr(from), msg, now);
            self.run(to, actions);
        }
    }

    /// `times` steps of 25 ms in which only node `i` ticks (before it hears anyone): what it
    /// sends on its own, delivered as usual.
    fn tick_only(&mut self, i: usize, times: usize) {
        for _ in 0..times {
            self.now += 25;
            let now = self.now;
            let a = self.node(i).tick(now);
            self.run(i, a);
        }
    }

    /// Heartbeats from every live node (over uncut links) and a tick of every node, every
    /// 25 ms for `ms`.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 25;
            let now = self.now;
            if now % HB == 0 {
                for i in 0..self.nodes.len() {
                    let Some(n) = &self.nodes[i] else { continue };
                    let (sessions, draining) = n.heartbeat_fields();
                    let beat = PeerBeat {
                        relay: addr(i),
                        node_id: self.ids[i],
                        // The node ID is random at each start: it is the incarnation.
                        epoch: 0,
                        sessions,
                        sockets: 0,
                        draining,
                        witness_only: false,
                    };
                    for j in 0..self.nodes.len() {
                        if j != i && !self.cut.contains(&(i, j)) && self.nodes[j].is_some() {
                            let a = self.node(j).on_heartbeat(&beat, now);
                            self.run(j, a);
                        }
                    }
                }
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].is_some() {
                    let a = self.node(i).tick(now);
                    self.run(i, a);
                }
            }
        }
    }

    /// Passes a client request to node `at` and delivers what follows; returns the request's
    /// number (its reply, if any yet, is left in `replies`).
    fn submit(&mut self, at: usize, request: Request) -> u64 {
        self.req += 1;
        let req = self.req;
        let now = self.now;
        let a = self.node(at).on_client(req, request, now);
        self.run(at, a);
        req
    }

    fn client(&mut self, at: usize, request: Request) -> Option<Reply> {
        let req = self.submit(at, request);
        self.take_reply(req)
    }

    /// A read through node `at`: answered at once, or waited for (advancing time) for at most
    /// `max_ms`.
    fn read(&mut self, at: usize, id: SessionId, max_ms: u64) -> Reply {
        match self.client(at, Request::Read { id }) {
            Some(r) => r,
            None => self.wait_reply(self.req, max_ms),
        }
    }

    fn take_reply(&mut self, req: u64) -> Option<Reply> {
        let i = self.replies.iter().position(|(r, _)| *r == req)?;
        Some(self.replies.remove(i).1)
    }

    /// Waits (advancing time) for the reply to request `req`.
    fn wait_reply(&mut self, req: u64, max_ms: u64) -> Reply {
        let end = self.now + max_ms;
        while self.now < end {
            if let Some(r) = self.take_reply(req) {
                return r;
            }
            self.advance(25);
        }
        self.take_reply(req).expect("a reply in time")
    }

    fn create(&mut self, at: usize) -> SessionId {
        let hash = [self.req as u8 + 1; 16];
        match self.client(
            at,
            Request::Create {
                hash,
                lifetime_s: 60,
            },
        ) {
            Some(Reply::Created { id }) => id,
            other => panic!("{other:?}"),
        }
    }

    fn lock(&mut self, at: usize, id: SessionId) -> (SessionId, u64, Vec<u8>) {
        match self.client(
            at,
            Request::ReadLock {
                id,
                lease_ms: 10_000,
            },
        ) {
            Some(Reply::Data {
                id,
                token: Some(t),
                data,
                ..
            }) => (id, t, data),
            other => panic!("{other:?}"),
        }
    }

    fn write(&mut self, at: usize, id: SessionId, token: u64, data: &[u8]) -> Option<Reply> {
        self.client(
            at,
            Request::Write {
                id,
                token,
                lifetime_s: 60,
                data: data.to_vec(),
            },
        )
    }

    /// A session created at node `at`, locked and written there with `data` (acknowledged):
    /// its ID.
    fn written(&mut self, at: usize, data: &[u8]) -> SessionId {
        let id = self.create(at);
        let (id, token, _) = self.lock(at, id);
        let r = self.write(at, id, token, data);
        assert!(matches!(r, Some(Reply::Written { .. })), "{r:?}");
        id
    }

    /// Node `i` starts draining.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let a = self.node(i).start_drain(now);
        self.run(i, a);
    }

    fn crash(&mut self, i: usize) -> MemStore {
        self.nodes[i].take().expect("alive").into_store()
    }

    fn restart(&mut self, i: usize, store: MemStore) {
        self.ids[i] += 0x100;
        let now = self.now;
        self.nodes[i] = Some(Node::new(config(i, self.ids[i], self.policy), store, now));
    }

    fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.cut.insert((i, j));
                self.cut.insert((j, i));
            }
        }
    }
}

#[test]
fn write_through_reply_waits_for_the_backup() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.create(0);
    let backup = index(id.backup.expect("a backup"));
    let (id, token, _) = c.lock(0, id);
    c.hold = true;
    assert_eq!(
        c.write(0, id, token, b"a"),
        None,
        "no reply before the backup's ack"
    );
    assert!(matches!(c.held.front(), Some((0, b, Msg::Replicate { .. })) if *b == backup));
    // A read meanwhile waits too: the unacked version is never visible.
    let read = c.submit(0, Request::Read { id });
    assert!(c.take_reply(read).is_none());
    c.release_held();
    let w = c.take_reply(c.req - 1).expect("written after the ack");
    assert!(matches!(w, Reply::Written { version: 1, .. }), "{w:?}");
    assert!(matches!(
        c.take_reply(read),
        Some(Reply::Data { version: 1, .. })
    ));
    assert_eq!(
        c.node(backup).store().get(&id.hash).map(|c| c.version),
        Some(1)
    );
}

#[test]
fn delayed_write_replies_at_once_and_replicates_within_the_flush_interval() {
    let mut c = Cluster::new(3, FlushPolicy::DelayedWrite);
    let id = c.create(0);
    let backup = index(id.backup.expect("a backup"));
    let (id, token, _) = c.lock(0, id);
    c.hold = true;
    assert!(matches!(
        c.write(0, id, token, b"a"),
        Some(Reply::Written { version: 1, .. })
    ));
    assert!(
        c.held
            .iter()
            .all(|(_, _, m)| !matches!(m, Msg::Replicate { .. }))
    );
    c.release_held();
    c.advance(250);
    assert_eq!(
        c.node(backup).store().get(&id.hash).map(|c| c.version),
        Some(1)
    );
}

#[test]
fn delayed_write_queue_is_bounded_and_a_write_beyond_waits() {
    let mut c = Cluster::new(2, FlushPolicy::DelayedWrite);
    // A two-node cluster: every session's backup is node 1.
    for i in 0..2 {
        c.nodes[i] = None;
    }
    for i in 0..2 {
        let mut cfg = config(i, c.ids[i], FlushPolicy::DelayedWrite);
        cfg.replication_queue_max = 1;
        cfg.flush_interval_ms = 10_000;
        c.nodes[i] = Some(Node::new_cluster(cfg, MemStore::default(), c.now));
    }
    c.advance(HB * 2);
    let a = c.create(0);
    let b = c.create(0);
    let (a, ta, _) = c.lock(0, a);
    let (b, tb, _) = c.lock(0, b);
    assert!(matches!(
        c.write(0, a, ta, b"1"),
        Some(Reply::Written { .. })
    ));
    // The queue (1 session) is full: the write to another session waits, it is not dropped.
    let req = c.submit(
        0,
        Request::Write {
            id: b,
            token: tb,
            lifetime_s: 60,
            data: b"2".to_vec(),
        },
    );
    assert!(c.take_reply(req).is_none());
    // The flush drains the queue (forced here by the resend of the dirty session on tick once
    // the interval passes) and the waiting write goes through.
    let r = c.wait_reply(req, 11_000);
    assert!(matches!(r, Reply::Written { .. }), "{r:?}");
}

#[test]
fn a_replica_at_a_lower_epoch_is_refused_and_fences_the_old_master() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.create(0);
    let b = index(id.backup.unwrap());
    let (id, token, _) = c.lock(0, id);
    c.write(0, id, token, b"v1").unwrap();
    let mut copy = c.node(b).store().get(&id.hash).unwrap();
    // The backup learns a later placement (as after a failover it witnessed).
    copy.placement.epoch += 1;
    copy.placement.master = addr(b);
    c.node(b).store_mut().put(id.hash, copy);
    let now = c.now;
    let stale = c.node(0).store().get(&id.hash).unwrap();
    let a = c.node(b).on_message(
        addr(0),
        Msg::Replicate {
            hash: id.hash,
            copy: stale,
            change: scd_cluster::Change::Update,
        },
        now,
    );
    assert!(
        matches!(
            &a[..],
            [Action::Send {
                msg: Msg::StaleEpoch { epoch: 2, .. },
                ..
            }]
        ),
        "{a:?}"
    );
    let a = c.node(0).on_message(
        addr(b),
        Msg::StaleEpoch {
            hash: id.hash,
            epoch: 2,
        },
        now,
    );
    assert!(a.is_empty());
    assert!(
        c.node(0).store().get(&id.hash).is_none(),
        "the old master dropped its copy"
    );
    assert_eq!(c.node(0).stats().fenced, 1);
}

#[test]
fn failover_waits_for_silence_needs_a_witness_and_loses_the_lock() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.create(0);
    let b = index(id.backup.unwrap());
    let w = 3 - b; // the third node
    let (id, token, _) = c.lock(w, id);
    assert!(matches!(
        c.write(w, id, token, b"v1"),
        Some(Reply::Written { .. })
    ));
    let (id, old_token, _) = c.lock(w, id);

    // The master is cut off from the origin only: the backup still hears it and refuses.
    c.cut.insert((w, 0));
    c.cut.insert((0, w));
    c.advance(T + 100);
    let r = c.client(w, Request::Read { id });
    let Some(Reply::Error {
        code: ErrorCode::Unavailable,
        ..
    }) = r
    else {
        panic!("{r:?}")
    };
    assert!(c.serves(0, &id.hash), "the master still serves");
    c.cut.clear();
    c.advance(HB * 3);

    // The master dies: after T the backup promotes, witnessed by the third node.
    let dead = c.crash(0);
    c.advance(T + 50);
    let r = c.read(w, id, 2000);
    let Reply::Data { id: new, data, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data, b"v1");
    // (The cut made both sides declare each other down: on heal the master re-confirmed its
    // session at a new epoch, so the failover is at least one more.)
    assert_eq!((new.master, new.backup), (addr(b), Some(addr(w))));
    assert!(new.version > id.version);
    // The lock taken through the dead master is gone; its token is refused.
    let r = c.write(w, new, old_token, b"lost");
    assert!(
        matches!(
            r,
            Some(Reply::Error {
                code: ErrorCode::NotLocked,
                ..
            })
        ),
        "{r:?}"
    );
    let (new, t2, data) = c.lock(w, new);
    assert_eq!(data, b"v1");
    assert!(matches!(
        c.write(w, new, t2, b"v2"),
        Some(Reply::Written { version: 2, .. })
    ));

    // The old master comes back: it rejoins, learns the later epoch, drops its copy and
    // never serves the session again.
    c.restart(0, dead);
    assert_eq!(c.node(0).phase(), Phase::Starting);
    c.advance(T + HB * 4);
    assert_eq!(c.node(0).phase(), Phase::Serving);
    assert!(c.node(0).store().get(&id.hash).is_none());
    let r = c.read(0, id, 2000);
    assert!(
        matches!(&r, Reply::Data { data, version: 2, .. } if data == b"v2"),
        "{r:?}"
    );
}

#[test]
fn the_master_stops_serving_before_the_backup_may_promote() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.create(0);
    let b = index(id.backup.unwrap());
    c.advance(HB * 2);
    assert!(c.serves(0, &id.hash));
    c.isolate(0);
    let cut_at = c.now;
    let mut stopped = None;
    while c.now < cut_at + T + 200 {
        c.advance(25);
        let serving = c.serves(0, &id.hash);
        let may_promote = c.silent(b, 0);
        if !serving && stopped.is_none() {
            stopped = Some(c.now);
        }
        assert!(
            !(serving && may_promote),
            "lease overlaps a possible promotion at {}",
            c.now
        );
    }
    assert!(stopped.expect("stopped serving") <= cut_at + T - 100);
}

#[test]
fn a_witness_that_still_hears_the_master_refuses_the_promotion() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.create(0);
    let b = index(id.backup.unwrap());
    let w = 3 - b;
    let (id, t, _) = c.lock(0, id);
    c.write(0, id, t, b"v1").unwrap();
    // One-way loss master → backup: the backup stops hearing the master, the witness does not.
    c.cut.insert((0, b));
    c.advance(T + 100);
    assert!(c.silent(b, 0));
    let r = c.client(w, Request::Read { id });
    // Master reachable from the origin: served by the master? No: its lease from the backup
    // lapsed (the backup no longer hears its lease requests), so the request waits there.
    assert!(
        r.is_none() || matches!(r, Some(Reply::Error { .. })),
        "{r:?}"
    );
    let now = c.now;
    let copy = c.node(b).store().get(&id.hash).unwrap();
    let mut proposal = copy.clone();
    proposal.placement.master = addr(b);
    proposal.placement.backup = Some(addr(w));
    proposal.placement.epoch += 1;
    let a = c.node(w).on_message(
        addr(b),
        Msg::Replicate {
            hash: id.hash,
            copy: proposal,
            change: scd_cluster::Change::Promote {
                old_master: addr(0),
            },
        },
        now,
    );
    assert!(
        matches!(
            &a[..],
            [Action::Send {
                msg: Msg::NotAgreed { .. },
                ..
            }]
        ),
        "{a:?}"
    );
    assert!(!c.serves(0, &id.hash));
    assert!(!c.serves(b, &id.hash));
    // Healed: the master serves again once its backup, which had lost sight of it, witnessed a
    // new epoch (it waits until it has heard the master for a node timeout again).
    c.cut.clear();
    c.advance(T + HB * 3);
    assert!(c.serves(0, &id.hash));
}

#[test]
fn a_backup_that_crashes_is_replaced_and_nothing_is_lost() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.create(0);
    let b = index(id.backup.unwrap());
    let w = 3 - b;
    let (id, t, _) = c.lock(0, id);
    c.write(0, id, t, b"v1").unwrap();
    c.crash(b);
    c.advance(T + 200);
    let copy = c.node(0).store().get(&id.hash).unwrap();
    assert_eq!(copy.placement.backup, Some(addr(w)));
    assert_eq!(copy.placement.epoch, 2);
    assert_eq!(c.node(w).store().get(&id.hash).unwrap().data, b"v1");
    assert_eq!(c.node(0).stats().rehomes, 1);
}

#[test]
fn a_restarted_master_resumes_at_a_new_epoch_witnessed_by_its_backup() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.create(0);
    let b = index(id.backup.unwrap());
    let (id, t, _) = c.lock(0, id);
    c.write(0, id, t, b"v1").unwrap();
    // Crash and restart within the node timeout: nobody took over.
    let store = c.crash(0);
    c.advance(HB);
    c.restart(0, store);
    c.advance(25);
    let r = c.client(0, Request::Read { id });
    assert!(r.is_none(), "nothing served while starting: {r:?}");
    let r = c.wait_reply(c.req, 2000);
    let Reply::Data { id: new, data, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data, b"v1");
    assert_eq!((new.master, new.backup), (addr(0), Some(addr(b))));
    // A new epoch (the backup refuses until it has heard the restarted master for a node
    // timeout; each refused proposal uses up an epoch).
    assert!(new.version > id.version, "{new}");
}

#[test]
fn drain_hands_every_session_over_and_completes() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let ids: Vec<SessionId> = (0..3).map(|_| c.written(0, b"kept")).collect();
    c.drain(0);
    c.advance(HB * 6);
    assert!(c.node(0).store().hashes().is_empty());
    assert!(c.replies.iter().any(|(r, _)| *r == 0), "DrainComplete");
    for id in ids {
        // Through the drained node (it relays with the new placement) and elsewhere.
        for at in [0, 1, 2] {
            let r = c.read(at, id, 2000);
            assert!(
                matches!(&r, Reply::Data { data, .. } if data == b"kept"),
                "{r:?}"
            );
            let Reply::Data { id: new, .. } = r else {
                unreachable!()
            };
            assert_ne!(new.master, addr(0));
        }
    }
}

#[test]
fn a_session_moved_twice_is_found_by_asking_the_live_nodes() {
    let mut c = Cluster::new(4, FlushPolicy::WriteThrough);
    let id = c.written(0, b"x");
    // Move it twice by draining its master, then its next master.
    c.drain(0);
    c.advance(HB * 6);
    let m1 = (1..4).find(|i| c.serves(*i, &id.hash));
    let m1 = m1.expect("a new master");
    c.drain(m1);
    c.advance(HB * 6);
    // The old ID names node 0 (drained, gone) and its old backup; ask from a third node.
    c.crash(0);
    let at = (1..4).find(|i| *i != m1).unwrap();
    let r = c.read(at, id, 3000);
    assert!(
        matches!(&r, Reply::Data { data, .. } if data == b"x"),
        "{r:?}"
    );
}

#[test]
fn ha_off_has_no_backup_and_waits_for_the_master() {
    let mut c = ha_off_cluster(2, false);
    let id = c.create(0);
    assert_eq!(id.backup, None);
    let (id, t, _) = c.lock(1, id);
    assert!(matches!(
        c.write(1, id, t, b"v"),
        Some(Reply::Written { .. })
    ));
    let store = c.crash(0);
    c.advance(T + 100);
    let r = c.read(1, id, 5000);
    assert!(
        matches!(
            r,
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "{r:?}"
    );
    restart_ha_off(&mut c, 0, store, false);
    c.advance(T + HB * 4);
    let r = c.read(1, id, 2000);
    assert!(
        matches!(&r, Reply::Data { data, .. } if data == b"v"),
        "{r:?}"
    );
}

#[test]
fn a_handover_left_unanswered_is_asked_again_after_a_restart() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.written(0, b"v1");
    c.advance(T + HB);
    // Node 0 drains; the handover reaches its target, but every answer is lost.
    let target = index(id.backup.unwrap());
    c.cut.insert((target, 0));
    c.drain(0);
    c.advance(HB);
    let copy = c
        .node(0)
        .store()
        .get(&id.hash)
        .expect("still held: no answer yet");
    let intent = copy.intent.expect("a durable intent");
    assert!(intent.handover && intent.target == addr(target));
    assert!(c.serves(target, &id.hash), "the target took over");
    assert!(!c.serves(0, &id.hash));
    // Node 0 restarts before any answer: it must not serve the session again, and asks the
    // target again; once heard, it drops its copy.
    let store = c.crash(0);
    c.restart(0, store);
    c.advance(T + HB * 4);
    assert!(!c.serves(0, &id.hash));
    c.cut.clear();
    c.advance(T + HB * 6);
    assert!(
        c.node(0).store().get(&id.hash).is_none(),
        "handed over after the restart"
    );
    let r = c.read(0, id, 3000);
    assert!(
        matches!(&r, Reply::Data { data, .. } if data == b"v1"),
        "{r:?}"
    );
}

/// A cluster of `n` nodes with HA off; `configured`: each lists every node in `Config::peers`.
fn ha_off_cluster(n: usize, configured: bool) -> Cluster {
    let mut c = Cluster::new(n, FlushPolicy::WriteThrough);
    for i in 0..n {
        let mut cfg = config(i, c.ids[i], FlushPolicy::WriteThrough);
        cfg.ha = false;
        if configured {
            cfg.peers = (0..n).map(addr).collect();
        }
        c.nodes[i] = Some(Node::new_cluster(cfg, MemStore::default(), c.now));
    }
    c.advance(HB * 2);
    c
}

/// Node `i` of an `ha_off_cluster` restarted (a new incarnation) with `store`, configured
/// like the others.
fn restart_ha_off(c: &mut Cluster, i: usize, store: MemStore, configured: bool) {
    c.ids[i] += 0x100;
    let mut cfg = config(i, c.ids[i], FlushPolicy::WriteThrough);
    cfg.ha = false;
    if configured {
        cfg.peers = (0..c.nodes.len()).map(addr).collect();
    }
    let now = c.now;
    c.nodes[i] = Some(Node::new(cfg, store, now));
}

/// A node that replaces node `i` on a new machine (empty disk), configured like the others.
fn replace_ha_off(c: &mut Cluster, i: usize, configured: bool) {
    restart_ha_off(c, i, MemStore::default(), configured);
}

/// A session created and written at node 1, which then drains: the session goes to node 0
/// (the least loaded, lowest address). The client keeps the old ID, which names node 1.
fn written_then_handed_to_node_0(c: &mut Cluster) -> SessionId {
    let id = c.written(1, b"v");
    assert_eq!(id.backup, None);
    c.drain(1);
    c.advance(HB * 4);
    assert!(c.serves(0, &id.hash), "handed over to node 0");
    assert!(c.node(1).store().get(&id.hash).is_none());
    id
}

fn read_at(c: &mut Cluster, at: usize, id: SessionId) -> Reply {
    c.read(at, id, 3000)
}

/// An HA-off cluster of three (`configured`: with `Config::peers`) whose only copy of a
/// session (`written_then_handed_to_node_0`) is on node 0, which a partition then cuts off;
/// meanwhile the nodes in `replaced` are replaced by new machines and serve (node 1 checked).
fn holder_cut_off_and_replaced(configured: bool, replaced: &[usize]) -> (Cluster, SessionId) {
    let mut c = ha_off_cluster(3, configured);
    let id = written_then_handed_to_node_0(&mut c);
    c.isolate(0);
    c.advance(T + HB);
    for &i in replaced {
        replace_ha_off(&mut c, i, configured);
    }
    c.advance(T + HB * 4);
    assert!(
        c.node(1).phase() == Phase::Serving,
        "{:?}",
        c.node(1).phase()
    );
    (c, id)
}

/// A read of `id` through node 1 is Unavailable (`why` it must not be NotFound) while the
/// partition lasts, and finds the data (`v`) once it heals.
fn unavailable_until_healed(c: &mut Cluster, id: SessionId, why: &str) {
    let r = read_at(c, 1, id);
    assert!(
        matches!(
            r,
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "{why}: {r:?}"
    );
    c.cut.clear();
    c.advance(T + HB * 6);
    let r = read_at(c, 1, id);
    assert!(
        matches!(&r, Reply::Data { data, .. } if data == b"v"),
        "{r:?}"
    );
}

/// Soak seed 358: the only copy lives on a node that a partition cut off; the node the client's
/// ID names handed it over and was replaced meanwhile (it never heard of the holder), and the
/// node it asks sees the holder down. The answer counted only the
/// nodes it sees *up*, so the search looked complete and said NotFound for an acknowledged
/// write-through session. An answer now names every node the answerer knows, up or down.
#[test]
fn a_search_is_not_complete_while_an_answerer_knows_a_node_not_asked() {
    // Node 1 is replaced during the partition: it never hears node 0.
    let (mut c, id) = holder_cut_off_and_replaced(false, &[1]);
    unavailable_until_healed(
        &mut c,
        id,
        "node 2 knows node 0 (down): not a complete search",
    );
}

/// Seed 76382: the only copy lives on a node that a partition cut off, and every other node
/// was replaced meanwhile (the one the client's ID names had handed the session over): no live
/// node has heard of the holder. Only the
/// configured membership (`Config::peers`) still names it, and a search that did not reach it
/// is not complete.
#[test]
fn configured_peers_not_reached_make_a_search_incomplete() {
    let (mut c, id) = holder_cut_off_and_replaced(true, &[1, 2]);
    assert_eq!(
        c.node(1).membership().live_peers().count(),
        1,
        "node 0 was never heard"
    );
    unavailable_until_healed(&mut c, id, "node 0 is configured and was not asked");
}

/// Seed 120712: a backup's failover proposal reached its witness, whose answer was lost before
/// the witness went down (it shadows the session). The old master restarted and proposed a
/// Resume at an epoch not above that proposal (the backup's first proposal had been refused,
/// so its last one was two epochs up), and the backup accepted it: writes were then
/// acknowledged under an epoch lower than the placement the witness held, which won on heal
/// and lost them. A node now refuses a proposal at an epoch it proposed itself (or below).
#[test]
fn a_node_refuses_a_proposal_not_above_its_own_unanswered_one() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.written(2, b"v1");
    assert_eq!(id.backup, Some(addr(0)));
    // The backup stops hearing the master; the witness still hears it and refuses.
    c.cut.insert((2, 0));
    c.advance(T + HB);
    let r = c.read(0, id, 3000);
    assert!(
        matches!(
            r,
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "{r:?}"
    );
    // The master crashes; the backup asks again (a higher epoch): the witness accepts, but
    // its answer is lost and it is then cut off.
    let store = c.crash(2);
    c.cut.clear();
    c.advance(T + HB);
    c.cut.insert((1, 0));
    assert_eq!(
        c.client(0, Request::Read { id }),
        None,
        "waits for the witness"
    );
    let proposed = c
        .node(1)
        .store()
        .get(&id.hash)
        .expect("the witness accepted")
        .placement;
    assert_eq!(proposed.master, addr(0));
    assert!(proposed.epoch > id.version + 1, "{proposed:?}");
    c.isolate(1);
    c.advance(T + HB);
    // The old master restarts and resumes the session with node 0 as witness: never at an
    // epoch the witness's own proposal may hold.
    c.restart(2, store);
    let mut resumed = None;
    for _ in 0..40 {
        c.advance(HB);
        if c.serves(2, &id.hash) {
            resumed = c.node(2).store().get(&id.hash).map(|c| c.placement);
            break;
        }
    }
    let resumed = resumed.expect("resumed");
    assert!(
        resumed.epoch > proposed.epoch,
        "resumed at epoch {} under the shadowed proposal's {}",
        resumed.epoch,
        proposed.epoch
    );
    let (id2, t, _) = c.lock(2, resumed.id(id.hash));
    assert!(matches!(
        c.write(2, id2, t, b"v2"),
        Some(Reply::Written { .. })
    ));
    // Heal: whatever moves, the acknowledged write stays.
    c.cut.clear();
    c.advance(6 * T);
    let r = read_at(&mut c, 1, id2);
    assert!(
        matches!(&r, Reply::Data { data, .. } if data == b"v2"),
        "{r:?}"
    );
}

/// Soak seed 1886: a draining master's handover was accepted but never answered, and the new
/// master acknowledged writes. The old master, cut off from everyone, rejoined on heal and
/// resumed the session at a new epoch (alone: HA off) over its pending handover; the new
/// master then dropped its copy as taken over, losing the writes. A session with a proposal in
/// flight is now resumed only once it is answered.
#[test]
fn a_rejoin_does_not_resume_a_session_whose_handover_is_unanswered() {
    let mut c = ha_off_cluster(3, true);
    let id = c.written(1, b"v1");
    c.advance(T + HB);
    // Node 1 drains; node 0 takes the session over, but its answers to node 1 are lost.
    c.cut.insert((0, 1));
    c.drain(1);
    c.advance(HB);
    assert!(c.serves(0, &id.hash), "handed over to node 0");
    let handed = c.node(0).store().get(&id.hash).expect("held").placement;
    let (id2, t, _) = c.lock(0, handed.id(id.hash));
    assert!(matches!(
        c.write(0, id2, t, b"v2"),
        Some(Reply::Written { .. })
    ));
    // Node 1 loses sight of everyone, then hears node 2 again: it rejoins, with the handover
    // still unanswered (node 0 stays cut off from it).
    c.isolate(1);
    c.advance(T + HB);
    c.cut.clear();
    c.isolate(0);
    c.cut.remove(&(0, 2));
    c.cut.remove(&(2, 0));
    c.advance(4 * T);
    assert!(
        c.node(1).phase() == Phase::Serving,
        "{:?}",
        c.node(1).phase()
    );
    let kept = c
        .node(1)
        .store()
        .get(&id.hash)
        .expect("not handed over yet");
    assert!(
        kept.placement.epoch < handed.epoch && !c.serves(1, &id.hash),
        "resumed over a pending handover: {:?}",
        kept.placement
    );
    c.cut.clear();
    c.advance(4 * T);
    assert!(c.node(1).store().get(&id.hash).is_none(), "handed over");
    let r = read_at(&mut c, 2, id2);
    assert!(
        matches!(&r, Reply::Data { data, .. } if data == b"v2"),
        "{r:?}"
    );
}

/// The correlation number a message carries (forward, sync, search, lease), if any.
fn correlation(msg: &Msg) -> Option<u64> {
    match msg {
        Msg::Forward { fwd, .. } => Some(*fwd),
        Msg::SyncRequest { sync, .. } => Some(*sync),
        Msg::Locate { loc, .. } => Some(*loc),
        Msg::LeaseRequest { nonce } => Some(*nonce),
        _ => None,
    }
}

/// Seed 136684: a write relayed through node 1 waited at its master; node 1 restarted, and
/// the new incarnation numbered its requests from the same start, so the late answer to the
/// old write (`Written`) was taken as the answer to a new client's ReadLock. Correlation
/// numbers now carry the node ID's low 32 bits, like lock tokens.
#[test]
fn correlation_numbers_of_two_incarnations_never_collide() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let mut used = Vec::new();
    let mut first = 0;
    for round in 0..2 {
        let id = c.create(0);
        let (id, t, _) = c.lock(1, id);
        c.write(1, id, t, b"v").unwrap();
        let _ = c.client(1, Request::Read { id });
        c.advance(T);
        let ids: BTreeSet<u64> = c.sent[first..]
            .iter()
            .filter(|(from, _, _)| *from == 1)
            .filter_map(|(_, _, m)| correlation(m))
            .collect();
        assert!(!ids.is_empty());
        used.push(ids);
        if round == 0 {
            let store = c.crash(1);
            first = c.sent.len();
            c.restart(1, store);
            c.advance(3 * T);
            assert!(c.node(1).phase() == Phase::Serving);
        }
    }
    assert!(
        used[0].is_disjoint(&used[1]),
        "reused: {:?}",
        used[0].intersection(&used[1]).collect::<Vec<_>>()
    );
}

/// Soak seeds 3254 and 3454, seed 153960: a node accepted a placement change as the new
/// backup, but its answer was lost; the proposer committed a later placement elsewhere (or
/// crashed), and the node later promoted its copy of the abandoned placement: two masters at
/// one epoch. A backup made by a proposal now promotes only once its master confirmed the
/// placement (the master sends a confirming Replicate on commit).
#[test]
fn a_backup_made_by_an_unconfirmed_proposal_does_not_promote() {
    for ack_lost in [true, false] {
        let mut c = Cluster::new(4, FlushPolicy::WriteThrough);
        let id = c.written(0, b"v1");
        assert_eq!(id.backup, Some(addr(1)));
        c.advance(T + HB);
        // The backup crashes; the master rehomes the session to a new backup, whose answer
        // may be lost.
        c.crash(1);
        let mut witness = None;
        for _ in 0..60 {
            c.hold = true;
            c.advance(25);
            while let Some((from, to, msg)) = c.held.pop_front() {
                let lost = ack_lost && to == 0 && matches!(msg, Msg::ReplicateAck { .. });
                if lost || c.nodes[to].is_none() {
                    continue;
                }
                let now = c.now;
                let a = c.node(to).on_message(addr(from), msg, now);
                c.run(to, a);
            }
            c.hold = false;
            witness = [2, 3].into_iter().find(|w| {
                c.nodes[*w]
                    .as_ref()
                    .and_then(|n| n.store().get(&id.hash))
                    .is_some_and(|k| k.placement.backup == Some(addr(*w)))
            });
            if witness.is_some() {
                break;
            }
        }
        let w = witness.expect("a new backup witnessed the rehome");
        if !ack_lost {
            c.advance(HB);
        }
        let placement = c.node(w).store().get(&id.hash).expect("held").placement;
        // The master crashes before (or after) it heard the answer.
        c.crash(0);
        c.advance(T + HB);
        let r = read_at(&mut c, w, placement.id(id.hash));
        if ack_lost {
            assert!(
                matches!(
                    r,
                    Reply::Error {
                        code: ErrorCode::Unavailable,
                        ..
                    }
                ),
                "promoted an unconfirmed placement: {r:?}"
            );
        } else {
            assert!(
                matches!(&r, Reply::Data { data, .. } if data == b"v1"),
                "{r:?}"
            );
        }
    }
}

/// A delayed-write cluster of three with a session mastered by node 0 and backed up by node 1,
/// flushed at version 1, and a second write (version 2) acknowledged but not flushed yet.
fn unflushed_second_write() -> (Cluster, SessionId) {
    let mut c = Cluster::new(3, FlushPolicy::DelayedWrite);
    let id = c.written(0, b"v1");
    assert_eq!(id.backup, Some(addr(1)));
    c.advance(T + HB);
    let (id, t, _) = c.lock(0, id);
    assert!(matches!(
        c.write(0, id, t, b"v2"),
        Some(Reply::Written { version: 2, .. })
    ));
    (c, id)
}

/// Updates (`Replicate` with `Change::Update`) of session `id` that node 0 sent since message
/// number `first`.
fn updates_from_0(c: &Cluster, first: usize, id: SessionId) -> usize {
    c.sent[first..]
        .iter()
        .filter(|(from, _, m)| {
            *from == 0
                && matches!(m, Msg::Replicate { hash, change: Change::Update, .. } if *hash == id.hash)
        })
        .count()
}

/// Soak seed 3363: a restarted master waiting to resume a session (its copy possibly taken
/// over meanwhile) flushed it (delayed-write) to its backup, which no longer held it and took
/// it as a new replica; that replica then witnessed the stale master's Resume: two nodes
/// served the session. A session waiting for its Resume now sends no Update.
#[test]
fn a_session_waiting_for_its_resume_sends_no_update() {
    let (mut c, id) = unflushed_second_write();
    // The backup is replaced by an empty machine: the master must resume the session before
    // serving it again.
    c.crash(1);
    c.restart(1, MemStore::default());
    let first = c.sent.len();
    c.advance(4 * T);
    assert!(
        !c.serves(0, &id.hash),
        "not resumed: the new backup holds nothing"
    );
    assert_eq!(
        updates_from_0(&c, first, id),
        0,
        "an unconfirmed session was replicated"
    );
}

/// Soak seed 9131: a master cut off from everyone kept flushing (delayed-write) its unflushed
/// write to its backup, which it saw down. On heal, that flush reached the backup (restarted
/// meanwhile, its copy dropped as taken over) before the master heard it return, so the
/// session was not yet waiting for its Resume; the backup took the stale copy as a new replica
/// and then witnessed the stale master's Resume at an epoch already used elsewhere: two
/// masters at one epoch. A master sends no Update to a backup it sees down.
#[test]
fn a_master_sends_no_update_to_a_backup_it_sees_down() {
    let (mut c, id) = unflushed_second_write();
    // The master is cut off from everyone and its backup is replaced by an empty machine.
    c.isolate(0);
    c.crash(1);
    c.restart(1, MemStore::default());
    c.advance(T + 2 * HB);
    assert!(!c.node(0).membership().is_up(addr(1)), "backup seen down");
    let first = c.sent.len();
    c.advance(2 * T);
    assert_eq!(
        updates_from_0(&c, first, id),
        0,
        "replicated to a backup seen down"
    );
    assert_eq!(c.node(1).phase(), Phase::Serving, "the new backup serves");
    // Heal; the master ticks (a flush interval and more) before it hears anyone again.
    c.cut.clear();
    let first = c.sent.len();
    c.tick_only(0, 12);
    assert_eq!(
        updates_from_0(&c, first, id),
        0,
        "replicated before hearing the backup return"
    );
    assert!(
        c.node(1).store().get(&id.hash).is_none(),
        "the new backup took the stale copy as a replica"
    );
}

/// Placement upkeep: a session created while no peer could take a backup (one crashed, the
/// other draining) gets one (`AddBackup`, at the next epoch) once a peer can.
#[test]
fn a_session_without_a_backup_gets_one_when_a_peer_can_take_it() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    c.crash(2);
    c.drain(1);
    c.advance(T + HB);
    let id = c.written(0, b"v1");
    assert_eq!(
        id.backup, None,
        "no candidate: node 2 down, node 1 draining"
    );
    assert_eq!(c.node(0).stats().backups_added, 0);
    // Node 2 comes back (an empty machine) and serves.
    c.restart(2, MemStore::default());
    c.advance(T + HB * 4);
    let placement = c.node(0).store().get(&id.hash).expect("held").placement;
    assert_eq!(placement.backup, Some(addr(2)), "{placement:?}");
    // A new epoch (a proposal the starting node refused uses one up).
    assert!(placement.epoch > id.version, "{placement:?}");
    assert_eq!(c.node(0).stats().backups_added, 1);
    let copy = c
        .node(2)
        .store()
        .get(&id.hash)
        .expect("the new backup holds it");
    assert_eq!(
        (copy.placement, copy.data.as_slice()),
        (placement, &b"v1"[..])
    );
    assert!(c.serves(0, &id.hash));
}

/// Resume: a node that served alone (every peer went down) rejoins when one returns, and
/// resumes its session without a backup at a new epoch witnessed by a new backup (`AddBackup`),
/// never alone at a new epoch while a peer could witness it.
#[test]
fn a_node_that_was_alone_resumes_its_session_with_a_new_backup() {
    let mut c = Cluster::new(2, FlushPolicy::WriteThrough);
    c.crash(1);
    c.advance(T + HB);
    let id = c.written(0, b"v1");
    assert_eq!(id.backup, None, "alone: no candidate");
    c.restart(1, MemStore::default());
    let end = c.now + T + HB * 4;
    while c.now < end {
        c.advance(25);
        let p = c.node(0).store().get(&id.hash).expect("held").placement;
        assert!(
            p.epoch == id.version || p.backup.is_some(),
            "resumed alone at {}: {p:?}",
            c.now
        );
    }
    assert_eq!(c.node(0).phase(), Phase::Serving);
    let placement = c.node(0).store().get(&id.hash).expect("held").placement;
    assert_eq!(placement.backup, Some(addr(1)), "{placement:?}");
    assert!(placement.epoch > id.version, "{placement:?}");
    assert_eq!(c.node(0).stats().backups_added, 1);
    assert_eq!(
        c.node(1).store().get(&id.hash).map(|k| k.placement),
        Some(placement),
        "the new backup witnessed the resumed placement"
    );
    let r = read_at(&mut c, 1, id);
    assert!(
        matches!(&r, Reply::Data { data, id: new, .. } if data == b"v1" && new.backup == Some(addr(1))),
        "{r:?}"
    );
}

/// Seed 299448: a restarted backup that has had no heartbeat from its master yet, but has just
/// heard it by a relay message (here the write-through resend that confirms its copy), must not
/// take over from it: that message counts as hearing the master, as a heartbeat would.
#[test]
fn a_restarted_backup_that_just_heard_its_master_by_message_does_not_promote() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.written(0, b"v1");
    let b = index(id.backup.unwrap());
    let w = 3 - b;
    c.advance(T + HB);
    let store = c.crash(b);
    c.advance(HB);
    // The master's heartbeats and messages no longer reach the restarted backup.
    c.cut.insert((0, b));
    c.restart(b, store);
    c.advance(T + HB * 6);
    assert_eq!(c.node(b).phase(), Phase::Serving);
    assert!(c.silent(b, 0), "never heard the master since its start");
    // A Replicate from the master at the backup's placement gets through (and confirms the
    // copy); at once the third node asks the backup to fail over.
    let copy = c
        .node(b)
        .store()
        .get(&id.hash)
        .expect("held from before the restart");
    assert_eq!(copy.placement.master, addr(0));
    let now = c.now;
    let a = c.node(b).on_message(
        addr(0),
        Msg::Replicate {
            hash: id.hash,
            copy,
            change: Change::Update,
        },
        now,
    );
    assert!(
        a.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Msg::ReplicateAck { .. },
                ..
            }
        )),
        "{a:?}"
    );
    assert!(
        !c.silent(b, 0),
        "a relay message counts as hearing the master"
    );
    let a = c.node(b).on_message(
        addr(w),
        Msg::Forward {
            fwd: 7,
            request: Request::Read { id },
            failover: true,
        },
        now + 10,
    );
    assert!(
        !a.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Msg::Replicate {
                    change: Change::Promote { .. },
                    ..
                },
                ..
            }
        )),
        "promoted 10 ms after hearing the master: {a:?}"
    );
    assert!(
        a.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Msg::ForwardReply {
                    fwd: 7,
                    reply: Reply::Error {
                        code: ErrorCode::Unavailable,
                        ..
                    }
                },
                ..
            }
        )),
        "{a:?}"
    );
}

/// The placement every live node holds for `hash`: `(node, master, epoch)`.
fn placements(c: &Cluster, hash: &[u8; 16]) -> Vec<(usize, SocketAddr, u32)> {
    (0..c.nodes.len())
        .filter_map(|i| {
            let k = c.nodes[i].as_ref()?.store().get(hash)?;
            Some((i, k.placement.master, k.placement.epoch))
        })
        .collect()
}

/// The open case left by seed 299448: a master (node 0) whose backup (node 1) crashed proposed
/// a Rehome to node 2 at epoch 2, which node 2 accepted but whose answer was lost; node 2 then
/// went down, so the proposal became the session's shadow, and the master went on resending
/// its unacknowledged write-through write to the old backup at epoch 1. The old backup,
/// restarted meanwhile (its copy doubtful), took that resend as its master's confirmation; the
/// master then died, and the old backup promoted at epoch 2 — the epoch of the master's
/// proposal, which node 2 holds: two masters at one epoch (and, once the master resumed from
/// node 2's copy, two nodes serving). A copy sent while its master has a proposal outstanding
/// above the copy's epoch now carries that proposal (`Copy::intent`), and such a copy confirms
/// nothing: the old backup stays doubtful and never promotes.
#[test]
fn a_resend_from_a_master_replacing_its_backup_does_not_confirm_it() {
    let mut c = Cluster::new(4, FlushPolicy::WriteThrough);
    let id = c.written(0, b"v1");
    assert_eq!(id.backup, Some(addr(1)));
    c.advance(T + HB);
    // Node 3 is down for now (so node 2 is the only candidate for a new backup).
    let store3 = c.crash(3);
    c.advance(T + HB);
    // A write whose Replicate is lost: the backup crashes.
    let (id, token, _) = c.lock(0, id);
    let store1 = c.crash(1);
    assert_eq!(c.write(0, id, token, b"v2"), None, "waits for the backup");
    // Node 2's messages to the master are lost from now: it accepts the Rehome, unanswered.
    c.advance(HB);
    c.cut.insert((2, 0));
    c.advance(T);
    let rehomed = c.node(2).store().get(&id.hash).map(|k| k.placement);
    assert!(
        rehomed.is_some_and(|p| p.master == addr(0) && p.backup == Some(addr(2)) && p.epoch == 2),
        "node 2 witnessed the Rehome: {rehomed:?}"
    );
    // Node 2 crashes (its disk keeps the Rehome's placement); the master sees it down: the
    // proposal is its shadow. The master is then cut off from everyone; meanwhile the old
    // backup (which still holds its copy: nobody it syncs with knows a later one) and node 3
    // restart and serve.
    let store2 = c.crash(2);
    c.advance(T);
    assert!(!c.node(0).membership().is_up(addr(2)));
    c.isolate(0);
    c.advance(T + HB);
    c.restart(1, store1);
    c.restart(3, store3);
    c.advance(T + HB * 6);
    assert_eq!(c.node(1).phase(), Phase::Serving);
    assert_eq!(c.node(3).phase(), Phase::Serving);
    // Heal, except that the old backup's messages to the master stay lost; the master ticks
    // before it hears anyone, so its resend of the unacked write reaches the old backup.
    c.cut.clear();
    c.cut.insert((1, 0));
    let first = c.sent.len();
    c.tick_only(0, 8);
    assert!(
        c.sent[first..].iter().any(|(from, to, m)| *from == 0
            && *to == 1
            && matches!(m, Msg::Replicate { change: Change::Update | Change::Refresh, copy, .. } if copy.version == 2)),
        "the master resent its unacked write to the old backup"
    );
    assert_eq!(c.node(1).store().get(&id.hash).map(|k| k.version), Some(2));
    // The master dies. After a node timeout, a read through node 3 asks the old backup to
    // fail over.
    c.crash(0);
    c.advance(T + HB);
    let r = read_at(&mut c, 3, id);
    let mut masters = BTreeSet::new();
    for (_, master, epoch) in placements(&c, &id.hash) {
        masters.insert((epoch, master));
    }
    let held2 = store2.get(&id.hash).expect("node 2's disk").placement;
    masters.insert((held2.epoch, held2.master));
    for (epoch, master) in &masters {
        assert!(
            !masters.iter().any(|(e, m)| e == epoch && m != master),
            "two masters at epoch {epoch}: {masters:?}"
        );
    }
    assert!(
        matches!(
            r,
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ),
        "the old backup promoted a copy its master never confirmed: {r:?}"
    );
}

/// The open case named by the rule that a master sends no flush to a backup it sees down: a
/// write-through resend still goes (seed 51700), and one reaching a backup restarted without
/// the session acknowledged a lost write. The master (node 0), cut off with a write in flight,
/// was taken over by its backup (node 1, witness node 2), which wrote on; node 1 was then
/// replaced by an empty machine. On heal the old master resent its write before hearing
/// anyone; the new node 1 took it as a new replica and acked it, so the old master's client
/// got `Written` for a write the session never had. A resend to a backup seen down is now a
/// `Change::Refresh`: it refreshes a copy held at its placement, and a node that holds none
/// refuses it.
#[test]
fn a_resend_to_a_backup_seen_down_never_makes_a_new_replica() {
    let mut c = Cluster::new(3, FlushPolicy::WriteThrough);
    let id = c.written(0, b"v1");
    assert_eq!(id.backup, Some(addr(1)));
    c.advance(T + HB);
    let (id, token, _) = c.lock(0, id);
    c.isolate(0);
    let stale = c.submit(
        0,
        Request::Write {
            id,
            token,
            lifetime_s: 60,
            data: b"v2".to_vec(),
        },
    );
    assert_eq!(c.take_reply(stale), None, "waits for the backup");
    c.advance(T + HB);
    // The backup takes over (node 2 witnesses) and a client writes there.
    let r = read_at(&mut c, 2, id);
    let Reply::Data {
        id: taken, data, ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!((taken.master, data.as_slice()), (addr(1), &b"v1"[..]));
    let (taken, t, _) = c.lock(2, taken);
    assert!(matches!(
        c.write(2, taken, t, b"v3"),
        Some(Reply::Written { .. })
    ));
    // Node 1 is replaced by an empty machine, which serves.
    c.crash(1);
    c.advance(T + HB);
    c.restart(1, MemStore::default());
    c.advance(T + HB * 6);
    assert_eq!(c.node(1).phase(), Phase::Serving);
    // Heal; the old master ticks before it hears anyone: its resend reaches the new node 1.
    c.cut.clear();
    let first = c.sent.len();
    c.tick_only(0, 8);
    assert!(
        c.sent[first..].iter().any(|(from, to, m)| *from == 0
            && *to == 1
            && matches!(m, Msg::Replicate { copy, .. } if copy.version == 2)),
        "the old master resent its write"
    );
    assert!(
        c.node(1)
            .store()
            .get(&id.hash)
            .is_none_or(|k| k.placement.master != addr(0)),
        "the empty node took the stale copy as a replica"
    );
    c.advance(T * 4);
    let r = c.take_reply(stale);
    assert!(
        !matches!(r, Some(Reply::Written { .. })),
        "a write the session lost was acknowledged: {r:?}"
    );
    // The session is never read back without its acknowledged write (it waits for its
    // master, node 1's first incarnation, whose disk is gone: node 2's copy predates its own
    // rejoin and stays doubtful).
    let r = read_at(&mut c, 2, taken);
    assert!(
        matches!(&r, Reply::Data { data, .. } if data == b"v3")
            || matches!(
                r,
                Reply::Error {
                    code: ErrorCode::Unavailable,
                    ..
                }
            ),
        "{r:?}"
    );
}
