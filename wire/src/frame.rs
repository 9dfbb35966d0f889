//! The frame header, decode errors and limits, and the byte cursor every body decoder uses.
//!
//! A frame is a fixed [`HEADER_LEN`]-byte header followed by `body_len` bytes of body (and, on
//! sealed relay connections, a MAC; see `relay`). Decoding is zero-copy and resumable: it takes
//! the bytes read so far and says "here is a frame and its length", "need at least N more bytes"
//! or "invalid, because …".

use core::fmt;

use crate::constants::{
    BATCH_BODY_MAX_DEFAULT, BODY_MAX_DEFAULT, DATA_MAX_DEFAULT, FRAME_MAGIC, HEADER_LEN,
    PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_NEGOTIATION,
};

/// Message kinds (the header's `kind` byte). See the table in docs/wire.md.
pub mod kind {
    /// Local request: Hello.
    pub const HELLO: u8 = 0x01;
    /// Local request: CreateId.
    pub const CREATE_ID: u8 = 0x02;
    /// Local request: ReadLock.
    pub const READ_LOCK: u8 = 0x03;
    /// Local request: Read.
    pub const READ: u8 = 0x04;
    /// Local request: WriteUnlock.
    pub const WRITE_UNLOCK: u8 = 0x05;
    /// Local request: Touch.
    pub const TOUCH: u8 = 0x06;
    /// Local request: Unlock.
    pub const UNLOCK: u8 = 0x07;
    /// Local request: Destroy.
    pub const DESTROY: u8 = 0x08;
    /// Local request: Exists.
    pub const EXISTS: u8 = 0x09;
    /// Local request: Stats.
    pub const STATS: u8 = 0x0A;

    /// Relay handshake: AuthChallenge.
    pub const AUTH_CHALLENGE: u8 = 0x40;
    /// Relay handshake: AuthProof.
    pub const AUTH_PROOF: u8 = 0x41;
    /// Relay handshake: AuthAccept.
    pub const AUTH_ACCEPT: u8 = 0x42;
    /// Relay: Forward.
    pub const FORWARD: u8 = 0x48;
    /// Relay: ForwardReply.
    pub const FORWARD_REPLY: u8 = 0x49;
    /// Relay: Replicate.
    pub const REPLICATE: u8 = 0x4A;
    /// Relay: ReplicateAck.
    pub const REPLICATE_ACK: u8 = 0x4B;
    /// Relay: DropReplica.
    pub const DROP_REPLICA: u8 = 0x4C;
    /// Relay: Promote.
    pub const PROMOTE: u8 = 0x4D;
    /// Relay: Ack.
    pub const ACK: u8 = 0x4E;
    /// Relay: SyncRequest.
    pub const SYNC_REQUEST: u8 = 0x50;
    /// Relay: SyncBegin.
    pub const SYNC_BEGIN: u8 = 0x51;
    /// Relay: SyncItem.
    pub const SYNC_ITEM: u8 = 0x52;
    /// Relay: SyncEnd.
    pub const SYNC_END: u8 = 0x53;
    /// Relay: Locate.
    pub const LOCATE: u8 = 0x54;
    /// Relay: Located.
    pub const LOCATED: u8 = 0x55;
    /// Relay: RejoinNeeded.
    pub const REJOIN_NEEDED: u8 = 0x56;
    /// Relay: SyncHashes.
    pub const SYNC_HASHES: u8 = 0x57;
    /// Relay: SyncPlaces.
    pub const SYNC_PLACES: u8 = 0x58;
    /// Relay: LeaseRequest.
    pub const LEASE_REQUEST: u8 = 0x59;
    /// Relay: LeaseGrant.
    pub const LEASE_GRANT: u8 = 0x5A;
    /// Relay: LeaseDenied.
    pub const LEASE_DENIED: u8 = 0x5B;
    /// Relay: ReplicateBatch.
    pub const REPLICATE_BATCH: u8 = 0x5C;
    /// Relay: ReplicateBatchAck.
    pub const REPLICATE_BATCH_ACK: u8 = 0x5D;
    /// Relay: WitnessRequest.
    pub const WITNESS_REQUEST: u8 = 0x5E;
    /// Relay: RelayError.
    pub const RELAY_ERROR: u8 = 0x5F;

    /// Local reply: HelloOk.
    pub const HELLO_OK: u8 = 0x81;
    /// Local reply: IdCreated.
    pub const ID_CREATED: u8 = 0x82;
    /// Local reply: Data.
    pub const DATA: u8 = 0x83;
    /// Local reply: NotFound.
    pub const NOT_FOUND: u8 = 0x84;
    /// Local reply: Done.
    pub const DONE: u8 = 0x85;
    /// Local reply: Existence.
    pub const EXISTENCE: u8 = 0x86;
    /// Local reply: StatsReply.
    pub const STATS_REPLY: u8 = 0x87;
    /// Local reply: Error.
    pub const ERROR: u8 = 0x8F;

    /// Which channel a kind belongs to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Channel {
        /// Client → daemon on the local protocol.
        LocalRequest,
        /// Daemon → client on the local protocol.
        LocalReply,
        /// Relay handshake (unsealed).
        Handshake,
        /// Relay frame (sealed).
        Relay,
    }

    /// The channel of a known kind, or `None` for an unknown kind.
    pub const fn channel(kind: u8) -> Option<Channel> {
        match kind {
            HELLO..=STATS => Some(Channel::LocalRequest),
            HELLO_OK..=STATS_REPLY | ERROR => Some(Channel::LocalReply),
            AUTH_CHALLENGE..=AUTH_ACCEPT => Some(Channel::Handshake),
            FORWARD..=ACK
            | SYNC_REQUEST..=LEASE_DENIED
            | REPLICATE_BATCH
            | REPLICATE_BATCH_ACK
            | WITNESS_REQUEST
            | RELAY_ERROR => Some(Channel::Relay),
            _ => None,
        }
    }
}

/// Caller-chosen limits, checked before anything is allocated or waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body accepted (MAC not included), for every kind but ReplicateBatch.
    pub body_max: u32,
    /// Largest session data (BLOB) accepted.
    pub data_max: u32,
    /// Largest ReplicateBatch body accepted (MAC not included): a batch of copies has its own
    /// limit, since it holds many sessions.
    pub batch_body_max: u32,
}

impl Limits {
    /// The largest body accepted for a frame of kind `k`.
    pub const fn body_max_for(&self, k: u8) -> u32 {
        if k == kind::REPLICATE_BATCH {
            self.batch_body_max
        } else {
            self.body_max
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_max: BODY_MAX_DEFAULT,
            data_max: DATA_MAX_DEFAULT,
            batch_body_max: BATCH_BODY_MAX_DEFAULT,
        }
    }
}

/// Why decoding did not produce a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Nothing is wrong yet; at least `needed` more bytes must arrive before the frame can be
    /// decoded.
    Incomplete {
        /// Lower bound on the number of further bytes required.
        needed: usize,
    },
    /// The bytes can never become a valid frame.
    Invalid(Reason),
}

impl From<Reason> for DecodeError {
    fn from(reason: Reason) -> Self {
        DecodeError::Invalid(reason)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete { needed } => write!(f, "incomplete: need {needed} more bytes"),
            DecodeError::Invalid(reason) => write!(f, "invalid frame: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame (or a part of it) is invalid. `field` names refer to docs/wire.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The frame does not start with "SC".
    BadMagic,
    /// The header's version is not one this crate speaks (or a negotiating frame is not v1).
    UnsupportedVersion(u8),
    /// A flag bit is set; version 1 defines none.
    FlagsNotZero(u32),
    /// The kind byte names no message.
    UnknownKind(u8),
    /// A known kind on the wrong channel (a reply sent as a request, a relay kind locally, …).
    WrongChannel(u8),
    /// The body length is over `Limits::body_max` (`Limits::batch_body_max` for a
    /// ReplicateBatch).
    BodyTooLarge {
        /// Length in the header.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A BLOB length is over `Limits::data_max`.
    DataTooLarge {
        /// Length in the body.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The body ends inside this field.
    Truncated {
        /// The field that does not fit.
        field: &'static str,
    },
    /// Bytes follow the last field of the body.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A length-prefixed field is longer than its maximum.
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Its maximum.
        max: usize,
    },
    /// A field that must not be empty is.
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A text field is not UTF-8.
    BadUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A byte outside the field's allowed set.
    BadByte {
        /// The field.
        field: &'static str,
        /// The byte.
        byte: u8,
    },
    /// An ADDR family byte other than 4 or 6 (or 0 where "none" is allowed).
    BadAddressFamily {
        /// The field.
        field: &'static str,
        /// The family byte.
        family: u8,
    },
    /// Reserved or padding bytes are not zero (the frame would not be canonical).
    NotZero {
        /// The field.
        field: &'static str,
    },
    /// A boolean byte other than 0 or 1.
    BadBool {
        /// The field.
        field: &'static str,
        /// The byte.
        value: u8,
    },
    /// A lock token of 0 where a real lock is required.
    ZeroToken,
    /// Hello/AuthChallenge with min > max or min = 0.
    BadVersionRange {
        /// Lowest version.
        min: u8,
        /// Highest version.
        max: u8,
    },
    /// The version chosen in AuthProof or HelloOk is outside the offered range or not spoken here.
    BadChosenVersion(u8),
    /// The peer's version range and ours do not overlap.
    NoCommonVersion {
        /// The peer's lowest version.
        min: u8,
        /// The peer's highest version.
        max: u8,
    },
    /// An error code not in the table.
    BadErrorCode(u16),
    /// A sync role other than 1 or 2.
    BadSyncRole(u8),
    /// A WitnessRequest change kind other than 1 or 2.
    BadWitnessChange(u8),
    /// Forward/ForwardReply wrapping a kind that is not forwardable.
    NotForwardable(u8),
    /// A handshake frame with a request ID other than 0.
    RequestIdNotZero,
    /// A handshake frame other than the one expected next.
    UnexpectedKind {
        /// The kind expected.
        expected: u8,
        /// The kind received.
        got: u8,
    },
    /// The MAC or handshake tag does not match: wrong key, altered, replayed or reordered.
    BadMac,
    /// The opener refused an earlier frame; the connection must be closed.
    Poisoned,
    /// 2^64 frames were sealed on one connection; it must be re-established.
    SequenceExhausted,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::BadMagic => write!(f, "bad magic (not an SCD frame)"),
            Reason::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Reason::FlagsNotZero(flags) => write!(f, "unknown flags {flags:#x}"),
            Reason::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            Reason::WrongChannel(k) => write!(f, "message kind {k:#04x} not valid on this channel"),
            Reason::BodyTooLarge { len, max } => {
                write!(f, "body length {len} over the limit {max}")
            }
            Reason::DataTooLarge { len, max } => {
                write!(f, "data length {len} over the limit {max}")
            }
            Reason::Truncated { field } => write!(f, "body ends inside field {field}"),
            Reason::TrailingBytes { count } => write!(f, "{count} bytes after the last field"),
            Reason::TooLong { field, len, max } => {
                write!(f, "field {field} is {len} bytes, at most {max} allowed")
            }
            Reason::Empty { field } => write!(f, "field {field} is empty"),
            Reason::BadUtf8 { field } => write!(f, "field {field} is not UTF-8"),
            Reason::BadByte { field, byte } => {
                write!(
                    f,
                    "field {field} holds byte {byte:#04x} outside its allowed set"
                )
            }
            Reason::BadAddressFamily { field, family } => {
                write!(f, "field {field} has address family {family}")
            }
            Reason::NotZero { field } => write!(f, "reserved field {field} is not zero"),
            Reason::BadBool { field, value } => {
                write!(f, "field {field} is {value}, expected 0 or 1")
            }
            Reason::ZeroToken => write!(f, "lock token 0 where a lock is required"),
            Reason::BadVersionRange { min, max } => {
                write!(f, "bad version range {min}..={max}")
            }
            Reason::BadChosenVersion(v) => write!(f, "chosen version {v} not offered"),
            Reason::NoCommonVersion { min, max } => {
                write!(f, "no common version with the peer's {min}..={max}")
            }
            Reason::BadErrorCode(c) => write!(f, "unknown error code {c}"),
            Reason::BadSyncRole(r) => write!(f, "unknown sync role {r}"),
            Reason::BadWitnessChange(c) => write!(f, "unknown witness change kind {c}"),
            Reason::NotForwardable(k) => write!(f, "kind {k:#04x} cannot be forwarded"),
            Reason::RequestIdNotZero => write!(f, "handshake frame with a request ID"),
            Reason::UnexpectedKind { expected, got } => {
                write!(f, "expected kind {expected:#04x}, got {got:#04x}")
            }
            Reason::BadMac => write!(f, "MAC mismatch"),
            Reason::Poisoned => write!(f, "connection already failed authentication"),
            Reason::SequenceExhausted => write!(f, "frame sequence number exhausted"),
        }
    }
}

impl std::error::Error for Reason {}

/// The fixed frame header (docs/wire.md, "The frame header").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of this frame.
    pub version: u8,
    /// Message kind ([`kind`]).
    pub kind: u8,
    /// Flags; none is defined in version 1.
    pub flags: u32,
    /// Chosen by the requester, echoed in the reply.
    pub request_id: u64,
    /// Length of the body that follows (not counting a relay MAC).
    pub body_len: u32,
}

const OFFSET_VERSION: usize = 2;
const OFFSET_KIND: usize = 3;
const OFFSET_FLAGS: usize = 4;
const OFFSET_REQUEST_ID: usize = 8;
const OFFSET_BODY_LEN: usize = 16;
const _: () = assert!(OFFSET_BODY_LEN + 4 == HEADER_LEN);

impl Header {
    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..OFFSET_VERSION].copy_from_slice(&FRAME_MAGIC);
        out[OFFSET_VERSION] = self.version;
        out[OFFSET_KIND] = self.kind;
        out[OFFSET_FLAGS..OFFSET_REQUEST_ID].copy_from_slice(&self.flags.to_le_bytes());
        out[OFFSET_REQUEST_ID..OFFSET_BODY_LEN].copy_from_slice(&self.request_id.to_le_bytes());
        out[OFFSET_BODY_LEN..].copy_from_slice(&self.body_len.to_le_bytes());
        out
    }

    /// Decodes and checks a header at the start of `buf`: magic, version, a known kind, flags and
    /// the body length against `limits`. Checks the bytes that are there even when the header is
    /// still incomplete, so garbage is refused at once instead of being waited on. Does not check
    /// the channel of the kind (the local and relay decoders do).
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Header, DecodeError> {
        let seen = buf.len().min(HEADER_LEN);
        if buf[..seen.min(FRAME_MAGIC.len())] != FRAME_MAGIC[..seen.min(FRAME_MAGIC.len())] {
            return Err(Reason::BadMagic.into());
        }
        if let Some(&version) = buf.get(OFFSET_VERSION) {
            if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
                return Err(Reason::UnsupportedVersion(version).into());
            }
        }
        if let Some(&k) = buf.get(OFFSET_KIND) {
            if kind::channel(k).is_none() {
                return Err(Reason::UnknownKind(k).into());
            }
            // The negotiating frames' layout is frozen at version 1 (docs/wire.md, Versioning).
            if is_negotiation(k) && buf[OFFSET_VERSION] != PROTOCOL_VERSION_NEGOTIATION {
                return Err(Reason::UnsupportedVersion(buf[OFFSET_VERSION]).into());
            }
        }
        // Any non-zero flag byte already seen makes the frame invalid whatever follows.
        let flag_bytes = &buf[OFFSET_FLAGS.min(seen)..OFFSET_REQUEST_ID.min(seen)];
        if flag_bytes.iter().any(|&b| b != 0) {
            let mut flags = [0u8; 4];
            flags[..flag_bytes.len()].copy_from_slice(flag_bytes);
            return Err(Reason::FlagsNotZero(u32::from_le_bytes(flags)).into());
        }
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Incomplete {
                needed: HEADER_LEN - buf.len(),
            });
        }
        let header = Header {
            version: buf[OFFSET_VERSION],
            kind: buf[OFFSET_KIND],
            flags: 0,
            request_id: u64::from_le_bytes(le_array(&buf[OFFSET_REQUEST_ID..OFFSET_BODY_LEN])),
            body_len: u32::from_le_bytes(le_array(&buf[OFFSET_BODY_LEN..HEADER_LEN])),
        };
        let max = limits.body_max_for(header.kind);
        if header.body_len > max {
            return Err(Reason::BodyTooLarge {
                len: header.body_len,
                max,
            }
            .into());
        }
        Ok(header)
    }

    /// Length of header plus body.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// Copies a slice whose length the caller has already fixed into an array.
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// A cursor over a complete body. Running out of bytes is `Truncated` (invalid), never
/// `Incomplete`: the whole body has arrived before any field is read.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], Reason> {
        if len > self.buf.len() {
            return Err(Reason::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Reason> {
        Ok(le_array(self.take(N, field)?))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Reason> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, Reason> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Reason> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Reason> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, Reason> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Reason::BadBool { field, value }),
        }
    }

    /// A token that must name a real lock.
    pub(crate) fn token(&mut self) -> Result<u64, Reason> {
        match self.u64("token")? {
            0 => Err(Reason::ZeroToken),
            token => Ok(token),
        }
    }

    /// STR8 or STR16 of UTF-8, at most `max` bytes; the length is checked before the bytes are
    /// taken.
    pub(crate) fn str(
        &mut self,
        len: usize,
        max: usize,
        field: &'static str,
    ) -> Result<&'a str, Reason> {
        if len > max {
            return Err(Reason::TooLong { field, len, max });
        }
        let bytes = self.take(len, field)?;
        core::str::from_utf8(bytes).map_err(|_| Reason::BadUtf8 { field })
    }

    /// A BLOB: u32 length, checked against `data_max`, then the bytes.
    pub(crate) fn blob(&mut self, limits: &Limits) -> Result<&'a [u8], Reason> {
        let len = self.u32("data_len")?;
        if len > limits.data_max {
            return Err(Reason::DataTooLarge {
                len,
                max: limits.data_max,
            });
        }
        self.take(len as usize, "data")
    }

    pub(crate) fn rest(self) -> &'a [u8] {
        self.buf
    }

    /// The body must end exactly here.
    pub(crate) fn finish(self) -> Result<(), Reason> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Reason::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }
}

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Length of a field as its wire integer. The encoder is only ever handed values that satisfy
/// the limits (which all fit), so the saturation never triggers for a message that can decode; it
/// exists so that a caller's oversized value produces a frame the peer refuses instead of a panic.
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A message with a body layout: the pieces [`Frame`] needs to encode it.
pub trait Body: private::Sealed {
    /// The kind byte.
    fn kind(&self) -> u8;
    /// Length of the body in bytes.
    fn body_len(&self) -> usize;
    /// Appends the body except for [`Body::data`] (which, when present, is its last field).
    fn write_body_head(&self, out: &mut Vec<u8>);
    /// The trailing session data, or an empty slice for bodies without one.
    fn data(&self) -> &[u8];
}

pub(crate) mod private {
    pub trait Sealed {}
}

/// A message with its request ID: the unit that is encoded and decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<M> {
    /// Chosen by the requester, echoed by the reply.
    pub request_id: u64,
    /// The message.
    pub message: M,
}

impl<M: Body> Frame<M> {
    /// A frame carrying `message` under `request_id`.
    pub fn new(request_id: u64, message: M) -> Self {
        Frame {
            request_id,
            message,
        }
    }

    /// The header this frame is sent with.
    pub fn header(&self) -> Header {
        Header {
            version: version_for(self.message.kind()),
            kind: self.message.kind(),
            flags: 0,
            request_id: self.request_id,
            body_len: len_u32(self.message.body_len()),
        }
    }

    /// Bytes [`Frame::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.message.body_len()
    }

    /// Appends the whole frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_head(out);
        out.extend_from_slice(self.message.data());
    }

    /// Appends everything but the trailing session data ([`Frame::data`]), so that a large blob
    /// can go out in a vectored write without being copied: `head ‖ data` is the whole frame.
    pub fn encode_head(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len() - self.message.data().len());
        out.extend_from_slice(&self.header().to_bytes());
        self.message.write_body_head(out);
    }

    /// The trailing session data (empty for messages without one).
    pub fn data(&self) -> &[u8] {
        self.message.data()
    }
}

/// Why a kind is refused where it arrived: unknown everywhere, or valid on another channel.
pub(crate) const fn misplaced_kind(k: u8) -> Reason {
    match kind::channel(k) {
        Some(_) => Reason::WrongChannel(k),
        None => Reason::UnknownKind(k),
    }
}

/// Whether a kind negotiates the version (and so always travels as version 1).
pub(crate) const fn is_negotiation(k: u8) -> bool {
    matches!(
        k,
        kind::HELLO | kind::HELLO_OK | kind::AUTH_CHALLENGE | kind::AUTH_PROOF | kind::AUTH_ACCEPT
    )
}

/// The header version a frame of this kind is sent with.
pub(crate) const fn version_for(k: u8) -> u8 {
    if is_negotiation(k) {
        PROTOCOL_VERSION_NEGOTIATION
    } else {
        PROTOCOL_VERSION_MAX
    }
}

/// Splits a buffer into a checked header and its complete body, or says how much is missing.
/// A kind outside `channels` is refused as soon as its byte is visible, before the body arrives.
pub(crate) fn split_frame<'a>(
    buf: &'a [u8],
    limits: &Limits,
    channels: &[kind::Channel],
    trailer_len: usize,
) -> Result<(Header, &'a [u8]), DecodeError> {
    let check_channel = |k: u8| match kind::channel(k) {
        Some(channel) if channels.contains(&channel) => Ok(()),
        _ => Err(DecodeError::Invalid(misplaced_kind(k))),
    };
    let header = match Header::decode(buf, limits) {
        Ok(header) => header,
        Err(DecodeError::Incomplete { needed }) => {
            if let Some(&k) = buf.get(OFFSET_KIND) {
                check_channel(k)?;
            }
            return Err(DecodeError::Incomplete { needed });
        }
        Err(invalid) => return Err(invalid),
    };
    check_channel(header.kind)?;
    let total = header.frame_len() + trailer_len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete {
            needed: total - buf.len(),
        });
    }
    Ok((header, &buf[HEADER_LEN..header.frame_len()]))
}
