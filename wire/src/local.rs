//! The local client protocol: PHP module ⇄ the daemon on the same node (docs/wire.md, "Local
//! client protocol").
//!
//! [`decode_request`] is what the daemon calls on bytes from a client; [`decode_reply`] is what
//! the PHP module calls on bytes from the daemon. Both borrow session data and strings from the
//! input buffer. Encoding goes through [`Frame`]: `Frame::new(request_id, msg).encode(&mut out)`.

use core::fmt;
use std::net::SocketAddr;

use crate::constants::{
    CLIENT_NAME_MAX, ERROR_MESSAGE_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, SID_LEN,
    STAT_NAME_MAX, STATS_ENTRIES_MAX,
};
use crate::frame::{
    Body, DecodeError, Frame, Limits, Reader, Reason, kind, len_u32, misplaced_kind, private,
    put_u8, put_u16, put_u32, put_u64, split_frame,
};
use crate::session_id::{SessionId, read_addr, read_sid, write_addr, write_sid};

/// A request from a client to its local daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// First frame on a connection: the versions the client speaks and its name.
    Hello {
        /// Lowest version spoken (≥ 1).
        version_min: u8,
        /// Highest version spoken (≥ `version_min`).
        version_max: u8,
        /// For logs, at most [`CLIENT_NAME_MAX`] bytes (the encoder truncates longer names).
        client_name: &'a str,
    },
    /// Make a new session ID whose master is this node.
    CreateId,
    /// Read the session and take its lock.
    ReadLock {
        /// The session.
        id: SessionId,
        /// How long to wait for the lock.
        wait_ms: u32,
        /// How long the lock lives unless written or unlocked.
        lease_ms: u32,
    },
    /// Read without locking.
    Read {
        /// The session.
        id: SessionId,
    },
    /// Store data and release the lock.
    WriteUnlock {
        /// The session.
        id: SessionId,
        /// The lock token from ReadLock (never 0).
        token: u64,
        /// Seconds until expiry (PHP's gc_maxlifetime).
        lifetime_s: u32,
        /// The session data.
        data: &'a [u8],
    },
    /// Renew the lifetime, keep the data, release the lock (PHP's update_timestamp).
    Touch {
        /// The session.
        id: SessionId,
        /// The lock token (never 0).
        token: u64,
        /// Seconds until expiry.
        lifetime_s: u32,
    },
    /// Release the lock without writing.
    Unlock {
        /// The session.
        id: SessionId,
        /// The lock token (never 0).
        token: u64,
    },
    /// Delete the session.
    Destroy {
        /// The session.
        id: SessionId,
        /// The lock token, or 0 when the caller holds no lock.
        token: u64,
    },
    /// Does the session exist (PHP's validate_sid)?
    Exists {
        /// The session.
        id: SessionId,
    },
    /// Statistics.
    Stats,
}

/// The daemon's answer to Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloOk {
    /// The chosen protocol version.
    pub version: u8,
    /// This daemon's relay endpoint: where the client "is" in the cluster.
    pub node: SocketAddr,
    /// This node's ID.
    pub node_id: u64,
    /// Largest session data accepted.
    pub data_max: u32,
    /// Largest frame body accepted.
    pub body_max: u32,
}

/// A reply from the daemon to its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Answer to Hello.
    HelloOk(HelloOk),
    /// Answer to CreateId.
    IdCreated {
        /// The new ID.
        id: SessionId,
    },
    /// The session's data.
    Data {
        /// The lock token; 0 when no lock was taken.
        token: u64,
        /// Data version of `data`.
        version: u64,
        /// Set when the session moved and the client should use this ID from now on.
        new_id: Option<SessionId>,
        /// The session data.
        data: &'a [u8],
    },
    /// No such session. After ReadLock the lock is taken anyway and `token` is set.
    NotFound {
        /// The lock token (ReadLock), or 0 (Read).
        token: u64,
        /// As in `Data`.
        new_id: Option<SessionId>,
    },
    /// The operation was done.
    Done {
        /// The session's data version afterwards (0 when there is none).
        version: u64,
    },
    /// Answer to Exists.
    Existence {
        /// Whether the session exists.
        exists: bool,
    },
    /// Answer to Stats.
    Stats(StatEntries<'a>),
    /// The request failed.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// For logs, at most [`ERROR_MESSAGE_MAX`] bytes (the encoder truncates longer text).
        message: &'a str,
    },
}

/// Error codes of `Error` and `RelayError` (docs/wire.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request was malformed or not allowed at this point.
    BadRequest = 1,
    /// The token is not the current lock holder's.
    NotLocked = 2,
    /// The data is larger than `data_max`.
    TooLarge = 3,
    /// The lock could not be had before the deadline.
    LockTimeout = 4,
    /// The store failed; nothing was changed.
    Storage = 5,
    /// The session's master (and backup) cannot be reached now.
    Unavailable = 6,
    /// No protocol version in common.
    UnsupportedVersion = 7,
    /// Touch/Unlock on a session that does not exist.
    NotFound = 8,
    /// A bug in the daemon; the request had no effect.
    Internal = 9,
    /// Too many requests queued; try again.
    Overloaded = 10,
    /// The peer is not in the allowed hosts.
    Forbidden = 11,
    /// Relay: the sender's placement epoch is older than the receiver's.
    StaleEpoch = 12,
    /// Relay: this node is not the session's master.
    NotMaster = 13,
    /// Relay: the answer to a WitnessRequest this node does not agree to (it still hears the
    /// suspect, is not serving, or has heard no heartbeat of the requester). Only ever sent in
    /// answer to a WitnessRequest, so a node that does not know the code never receives it.
    NotAgreed = 14,
}

impl ErrorCode {
    /// The code for a wire value, if it is in the table.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => BadRequest,
            2 => NotLocked,
            3 => TooLarge,
            4 => LockTimeout,
            5 => Storage,
            6 => Unavailable,
            7 => UnsupportedVersion,
            8 => NotFound,
            9 => Internal,
            10 => Overloaded,
            11 => Forbidden,
            12 => StaleEpoch,
            13 => NotMaster,
            14 => NotAgreed,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The entries of a StatsReply: named `u64` counters. Decoding borrows the wire bytes (already
/// validated); encoding takes a slice built by the daemon.
#[derive(Clone, Copy, Debug)]
pub struct StatEntries<'a> {
    repr: StatsRepr<'a>,
}

#[derive(Clone, Copy, Debug)]
enum StatsRepr<'a> {
    /// Validated wire bytes (after the count) and the count.
    Wire { count: u16, bytes: &'a [u8] },
    /// Entries to encode, validated by [`StatEntries::new`].
    List(&'a [(&'a str, u64)]),
}

fn check_stat_name(name: &[u8]) -> Result<(), Reason> {
    const FIELD: &str = "stats.name";
    if name.is_empty() {
        return Err(Reason::Empty { field: FIELD });
    }
    if name.len() > STAT_NAME_MAX {
        return Err(Reason::TooLong {
            field: FIELD,
            len: name.len(),
            max: STAT_NAME_MAX,
        });
    }
    match name
        .iter()
        .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'))
    {
        Some(&byte) => Err(Reason::BadByte { field: FIELD, byte }),
        None => Ok(()),
    }
}

impl<'a> StatEntries<'a> {
    /// Entries to send; names must be 1..=64 bytes of `[A-Za-z0-9_.-]`, at most 4096 entries.
    pub fn new(entries: &'a [(&'a str, u64)]) -> Result<Self, Reason> {
        if entries.len() > STATS_ENTRIES_MAX {
            return Err(Reason::TooLong {
                field: "stats.count",
                len: entries.len(),
                max: STATS_ENTRIES_MAX,
            });
        }
        for (name, _) in entries {
            check_stat_name(name.as_bytes())?;
        }
        Ok(StatEntries {
            repr: StatsRepr::List(entries),
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self.repr {
            StatsRepr::Wire { count, .. } => usize::from(count),
            StatsRepr::List(list) => list.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        let (wire, list) = match self.repr {
            StatsRepr::Wire { count, bytes } => (Some(WireStats { count, bytes }), None),
            StatsRepr::List(list) => (None, Some(list.iter().map(|&(n, v)| (n, v)))),
        };
        wire.into_iter().flatten().chain(list.into_iter().flatten())
    }

    fn body_len(&self) -> usize {
        2 + self
            .iter()
            .map(|(name, _)| 1 + name.len() + 8)
            .sum::<usize>()
    }

    fn write(&self, out: &mut Vec<u8>) {
        put_u16(out, u16::try_from(self.len()).unwrap_or(u16::MAX));
        for (name, value) in self.iter() {
            // Names were checked to be at most STAT_NAME_MAX (< 256) bytes.
            put_u8(out, name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            put_u64(out, value);
        }
    }

    fn decode(r: Reader<'a>) -> Result<Self, Reason> {
        let mut r = r;
        let count = r.u16("stats.count")?;
        if usize::from(count) > STATS_ENTRIES_MAX {
            return Err(Reason::TooLong {
                field: "stats.count",
                len: usize::from(count),
                max: STATS_ENTRIES_MAX,
            });
        }
        let bytes = r.rest();
        let mut check = Reader::new(bytes);
        for _ in 0..count {
            let len = check.u8("stats.name_len")?;
            check_stat_name(check.take(usize::from(len), "stats.name")?)?;
            check.u64("stats.value")?;
        }
        check.finish()?;
        Ok(StatEntries {
            repr: StatsRepr::Wire { count, bytes },
        })
    }
}

impl PartialEq for StatEntries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for StatEntries<'_> {}

/// Iterates validated wire entries.
struct WireStats<'a> {
    count: u16,
    bytes: &'a [u8],
}

impl<'a> Iterator for WireStats<'a> {
    type Item = (&'a str, u64);

    fn next(&mut self) -> Option<Self::Item> {
        if self.count == 0 {
            return None;
        }
        self.count -= 1;
        // The bytes were validated by StatEntries::decode; a failure here would be a bug, and
        // ending the iteration is the harmless answer.
        let mut r = Reader::new(self.bytes);
        let len = r.u8("stats.name_len").ok()?;
        let name = core::str::from_utf8(r.take(usize::from(len), "stats.name").ok()?).ok()?;
        let value = r.u64("stats.value").ok()?;
        self.bytes = r.rest();
        Some((name, value))
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn clamp_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn opt_sid_len(id: &Option<SessionId>) -> usize {
    1 + if id.is_some() { SID_LEN } else { 0 }
}

fn write_opt_sid(out: &mut Vec<u8>, id: &Option<SessionId>) {
    match id {
        None => put_u8(out, 0),
        Some(id) => {
            put_u8(out, 1);
            write_sid(out, id);
        }
    }
}

fn read_opt_sid(r: &mut Reader<'_>) -> Result<Option<SessionId>, Reason> {
    if r.bool("new_sid.present")? {
        Ok(Some(read_sid(r)?))
    } else {
        Ok(None)
    }
}

pub(crate) fn write_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    let message = clamp_str(message, ERROR_MESSAGE_MAX);
    put_u16(out, code as u16);
    put_u16(out, message.len() as u16);
    out.extend_from_slice(message.as_bytes());
}

pub(crate) fn error_body_len(message: &str) -> usize {
    4 + clamp_str(message, ERROR_MESSAGE_MAX).len()
}

pub(crate) fn read_error<'a>(r: &mut Reader<'a>) -> Result<(ErrorCode, &'a str), Reason> {
    let code = r.u16("code")?;
    let code = ErrorCode::from_u16(code).ok_or(Reason::BadErrorCode(code))?;
    let len = usize::from(r.u16("message_len")?);
    let message = r.str(len, ERROR_MESSAGE_MAX, "message")?;
    Ok((code, message))
}

impl private::Sealed for Request<'_> {}

impl Body for Request<'_> {
    fn kind(&self) -> u8 {
        match self {
            Request::Hello { .. } => kind::HELLO,
            Request::CreateId => kind::CREATE_ID,
            Request::ReadLock { .. } => kind::READ_LOCK,
            Request::Read { .. } => kind::READ,
            Request::WriteUnlock { .. } => kind::WRITE_UNLOCK,
            Request::Touch { .. } => kind::TOUCH,
            Request::Unlock { .. } => kind::UNLOCK,
            Request::Destroy { .. } => kind::DESTROY,
            Request::Exists { .. } => kind::EXISTS,
            Request::Stats => kind::STATS,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Request::Hello { client_name, .. } => 3 + clamp_str(client_name, CLIENT_NAME_MAX).len(),
            Request::CreateId | Request::Stats => 0,
            Request::ReadLock { .. } => SID_LEN + 8,
            Request::Read { .. } | Request::Exists { .. } => SID_LEN,
            Request::WriteUnlock { data, .. } => SID_LEN + 16 + data.len(),
            Request::Touch { .. } => SID_LEN + 12,
            Request::Unlock { .. } | Request::Destroy { .. } => SID_LEN + 8,
        }
    }

    fn write_body_head(&self, out: &mut Vec<u8>) {
        match self {
            Request::Hello {
                version_min,
                version_max,
                client_name,
            } => {
                let name = clamp_str(client_name, CLIENT_NAME_MAX);
                put_u8(out, *version_min);
                put_u8(out, *version_max);
                put_u8(out, name.len() as u8);
                out.extend_from_slice(name.as_bytes());
            }
            Request::CreateId | Request::Stats => {}
            Request::ReadLock {
                id,
                wait_ms,
                lease_ms,
            } => {
                write_sid(out, id);
                put_u32(out, *wait_ms);
                put_u32(out, *lease_ms);
            }
            Request::Read { id } | Request::Exists { id } => write_sid(out, id),
            Request::WriteUnlock {
                id,
                token,
                lifetime_s,
                data,
            } => {
                write_sid(out, id);
                put_u64(out, *token);
                put_u32(out, *lifetime_s);
                put_u32(out, len_u32(data.len()));
            }
            Request::Touch {
                id,
                token,
                lifetime_s,
            } => {
                write_sid(out, id);
                put_u64(out, *token);
                put_u32(out, *lifetime_s);
            }
            Request::Unlock { id, token } | Request::Destroy { id, token } => {
                write_sid(out, id);
                put_u64(out, *token);
            }
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Request::WriteUnlock { data, .. } => data,
            _ => &[],
        }
    }
}

impl<'a> Request<'a> {
    /// Decodes the body of a local request of kind `k` (also used for forwarded requests).
    pub fn decode_body(k: u8, body: &'a [u8], limits: &Limits) -> Result<Self, Reason> {
        let mut r = Reader::new(body);
        let request = match k {
            kind::HELLO => {
                let version_min = r.u8("version_min")?;
                let version_max = r.u8("version_max")?;
                if version_min == 0 || version_min > version_max {
                    return Err(Reason::BadVersionRange {
                        min: version_min,
                        max: version_max,
                    });
                }
                let len = usize::from(r.u8("client_name_len")?);
                let client_name = r.str(len, CLIENT_NAME_MAX, "client_name")?;
                Request::Hello {
                    version_min,
                    version_max,
                    client_name,
                }
            }
            kind::CREATE_ID => Request::CreateId,
            kind::READ_LOCK => Request::ReadLock {
                id: read_sid(&mut r)?,
                wait_ms: r.u32("wait_ms")?,
                lease_ms: r.u32("lease_ms")?,
            },
            kind::READ => Request::Read {
                id: read_sid(&mut r)?,
            },
            kind::WRITE_UNLOCK => Request::WriteUnlock {
                id: read_sid(&mut r)?,
                token: r.token()?,
                lifetime_s: r.u32("lifetime_s")?,
                data: r.blob(limits)?,
            },
            kind::TOUCH => Request::Touch {
                id: read_sid(&mut r)?,
                token: r.token()?,
                lifetime_s: r.u32("lifetime_s")?,
            },
            kind::UNLOCK => Request::Unlock {
                id: read_sid(&mut r)?,
                token: r.token()?,
            },
            kind::DESTROY => Request::Destroy {
                id: read_sid(&mut r)?,
                token: r.u64("token")?,
            },
            kind::EXISTS => Request::Exists {
                id: read_sid(&mut r)?,
            },
            kind::STATS => Request::Stats,
            other => {
                return Err(misplaced_kind(other));
            }
        };
        r.finish()?;
        Ok(request)
    }

    /// The session this request is about, if any.
    pub fn session_id(&self) -> Option<&SessionId> {
        match self {
            Request::ReadLock { id, .. }
            | Request::Read { id }
            | Request::WriteUnlock { id, .. }
            | Request::Touch { id, .. }
            | Request::Unlock { id, .. }
            | Request::Destroy { id, .. }
            | Request::Exists { id } => Some(id),
            Request::Hello { .. } | Request::CreateId | Request::Stats => None,
        }
    }
}

impl private::Sealed for Reply<'_> {}

impl Body for Reply<'_> {
    fn kind(&self) -> u8 {
        match self {
            Reply::HelloOk(_) => kind::HELLO_OK,
            Reply::IdCreated { .. } => kind::ID_CREATED,
            Reply::Data { .. } => kind::DATA,
            Reply::NotFound { .. } => kind::NOT_FOUND,
            Reply::Done { .. } => kind::DONE,
            Reply::Existence { .. } => kind::EXISTENCE,
            Reply::Stats(_) => kind::STATS_REPLY,
            Reply::Error { .. } => kind::ERROR,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Reply::HelloOk(_) => 37,
            Reply::IdCreated { .. } => SID_LEN,
            Reply::Data { new_id, data, .. } => 16 + opt_sid_len(new_id) + 4 + data.len(),
            Reply::NotFound { new_id, .. } => 8 + opt_sid_len(new_id),
            Reply::Done { .. } => 8,
            Reply::Existence { .. } => 1,
            Reply::Stats(entries) => entries.body_len(),
            Reply::Error { message, .. } => error_body_len(message),
        }
    }

    fn write_body_head(&self, out: &mut Vec<u8>) {
        match self {
            Reply::HelloOk(ok) => {
                put_u8(out, ok.version);
                write_addr(out, Some(&ok.node));
                put_u64(out, ok.node_id);
                put_u32(out, ok.data_max);
                put_u32(out, ok.body_max);
            }
            Reply::IdCreated { id } => write_sid(out, id),
            Reply::Data {
                token,
                version,
                new_id,
                data,
            } => {
                put_u64(out, *token);
                put_u64(out, *version);
                write_opt_sid(out, new_id);
                put_u32(out, len_u32(data.len()));
            }
            Reply::NotFound { token, new_id } => {
                put_u64(out, *token);
                write_opt_sid(out, new_id);
            }
            Reply::Done { version } => put_u64(out, *version),
            Reply::Existence { exists } => put_u8(out, u8::from(*exists)),
            Reply::Stats(entries) => entries.write(out),
            Reply::Error { code, message } => write_error(out, *code, message),
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Reply::Data { data, .. } => data,
            _ => &[],
        }
    }
}

impl<'a> Reply<'a> {
    /// Decodes the body of a local reply of kind `k` (also used for forwarded replies).
    pub fn decode_body(k: u8, body: &'a [u8], limits: &Limits) -> Result<Self, Reason> {
        let mut r = Reader::new(body);
        let reply = match k {
            kind::HELLO_OK => {
                let version = r.u8("version")?;
                if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
                    return Err(Reason::BadChosenVersion(version));
                }
                let node = read_addr(&mut r, "node", false)?.ok_or(Reason::BadAddressFamily {
                    field: "node",
                    family: 0,
                })?;
                Reply::HelloOk(HelloOk {
                    version,
                    node,
                    node_id: r.u64("node_id")?,
                    data_max: r.u32("data_max")?,
                    body_max: r.u32("body_max")?,
                })
            }
            kind::ID_CREATED => Reply::IdCreated {
                id: read_sid(&mut r)?,
            },
            kind::DATA => Reply::Data {
                token: r.u64("token")?,
                version: r.u64("version")?,
                new_id: read_opt_sid(&mut r)?,
                data: r.blob(limits)?,
            },
            kind::NOT_FOUND => Reply::NotFound {
                token: r.u64("token")?,
                new_id: read_opt_sid(&mut r)?,
            },
            kind::DONE => Reply::Done {
                version: r.u64("version")?,
            },
            kind::EXISTENCE => Reply::Existence {
                exists: r.bool("exists")?,
            },
            kind::STATS_REPLY => {
                // The entries consume the rest of the body (StatEntries::decode checks the end).
                return Ok(Reply::Stats(StatEntries::decode(r)?));
            }
            kind::ERROR => {
                let (code, message) = read_error(&mut r)?;
                Reply::Error { code, message }
            }
            other => {
                return Err(misplaced_kind(other));
            }
        };
        r.finish()?;
        Ok(reply)
    }
}

/// Decodes one request frame from the start of `buf` (daemon side). On success returns the frame
/// and the number of bytes it used; the rest of `buf` may hold the next, pipelined frame.
pub fn decode_request<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<(Frame<Request<'a>>, usize), DecodeError> {
    let (header, body) = split_frame(buf, limits, &[kind::Channel::LocalRequest], 0)?;
    let message = Request::decode_body(header.kind, body, limits)?;
    Ok((Frame::new(header.request_id, message), header.frame_len()))
}

/// Decodes one reply frame from the start of `buf` (PHP module side).
pub fn decode_reply<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<(Frame<Reply<'a>>, usize), DecodeError> {
    let (header, body) = split_frame(buf, limits, &[kind::Channel::LocalReply], 0)?;
    let message = Reply::decode_body(header.kind, body, limits)?;
    Ok((Frame::new(header.request_id, message), header.frame_len()))
}

/// Version negotiation: the highest version in both ranges, if any.
pub fn negotiate(client_min: u8, client_max: u8, server_min: u8, server_max: u8) -> Option<u8> {
    let high = client_max.min(server_max);
    let low = client_min.max(server_min);
    (low <= high).then_some(high)
}
