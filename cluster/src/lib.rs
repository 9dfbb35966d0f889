//! SCD's cluster protocol as deterministic state machines: membership, routing, replication,
//! failover, fencing, leases, rejoin and drain. The protocol and its guarantees are stated in
//! `docs/ARCHITECTURE.md`, section "The cluster"; this crate implements exactly that.
//!
//! No I/O, no clock, no randomness: time is a `now_ms` argument (a monotonic clock of the
//! calling node), random values (session HASHes, heartbeat jitter) are arguments. Sockets,
//! timers, the engine and the wire encoding are the driver's (the `scd` daemon).
//!
//! # Layout
//!
//! - [`membership`]: [`Membership`] (who is up, load, restarts told by [`incarnation`], drains,
//!   node ID → relay address), [`HeartbeatSchedule`] (jittered send times).
//! - [`placement`]: [`Placement`] (the location fields of a session ID) and
//!   [`choose_backup`] (least load, ties by address).
//! - [`Node`]: one node's state machine. Events in: [`Node::on_heartbeat`],
//!   [`Node::on_client`], [`Node::on_message`], [`Node::on_unreachable`], [`Node::tick`],
//!   [`Node::start_drain`]. Out: a `Vec<`[`Action`]`>` to execute in order — send a [`Msg`] to
//!   a node, reply to a local client, drain complete.
//! - Session data lives in a [`Store`] the node owns (the daemon implements it over its engine;
//!   [`MemStore`] for tests). Every [`Copy`] carries its [`Placement`], its data version and,
//!   while a placement change it proposed is unanswered, its [`Intent`]. Placement, intent and
//!   removals must be durable at once under both flush policies (see [`Store`]);
//!   [`Store::meta`] should answer without copying the data.
//!
//! # Driving a node
//!
//! The driver:
//! 1. opens and verifies each heartbeat datagram (`scd_wire::HeartbeatVerifier`) and passes
//!    [`PeerBeat::from_heartbeat`] to [`Node::on_heartbeat`]; sends its own heartbeat when
//!    [`HeartbeatSchedule::due`] says so, with [`Node::heartbeat_fields`];
//! 2. numbers each local client request and passes it to [`Node::on_client`];
//! 3. decodes relay frames into [`Msg`] and passes them to [`Node::on_message`] with the
//!    sender's relay address;
//! 4. reports connections that fail with [`Node::on_unreachable`];
//! 5. calls [`Node::tick`] every `heartbeat_interval_ms / 4` or so;
//! 6. executes the returned actions in order; under write-through, a reply or an ack goes out
//!    only after the store writes made before it are durable.
//!
//! # Example: a write through a non-master node, then a failover
//!
//! ```
//! use scd_cluster::{Action, Config, MemStore, Msg, Node, PeerBeat, Reply, Request};
//!
//! let addr = |n: u8| std::net::SocketAddr::from(([127, 0, 0, n], 34567));
//! let cfg = |n: u8| Config::new(addr(n), u64::from(n) * 1000);
//! // Three nodes of a new cluster (empty stores: they serve at once).
//! let mut nodes: Vec<Node<MemStore>> =
//!     (1..=3).map(|n| Node::new_cluster(cfg(n), MemStore::default(), 0)).collect();
//!
//! // Deliver messages until quiet; client replies are collected. `down` nodes are cut off.
//! fn run(nodes: &mut [Node<MemStore>], mut queue: Vec<(usize, Action)>, now: u64,
//!        down: &[usize]) -> Vec<Reply> {
//!     let index = |a: std::net::SocketAddr| (a.ip().to_string().rsplit('.').next().unwrap()
//!         .parse::<usize>().unwrap()) - 1;
//!     let mut replies = Vec::new();
//!     while let Some((at, action)) = queue.pop() {
//!         match action {
//!             Action::Send { to, msg } => {
//!                 let from = nodes[at].config().me;
//!                 let to = index(to);
//!                 if down.contains(&to) { continue; }
//!                 for a in nodes[to].on_message(from, msg, now) { queue.insert(0, (to, a)); }
//!             }
//!             Action::Reply { reply, .. } => replies.push(reply),
//!             Action::DrainComplete => {}
//!         }
//!     }
//!     replies
//! }
//! // Everyone hears everyone's heartbeat; leases are granted on the first tick.
//! let beats = |nodes: &mut [Node<MemStore>], now: u64, down: &[usize]| {
//!     for i in 0..3 { for j in 0..3 {
//!         if i == j || down.contains(&i) { continue; }
//!         let (sessions, draining) = nodes[i].heartbeat_fields();
//!         let beat = PeerBeat { relay: addr(i as u8 + 1), node_id: (i as u64 + 1) * 1000,
//!                               epoch: 0, sessions, sockets: 0, draining,
//!                               witness_only: false };
//!         nodes[j].on_heartbeat(&beat, now);
//!     }}
//! };
//! beats(&mut nodes, 0, &[]);
//! let mut q = Vec::new();
//! for i in 0..3 { for a in nodes[i].tick(0) { q.push((i, a)); } }
//! run(&mut nodes, q, 0, &[]);
//!
//! // A session created on node 1 gets a backup (the least loaded other node).
//! let created = nodes[0].on_client(1, Request::Create { hash: [7; 16], lifetime_s: 1440 }, 1);
//! let Action::Reply { reply: Reply::Created { id }, .. } = &created[0] else { panic!() };
//! let id = *id;
//! assert_eq!(id.backup, Some(addr(2)));
//!
//! // Node 3 takes the lock and writes: relayed to node 1, replicated to node 2, then acked.
//! let a = nodes[2].on_client(2, Request::ReadLock { id, lease_ms: 30_000 }, 2);
//! let r = run(&mut nodes, a.into_iter().map(|a| (2, a)).collect(), 2, &[]);
//! let Reply::Data { token: Some(token), .. } = r[0] else { panic!("{r:?}") };
//! let w = Request::Write { id, token, lifetime_s: 1440, data: b"n|i:1;".to_vec() };
//! let a = nodes[2].on_client(3, w, 3);
//! let r = run(&mut nodes, a.into_iter().map(|a| (2, a)).collect(), 3, &[]);
//! assert!(matches!(r[0], Reply::Written { version: 1, .. }));
//!
//! // Node 1 dies. After node_timeout (3.5 s) without its heartbeat, a read through node 3
//! // fails over to node 2, which takes over with node 3 as witness and new backup.
//! let mut now = 3;
//! while now < 4_500 {
//!     now += 250;
//!     beats(&mut nodes, now, &[0]);
//!     let mut q = Vec::new();
//!     for i in 1..3 { for a in nodes[i].tick(now) { q.push((i, a)); } }
//!     run(&mut nodes, q, now, &[0]);
//! }
//! let a = nodes[2].on_client(4, Request::Read { id }, now);
//! let mut q: Vec<_> = a.into_iter().map(|a| (2, a)).collect();
//! let mut replies = run(&mut nodes, q.drain(..).collect(), now, &[0]);
//! // (Served at once here: the witness answered within this delivery loop. In general the
//! // request waits for the witness's ack and for a lease from the new backup.)
//! for step in 1..=4 {
//!     let t = now + step * 250;
//!     beats(&mut nodes, t, &[0]);
//!     let mut q = Vec::new();
//!     for i in 1..3 { for a in nodes[i].tick(t) { q.push((i, a)); } }
//!     replies.extend(run(&mut nodes, q, t, &[0]));
//! }
//! let Reply::Data { id: new_id, data, .. } = &replies[0] else { panic!("{replies:?}") };
//! assert_eq!(data, b"n|i:1;");
//! assert_eq!((new_id.master, new_id.backup, new_id.version), (addr(2), Some(addr(3)), 2));
//! ```

pub mod membership;
mod node;
pub mod placement;
mod types;

pub use membership::{
    HeartbeatSchedule, Membership, MembershipConfig, PeerBeat, PeerEvent, incarnation,
};
pub use node::{Node, Phase, Stats};
pub use placement::{Placement, choose_backup};
pub use types::{
    Action, Change, Config, Copy, FlushPolicy, Intent, MemStore, Meta, Msg, Reply, Request, Store,
};

/// A node's identity on the wire: its relay address (IP:relay_port), as in session IDs.
pub type Addr = std::net::SocketAddr;

/// A session's identity: the 16 random bytes of its ID's HASH.
pub type Hash = [u8; scd_wire::constants::SESSION_HASH_LEN];
