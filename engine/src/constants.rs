//! Every limit and fixed size of the engine, in one place.
//!
//! Sizes are in bytes unless the name says otherwise; times carry their unit last.

/// Default largest session blob a store accepts (PHP sessions are typically 0.5–8 KiB; 1 MiB
/// leaves room for unusual applications while bounding what one request can make us allocate).
pub const SESSION_SIZE_MAX_DEFAULT: usize = 1 << 20;

/// Hard ceiling for `ShardConfig::session_size_max`. The size-class table is built to hold a
/// record of this size, so a configuration cannot ask for a blob no slot can hold.
pub const SESSION_SIZE_LIMIT: usize = 16 << 20;

/// Default delayed-write flush interval: the most a power loss can take under delayed-write.
pub const FLUSH_INTERVAL_MS_DEFAULT: u64 = 1000;

/// Longest accepted flush interval. Bounds the crash window an operator can configure.
pub const FLUSH_INTERVAL_MS_MAX: u64 = 60_000;

/// Largest number of shards a store may be split into (the routing function and the manifest
/// accept no more; more shards than this would be more threads than any web node has cores).
pub const SHARDS_MAX: u32 = 1024;

/// Bytes of a record before its data: magic, format, kind, reserved, key, version, expiry,
/// data length (see `record.rs` and docs/storage.md).
pub const RECORD_HEADER_SIZE: usize = 44;

/// Bytes of a record after its data: the CRC32.
pub const RECORD_TRAILER_SIZE: usize = 4;

/// Everything a record adds to its data.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER_SIZE + RECORD_TRAILER_SIZE;

/// Bytes reserved at the start of every slab file for its header. One page, so that slots of
/// power-of-two classes start on page boundaries.
pub const SLAB_HEADER_REGION: usize = 4096;

/// Bytes of the slab file header that are actually used (the rest of the region is zero).
pub const SLAB_HEADER_SIZE: usize = 36;

/// Smallest slot. A record header plus a small blob fits; smaller slots would waste more on
/// metadata than they save.
pub const SLOT_SIZE_MIN: usize = 128;

/// Number of size classes: slot sizes grow by quarter steps of a power of two (128, 160, 192,
/// 224, 256, 320, ...), so a record wastes at most 20% of its slot, up to a slot that holds a
/// record of `SESSION_SIZE_LIMIT` bytes.
pub const CLASS_COUNT: usize = 70;

/// The first slab file of a class holds about this many bytes of slots; each further file
/// doubles it, up to `SLAB_FILE_SIZE_MAX`. Small stores stay small, large ones need few files.
pub const SLAB_FILE_SIZE_FIRST: usize = 256 << 10;

/// Target size of the largest slab files of a class.
pub const SLAB_FILE_SIZE_MAX: usize = 16 << 20;

/// Every slab file has at least this many slots (matters for the largest classes).
pub const SLAB_FILE_SLOTS_MIN: usize = 2;

/// Largest number of slab files one class may have (bounds the file-number field and the
/// per-allocation scan over a class's files).
pub const SLAB_FILES_PER_CLASS_MAX: usize = 4096;

/// Under delayed-write, freed slots are reused only after the flush that made their
/// replacement durable; when this many are waiting, the shard flushes early rather than grow
/// its files without bound.
pub const PENDING_FREE_MAX: usize = 16_384;

/// Number of damage reports a recovery keeps word for word (the counts are always complete).
pub const RECOVERY_DAMAGE_LOG_MAX: usize = 64;

/// Lock tokens are `epoch << TOKEN_COUNTER_BITS | counter`. The epoch is persisted in the
/// manifest and raised on every open, so a token is never issued twice, even across restarts.
pub const TOKEN_COUNTER_BITS: u32 = 44;

/// Largest lock-token epoch (20 bits: a million opens of one shard).
pub const TOKEN_EPOCH_MAX: u64 = (1 << (64 - TOKEN_COUNTER_BITS)) - 1;

/// Longest lock lease accepted (a day). Longer leases are clamped: a lock whose holder
/// vanished must come free eventually.
pub const LOCK_LEASE_MS_MAX: u64 = 24 * 3600 * 1000;

/// Entries of the io_uring submission queue. A flush needs one entry per dirty file plus one
/// for the directory; larger flushes are submitted in several batches.
pub const RING_ENTRIES: u32 = 256;

/// Largest record version accepted (from disk or from a replica). Far above what a shard's
/// clock reaches (a million writes a second for 146,000 years), so that the clock can never
/// wrap; a record claiming more is damage, a replica claiming more is refused.
pub const VERSION_MAX: u64 = 1 << 62;

/// Largest manifest file accepted when reading it back (it is a few dozen bytes).
pub const MANIFEST_SIZE_MAX: u64 = 4096;
