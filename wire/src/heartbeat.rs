//! Heartbeats: one fixed-size UDP datagram per node and interval (docs/wire.md, "Heartbeats").
//!
//! [`Heartbeat::seal`] builds a datagram; [`Heartbeat::open`] checks its length, MAC and fields;
//! a [`HeartbeatVerifier`] then refuses replays and stale epochs per sender.
//!
//! **A heartbeat is never answered.** The daemon must not send anything in reply to one, so that
//! a forged source address cannot turn a node into a reflector.

use core::fmt;
use std::collections::HashMap;
use std::net::SocketAddr;

use crate::constants::{
    HEARTBEAT_KIND, HEARTBEAT_LEN, HEARTBEAT_MAC_LEN, HEARTBEAT_MAGIC, HEARTBEAT_PAYLOAD_LEN,
    HEARTBEAT_SENDERS_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
use crate::frame::{Reader, Reason, put_u8, put_u16, put_u32, put_u64};
use crate::mac::{ClusterKey, ct_eq_32, keyed};
use crate::session_id::{read_addr, write_addr};

/// Heartbeat flag: the sender is draining; do not pick it as a backup.
pub const FLAG_DRAINING: u16 = 1 << 0;
/// Heartbeat flag: the sender runs with HA (replication) on.
pub const FLAG_HA: u16 = 1 << 1;
/// Heartbeat flag: the sender is a witness only (`cluster.witness_only`): it holds no sessions,
/// so it is never picked as a backup or a new master, but it counts among the cluster's nodes
/// and witnesses other nodes' silence.
pub const FLAG_WITNESS_ONLY: u16 = 1 << 2;
const FLAGS_KNOWN: u16 = FLAG_DRAINING | FLAG_HA | FLAG_WITNESS_ONLY;

/// One node's "I am alive", with its load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Flags ([`FLAG_DRAINING`], [`FLAG_HA`], [`FLAG_WITNESS_ONLY`]).
    pub flags: u16,
    /// The sender's node ID.
    pub node_id: u64,
    /// Where the sender accepts relay connections.
    pub relay: SocketAddr,
    /// Strictly larger on every start of the sender's daemon.
    pub epoch: u64,
    /// Strictly larger on every heartbeat within one epoch.
    pub seq: u64,
    /// Sessions held (load).
    pub sessions: u64,
    /// Open sockets (load).
    pub sockets: u32,
}

/// Why a heartbeat was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatError {
    /// The datagram is not [`HEARTBEAT_LEN`] bytes.
    WrongLength {
        /// Its length.
        len: usize,
    },
    /// It does not start with "SCHB".
    BadMagic,
    /// A protocol version this node does not speak.
    UnsupportedVersion(u8),
    /// A kind other than heartbeat.
    UnknownKind(u8),
    /// `payload_size` is not 68.
    BadPayloadSize(u32),
    /// The MAC does not match (wrong key or altered).
    BadMac,
    /// A field is invalid (only checked after the MAC matched).
    Invalid(Reason),
    /// A flag bit this version does not define.
    UnknownFlags(u16),
    /// Same epoch, sequence number not higher than one already accepted.
    Replay {
        /// The sender.
        node_id: u64,
        /// The sequence number received.
        seq: u64,
        /// The highest accepted so far.
        seen: u64,
    },
    /// An epoch lower than one already accepted from the sender.
    StaleEpoch {
        /// The sender.
        node_id: u64,
        /// The epoch received.
        epoch: u64,
        /// The highest accepted so far.
        seen: u64,
    },
    /// The verifier already tracks [`HEARTBEAT_SENDERS_MAX`] senders.
    TooManySenders,
}

impl fmt::Display for HeartbeatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeartbeatError::WrongLength { len } => {
                write!(f, "heartbeat of {len} bytes, expected {HEARTBEAT_LEN}")
            }
            HeartbeatError::BadMagic => write!(f, "not a heartbeat (bad magic)"),
            HeartbeatError::UnsupportedVersion(v) => write!(f, "heartbeat version {v}"),
            HeartbeatError::UnknownKind(k) => write!(f, "heartbeat kind {k}"),
            HeartbeatError::BadPayloadSize(n) => write!(f, "heartbeat payload size {n}"),
            HeartbeatError::BadMac => write!(f, "heartbeat MAC mismatch"),
            HeartbeatError::Invalid(reason) => write!(f, "heartbeat field: {reason}"),
            HeartbeatError::UnknownFlags(flags) => write!(f, "heartbeat flags {flags:#x}"),
            HeartbeatError::Replay { node_id, seq, seen } => write!(
                f,
                "replayed heartbeat from node {node_id}: seq {seq}, already saw {seen}"
            ),
            HeartbeatError::StaleEpoch {
                node_id,
                epoch,
                seen,
            } => write!(
                f,
                "stale heartbeat from node {node_id}: epoch {epoch}, already saw {seen}"
            ),
            HeartbeatError::TooManySenders => write!(f, "too many heartbeat senders"),
        }
    }
}

impl std::error::Error for HeartbeatError {}

impl Heartbeat {
    /// The datagram for this heartbeat, MAC included.
    pub fn seal(&self, key: &ClusterKey) -> [u8; HEARTBEAT_LEN] {
        let mut payload = Vec::with_capacity(HEARTBEAT_PAYLOAD_LEN);
        payload.extend_from_slice(&HEARTBEAT_MAGIC);
        put_u8(&mut payload, PROTOCOL_VERSION_MAX);
        put_u8(&mut payload, HEARTBEAT_KIND);
        put_u16(&mut payload, self.flags);
        put_u64(&mut payload, self.node_id);
        write_addr(&mut payload, Some(&self.relay));
        put_u64(&mut payload, self.epoch);
        put_u64(&mut payload, self.seq);
        put_u64(&mut payload, self.sessions);
        put_u32(&mut payload, self.sockets);
        put_u32(&mut payload, HEARTBEAT_PAYLOAD_LEN as u32);
        debug_assert_eq!(payload.len(), HEARTBEAT_PAYLOAD_LEN);
        let mac = keyed(&key.heartbeat, &[&payload]);
        let mut out = [0u8; HEARTBEAT_LEN];
        out[..HEARTBEAT_PAYLOAD_LEN].copy_from_slice(&payload);
        out[HEARTBEAT_PAYLOAD_LEN..].copy_from_slice(&mac);
        out
    }

    /// Checks a received datagram: length, magic, version, kind, payload size, then the MAC
    /// (constant-time), and only then the fields. Replays are the verifier's job.
    pub fn open(datagram: &[u8], key: &ClusterKey) -> Result<Heartbeat, HeartbeatError> {
        if datagram.len() != HEARTBEAT_LEN {
            return Err(HeartbeatError::WrongLength {
                len: datagram.len(),
            });
        }
        if datagram[..4] != HEARTBEAT_MAGIC {
            return Err(HeartbeatError::BadMagic);
        }
        let version = datagram[4];
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
            return Err(HeartbeatError::UnsupportedVersion(version));
        }
        if datagram[5] != HEARTBEAT_KIND {
            return Err(HeartbeatError::UnknownKind(datagram[5]));
        }
        let (payload, mac) = datagram.split_at(HEARTBEAT_PAYLOAD_LEN);
        let mut size = [0u8; 4];
        size.copy_from_slice(&payload[HEARTBEAT_PAYLOAD_LEN - 4..]);
        let size = u32::from_le_bytes(size);
        if size as usize != HEARTBEAT_PAYLOAD_LEN {
            return Err(HeartbeatError::BadPayloadSize(size));
        }
        let mut received = [0u8; HEARTBEAT_MAC_LEN];
        received.copy_from_slice(mac);
        if !ct_eq_32(&received, &keyed(&key.heartbeat, &[payload])) {
            return Err(HeartbeatError::BadMac);
        }
        let mut r = Reader::new(&payload[6..]);
        let fields = (|| {
            let flags = r.u16("flags")?;
            let node_id = r.u64("node_id")?;
            let relay = read_addr(&mut r, "relay", false)?.ok_or(Reason::BadAddressFamily {
                field: "relay",
                family: 0,
            })?;
            Ok::<_, Reason>(Heartbeat {
                flags,
                node_id,
                relay,
                epoch: r.u64("epoch")?,
                seq: r.u64("seq")?,
                sessions: r.u64("sessions")?,
                sockets: r.u32("sockets")?,
            })
        })();
        let heartbeat = fields.map_err(HeartbeatError::Invalid)?;
        if heartbeat.flags & !FLAGS_KNOWN != 0 {
            return Err(HeartbeatError::UnknownFlags(heartbeat.flags));
        }
        Ok(heartbeat)
    }

    /// Whether the sender is draining.
    pub fn draining(&self) -> bool {
        self.flags & FLAG_DRAINING != 0
    }

    /// Whether the sender runs with HA on.
    pub fn ha(&self) -> bool {
        self.flags & FLAG_HA != 0
    }

    /// Whether the sender is a witness only (holds no sessions).
    pub fn witness_only(&self) -> bool {
        self.flags & FLAG_WITNESS_ONLY != 0
    }
}

/// Refuses replayed and stale heartbeats: remembers, per sender, the highest `(epoch, seq)`
/// accepted. Memory is bounded by [`HEARTBEAT_SENDERS_MAX`] senders.
#[derive(Debug, Default)]
pub struct HeartbeatVerifier {
    seen: HashMap<u64, (u64, u64)>,
}

impl HeartbeatVerifier {
    /// An empty verifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `heartbeat` (already opened with its MAC checked) if it is newer than everything
    /// accepted from its sender, and remembers it.
    pub fn accept(&mut self, heartbeat: &Heartbeat) -> Result<(), HeartbeatError> {
        let id = heartbeat.node_id;
        let now = (heartbeat.epoch, heartbeat.seq);
        match self.seen.get_mut(&id) {
            Some(seen) => {
                if now.0 < seen.0 {
                    return Err(HeartbeatError::StaleEpoch {
                        node_id: id,
                        epoch: now.0,
                        seen: seen.0,
                    });
                }
                if now.0 == seen.0 && now.1 <= seen.1 {
                    return Err(HeartbeatError::Replay {
                        node_id: id,
                        seq: now.1,
                        seen: seen.1,
                    });
                }
                *seen = now;
            }
            None => {
                if self.seen.len() >= HEARTBEAT_SENDERS_MAX {
                    return Err(HeartbeatError::TooManySenders);
                }
                self.seen.insert(id, now);
            }
        }
        Ok(())
    }

    /// Opens and accepts in one step.
    pub fn verify(
        &mut self,
        datagram: &[u8],
        key: &ClusterKey,
    ) -> Result<Heartbeat, HeartbeatError> {
        let heartbeat = Heartbeat::open(datagram, key)?;
        self.accept(&heartbeat)?;
        Ok(heartbeat)
    }

    /// Forgets a sender (a node removed from the cluster).
    pub fn forget(&mut self, node_id: u64) {
        self.seen.remove(&node_id);
    }

    /// The highest `(epoch, seq)` accepted from a sender.
    pub fn last_seen(&self, node_id: u64) -> Option<(u64, u64)> {
        self.seen.get(&node_id).copied()
    }

    /// Number of senders tracked.
    pub fn senders(&self) -> usize {
        self.seen.len()
    }
}
