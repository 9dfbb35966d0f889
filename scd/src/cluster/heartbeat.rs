//! Heartbeats on UDP: one sealed datagram per interval (± 20 % jitter) to every configured peer
//! and/or the broadcast address; received ones are checked (sender in `allowed_hosts`, length,
//! MAC, replay) and fed to the membership table. A heartbeat is never answered.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use log::debug;
use monoio::net::udp::UdpSocket;
use scd_wire::constants::HEARTBEAT_MTU_MAX;
use scd_wire::heartbeat::{FLAG_DRAINING, FLAG_HA, Heartbeat, HeartbeatVerifier};

use super::Counters;
use super::route::State;
use crate::core::clock_ms;
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
    let mut seq = 0u64;
    loop {
        seq += 1;
        let mut flags = 0;
        if state.node.settings.cluster.ha {
            flags |= FLAG_HA;
        }
        if state.shared().draining.load(Ordering::Relaxed) {
            flags |= FLAG_DRAINING;
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
        for t in &targets {
            if Some(*t) == own {
                continue;
            }
            let (res, _) = socket.send_to(datagram.to_vec(), *t).await;
            match res {
                Ok(_) => Counters::bump(&state.shared().counters.heartbeats_sent),
                Err(e) => debug!("heartbeat to {t} not sent: {e}"),
            }
        }
        // ± 20 % jitter so that nodes started together do not send in step.
        let jitter = getrandom::u64().unwrap_or(0) % (interval * 2 / 5 + 1);
        let wait = interval * 4 / 5 + jitter;
        monoio::time::sleep(Duration::from_millis(wait)).await;
        state.refresh_load().await;
    }
}

/// Receives heartbeats until the thread ends. Nothing is ever sent in reply.
pub async fn recv_loop(state: Rc<State>, socket: Rc<UdpSocket>) {
    let mut verifier = HeartbeatVerifier::new();
    let mut buf = vec![0u8; HEARTBEAT_MTU_MAX];
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
        state.heard(&hb, clock_ms());
    }
}
