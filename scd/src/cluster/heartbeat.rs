//! Heartbeats on UDP: one sealed datagram per interval (± 20 % jitter, as
//! `scd_cluster::HeartbeatSchedule` says) to every configured peer and/or the broadcast address;
//! received ones are checked (sender in `allowed_hosts`, length, MAC, replay) and fed to the
//! membership table. A heartbeat is never answered. Our own broadcasts, looped back to us, are
//! dropped before any check (and not counted).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use log::debug;
use monoio::net::udp::UdpSocket;
use scd_cluster::HeartbeatSchedule;
use scd_wire::constants::HEARTBEAT_MTU_MAX;
use scd_wire::heartbeat::{
    FLAG_DRAINING, FLAG_HA, FLAG_WITNESS_ONLY, Heartbeat, HeartbeatVerifier,
};

use super::Counters;
use super::membership::now_ms;
use super::route::State;
use crate::settings::Settings;

/// Sends a heartbeat every interval with jitter until the thread ends.
pub async fn send_loop(state: Rc<State>, socket: Rc<UdpSocket>, started_ms: u64) {
    let interval = state.node.settings.cluster.heartbeat_interval_ms;
    let cluster = state.node.resolved.cluster.clone().expect("clustering on");
    let mut targets = cluster.peers.clone();
    if let Some(b) = cluster.broadcast {
        targets.push(b);
    }
    let own = socket.local_addr().ok();
    let mut schedule = HeartbeatSchedule::new(interval, now_ms());
    let mut seq = 0u64;
    loop {
        let now = now_ms();
        if schedule.due(now, getrandom::u64().unwrap_or(0)) {
            seq += 1;
            send_one(&state, &socket, &targets, own, started_ms, seq).await;
        }
        let wait = schedule.next_ms().saturating_sub(now_ms());
        monoio::time::sleep(Duration::from_millis(wait)).await;
        state.refresh_load().await;
    }
}

/// One heartbeat to every target.
async fn send_one(
    state: &State,
    socket: &UdpSocket,
    targets: &[SocketAddr],
    own: Option<SocketAddr>,
    started_ms: u64,
    seq: u64,
) {
    let mut flags = 0;
    if state.node.settings.cluster.ha {
        flags |= FLAG_HA;
    }
    if state.shared().draining.load(Ordering::Relaxed) {
        flags |= FLAG_DRAINING;
    }
    if state.node.settings.cluster.witness_only {
        flags |= FLAG_WITNESS_ONLY;
    }
    let hb = Heartbeat {
        flags,
        node_id: state.node_id,
        relay: state.me,
        epoch: started_ms,
        seq,
        sessions: state.sessions_held.get(),
        sockets: state.node.connections_open.load(Ordering::Relaxed),
    };
    let datagram = hb.seal(&state.key);
    for t in targets {
        if Some(*t) == own {
            continue;
        }
        let (res, _) = socket.send_to(datagram.to_vec(), *t).await;
        match res {
            Ok(_) => Counters::bump(&state.shared().counters.heartbeats_sent),
            Err(e) => debug!("heartbeat to {t} not sent: {e}"),
        }
    }
}

/// Receives heartbeats until the thread ends. Nothing is ever sent in reply.
pub async fn recv_loop(state: Rc<State>, socket: Rc<UdpSocket>) {
    let mut verifier = HeartbeatVerifier::new();
    let mut buf = vec![0u8; HEARTBEAT_MTU_MAX];
    let port = state.node.settings.cluster.heartbeat_port;
    let bound = socket.local_addr().ok().map(|a| a.ip());
    loop {
        let (res, b) = socket.recv_from(buf).await;
        buf = b;
        let (len, from) = match res {
            Ok(r) => r,
            Err(e) => {
                debug!("heartbeat receive failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let counters = &state.shared().counters;
        if from.port() == port && (from.ip() == state.me.ip() || Some(from.ip()) == bound) {
            // Our own broadcast, looped back (the socket hears the broadcast address).
            continue;
        }
        if !Settings::host_allowed(&state.node.resolved, from.ip()) {
            Counters::bump(&counters.heartbeats_rejected);
            debug!("heartbeat from {from} dropped: not in cluster.allowed_hosts");
            continue;
        }
        let hb = match Heartbeat::open(&buf[..len], &state.key) {
            Ok(hb) => hb,
            Err(e) => {
                Counters::bump(&counters.heartbeats_rejected);
                debug!("heartbeat from {from} dropped: {e}");
                continue;
            }
        };
        if hb.node_id == state.node_id || hb.relay == state.me {
            // Our own (broadcast loops back), or a node claiming our address.
            continue;
        }
        if let Err(e) = verifier.accept(&hb) {
            Counters::bump(&counters.heartbeats_rejected);
            debug!("heartbeat from {from} dropped: {e}");
            continue;
        }
        Counters::bump(&counters.heartbeats_received);
        state.heard(&hb, now_ms());
    }
}
