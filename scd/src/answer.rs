//! What the daemon answers, before it is encoded: the shard side produces an `Answer`, and
//! `proto::encode_answer` turns it into a reply frame for the connection's writer.

use std::fmt;

/// The error codes of the local protocol (docs/wire.md, "Error").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrCode {
    BadRequest,
    NotLocked,
    TooLarge,
    LockTimeout,
    Storage,
    Unavailable,
    UnsupportedVersion,
    NotFound,
    Internal,
    Overloaded,
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A reply to one request.
#[derive(Debug)]
pub enum Answer<'a> {
    /// The session was found (`token` 0 when no lock was taken).
    Data {
        token: u64,
        version: u64,
        data: &'a [u8],
    },
    /// The session does not exist (`token` is the lock taken on it by a ReadLock, else 0).
    NotFound { token: u64 },
    /// The operation is done; the session's data version after it (0 when there is none).
    Done { version: u64 },
    /// Whether the session exists.
    Existence(bool),
    /// A fresh session ID was made: this node (`master`) and the new HASH.
    IdCreated {
        master: std::net::SocketAddr,
        backup: Option<std::net::SocketAddr>,
        hash: [u8; 16],
    },
    /// The request failed; nothing was changed.
    Error { code: ErrCode, message: String },
}

impl Answer<'_> {
    pub fn error(code: ErrCode, message: impl Into<String>) -> Answer<'static> {
        Answer::Error {
            code,
            message: message.into(),
        }
    }
}
