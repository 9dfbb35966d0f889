//! The engine's one error type. Each variant says exactly what went wrong.

use core::fmt;
use std::io;

/// What an engine call can fail with. `Clone` so that a shard can hand the same storage
/// failure to every write it refuses afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The session blob is larger than the store's configured maximum.
    TooLarge { size: usize, max: usize },
    /// The lock token is not the current holder's (another owner holds the lock, or the token
    /// is stale: released, lease ended, or from an earlier grant).
    WrongToken,
    /// A lock token was given but nobody holds the session's lock (it was released or its
    /// lease ended).
    NotLocked,
    /// The operation needs an existing session and there is none (or it has expired).
    NotFound,
    /// A flush or write failed earlier (EIO, ENOSPC, ...). The shard is now read-only: it
    /// refuses every write, and every write not yet durable was reported failed.
    StorageFailed { reason: String },
    /// A record read back from the mapping does not match what was written (checked before a
    /// write is acknowledged); the write was not applied.
    Corrupt { reason: String },
    /// An I/O call failed while opening or growing the store.
    Io {
        op: &'static str,
        path: String,
        kind: io::ErrorKind,
        message: String,
    },
    /// The store was created with another shard count; re-sharding is not supported.
    ShardCountMismatch { stored: u32, configured: u32 },
    /// The store's manifest is missing while slab files exist, or is damaged, or names another
    /// shard. Refused rather than guessed: the manifest carries the lock-token epoch.
    Manifest { reason: String },
    /// The configuration is out of range.
    Config { reason: String },
    /// Every lock-token epoch has been used (a million opens of one shard).
    TokensExhausted,
    /// An unpin of a lock that is held with this token but not pinned (nothing to end).
    NotPinned,
}

impl EngineError {
    pub(crate) fn io(op: &'static str, path: &str, err: &io::Error) -> EngineError {
        EngineError::Io {
            op,
            path: path.to_string(),
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::TooLarge { size, max } => {
                write!(
                    f,
                    "session of {size} bytes is larger than the maximum of {max} bytes"
                )
            }
            EngineError::WrongToken => {
                write!(
                    f,
                    "lock token is not the current holder's (stale or another owner's)"
                )
            }
            EngineError::NotLocked => write!(f, "session is not locked (released or lease ended)"),
            EngineError::NotFound => write!(f, "no such session"),
            EngineError::StorageFailed { reason } => {
                write!(f, "storage failed, shard is read-only: {reason}")
            }
            EngineError::Corrupt { reason } => write!(f, "record corrupt: {reason}"),
            EngineError::Io {
                op, path, message, ..
            } => write!(f, "{op} {path}: {message}"),
            EngineError::ShardCountMismatch { stored, configured } => write!(
                f,
                "store was created with {stored} shards but {configured} are configured \
                 (re-sharding is not supported)"
            ),
            EngineError::Manifest { reason } => write!(f, "shard manifest: {reason}"),
            EngineError::Config { reason } => write!(f, "configuration: {reason}"),
            EngineError::TokensExhausted => write!(f, "lock-token epochs exhausted"),
            EngineError::NotPinned => write!(f, "the session's lock is not pinned"),
        }
    }
}

impl std::error::Error for EngineError {}
