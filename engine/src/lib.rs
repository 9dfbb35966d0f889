//! SCD's storage engine: a sharded, shared-nothing session store in mmapped slab files.
//!
//! # Layout
//!
//! - `types`: the public value types (`SessionKey`, `LockToken`, ...) and `shard_for`, the
//!   routing function from a session key to its shard.
//! - `shard`: `Shard`, one slice of the store owned by one thread: reads, writes, locks,
//!   expiry, flush policies, events, recovery, statistics. The daemon owns the threads.
//! - `locks`: session locks (holders with leases, FIFO waiters, deadlines).
//! - `slabs`: slot bookkeeping over the slab files (free, live, pending reuse; file growth).
//! - `record`: the bytes on disk (records, slab file header, size classes). `manifest`: the
//!   per-shard manifest.
//! - `storage`: the storage trait (I/O as a parameter). `sys`: the real backend (mmap +
//!   io_uring; the crate's only `unsafe`). `sim`: a simulated disk that can crash.
//! - `constants`: every limit. `error`: `EngineError`.
//!
//! The engine never reads the clock on its data path: every call that needs time takes
//! `now_ms` (milliseconds since the UNIX epoch). The on-disk format, the crash window of each
//! flush policy and the recovery algorithm are described in docs/storage.md.

pub mod constants;
mod error;
#[doc(hidden)]
pub mod fuzz_checks;
mod locks;
mod manifest;
mod record;
mod shard;
pub mod sim;
mod slabs;
mod storage;
pub mod sys;
mod types;

pub use error::EngineError;
pub use locks::LockOutcome;
pub use shard::{
    Damage, Event, FlushPolicy, RecoveryReport, ReplicaOutcome, ScanCursor, SessionRef, Shard,
    ShardConfig, ShardStats, WriteAck,
};
pub use storage::{FileId, FlushDone, Storage};
pub use sys::{FlushMode, SysStorage};
pub use types::{LockToken, OwnerId, SessionKey, Ticket, WaitId, shard_for};
