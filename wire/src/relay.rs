//! Relays between daemons (docs/wire.md, "Relays between daemons").
//!
//! A connection starts with a three-frame handshake ([`ServerHandshake`], [`ClientHandshake`])
//! in which both sides prove the cluster key over fresh nonces; it yields per-direction keys.
//! After it, every frame is sealed by a [`Sealer`] and checked by an [`Opener`]: a BLAKE3 keyed
//! MAC over the header, the body and an implicit sequence number, so a replayed, reordered,
//! dropped or altered frame is refused. These are pure state objects; the daemon owns the socket.

use std::net::SocketAddr;

use crate::constants::{
    ADDR_LEN, AUTH_TAG_LEN, LEASE_REASON_MAX, NONCE_LEN, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN, RELAY_TAG_LEN, REPLICATE_BATCH_MAX, SESSION_HASH_LEN, SYNC_HASHES_MAX,
};
use crate::frame::{
    Body, DecodeError, Frame, Limits, Reader, Reason, kind, len_u32, misplaced_kind, private,
    put_u8, put_u16, put_u32, put_u64, split_frame,
};
use crate::local::{
    ErrorCode, Reply, Request, clamp_str, error_body_len, negotiate, read_error, write_error,
};
use crate::mac::{ClusterKey, ct_eq_16, ct_eq_32, keyed};
use crate::session_id::{read_addr, write_addr};

/// What a sync stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SyncRole {
    /// Copies the receiver should hold as the sender's backup (a rejoining node asks for these).
    Replicas = 1,
    /// Sessions the receiver is to take over as master (a draining node sends these).
    Masters = 2,
}

impl SyncRole {
    fn decode(value: u8) -> Result<SyncRole, Reason> {
        match value {
            1 => Ok(SyncRole::Replicas),
            2 => Ok(SyncRole::Masters),
            other => Err(Reason::BadSyncRole(other)),
        }
    }
}

/// The placement change a WitnessRequest asks the receiver to agree to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WitnessChange {
    /// The suspect is the session's master; the requester, its backup, takes the session over.
    Promote = 1,
    /// The suspect is the session's backup; the requester, its master, drops or replaces it.
    DropBackup = 2,
}

impl WitnessChange {
    fn decode(value: u8) -> Result<WitnessChange, Reason> {
        match value {
            1 => Ok(WitnessChange::Promote),
            2 => Ok(WitnessChange::DropBackup),
            other => Err(Reason::BadWitnessChange(other)),
        }
    }
}

/// A copy of one session, as Replicate and SyncItem carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica<'a> {
    /// The session's identity (its ID's HASH).
    pub hash: [u8; SESSION_HASH_LEN],
    /// Data version.
    pub version: u64,
    /// Placement epoch (the ID's VERSION); a receiver that knows a higher one refuses the copy.
    pub epoch: u32,
    /// Seconds left to live.
    pub lifetime_s: u32,
    /// The session data.
    pub data: &'a [u8],
}

impl<'a> Replica<'a> {
    /// Bytes of the fields before the data.
    pub const HEAD_LEN: usize = SESSION_HASH_LEN + 8 + 4 + 4 + 4;

    /// Bytes of this copy as a Replicate body (and as one ReplicateBatch entry).
    pub fn encoded_len(&self) -> usize {
        Self::HEAD_LEN + self.data.len()
    }

    fn write_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash);
        put_u64(out, self.version);
        put_u32(out, self.epoch);
        put_u32(out, self.lifetime_s);
        put_u32(out, len_u32(self.data.len()));
    }

    fn read(r: &mut Reader<'a>, limits: &Limits) -> Result<Self, Reason> {
        Ok(Replica {
            hash: r.array("hash")?,
            version: r.u64("version")?,
            epoch: r.u32("epoch")?,
            lifetime_s: r.u32("lifetime_s")?,
            data: r.blob(limits)?,
        })
    }
}

/// Where a session lives, as a node that knows it answers a Locate: its placement and the data
/// version of the copy the answering node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The session's master.
    pub master: SocketAddr,
    /// Its backup, if it has one.
    pub backup: Option<SocketAddr>,
    /// The placement epoch (the ID's VERSION).
    pub epoch: u32,
    /// Data version of the answering node's copy; 0 when it holds none (it only knows where
    /// the session went).
    pub version: u64,
}

impl Location {
    const LEN: usize = 2 * ADDR_LEN + 4 + 8;

    fn write(&self, out: &mut Vec<u8>) {
        write_addr(out, Some(&self.master));
        write_addr(out, self.backup.as_ref());
        put_u32(out, self.epoch);
        put_u64(out, self.version);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, Reason> {
        let master = read_addr(r, "master", false)?.ok_or(Reason::BadAddressFamily {
            field: "master",
            family: 0,
        })?;
        Ok(Location {
            master,
            backup: read_addr(r, "backup", true)?,
            epoch: r.u32("epoch")?,
            version: r.u64("version")?,
        })
    }
}

/// Checks a list of `entry_len`-byte entries: a whole number of them, at most `max`.
fn check_entries(
    bytes: &[u8],
    entry_len: usize,
    max: usize,
    field: &'static str,
) -> Result<(), Reason> {
    let rem = bytes.len() % entry_len;
    if rem != 0 {
        return Err(Reason::TrailingBytes { count: rem });
    }
    let count = bytes.len() / entry_len;
    if count > max {
        return Err(Reason::TooLong {
            field,
            len: count,
            max,
        });
    }
    Ok(())
}

/// Reads `count` (u32, at most `max`, checked before anything else) and the `count` entries of
/// `entry_len` bytes that follow.
fn read_entries<'a>(
    r: &mut Reader<'a>,
    entry_len: usize,
    max: usize,
    field: &'static str,
) -> Result<&'a [u8], Reason> {
    let count = r.u32("count")? as usize;
    if count > max {
        return Err(Reason::TooLong {
            field,
            len: count,
            max,
        });
    }
    r.take(count * entry_len, field)
}

/// The session hashes a SyncHashes frame carries: at most [`SYNC_HASHES_MAX`] of 16 bytes each,
/// kept as their wire bytes (no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashList<'a> {
    bytes: &'a [u8],
}

impl<'a> HashList<'a> {
    /// The hashes in `bytes` (16 bytes each, one after the other). Refused: a length that is
    /// not a multiple of 16, or more than [`SYNC_HASHES_MAX`] hashes.
    pub fn new(bytes: &'a [u8]) -> Result<Self, Reason> {
        check_entries(bytes, SESSION_HASH_LEN, SYNC_HASHES_MAX, "hashes")?;
        Ok(HashList { bytes })
    }

    /// How many hashes.
    pub fn len(&self) -> usize {
        self.bytes.len() / SESSION_HASH_LEN
    }

    /// No hash at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The hashes, in order.
    pub fn iter(&self) -> impl Iterator<Item = [u8; SESSION_HASH_LEN]> + 'a {
        self.bytes.chunks_exact(SESSION_HASH_LEN).map(|c| {
            let mut h = [0u8; SESSION_HASH_LEN];
            h.copy_from_slice(c);
            h
        })
    }
}

/// What a SyncPlaces frame carries: for some of the hashes a SyncHashes asked about, where the
/// answering node knows the session to live (hash, then a [`Location`]); at most
/// [`SYNC_HASHES_MAX`] entries, kept as their wire bytes, every entry checked when the list is
/// made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceList<'a> {
    bytes: &'a [u8],
}

impl<'a> PlaceList<'a> {
    /// Bytes of one entry: the hash, then the location.
    pub const ENTRY_LEN: usize = SESSION_HASH_LEN + Location::LEN;

    /// The entries in `bytes` (as [`PlaceList::push`] writes them). Refused: a length that is
    /// not a whole number of entries, more than [`SYNC_HASHES_MAX`] of them, or an entry whose
    /// location does not decode (a master of family 0, non-zero padding, ...).
    pub fn new(bytes: &'a [u8]) -> Result<Self, Reason> {
        check_entries(bytes, Self::ENTRY_LEN, SYNC_HASHES_MAX, "places")?;
        for entry in bytes.chunks_exact(Self::ENTRY_LEN) {
            let mut r = Reader::new(&entry[SESSION_HASH_LEN..]);
            Location::read(&mut r)?;
            r.finish()?;
        }
        Ok(PlaceList { bytes })
    }

    /// Appends one entry to `out` (the bytes a list is then made from).
    pub fn push(out: &mut Vec<u8>, hash: &[u8; SESSION_HASH_LEN], location: &Location) {
        out.extend_from_slice(hash);
        location.write(out);
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.bytes.len() / Self::ENTRY_LEN
    }

    /// No entry at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; SESSION_HASH_LEN], Location)> + 'a {
        self.bytes.chunks_exact(Self::ENTRY_LEN).filter_map(|e| {
            let mut hash = [0u8; SESSION_HASH_LEN];
            hash.copy_from_slice(&e[..SESSION_HASH_LEN]);
            // Checked by `new`: this does not fail.
            Location::read(&mut Reader::new(&e[SESSION_HASH_LEN..]))
                .ok()
                .map(|l| (hash, l))
        })
    }
}

/// The copies a ReplicateBatch carries: 1 to [`REPLICATE_BATCH_MAX`] entries, each laid out as a
/// Replicate body, kept as their wire bytes (no copy); every entry is checked when the list is
/// made, so a bad entry refuses the whole frame before any copy is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaList<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> ReplicaList<'a> {
    /// Appends one entry to `out` (the bytes a list is then made from).
    pub fn push(out: &mut Vec<u8>, copy: &Replica<'_>) {
        out.reserve(copy.encoded_len());
        copy.write_head(out);
        out.extend_from_slice(copy.data);
    }

    /// The `count` entries in `bytes` (as [`ReplicaList::push`] writes them). Refused: no entry,
    /// more than [`REPLICATE_BATCH_MAX`], an entry whose data is over `limits.data_max`, a
    /// `bytes` that ends inside an entry or holds bytes after the last one.
    pub fn new(bytes: &'a [u8], count: usize, limits: &Limits) -> Result<Self, Reason> {
        if count == 0 {
            return Err(Reason::Empty { field: "copies" });
        }
        if count > REPLICATE_BATCH_MAX {
            return Err(Reason::TooLong {
                field: "copies",
                len: count,
                max: REPLICATE_BATCH_MAX,
            });
        }
        let mut r = Reader::new(bytes);
        for _ in 0..count {
            Replica::read(&mut r, limits)?;
        }
        r.finish()?;
        Ok(ReplicaList { bytes, count })
    }

    /// How many copies.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No copy at all (never true of a list that was made: a batch holds at least one).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The copies, in order.
    pub fn iter(&self) -> impl Iterator<Item = Replica<'a>> + 'a {
        let mut r = Reader::new(self.bytes);
        // Checked by `new` (with limits at least as wide as each entry): this does not fail.
        let wide = Limits {
            body_max: u32::MAX,
            data_max: u32::MAX,
            batch_body_max: u32::MAX,
        };
        (0..self.count).map_while(move |_| Replica::read(&mut r, &wide).ok())
    }
}

/// What a backup did with one copy of a ReplicateBatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The copy is held: this data version is now the backup's (it may be newer than the copy's
    /// when the backup already held a newer one).
    Held {
        /// The version now held.
        version: u64,
    },
    /// The copy was refused, alone (the other copies of the batch are unaffected).
    Refused(ErrorCode),
}

/// The per-copy answers of a ReplicateBatchAck: at most [`REPLICATE_BATCH_MAX`] entries of
/// hash, status and version, kept as their wire bytes, every entry checked when the list is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutcomeList<'a> {
    bytes: &'a [u8],
}

impl<'a> OutcomeList<'a> {
    /// Bytes of one entry: hash, status (u16: 0 = held, else an error code), version.
    pub const ENTRY_LEN: usize = SESSION_HASH_LEN + 2 + 8;

    /// The entries in `bytes` (as [`OutcomeList::push`] writes them). Refused: a length that is
    /// not a whole number of entries, more than [`REPLICATE_BATCH_MAX`] of them, a status that
    /// is neither 0 nor an error code, or a refused entry whose version is not 0.
    pub fn new(bytes: &'a [u8]) -> Result<Self, Reason> {
        check_entries(bytes, Self::ENTRY_LEN, REPLICATE_BATCH_MAX, "outcomes")?;
        for entry in bytes.chunks_exact(Self::ENTRY_LEN) {
            Self::read(entry)?;
        }
        Ok(OutcomeList { bytes })
    }

    fn read(entry: &[u8]) -> Result<([u8; SESSION_HASH_LEN], BatchOutcome), Reason> {
        let mut r = Reader::new(entry);
        let hash = r.array("hash")?;
        let status = r.u16("status")?;
        let version = r.u64("version")?;
        r.finish()?;
        let outcome = match status {
            0 => BatchOutcome::Held { version },
            code => {
                let code = ErrorCode::from_u16(code).ok_or(Reason::BadErrorCode(code))?;
                if version != 0 {
                    return Err(Reason::NotZero { field: "version" });
                }
                BatchOutcome::Refused(code)
            }
        };
        Ok((hash, outcome))
    }

    /// Appends one entry to `out` (the bytes a list is then made from).
    pub fn push(out: &mut Vec<u8>, hash: &[u8; SESSION_HASH_LEN], outcome: BatchOutcome) {
        out.extend_from_slice(hash);
        match outcome {
            BatchOutcome::Held { version } => {
                put_u16(out, 0);
                put_u64(out, version);
            }
            BatchOutcome::Refused(code) => {
                put_u16(out, code as u16);
                put_u64(out, 0);
            }
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.bytes.len() / Self::ENTRY_LEN
    }

    /// No entry at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; SESSION_HASH_LEN], BatchOutcome)> + 'a {
        // Checked by `new`: this does not fail.
        self.bytes
            .chunks_exact(Self::ENTRY_LEN)
            .filter_map(|e| Self::read(e).ok())
    }
}

/// A sealed relay message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMessage<'a> {
    /// A client request forwarded to the session's master (or backup, on failover).
    Forward {
        /// The sending node's ID for the client the request comes from (its lock owner
        /// there): the receiver gives each (connection, origin) its own lock owner.
        origin: u64,
        /// The request, any local request but Hello.
        request: Request<'a>,
    },
    /// The answer to a Forward: any local reply but HelloOk.
    ForwardReply {
        /// The reply.
        reply: Reply<'a>,
    },
    /// Master → backup: hold this copy.
    Replicate(Replica<'a>),
    /// Backup → master: this version is held.
    ReplicateAck {
        /// The session.
        hash: [u8; SESSION_HASH_LEN],
        /// The version now held.
        version: u64,
    },
    /// Master → backup: forget this copy.
    DropReplica {
        /// The session.
        hash: [u8; SESSION_HASH_LEN],
    },
    /// Become the session's master under a new placement epoch.
    Promote {
        /// The session.
        hash: [u8; SESSION_HASH_LEN],
        /// The new placement epoch.
        epoch: u32,
    },
    /// Done (answer to DropReplica, Promote, SyncEnd).
    Ack,
    /// Ask the peer to stream sessions.
    SyncRequest {
        /// Which sessions.
        role: SyncRole,
    },
    /// A sync stream starts.
    SyncBegin {
        /// Which sessions.
        role: SyncRole,
        /// How many items will probably follow (a hint only).
        count_hint: u64,
    },
    /// One session of a sync stream.
    SyncItem(Replica<'a>),
    /// A sync stream ends.
    SyncEnd {
        /// SyncItem frames sent in the stream.
        count: u64,
    },
    /// Where is this session? (The nodes its ID names do not have it.)
    Locate {
        /// The session.
        hash: [u8; SESSION_HASH_LEN],
    },
    /// The answer to Locate.
    Located {
        /// The session.
        hash: [u8; SESSION_HASH_LEN],
        /// How many nodes the answering node sees up, itself included.
        live_nodes: u32,
        /// Where the answering node knows the session to live, if anywhere.
        location: Option<Location>,
    },
    /// The sender declared the receiver down and hears it again (a healed partition): the
    /// receiver must stop serving and sync with every live node before it serves again, since
    /// its sessions may have been taken over meanwhile. Answered by `Ack`.
    RejoinNeeded,
    /// A rejoining node lists sessions it holds copies of: for each one the receiver knows
    /// (a placement in its table or a copy in its shards), it answers where the session lives
    /// (`SyncPlaces`).
    SyncHashes {
        /// The sessions, at most [`SYNC_HASHES_MAX`].
        hashes: HashList<'a>,
    },
    /// The answer to SyncHashes: one entry per listed session the sender knows, none for the
    /// others.
    SyncPlaces {
        /// (hash, location) entries.
        places: PlaceList<'a>,
    },
    /// Master → a peer that backs up (or may back up) its sessions: may this node go on serving
    /// them? Sent every heartbeat interval; answered by `LeaseGrant` or `LeaseDenied`, or
    /// `RelayError` Unavailable when the receiver has heard no heartbeat of the sender.
    LeaseRequest {
        /// When the sender sent it, in ms on the sender's own monotonic clock (echoed back: a
        /// grant makes the lease valid until this time + the lease length).
        sent_ms: u64,
    },
    /// The answer to LeaseRequest: granted (the receiver will not take over the sender's
    /// sessions before it has not heard the sender for the node timeout).
    LeaseGrant {
        /// The request's `sent_ms`, echoed.
        sent_ms: u64,
    },
    /// The answer to LeaseRequest: refused, because the receiver took over a session from the
    /// sender (or replaced it) since the sender last synced with it: the sender must rejoin.
    LeaseDenied {
        /// The request's `sent_ms`, echoed.
        sent_ms: u64,
        /// Why, for logs: at most [`LEASE_REASON_MAX`] bytes of UTF-8 (the encoder truncates
        /// longer text at a character boundary).
        reason: &'a str,
    },
    /// Master → backup: hold these copies (each as one Replicate would carry it); answered by
    /// one ReplicateBatchAck with an outcome per copy.
    ReplicateBatch {
        /// The copies, 1 to [`REPLICATE_BATCH_MAX`].
        copies: ReplicaList<'a>,
    },
    /// Backup → master: what became of each copy of a ReplicateBatch, in its order.
    ReplicateBatchAck {
        /// (hash, outcome) entries.
        outcomes: OutcomeList<'a>,
    },
    /// A node that stopped hearing `suspect` asks the receiver to witness a placement change
    /// made on that silence: answered by `Ack` (agreed: the receiver has not heard the suspect
    /// for the node timeout either) or `RelayError` NotAgreed.
    WitnessRequest {
        /// The node the sender no longer hears (its relay address, as IDs name nodes).
        suspect: SocketAddr,
        /// What the sender will do if the receiver agrees.
        change: WitnessChange,
        /// The placement epoch the change would create.
        epoch: u32,
    },
    /// The request failed.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// For logs, at most 256 bytes (the encoder truncates longer text).
        message: &'a str,
    },
}

impl private::Sealed for RelayMessage<'_> {}

impl Body for RelayMessage<'_> {
    fn kind(&self) -> u8 {
        match self {
            RelayMessage::Forward { .. } => kind::FORWARD,
            RelayMessage::ForwardReply { .. } => kind::FORWARD_REPLY,
            RelayMessage::Replicate(_) => kind::REPLICATE,
            RelayMessage::ReplicateAck { .. } => kind::REPLICATE_ACK,
            RelayMessage::DropReplica { .. } => kind::DROP_REPLICA,
            RelayMessage::Promote { .. } => kind::PROMOTE,
            RelayMessage::Ack => kind::ACK,
            RelayMessage::SyncRequest { .. } => kind::SYNC_REQUEST,
            RelayMessage::SyncBegin { .. } => kind::SYNC_BEGIN,
            RelayMessage::SyncItem(_) => kind::SYNC_ITEM,
            RelayMessage::SyncEnd { .. } => kind::SYNC_END,
            RelayMessage::Locate { .. } => kind::LOCATE,
            RelayMessage::Located { .. } => kind::LOCATED,
            RelayMessage::RejoinNeeded => kind::REJOIN_NEEDED,
            RelayMessage::SyncHashes { .. } => kind::SYNC_HASHES,
            RelayMessage::SyncPlaces { .. } => kind::SYNC_PLACES,
            RelayMessage::LeaseRequest { .. } => kind::LEASE_REQUEST,
            RelayMessage::LeaseGrant { .. } => kind::LEASE_GRANT,
            RelayMessage::LeaseDenied { .. } => kind::LEASE_DENIED,
            RelayMessage::ReplicateBatch { .. } => kind::REPLICATE_BATCH,
            RelayMessage::ReplicateBatchAck { .. } => kind::REPLICATE_BATCH_ACK,
            RelayMessage::WitnessRequest { .. } => kind::WITNESS_REQUEST,
            RelayMessage::Error { .. } => kind::RELAY_ERROR,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            RelayMessage::Forward { request, .. } => 9 + request.body_len(),
            RelayMessage::ForwardReply { reply } => 1 + reply.body_len(),
            RelayMessage::Replicate(r) | RelayMessage::SyncItem(r) => {
                Replica::HEAD_LEN + r.data.len()
            }
            RelayMessage::ReplicateAck { .. } => SESSION_HASH_LEN + 8,
            RelayMessage::DropReplica { .. } => SESSION_HASH_LEN,
            RelayMessage::Promote { .. } => SESSION_HASH_LEN + 4,
            RelayMessage::Ack | RelayMessage::RejoinNeeded => 0,
            RelayMessage::SyncRequest { .. } => 1,
            RelayMessage::SyncBegin { .. } => 9,
            RelayMessage::SyncEnd { .. } => 8,
            RelayMessage::Locate { .. } => SESSION_HASH_LEN,
            RelayMessage::Located { location, .. } => {
                SESSION_HASH_LEN + 4 + 1 + location.map_or(0, |_| Location::LEN)
            }
            RelayMessage::SyncHashes { hashes } => 4 + hashes.bytes.len(),
            RelayMessage::SyncPlaces { places } => 4 + places.bytes.len(),
            RelayMessage::LeaseRequest { .. } | RelayMessage::LeaseGrant { .. } => 8,
            RelayMessage::LeaseDenied { reason, .. } => {
                8 + 2 + clamp_str(reason, LEASE_REASON_MAX).len()
            }
            RelayMessage::ReplicateBatch { copies } => 4 + copies.bytes.len(),
            RelayMessage::ReplicateBatchAck { outcomes } => 4 + outcomes.bytes.len(),
            RelayMessage::WitnessRequest { .. } => ADDR_LEN + 1 + 4,
            RelayMessage::Error { message, .. } => error_body_len(message),
        }
    }

    fn write_body_head(&self, out: &mut Vec<u8>) {
        match self {
            RelayMessage::Forward { origin, request } => {
                put_u64(out, *origin);
                put_u8(out, request.kind());
                request.write_body_head(out);
            }
            RelayMessage::ForwardReply { reply } => {
                put_u8(out, reply.kind());
                reply.write_body_head(out);
            }
            RelayMessage::Replicate(r) | RelayMessage::SyncItem(r) => r.write_head(out),
            RelayMessage::ReplicateAck { hash, version } => {
                out.extend_from_slice(hash);
                put_u64(out, *version);
            }
            RelayMessage::DropReplica { hash } => out.extend_from_slice(hash),
            RelayMessage::Promote { hash, epoch } => {
                out.extend_from_slice(hash);
                put_u32(out, *epoch);
            }
            RelayMessage::Ack | RelayMessage::RejoinNeeded => {}
            RelayMessage::SyncRequest { role } => put_u8(out, *role as u8),
            RelayMessage::SyncBegin { role, count_hint } => {
                put_u8(out, *role as u8);
                put_u64(out, *count_hint);
            }
            RelayMessage::SyncEnd { count } => put_u64(out, *count),
            RelayMessage::Locate { hash } => out.extend_from_slice(hash),
            RelayMessage::Located {
                hash,
                live_nodes,
                location,
            } => {
                out.extend_from_slice(hash);
                put_u32(out, *live_nodes);
                put_u8(out, u8::from(location.is_some()));
                if let Some(l) = location {
                    l.write(out);
                }
            }
            RelayMessage::SyncHashes { hashes } => put_u32(out, len_u32(hashes.len())),
            RelayMessage::SyncPlaces { places } => put_u32(out, len_u32(places.len())),
            RelayMessage::LeaseRequest { sent_ms } | RelayMessage::LeaseGrant { sent_ms } => {
                put_u64(out, *sent_ms)
            }
            RelayMessage::LeaseDenied { sent_ms, reason } => {
                let reason = clamp_str(reason, LEASE_REASON_MAX);
                put_u64(out, *sent_ms);
                put_u16(out, reason.len() as u16);
                out.extend_from_slice(reason.as_bytes());
            }
            RelayMessage::ReplicateBatch { copies } => put_u32(out, len_u32(copies.len())),
            RelayMessage::ReplicateBatchAck { outcomes } => put_u32(out, len_u32(outcomes.len())),
            RelayMessage::WitnessRequest {
                suspect,
                change,
                epoch,
            } => {
                write_addr(out, Some(suspect));
                put_u8(out, *change as u8);
                put_u32(out, *epoch);
            }
            RelayMessage::Error { code, message } => write_error(out, *code, message),
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            RelayMessage::Forward { request, .. } => request.data(),
            RelayMessage::ForwardReply { reply } => reply.data(),
            RelayMessage::Replicate(r) | RelayMessage::SyncItem(r) => r.data,
            RelayMessage::SyncHashes { hashes } => hashes.bytes,
            RelayMessage::SyncPlaces { places } => places.bytes,
            RelayMessage::ReplicateBatch { copies } => copies.bytes,
            RelayMessage::ReplicateBatchAck { outcomes } => outcomes.bytes,
            _ => &[],
        }
    }
}

impl<'a> RelayMessage<'a> {
    /// Decodes the body of a relay message of kind `k` (after its MAC was checked).
    pub(crate) fn decode_body(k: u8, body: &'a [u8], limits: &Limits) -> Result<Self, Reason> {
        let mut r = Reader::new(body);
        let message = match k {
            kind::FORWARD => {
                let origin = r.u64("origin")?;
                let inner = r.u8("inner_kind")?;
                if inner == kind::HELLO || kind::channel(inner) != Some(kind::Channel::LocalRequest)
                {
                    return Err(Reason::NotForwardable(inner));
                }
                let request = Request::decode_body(inner, r.rest(), limits)?;
                return Ok(RelayMessage::Forward { origin, request });
            }
            kind::FORWARD_REPLY => {
                let inner = r.u8("inner_kind")?;
                if inner == kind::HELLO_OK
                    || kind::channel(inner) != Some(kind::Channel::LocalReply)
                {
                    return Err(Reason::NotForwardable(inner));
                }
                let reply = Reply::decode_body(inner, r.rest(), limits)?;
                return Ok(RelayMessage::ForwardReply { reply });
            }
            kind::REPLICATE => RelayMessage::Replicate(Replica::read(&mut r, limits)?),
            kind::REPLICATE_ACK => RelayMessage::ReplicateAck {
                hash: r.array("hash")?,
                version: r.u64("version")?,
            },
            kind::DROP_REPLICA => RelayMessage::DropReplica {
                hash: r.array("hash")?,
            },
            kind::PROMOTE => RelayMessage::Promote {
                hash: r.array("hash")?,
                epoch: r.u32("epoch")?,
            },
            kind::ACK => RelayMessage::Ack,
            kind::REJOIN_NEEDED => RelayMessage::RejoinNeeded,
            kind::SYNC_REQUEST => RelayMessage::SyncRequest {
                role: SyncRole::decode(r.u8("role")?)?,
            },
            kind::SYNC_BEGIN => RelayMessage::SyncBegin {
                role: SyncRole::decode(r.u8("role")?)?,
                count_hint: r.u64("count_hint")?,
            },
            kind::SYNC_ITEM => RelayMessage::SyncItem(Replica::read(&mut r, limits)?),
            kind::SYNC_END => RelayMessage::SyncEnd {
                count: r.u64("count")?,
            },
            kind::LOCATE => RelayMessage::Locate {
                hash: r.array("hash")?,
            },
            kind::LOCATED => {
                let hash = r.array("hash")?;
                let live_nodes = r.u32("live_nodes")?;
                let location = if r.bool("found")? {
                    Some(Location::read(&mut r)?)
                } else {
                    None
                };
                RelayMessage::Located {
                    hash,
                    live_nodes,
                    location,
                }
            }
            kind::SYNC_HASHES => RelayMessage::SyncHashes {
                hashes: HashList::new(read_entries(
                    &mut r,
                    SESSION_HASH_LEN,
                    SYNC_HASHES_MAX,
                    "hashes",
                )?)?,
            },
            kind::SYNC_PLACES => RelayMessage::SyncPlaces {
                places: PlaceList::new(read_entries(
                    &mut r,
                    PlaceList::ENTRY_LEN,
                    SYNC_HASHES_MAX,
                    "places",
                )?)?,
            },
            kind::REPLICATE_BATCH => {
                // The count is checked before any entry is read; `new` checks every entry and
                // that the body ends exactly after the last one.
                let count = r.u32("count")? as usize;
                let copies = ReplicaList::new(r.rest(), count, limits)?;
                return Ok(RelayMessage::ReplicateBatch { copies });
            }
            kind::REPLICATE_BATCH_ACK => RelayMessage::ReplicateBatchAck {
                outcomes: OutcomeList::new(read_entries(
                    &mut r,
                    OutcomeList::ENTRY_LEN,
                    REPLICATE_BATCH_MAX,
                    "outcomes",
                )?)?,
            },
            kind::LEASE_REQUEST => RelayMessage::LeaseRequest {
                sent_ms: r.u64("sent_ms")?,
            },
            kind::LEASE_GRANT => RelayMessage::LeaseGrant {
                sent_ms: r.u64("sent_ms")?,
            },
            kind::LEASE_DENIED => {
                let sent_ms = r.u64("sent_ms")?;
                let len = usize::from(r.u16("reason_len")?);
                let reason = r.str(len, LEASE_REASON_MAX, "reason")?;
                RelayMessage::LeaseDenied { sent_ms, reason }
            }
            kind::WITNESS_REQUEST => RelayMessage::WitnessRequest {
                suspect: read_addr(&mut r, "suspect", false)?.ok_or(Reason::BadAddressFamily {
                    field: "suspect",
                    family: 0,
                })?,
                change: WitnessChange::decode(r.u8("change")?)?,
                epoch: r.u32("epoch")?,
            },
            kind::RELAY_ERROR => {
                let (code, message) = read_error(&mut r)?;
                RelayMessage::Error { code, message }
            }
            other => {
                return Err(misplaced_kind(other));
            }
        };
        r.finish()?;
        Ok(message)
    }
}

/// Decodes a relay frame without a MAC. Only for the fuzz checks: on a connection every relay
/// frame is sealed and goes through [`Opener::open`].
pub(crate) fn decode_unsealed<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<(Frame<RelayMessage<'a>>, usize), DecodeError> {
    let (header, body) = split_frame(buf, limits, &[kind::Channel::Relay], 0)?;
    let message = RelayMessage::decode_body(header.kind, body, limits)?;
    Ok((Frame::new(header.request_id, message), header.frame_len()))
}

/// Tag over `header ‖ body ‖ seq`, truncated to 128 bits. The sequence number goes last so that
/// the frame bytes, contiguous in the buffer, are hashed from offset 0 and BLAKE3 can hash their
/// 1 KiB chunks in parallel (a leading 8-byte prefix would shift every chunk boundary).
fn frame_tag(key: &[u8; 32], seq: u64, frame: &[&[u8]]) -> [u8; RELAY_TAG_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    for part in frame {
        hasher.update(part);
    }
    hasher.update(&seq.to_le_bytes());
    let mut tag = [0u8; RELAY_TAG_LEN];
    tag.copy_from_slice(&hasher.finalize().as_bytes()[..RELAY_TAG_LEN]);
    tag
}

/// Seals outgoing relay frames of one direction of one connection.
pub struct Sealer {
    key: [u8; 32],
    /// Sequence number of the next frame; `None` once 2^64 frames were sealed.
    next_seq: Option<u64>,
}

impl Sealer {
    /// Bytes [`Sealer::seal`] appends for `frame`.
    pub fn sealed_len(frame: &Frame<RelayMessage<'_>>) -> usize {
        frame.encoded_len() + RELAY_TAG_LEN
    }

    /// Appends `header ‖ body ‖ tag` to `out`.
    pub fn seal(
        &mut self,
        frame: &Frame<RelayMessage<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<(), Reason> {
        let seq = self.next_seq.ok_or(Reason::SequenceExhausted)?;
        let start = out.len();
        out.reserve(Self::sealed_len(frame));
        frame.encode(out);
        let tag = frame_tag(&self.key, seq, &[&out[start..]]);
        out.extend_from_slice(&tag);
        self.next_seq = seq.checked_add(1);
        Ok(())
    }

    /// For a vectored write without copying the session data: appends the frame's head (see
    /// [`Frame::encode_head`]) to `head` and returns the tag. What goes on the wire is
    /// `head ‖ frame.data() ‖ tag`.
    pub fn seal_head(
        &mut self,
        frame: &Frame<RelayMessage<'_>>,
        head: &mut Vec<u8>,
    ) -> Result<[u8; RELAY_TAG_LEN], Reason> {
        let seq = self.next_seq.ok_or(Reason::SequenceExhausted)?;
        let start = head.len();
        frame.encode_head(head);
        let tag = frame_tag(&self.key, seq, &[&head[start..], frame.data()]);
        self.next_seq = seq.checked_add(1);
        Ok(tag)
    }
}

/// Checks and decodes incoming relay frames of one direction of one connection.
pub struct Opener {
    key: [u8; 32],
    /// Sequence number the next frame must have been sealed with.
    next_seq: Option<u64>,
    /// Set by any invalid frame: the stream cannot be trusted afterwards.
    poisoned: bool,
}

impl Opener {
    /// Decodes one sealed frame from the start of `buf`. The header (magic, version, kind, flags,
    /// body length against `limits`) is checked as soon as it is there; the body is only
    /// interpreted after the tag matched. Any `Invalid` poisons the opener: every later call is
    /// refused with [`Reason::Poisoned`], and the daemon must close the connection.
    pub fn open<'a>(
        &mut self,
        buf: &'a [u8],
        limits: &Limits,
    ) -> Result<(Frame<RelayMessage<'a>>, usize), DecodeError> {
        if self.poisoned {
            return Err(Reason::Poisoned.into());
        }
        let result = self.open_inner(buf, limits);
        if matches!(result, Err(DecodeError::Invalid(_))) {
            self.poisoned = true;
        }
        result
    }

    fn open_inner<'a>(
        &mut self,
        buf: &'a [u8],
        limits: &Limits,
    ) -> Result<(Frame<RelayMessage<'a>>, usize), DecodeError> {
        let (header, body) = split_frame(buf, limits, &[kind::Channel::Relay], RELAY_TAG_LEN)?;
        let seq = self.next_seq.ok_or(Reason::SequenceExhausted)?;
        let frame_len = header.frame_len();
        let mut tag = [0u8; RELAY_TAG_LEN];
        tag.copy_from_slice(&buf[frame_len..frame_len + RELAY_TAG_LEN]);
        let expected = frame_tag(&self.key, seq, &[&buf[..frame_len]]);
        if !ct_eq_16(&tag, &expected) {
            return Err(Reason::BadMac.into());
        }
        let message = RelayMessage::decode_body(header.kind, body, limits)?;
        self.next_seq = seq.checked_add(1);
        Ok((
            Frame::new(header.request_id, message),
            frame_len + RELAY_TAG_LEN,
        ))
    }
}

/// The three handshake frames (unsealed, request ID 0, header version 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeMessage {
    /// Server → client, on accept.
    Challenge {
        /// Lowest version the server speaks.
        version_min: u8,
        /// Highest version the server speaks.
        version_max: u8,
        /// The server's node ID.
        node_id: u64,
        /// Fresh random bytes.
        nonce: [u8; NONCE_LEN],
    },
    /// Client → server.
    Proof {
        /// The chosen version.
        version: u8,
        /// The client's node ID.
        node_id: u64,
        /// Fresh random bytes.
        nonce: [u8; NONCE_LEN],
        /// `BLAKE3.keyed(relay_key, "client" ‖ T)`.
        tag: [u8; AUTH_TAG_LEN],
    },
    /// Server → client.
    Accept {
        /// `BLAKE3.keyed(relay_key, "server" ‖ T)`.
        tag: [u8; AUTH_TAG_LEN],
    },
}

const CHALLENGE_LEN: usize = 2 + 8 + NONCE_LEN;
const PROOF_UNTAGGED_LEN: usize = 1 + 8 + NONCE_LEN;
const TRANSCRIPT_LEN: usize = CHALLENGE_LEN + PROOF_UNTAGGED_LEN;

impl private::Sealed for HandshakeMessage {}

impl Body for HandshakeMessage {
    fn kind(&self) -> u8 {
        match self {
            HandshakeMessage::Challenge { .. } => kind::AUTH_CHALLENGE,
            HandshakeMessage::Proof { .. } => kind::AUTH_PROOF,
            HandshakeMessage::Accept { .. } => kind::AUTH_ACCEPT,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            HandshakeMessage::Challenge { .. } => CHALLENGE_LEN,
            HandshakeMessage::Proof { .. } => PROOF_UNTAGGED_LEN + AUTH_TAG_LEN,
            HandshakeMessage::Accept { .. } => AUTH_TAG_LEN,
        }
    }

    fn write_body_head(&self, out: &mut Vec<u8>) {
        match self {
            HandshakeMessage::Challenge {
                version_min,
                version_max,
                node_id,
                nonce,
            } => {
                put_u8(out, *version_min);
                put_u8(out, *version_max);
                put_u64(out, *node_id);
                out.extend_from_slice(nonce);
            }
            HandshakeMessage::Proof {
                version,
                node_id,
                nonce,
                tag,
            } => {
                put_u8(out, *version);
                put_u64(out, *node_id);
                out.extend_from_slice(nonce);
                out.extend_from_slice(tag);
            }
            HandshakeMessage::Accept { tag } => out.extend_from_slice(tag),
        }
    }

    fn data(&self) -> &[u8] {
        &[]
    }
}

/// Decodes one handshake frame from the start of `buf`.
pub fn decode_handshake(buf: &[u8]) -> Result<(HandshakeMessage, usize), DecodeError> {
    // Handshake bodies are tiny and fixed; no caller limit is needed.
    let limits = Limits {
        body_max: (PROOF_UNTAGGED_LEN + AUTH_TAG_LEN) as u32,
        data_max: 0,
        batch_body_max: (PROOF_UNTAGGED_LEN + AUTH_TAG_LEN) as u32,
    };
    let (header, body) = split_frame(buf, &limits, &[kind::Channel::Handshake], 0)?;
    if header.request_id != 0 {
        return Err(Reason::RequestIdNotZero.into());
    }
    let mut r = Reader::new(body);
    let message = match header.kind {
        kind::AUTH_CHALLENGE => {
            let version_min = r.u8("version_min")?;
            let version_max = r.u8("version_max")?;
            if version_min == 0 || version_min > version_max {
                return Err(Reason::BadVersionRange {
                    min: version_min,
                    max: version_max,
                }
                .into());
            }
            HandshakeMessage::Challenge {
                version_min,
                version_max,
                node_id: r.u64("node_id")?,
                nonce: r.array("nonce")?,
            }
        }
        kind::AUTH_PROOF => HandshakeMessage::Proof {
            version: r.u8("version")?,
            node_id: r.u64("node_id")?,
            nonce: r.array("nonce")?,
            tag: r.array("tag")?,
        },
        _ => HandshakeMessage::Accept {
            tag: r.array("tag")?,
        },
    };
    r.finish()?;
    Ok((message, header.frame_len()))
}

fn expect(buf: &[u8], expected: u8) -> Result<(HandshakeMessage, usize), DecodeError> {
    let (message, used) = decode_handshake(buf)?;
    let got = message.kind();
    if got != expected {
        return Err(Reason::UnexpectedKind { expected, got }.into());
    }
    Ok((message, used))
}

/// The result of a successful handshake.
pub struct Established {
    /// The peer's node ID (authenticated: it is in the transcript both tags cover).
    pub peer_node_id: u64,
    /// The protocol version for the rest of the connection.
    pub version: u8,
    /// Seals the frames this side sends.
    pub sealer: Sealer,
    /// Opens the frames this side receives.
    pub opener: Opener,
}

/// Everything both sides derive from the transcript.
struct Derived {
    client_tag: [u8; AUTH_TAG_LEN],
    server_tag: [u8; AUTH_TAG_LEN],
    c2s: [u8; 32],
    s2c: [u8; 32],
}

fn derive(relay_key: &[u8; 32], transcript: &[u8; TRANSCRIPT_LEN]) -> Derived {
    Derived {
        client_tag: keyed(relay_key, &[b"client", transcript]),
        server_tag: keyed(relay_key, &[b"server", transcript]),
        c2s: keyed(relay_key, &[b"c2s", transcript]),
        s2c: keyed(relay_key, &[b"s2c", transcript]),
    }
}

fn established(peer_node_id: u64, version: u8, send: [u8; 32], recv: [u8; 32]) -> Established {
    Established {
        peer_node_id,
        version,
        sealer: Sealer {
            key: send,
            next_seq: Some(0),
        },
        opener: Opener {
            key: recv,
            next_seq: Some(0),
            poisoned: false,
        },
    }
}

fn challenge_bytes(message: &HandshakeMessage) -> Vec<u8> {
    let mut body = Vec::with_capacity(TRANSCRIPT_LEN + AUTH_TAG_LEN);
    message.write_body_head(&mut body);
    body
}

fn transcript(challenge: &HandshakeMessage, proof: &HandshakeMessage) -> [u8; TRANSCRIPT_LEN] {
    let mut bytes = challenge_bytes(challenge);
    proof.write_body_head(&mut bytes);
    let mut t = [0u8; TRANSCRIPT_LEN];
    // The proof's tag (the last AUTH_TAG_LEN bytes) is not part of the transcript.
    t.copy_from_slice(&bytes[..TRANSCRIPT_LEN]);
    t
}

/// The accepting side of a relay handshake.
pub struct ServerHandshake {
    relay_key: [u8; 32],
    challenge: HandshakeMessage,
}

impl ServerHandshake {
    /// `nonce` must be 32 fresh bytes from the OS's CSPRNG (the daemon draws them).
    pub fn new(key: &ClusterKey, node_id: u64, nonce: [u8; NONCE_LEN]) -> Self {
        ServerHandshake {
            relay_key: key.relay,
            challenge: HandshakeMessage::Challenge {
                version_min: PROTOCOL_VERSION_MIN,
                version_max: PROTOCOL_VERSION_MAX,
                node_id,
                nonce,
            },
        }
    }

    /// Appends the AuthChallenge frame, the first thing to send on an accepted connection.
    pub fn challenge(&self, out: &mut Vec<u8>) {
        Frame::new(0, self.challenge).encode(out);
    }

    /// Checks the client's AuthProof at the start of `buf`. On success appends AuthAccept to
    /// `out` and returns the established session and the bytes used. On `Invalid` the daemon
    /// closes the connection without sending anything.
    pub fn on_proof(
        &self,
        buf: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(Established, usize), DecodeError> {
        let (proof, used) = expect(buf, kind::AUTH_PROOF)?;
        let HandshakeMessage::Proof {
            version,
            node_id,
            tag,
            ..
        } = proof
        else {
            return Err(Reason::UnexpectedKind {
                expected: kind::AUTH_PROOF,
                got: proof.kind(),
            }
            .into());
        };
        let derived = derive(&self.relay_key, &transcript(&self.challenge, &proof));
        // The tag is checked before the version so that a keyless peer learns nothing at all.
        if !ct_eq_32(&tag, &derived.client_tag) {
            return Err(Reason::BadMac.into());
        }
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
            return Err(Reason::BadChosenVersion(version).into());
        }
        Frame::new(
            0,
            HandshakeMessage::Accept {
                tag: derived.server_tag,
            },
        )
        .encode(out);
        Ok((
            established(node_id, version, derived.s2c, derived.c2s),
            used,
        ))
    }
}

/// The connecting side of a relay handshake.
pub struct ClientHandshake {
    relay_key: [u8; 32],
    node_id: u64,
    nonce: [u8; NONCE_LEN],
    /// Set once the challenge was answered: (server node ID, version, derived keys).
    answered: Option<(u64, u8, Derived)>,
}

impl ClientHandshake {
    /// `nonce` must be 32 fresh bytes from the OS's CSPRNG (the daemon draws them).
    pub fn new(key: &ClusterKey, node_id: u64, nonce: [u8; NONCE_LEN]) -> Self {
        ClientHandshake {
            relay_key: key.relay,
            node_id,
            nonce,
            answered: None,
        }
    }

    /// Reads the server's AuthChallenge at the start of `buf`, appends AuthProof to `out` and
    /// returns the bytes used.
    pub fn on_challenge(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, DecodeError> {
        let (challenge, used) = expect(buf, kind::AUTH_CHALLENGE)?;
        let HandshakeMessage::Challenge {
            version_min,
            version_max,
            node_id: server_node_id,
            ..
        } = challenge
        else {
            return Err(Reason::UnexpectedKind {
                expected: kind::AUTH_CHALLENGE,
                got: challenge.kind(),
            }
            .into());
        };
        let version = negotiate(
            PROTOCOL_VERSION_MIN,
            PROTOCOL_VERSION_MAX,
            version_min,
            version_max,
        )
        .ok_or(Reason::NoCommonVersion {
            min: version_min,
            max: version_max,
        })?;
        let untagged = HandshakeMessage::Proof {
            version,
            node_id: self.node_id,
            nonce: self.nonce,
            tag: [0; AUTH_TAG_LEN],
        };
        let derived = derive(&self.relay_key, &transcript(&challenge, &untagged));
        let proof = HandshakeMessage::Proof {
            version,
            node_id: self.node_id,
            nonce: self.nonce,
            tag: derived.client_tag,
        };
        Frame::new(0, proof).encode(out);
        self.answered = Some((server_node_id, version, derived));
        Ok(used)
    }

    /// Checks the server's AuthAccept at the start of `buf`: the server proved the key.
    pub fn on_accept(&self, buf: &[u8]) -> Result<(Established, usize), DecodeError> {
        let Some((server_node_id, version, derived)) = &self.answered else {
            // Nothing can be accepted before the challenge was answered.
            let got = buf.get(3).copied().unwrap_or(0);
            return Err(Reason::UnexpectedKind {
                expected: kind::AUTH_CHALLENGE,
                got,
            }
            .into());
        };
        let (accept, used) = expect(buf, kind::AUTH_ACCEPT)?;
        let HandshakeMessage::Accept { tag } = accept else {
            return Err(Reason::UnexpectedKind {
                expected: kind::AUTH_ACCEPT,
                got: accept.kind(),
            }
            .into());
        };
        if !ct_eq_32(&tag, &derived.server_tag) {
            return Err(Reason::BadMac.into());
        }
        Ok((
            established(*server_node_id, *version, derived.c2s, derived.s2c),
            used,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoin_needed_has_an_empty_body_and_nothing_else() {
        let limits = Limits::default();
        assert_eq!(
            RelayMessage::decode_body(kind::REJOIN_NEEDED, &[], &limits),
            Ok(RelayMessage::RejoinNeeded)
        );
        assert_eq!(
            RelayMessage::decode_body(kind::REJOIN_NEEDED, &[0], &limits),
            Err(Reason::TrailingBytes { count: 1 })
        );
        assert_eq!(
            kind::channel(kind::REJOIN_NEEDED),
            Some(kind::Channel::Relay)
        );
        // Every relay kind up to 0x5F (RelayError) is taken: 0x5E is WitnessRequest.
        assert_eq!(
            kind::channel(kind::LEASE_DENIED + 1),
            Some(kind::Channel::Relay)
        );
        assert_eq!(kind::REPLICATE_BATCH_ACK + 1, kind::WITNESS_REQUEST);
        assert_eq!(kind::WITNESS_REQUEST + 1, kind::RELAY_ERROR);
        assert_eq!(
            kind::channel(kind::WITNESS_REQUEST),
            Some(kind::Channel::Relay)
        );
        assert_eq!(kind::channel(kind::RELAY_ERROR + 1), None);
    }

    #[test]
    fn witness_request_bodies_are_checked_before_use() {
        let limits = Limits::default();
        let body = |family: u8, change: u8| {
            let mut b = vec![family, 0, 0x07, 0x87, 10, 0, 0, 2];
            b.extend_from_slice(&[0; 12]);
            b.push(change);
            b.extend_from_slice(&7u32.to_le_bytes());
            b
        };
        assert_eq!(
            RelayMessage::decode_body(kind::WITNESS_REQUEST, &body(4, 1), &limits),
            Ok(RelayMessage::WitnessRequest {
                suspect: v4(2),
                change: WitnessChange::Promote,
                epoch: 7
            })
        );
        assert_eq!(
            RelayMessage::decode_body(kind::WITNESS_REQUEST, &body(4, 2), &limits),
            Ok(RelayMessage::WitnessRequest {
                suspect: v4(2),
                change: WitnessChange::DropBackup,
                epoch: 7
            })
        );
        // Unknown change kinds.
        for c in [0u8, 3, 0xff] {
            assert_eq!(
                RelayMessage::decode_body(kind::WITNESS_REQUEST, &body(4, c), &limits),
                Err(Reason::BadWitnessChange(c))
            );
        }
        // The suspect must be an address: not "none", not an unknown family.
        let mut none = body(0, 1);
        none[2..8].fill(0);
        assert!(matches!(
            RelayMessage::decode_body(kind::WITNESS_REQUEST, &none, &limits),
            Err(Reason::BadAddressFamily {
                field: "suspect",
                family: 0
            })
        ));
        assert!(matches!(
            RelayMessage::decode_body(kind::WITNESS_REQUEST, &body(5, 1), &limits),
            Err(Reason::BadAddressFamily { family: 5, .. })
        ));
        // Non-zero padding of an IPv4 address.
        let mut padded = body(4, 1);
        padded[19] = 1;
        assert!(matches!(
            RelayMessage::decode_body(kind::WITNESS_REQUEST, &padded, &limits),
            Err(Reason::NotZero { field: "suspect" })
        ));
        // Short and long bodies (25 bytes exactly).
        let full = body(4, 1);
        assert_eq!(full.len(), 25);
        for n in 0..full.len() {
            assert!(matches!(
                RelayMessage::decode_body(kind::WITNESS_REQUEST, &full[..n], &limits),
                Err(Reason::Truncated { .. })
            ));
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(
            RelayMessage::decode_body(kind::WITNESS_REQUEST, &long, &limits),
            Err(Reason::TrailingBytes { count: 1 })
        );
        // NotAgreed is in the error table; a code past it is still refused.
        assert_eq!(ErrorCode::from_u16(14), Some(ErrorCode::NotAgreed));
        assert_eq!(ErrorCode::from_u16(15), None);
    }

    #[test]
    fn lease_bodies_are_checked_before_use() {
        let limits = Limits::default();
        for k in [kind::LEASE_REQUEST, kind::LEASE_GRANT, kind::LEASE_DENIED] {
            assert_eq!(kind::channel(k), Some(kind::Channel::Relay));
        }
        let t = 0x0102_0304_0506_0708u64.to_le_bytes();
        assert_eq!(
            RelayMessage::decode_body(kind::LEASE_REQUEST, &t, &limits),
            Ok(RelayMessage::LeaseRequest {
                sent_ms: 0x0102_0304_0506_0708
            })
        );
        assert_eq!(
            RelayMessage::decode_body(kind::LEASE_GRANT, &t, &limits),
            Ok(RelayMessage::LeaseGrant {
                sent_ms: 0x0102_0304_0506_0708
            })
        );
        // Short and long bodies.
        for k in [kind::LEASE_REQUEST, kind::LEASE_GRANT] {
            assert!(matches!(
                RelayMessage::decode_body(k, &t[..7], &limits),
                Err(Reason::Truncated { .. })
            ));
            let mut long = t.to_vec();
            long.push(0);
            assert_eq!(
                RelayMessage::decode_body(k, &long, &limits),
                Err(Reason::TrailingBytes { count: 1 })
            );
        }
        // LeaseDenied: time, u16 length, UTF-8 reason of at most LEASE_REASON_MAX bytes.
        let denied = |len: u16, reason: &[u8]| {
            let mut b = t.to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(reason);
            b
        };
        assert_eq!(
            RelayMessage::decode_body(kind::LEASE_DENIED, &denied(3, b"why"), &limits),
            Ok(RelayMessage::LeaseDenied {
                sent_ms: 0x0102_0304_0506_0708,
                reason: "why"
            })
        );
        assert!(matches!(
            RelayMessage::decode_body(kind::LEASE_DENIED, &denied(4, b"why"), &limits),
            Err(Reason::Truncated { .. })
        ));
        assert_eq!(
            RelayMessage::decode_body(kind::LEASE_DENIED, &denied(2, b"why"), &limits),
            Err(Reason::TrailingBytes { count: 1 })
        );
        assert!(matches!(
            RelayMessage::decode_body(kind::LEASE_DENIED, &denied(2, &[0xff, 0xfe]), &limits),
            Err(Reason::BadUtf8 { field: "reason" })
        ));
        // A length over the bound is refused before the bytes are looked at.
        let big = vec![b'x'; LEASE_REASON_MAX + 1];
        assert!(matches!(
            RelayMessage::decode_body(kind::LEASE_DENIED, &denied(big.len() as u16, &big), &limits),
            Err(Reason::TooLong {
                field: "reason",
                ..
            })
        ));
        assert!(matches!(
            RelayMessage::decode_body(kind::LEASE_DENIED, &denied(u16::MAX, b""), &limits),
            Err(Reason::TooLong { .. })
        ));
        assert!(RelayMessage::decode_body(kind::LEASE_DENIED, &t, &limits).is_err());
        // The encoder truncates a long reason at a character boundary.
        let long = "é".repeat(LEASE_REASON_MAX);
        let m = RelayMessage::LeaseDenied {
            sent_ms: 1,
            reason: &long,
        };
        let mut out = Vec::new();
        m.write_body_head(&mut out);
        assert_eq!(out.len(), m.body_len());
        let decoded = RelayMessage::decode_body(kind::LEASE_DENIED, &out, &limits).unwrap();
        let RelayMessage::LeaseDenied { reason, .. } = decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(reason.len(), LEASE_REASON_MAX);
        assert!(long.starts_with(reason));
    }

    fn v4(a: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, a], 34567))
    }

    #[test]
    fn sync_hashes_bodies_are_checked_before_use() {
        let limits = Limits::default();
        let hashes: Vec<u8> = (0..48u8).collect();
        let mut body = 3u32.to_le_bytes().to_vec();
        body.extend_from_slice(&hashes);
        let m = RelayMessage::decode_body(kind::SYNC_HASHES, &body, &limits).unwrap();
        let RelayMessage::SyncHashes { hashes: list } = m else {
            panic!("{m:?}")
        };
        assert_eq!(list.len(), 3);
        assert_eq!(list.iter().nth(1).unwrap()[0], 16);
        // A count over the maximum is refused before the rest is looked at.
        let mut big = u32::MAX.to_le_bytes().to_vec();
        big.extend_from_slice(&hashes);
        assert!(matches!(
            RelayMessage::decode_body(kind::SYNC_HASHES, &big, &limits),
            Err(Reason::TooLong {
                field: "hashes",
                ..
            })
        ));
        // A count the body does not hold, and bytes past the last hash.
        let mut short = 4u32.to_le_bytes().to_vec();
        short.extend_from_slice(&hashes);
        assert!(matches!(
            RelayMessage::decode_body(kind::SYNC_HASHES, &short, &limits),
            Err(Reason::Truncated { .. })
        ));
        let mut long = 2u32.to_le_bytes().to_vec();
        long.extend_from_slice(&hashes);
        assert_eq!(
            RelayMessage::decode_body(kind::SYNC_HASHES, &long, &limits),
            Err(Reason::TrailingBytes { count: 16 })
        );
        assert!(RelayMessage::decode_body(kind::SYNC_HASHES, &[1, 0], &limits).is_err());
        // Building a list checks the same.
        assert!(HashList::new(&hashes[..47]).is_err());
        assert!(HashList::new(&vec![0u8; 16 * (SYNC_HASHES_MAX + 1)]).is_err());
        assert_eq!(
            HashList::new(&vec![0u8; 16 * SYNC_HASHES_MAX]).map(|l| l.len()),
            Ok(SYNC_HASHES_MAX)
        );
    }

    #[test]
    fn sync_places_bodies_are_checked_before_use() {
        let limits = Limits::default();
        let l = Location {
            master: v4(1),
            backup: Some(v4(2)),
            epoch: 3,
            version: 9,
        };
        let mut entries = Vec::new();
        PlaceList::push(&mut entries, &[7; 16], &l);
        PlaceList::push(&mut entries, &[8; 16], &Location { backup: None, ..l });
        let mut body = 2u32.to_le_bytes().to_vec();
        body.extend_from_slice(&entries);
        let m = RelayMessage::decode_body(kind::SYNC_PLACES, &body, &limits).unwrap();
        let RelayMessage::SyncPlaces { places } = m else {
            panic!("{m:?}")
        };
        let got: Vec<_> = places.iter().collect();
        assert_eq!(
            got,
            vec![([7; 16], l), ([8; 16], Location { backup: None, ..l })]
        );
        // A master of family 0 (none) in any entry refuses the whole body.
        let mut bad = body.clone();
        bad[4 + PlaceList::ENTRY_LEN + 16] = 0;
        assert!(RelayMessage::decode_body(kind::SYNC_PLACES, &bad, &limits).is_err());
        // Non-zero padding of an IPv4 address.
        let mut bad = body.clone();
        bad[4 + 16 + 1] = 1;
        assert!(RelayMessage::decode_body(kind::SYNC_PLACES, &bad, &limits).is_err());
        // Counts: over the maximum, more than the body holds, fewer than it holds.
        let mut big = (SYNC_HASHES_MAX as u32 + 1).to_le_bytes().to_vec();
        big.extend_from_slice(&entries);
        assert!(matches!(
            RelayMessage::decode_body(kind::SYNC_PLACES, &big, &limits),
            Err(Reason::TooLong {
                field: "places",
                ..
            })
        ));
        let mut short = 3u32.to_le_bytes().to_vec();
        short.extend_from_slice(&entries);
        assert!(RelayMessage::decode_body(kind::SYNC_PLACES, &short, &limits).is_err());
        let mut long = 1u32.to_le_bytes().to_vec();
        long.extend_from_slice(&entries);
        assert!(RelayMessage::decode_body(kind::SYNC_PLACES, &long, &limits).is_err());
        assert!(PlaceList::new(&entries[..entries.len() - 1]).is_err());
        // An empty answer is valid.
        assert_eq!(
            RelayMessage::decode_body(kind::SYNC_PLACES, &[0, 0, 0, 0], &limits),
            Ok(RelayMessage::SyncPlaces {
                places: PlaceList::new(&[]).unwrap()
            })
        );
    }

    fn copy(hash: u8, version: u64, data: &[u8]) -> Replica<'_> {
        Replica {
            hash: [hash; 16],
            version,
            epoch: 2,
            lifetime_s: 600,
            data,
        }
    }

    #[test]
    fn replicate_batch_bodies_are_checked_before_use() {
        let limits = Limits {
            body_max: 200,
            data_max: 64,
            batch_body_max: 1000,
        };
        let mut entries = Vec::new();
        ReplicaList::push(&mut entries, &copy(1, 5, b"one"));
        ReplicaList::push(&mut entries, &copy(2, 6, b""));
        ReplicaList::push(&mut entries, &copy(3, 7, &[9; 64]));
        let mut body = 3u32.to_le_bytes().to_vec();
        body.extend_from_slice(&entries);
        let m = RelayMessage::decode_body(kind::REPLICATE_BATCH, &body, &limits).unwrap();
        let RelayMessage::ReplicateBatch { copies } = m else {
            panic!("{m:?}")
        };
        let got: Vec<_> = copies.iter().collect();
        assert_eq!(
            got,
            vec![copy(1, 5, b"one"), copy(2, 6, b""), copy(3, 7, &[9; 64])]
        );
        assert_eq!(m.body_len(), body.len());
        // No copy at all.
        assert_eq!(
            RelayMessage::decode_body(kind::REPLICATE_BATCH, &[0, 0, 0, 0], &limits),
            Err(Reason::Empty { field: "copies" })
        );
        // A count over the maximum is refused before any entry is read.
        let mut big = (REPLICATE_BATCH_MAX as u32 + 1).to_le_bytes().to_vec();
        big.extend_from_slice(&entries);
        assert!(matches!(
            RelayMessage::decode_body(kind::REPLICATE_BATCH, &big, &limits),
            Err(Reason::TooLong {
                field: "copies",
                ..
            })
        ));
        // More entries than the body holds, and bytes after the last one.
        let mut short = 4u32.to_le_bytes().to_vec();
        short.extend_from_slice(&entries);
        assert!(matches!(
            RelayMessage::decode_body(kind::REPLICATE_BATCH, &short, &limits),
            Err(Reason::Truncated { .. })
        ));
        let mut long = 2u32.to_le_bytes().to_vec();
        long.extend_from_slice(&entries);
        assert!(matches!(
            RelayMessage::decode_body(kind::REPLICATE_BATCH, &long, &limits),
            Err(Reason::TrailingBytes { .. })
        ));
        // One entry's data over data_max refuses the whole batch (checked from its length,
        // before its bytes are looked at).
        let mut over = Vec::new();
        ReplicaList::push(&mut over, &copy(1, 5, b"one"));
        ReplicaList::push(&mut over, &copy(4, 8, &[0; 65]));
        assert_eq!(
            ReplicaList::new(&over, 2, &limits),
            Err(Reason::DataTooLarge { len: 65, max: 64 })
        );
        // A data length that runs past the body.
        let mut cut = entries.clone();
        cut.truncate(entries.len() - 1);
        assert!(ReplicaList::new(&cut, 3, &limits).is_err());
    }

    #[test]
    fn a_replicate_batch_has_its_own_body_limit() {
        let limits = Limits {
            body_max: 200,
            data_max: 64,
            batch_body_max: 1000,
        };
        let header = |k: u8, len: u32| {
            crate::frame::Header {
                version: 1,
                kind: k,
                flags: 0,
                request_id: 1,
                body_len: len,
            }
            .to_bytes()
        };
        // Over body_max but within batch_body_max: only a batch may be that long.
        assert!(
            crate::frame::Header::decode(&header(kind::REPLICATE_BATCH, 1000), &limits).is_ok()
        );
        assert_eq!(
            crate::frame::Header::decode(&header(kind::REPLICATE_BATCH, 1001), &limits),
            Err(DecodeError::Invalid(Reason::BodyTooLarge {
                len: 1001,
                max: 1000
            }))
        );
        assert_eq!(
            crate::frame::Header::decode(&header(kind::REPLICATE, 201), &limits),
            Err(DecodeError::Invalid(Reason::BodyTooLarge {
                len: 201,
                max: 200
            }))
        );
        assert_eq!(
            crate::frame::Header::decode(&header(kind::REPLICATE_BATCH_ACK, 201), &limits),
            Err(DecodeError::Invalid(Reason::BodyTooLarge {
                len: 201,
                max: 200
            }))
        );
        // A batch on the local protocol is refused by its kind, whatever its length.
        let mut local = header(kind::REPLICATE_BATCH, 10).to_vec();
        local.extend_from_slice(&[0; 10]);
        assert!(matches!(
            crate::local::decode_request(&local, &limits),
            Err(DecodeError::Invalid(Reason::WrongChannel(
                kind::REPLICATE_BATCH
            )))
        ));
    }

    #[test]
    fn replicate_batch_ack_bodies_are_checked_before_use() {
        let limits = Limits::default();
        let mut entries = Vec::new();
        OutcomeList::push(&mut entries, &[1; 16], BatchOutcome::Held { version: 9 });
        OutcomeList::push(
            &mut entries,
            &[2; 16],
            BatchOutcome::Refused(ErrorCode::StaleEpoch),
        );
        let mut body = 2u32.to_le_bytes().to_vec();
        body.extend_from_slice(&entries);
        let m = RelayMessage::decode_body(kind::REPLICATE_BATCH_ACK, &body, &limits).unwrap();
        let RelayMessage::ReplicateBatchAck { outcomes } = m else {
            panic!("{m:?}")
        };
        let got: Vec<_> = outcomes.iter().collect();
        assert_eq!(
            got,
            vec![
                ([1; 16], BatchOutcome::Held { version: 9 }),
                ([2; 16], BatchOutcome::Refused(ErrorCode::StaleEpoch))
            ]
        );
        // A status that is no error code, and a refused entry with a version.
        let mut bad = body.clone();
        bad[4 + OutcomeList::ENTRY_LEN + 16] = 99;
        assert_eq!(
            RelayMessage::decode_body(kind::REPLICATE_BATCH_ACK, &bad, &limits),
            Err(Reason::BadErrorCode(99))
        );
        let mut bad = body.clone();
        bad[4 + 2 * OutcomeList::ENTRY_LEN - 1] = 1;
        assert_eq!(
            RelayMessage::decode_body(kind::REPLICATE_BATCH_ACK, &bad, &limits),
            Err(Reason::NotZero { field: "version" })
        );
        // Counts: over the maximum, more than the body holds, fewer than it holds.
        let mut big = (REPLICATE_BATCH_MAX as u32 + 1).to_le_bytes().to_vec();
        big.extend_from_slice(&entries);
        assert!(matches!(
            RelayMessage::decode_body(kind::REPLICATE_BATCH_ACK, &big, &limits),
            Err(Reason::TooLong {
                field: "outcomes",
                ..
            })
        ));
        let mut short = 3u32.to_le_bytes().to_vec();
        short.extend_from_slice(&entries);
        assert!(RelayMessage::decode_body(kind::REPLICATE_BATCH_ACK, &short, &limits).is_err());
        let mut long = 1u32.to_le_bytes().to_vec();
        long.extend_from_slice(&entries);
        assert!(RelayMessage::decode_body(kind::REPLICATE_BATCH_ACK, &long, &limits).is_err());
        assert!(OutcomeList::new(&entries[..entries.len() - 1]).is_err());
        assert!(OutcomeList::new(&vec![0u8; 26 * (REPLICATE_BATCH_MAX + 1)]).is_err());
    }
}
