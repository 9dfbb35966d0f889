//! Every default and limit of the harness, in one place. Sizes are bytes, durations say their
//! unit last (`_ms`, `_s`), counts say what they count.

/// Session size when none is given: a typical PHP session with a few objects in it.
pub const SIZE_DEFAULT: usize = 4096;
/// Largest session size the harness accepts (scd's default `session_size_max` is 1 MiB).
pub const SIZE_MAX: usize = 1 << 20;
/// Sessions in the key space when none is given.
pub const SESSIONS_DEFAULT: usize = 100_000;
/// Most sessions the harness will create (bounds the key tables it keeps in memory).
pub const SESSIONS_MAX: usize = 10_000_000;
/// Upper bound on `sessions × size` held by one target; above it the session count is lowered
/// (and the report says so), so that a 64 KiB run cannot fill the machine's memory or disk.
pub const DATASET_BYTES_MAX: usize = 2 << 30;
/// Client connections when none are given (the figure in ANCHORS.md).
pub const CONNECTIONS_DEFAULT: usize = 50;
/// Most client connections.
pub const CONNECTIONS_MAX: usize = 4096;
/// Client threads when none are given (one per core of the reference machine).
pub const THREADS_DEFAULT: usize = 2;
/// Most client threads.
pub const THREADS_MAX: usize = 64;
/// Most requests in flight on one connection (lane ids are 16 bits in scd request IDs).
pub const IN_FLIGHT_MAX: usize = 1024;
/// Measured seconds per target.
pub const DURATION_S_DEFAULT: f64 = 10.0;
/// Warm-up seconds per target (not measured: caches, allocators and the page cache settle).
pub const WARMUP_S_DEFAULT: f64 = 2.0;
/// `--quick`: measured seconds per target.
pub const QUICK_DURATION_S: f64 = 1.0;
/// `--quick`: warm-up seconds per target.
pub const QUICK_WARMUP_S: f64 = 0.2;
/// `--quick`: sessions.
pub const QUICK_SESSIONS: usize = 2_000;
/// `--quick`: seconds per disk probe mode.
pub const QUICK_DISK_S: f64 = 0.2;
/// Seconds per disk probe mode.
pub const DISK_S_DEFAULT: f64 = 2.0;
/// Zipf exponent when `--dist zipf` is given without one (the YCSB default).
pub const ZIPF_S_DEFAULT: f64 = 0.99;

/// PHP's `session.gc_maxlifetime` default: the lifetime every write carries.
pub const LIFETIME_S: u32 = 1440;
/// How long an scd ReadLock may wait for the lock: PHP's `max_execution_time` default.
pub const SCD_LOCK_WAIT_MS: u32 = 30_000;
/// Lease of an scd lock: the same, as the PHP module derives it.
pub const SCD_LOCK_LEASE_MS: u32 = 30_000;
/// phpredis: the lock key expires after `max_execution_time` (30 s) unless released.
pub const REDIS_LOCK_EXPIRE_MS: u32 = 30_000;
/// phpredis `redis.session.lock_retries` default (Debian 12's php-redis 5.3.7).
pub const REDIS_LOCK_RETRIES: u32 = 10;
/// phpredis `redis.session.lock_wait_time` default (php-redis 5.3.7): 2,000 µs between tries,
/// so a lock held longer than about 20 ms fails the request.
pub const REDIS_LOCK_WAIT_US: u64 = 2_000;
/// php-memcached `memcached.sess_lock_retries` default.
pub const MEMC_LOCK_RETRIES: u32 = 5;
/// php-memcached `memcached.sess_lock_wait_min` (= `wait_max`) default: 150 ms fixed sleeps.
pub const MEMC_LOCK_WAIT_MS: u64 = 150;
/// php-memcached: the lock item expires after `max_execution_time` (30 s).
pub const MEMC_LOCK_EXPIRE_S: u32 = 30;
/// phpredis' key prefix for sessions (`PHPREDIS_SESSION:`).
pub const REDIS_PREFIX: &str = "PHPREDIS_SESSION:";
/// php-memcached's key prefix for sessions (`memcached.sess_prefix`).
pub const MEMC_PREFIX: &str = "memc.sess.key.";

/// Initial read buffer of a client connection; it grows to one whole reply when needed.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Largest reply the client accepts (a 1 MiB session plus framing); larger is a protocol error.
pub const REPLY_BYTES_MAX: usize = SIZE_MAX + 4096;
/// Longest a server may take to accept its first request after being started.
pub const SERVER_READY_MS: u64 = 15_000;
/// Longest the generator threads may take to wind down after the measured window; past it the
/// server is stopped, which ends every connection.
pub const WIND_DOWN_MS: u64 = 5_000;
/// Longest the prefill phase may take for one target.
pub const PREFILL_MS_MAX: u64 = 300_000;
/// Progress line interval.
pub const PROGRESS_MS: u64 = 1_000;
/// Histogram range: 1 ns .. 60 s, 3 significant digits.
pub const HISTOGRAM_NS_MAX: u64 = 60_000_000_000;
/// Memory memcached may use at least (`-m`, MiB); raised to hold the data set twice.
pub const MEMCACHED_MB_MIN: usize = 1024;
/// Disk probe: the pre-written file the probe overwrites (like a slab file).
pub const DISK_FILE_BYTES: u64 = 64 << 20;
/// Disk probe: the smallest write (a page); a larger session size is rounded up to pages.
pub const DISK_WRITE_BYTES: usize = 4096;
/// Disk probe: writes per fdatasync in group-commit mode (ANCHORS.md measures 64).
pub const DISK_GROUP: usize = 64;

const _: () = assert!(SIZE_DEFAULT <= SIZE_MAX);
const _: () = assert!(IN_FLIGHT_MAX <= u16::MAX as usize);
const _: () = assert!(CONNECTIONS_DEFAULT <= CONNECTIONS_MAX);
const _: () = assert!(QUICK_SESSIONS <= SESSIONS_DEFAULT);

/// Most nodes `--nodes` starts (one per loopback address 127.0.0.1..).
pub const NODES_MAX: usize = 3;
/// Longest a started cluster may take until every node is ready with every other node up (a
/// starting node listens to heartbeats for a node timeout before it serves).
pub const CLUSTER_READY_MS: u64 = 60_000;
/// Failover: sessions when none are given (all mastered by node 1).
pub const FAILOVER_SESSIONS_DEFAULT: usize = 1_000;
/// Failover: sessions with `--quick`.
pub const FAILOVER_SESSIONS_QUICK: usize = 100;
/// Failover: client workers (blocking, one request at a time, like PHP workers).
pub const FAILOVER_WORKERS_DEFAULT: usize = 16;
/// Failover: seconds of steady load measured before the kill (after the warm-up).
pub const FAILOVER_STEADY_S: f64 = 3.0;
/// Failover: seconds of load kept on once every worker succeeded again after the kill.
pub const FAILOVER_AFTER_S: f64 = 3.0;
/// Failover: longest wait after the kill for every worker to succeed again.
pub const FAILOVER_RECOVERY_MS_MAX: u64 = 60_000;
/// Failover: a worker whose request failed waits this long before its next one (a user's next
/// click comes later; without a pause the failure count would only measure how fast errors come
/// back).
pub const FAILOVER_RETRY_PAUSE_MS: u64 = 5;
/// Failover: longest any one request may take (socket timeout); longer counts as failed.
pub const FAILOVER_IO_TIMEOUT_MS: u64 = 15_000;
/// Failover: lock wait and lease of each ReadLock.
pub const FAILOVER_LOCK_WAIT_MS: u32 = 5_000;
/// Failover read-back: attempts per session (250 ms apart) while its node answers Unavailable.
pub const READBACK_ATTEMPTS: u32 = 40;
/// scd's heartbeat interval default (cluster.heartbeat_interval_ms), for the node timeout the
/// report states when `--scd-args` does not set one.
pub const SCD_HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 1000;
