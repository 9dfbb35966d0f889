//! Every limit of the daemon in one place. Settings are checked against these bounds at start;
//! the data path uses them to bound memory per connection and per core.

/// Most cores (event loops) one daemon runs. Far above any web node; bounds per-core tables.
pub const CORES_MAX: usize = 256;

/// Most shards one store may be split into. The engine records the count on disk; re-sharding is
/// out of scope, so this only bounds the tables the daemon keeps per shard.
pub const SHARDS_MAX: u32 = scd_engine::constants::SHARDS_MAX;

/// Largest session blob an operator may allow (the engine's ceiling; its default is 1 MiB). It
/// also bounds one connection's read buffer (one frame).
pub const SESSION_SIZE_MAX_LIMIT: u32 = scd_engine::constants::SESSION_SIZE_LIMIT as u32;

/// Bounds on the per-connection pipelining depth an operator may set.
pub const REQUESTS_IN_FLIGHT_MAX_LIMIT: u32 = 4096;

/// Bounds on the number of client connections an operator may allow at once (whole daemon).
pub const CONNECTIONS_MAX_LIMIT: u32 = 1_000_000;

/// Initial capacity of a connection's read buffer. It grows up to one frame (header + body_max)
/// and shrinks back after a large frame, so idle connections cost little memory.
pub const CONN_READ_BUFFER_INITIAL_BYTES: usize = 16 * 1024;

/// A connection's read buffer is shrunk back to the initial size when it is larger than this and
/// empty, so one large session does not pin megabytes per idle connection.
pub const CONN_READ_BUFFER_SHRINK_BYTES: usize = 256 * 1024;

/// Depth of each core's inbound channel of cross-core requests. Bounded so a slow core pushes
/// back on the cores sending to it instead of growing a queue without limit.
pub const CORE_CHANNEL_DEPTH: usize = 4096;

/// Expired sessions reclaimed per shard per driver pass: bounded work, no pause that grows with
/// the number of sessions.
pub const EXPIRE_BUDGET_PER_PASS: usize = 64;

/// Housekeeping passes (at most one per `DRIVER_IDLE_WAKE_MS`, busy or idle) take a larger slice
/// of expiry, and compact the slab files: records moved per pass. Bounded, so a busy core pays
/// a bounded pause a few times a second.
pub const EXPIRE_BUDGET_HOUSEKEEPING: usize = 1024;
pub const COMPACT_BUDGET_HOUSEKEEPING: usize = 64;

/// The shard driver wakes at least this often even when idle, and runs housekeeping (a larger
/// slice of expiry, compaction) at most this often.
pub const DRIVER_IDLE_WAKE_MS: u64 = 100;

/// Bounds on `flush_interval_ms` (delayed-write).
pub const FLUSH_INTERVAL_MS_MIN: u64 = 1;
pub const FLUSH_INTERVAL_MS_MAX: u64 = scd_engine::constants::FLUSH_INTERVAL_MS_MAX;

/// Bounds on `cluster.heartbeat_interval_ms`.
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 50;
pub const HEARTBEAT_INTERVAL_MS_MAX: u64 = 600_000;

/// Most unicast heartbeat peers (bounds the send loop and the peer table with the senders limit).
pub const PEERS_MAX: usize = 1024;

/// Bounds on `cluster.relay_timeout_ms`.
pub const RELAY_TIMEOUT_MS_MIN: u64 = 10;
pub const RELAY_TIMEOUT_MS_MAX: u64 = 60_000;
/// Distinct clients of one relay peer given their own lock owner before the table is reset.
pub const RELAY_CLIENT_OWNERS_MAX: usize = 65_536;

/// Longest lock wait and lease a client may ask for; longer requests are clamped to these. A lease
/// bounds how long a lock outlives a client that hangs without closing its connection.
pub const LOCK_WAIT_MS_MAX: u32 = 10 * 60 * 1000;
pub const LOCK_LEASE_MS_MAX: u32 = 60 * 60 * 1000;

/// Longest Unix socket path (sun_path is 108 bytes including the terminating NUL).
pub const UNIX_SOCKET_PATH_MAX: usize = 107;

/// The metrics responder reads at most this much of an HTTP request head; more is refused.
pub const METRICS_REQUEST_HEAD_MAX_BYTES: usize = 8 * 1024;

/// Most metrics scrapes served at once; more are closed at accept.
pub const METRICS_CONNECTIONS_MAX: usize = 16;

/// After a shutdown signal, connections get this long to finish their in-flight requests (a
/// client that never reads its replies must not hold the daemon up forever).
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 10_000;

/// Random draws tried to find a fresh session hash owned by the asking core before asking any
/// core (with 128-bit hashes a collision is never expected; this bounds the loop regardless).
pub const CREATE_ID_TRIES_MAX: usize = 64;

/// Cross-core messages handled per inbox wake-up before the driver gets its pass (the flush of a
/// batch is shared; the bound keeps one busy peer from starving this core's own connections).
pub const INBOX_BATCH_MAX: usize = 256;

/// The writer gathers replies into one write up to about this many bytes (then writes, and goes
/// on): batching without letting one connection's output buffer grow without bound.
pub const CONN_WRITE_BATCH_BYTES: usize = 256 * 1024;

/// A TCP port still held by a daemon that was just killed is retried this many times, this far
/// apart (about 10 s in all), before start-up fails.
pub const BIND_RETRIES: u32 = 100;
pub const BIND_RETRY_MS: u64 = 100;

/// `scd drain`: the longest the hand-off may take before the daemon stops anyway.
pub const DRAIN_SECS_MAX: u64 = 600;
