//! Every limit and default of the PHP module, in one place.
//!
//! Times are in milliseconds unless the name says otherwise.

/// Lock wait when `cluster.lock_wait_ms = 0` and PHP has no `max_execution_time` (CLI): long
/// enough for a slow request to finish, short enough that a stuck page gives up.
pub const LOCK_WAIT_FALLBACK_MS: u32 = 30_000;
/// Longest lock wait anyone may configure (one hour); `u32` milliseconds on the wire.
pub const LOCK_WAIT_MS_MAX: u32 = 3_600_000;

/// Lock lease when `cluster.lock_lease_ms = 0` and PHP has no `max_execution_time` (CLI). The
/// lease only matters for a holder that hangs with its connection open (a dead worker's
/// connection closes and its locks go at once), so it can be generous.
pub const LOCK_LEASE_FALLBACK_MS: u32 = 300_000;
/// Added to `max_execution_time` when the lease is derived from it: PHP writes the session after
/// the script's time is up (shutdown functions, output flush), and the lease must outlive that.
pub const LOCK_LEASE_GRACE_MS: u32 = 10_000;
/// Shortest configurable lease: a lease shorter than one request is a lost lock on every request.
pub const LOCK_LEASE_MS_MIN: u32 = 100;
/// Longest configurable lease (one day).
pub const LOCK_LEASE_MS_MAX: u32 = 86_400_000;

/// Default connect timeout. scd runs on the same node; a connect that takes longer than this means
/// it is down or overloaded, and the page should fail rather than hang.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u32 = 1_000;
/// Longest configurable connect timeout.
pub const CONNECT_TIMEOUT_MS_MAX: u32 = 60_000;

/// Default time to wait for any reply (besides the lock wait of a read).
pub const IO_TIMEOUT_MS_DEFAULT: u32 = 5_000;
/// Longest configurable I/O timeout.
pub const IO_TIMEOUT_MS_MAX: u32 = 600_000;

/// Longest text of one PHP warning this module emits (longer messages are cut).
pub const MESSAGE_MAX: usize = 512;
/// Longest Unix socket path (`sun_path` is 108 bytes with its NUL).
pub const UNIX_PATH_MAX: usize = 107;
/// Longest `session.save_path` accepted (a sanity bound before parsing).
pub const SAVE_PATH_MAX: usize = 1024;

const _: () = assert!(LOCK_WAIT_FALLBACK_MS <= LOCK_WAIT_MS_MAX);
const _: () = assert!(LOCK_LEASE_FALLBACK_MS <= LOCK_LEASE_MS_MAX);
const _: () = assert!(LOCK_LEASE_MS_MIN <= LOCK_LEASE_FALLBACK_MS);
const _: () = assert!(CONNECT_TIMEOUT_MS_DEFAULT <= CONNECT_TIMEOUT_MS_MAX);
const _: () = assert!(IO_TIMEOUT_MS_DEFAULT <= IO_TIMEOUT_MS_MAX);
// The socket timeout of a locked read is lock wait + I/O timeout; it must not overflow u32.
const _: () = assert!(LOCK_WAIT_MS_MAX as u64 + IO_TIMEOUT_MS_MAX as u64 <= u32::MAX as u64);

/// Largest session data the module accepts from scd, whatever scd says it allows: it bounds the
/// receive buffer of a PHP worker (scd's default limit is 1 MiB).
pub const SESSION_DATA_MAX: u32 = 16 << 20;
/// Smallest read from the socket: big enough that a typical 4 KiB session arrives in one call.
pub const READ_CHUNK_MIN: usize = 8 * 1024;

/// Longest old-format session ID looked up in an old store (PHP's own limit for IDs).
pub const OLD_ID_MAX: usize = 256;
/// How often a request waiting for an old store's lock (flock, phpredis' lock key) tries again.
pub const ADOPT_LOCK_POLL_MS: u64 = 5;
/// Longest Redis reply line (status, error, integer, length) accepted.
pub const RESP_LINE_MAX: usize = 4096;
/// How long the record of where an adopted session went is kept after the window closes, so that
/// a browser coming back late with an old cookie within the window's last moments still finds it.
pub const ADOPT_RECORD_GRACE_S: u32 = 86_400;
/// How long scd keeps a migration window's record (when it opened, whether it closed): far longer
/// than any window, so a window that closed never opens again while its settings stay.
pub const WINDOW_RECORD_LIFETIME_S: u32 = 10 * 366 * 86_400;
