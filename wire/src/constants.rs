//! Every limit and fixed size of the wire format, in one place (see docs/wire.md).
//!
//! Sizes are in bytes unless the name says otherwise. The compile-time assertions at the bottom
//! keep the numbers consistent with each other.

/// Lowest protocol version this crate speaks.
pub const PROTOCOL_VERSION_MIN: u8 = 1;
/// Highest protocol version this crate speaks.
pub const PROTOCOL_VERSION_MAX: u8 = 1;
/// The version carried by the negotiating frames (Hello, HelloOk, Auth*): frozen forever so that
/// any two releases can at least agree that they disagree.
pub const PROTOCOL_VERSION_NEGOTIATION: u8 = 1;

/// Magic bytes opening every frame header.
pub const FRAME_MAGIC: [u8; 2] = *b"SC";
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 20;

/// Default largest session data (PHP session blob): 1 MiB.
pub const DATA_MAX_DEFAULT: u32 = 1 << 20;
/// Room for the fixed fields around the data in the largest body (Forward of WriteUnlock is
/// 9 + 76 bytes besides the data; 1 KiB leaves space without letting the limit drift).
pub const BODY_OVERHEAD_MAX: u32 = 1024;
/// Default largest frame body.
pub const BODY_MAX_DEFAULT: u32 = DATA_MAX_DEFAULT + BODY_OVERHEAD_MAX;
/// Bytes of copies a delayed-write sender aims to put in one ReplicateBatch; the batch body limit
/// adds one largest body on top, so the entry that crosses this budget still fits.
pub const REPLICATE_BATCH_BYTES: u32 = 4 << 20;
/// Default largest ReplicateBatch body (its own limit: every other kind is held to `body_max`).
pub const BATCH_BODY_MAX_DEFAULT: u32 = REPLICATE_BATCH_BYTES + BODY_MAX_DEFAULT;
/// Most copies in one ReplicateBatch, and most entries in its ReplicateBatchAck.
pub const REPLICATE_BATCH_MAX: usize = 512;

/// Binary session ID (SID) size.
pub const SID_LEN: usize = 60;
/// Binary node address (ADDR) size.
pub const ADDR_LEN: usize = 20;
/// Bytes of randomness in a session ID's HASH (128 bits).
pub const SESSION_HASH_LEN: usize = 16;
/// Longest session-ID text: two IPv6 addresses and an 8-digit VERSION.
pub const ID_TEXT_MAX: usize = 32 + 1 + 4 + 1 + 32 + 1 + 4 + 1 + 8 + 1 + 32;
/// PHP's own limit on a session ID (`php_session_valid_key`).
pub const PHP_ID_MAX: usize = 256;

/// Longest client name in Hello.
pub const CLIENT_NAME_MAX: usize = 64;
/// Longest message in an Error/RelayError body.
pub const ERROR_MESSAGE_MAX: usize = 256;
/// Longest reason in a LeaseDenied body.
pub const LEASE_REASON_MAX: usize = 256;
/// Longest statistics entry name.
pub const STAT_NAME_MAX: usize = 64;
/// Most entries in one StatsReply.
pub const STATS_ENTRIES_MAX: usize = 4096;

/// Relay handshake nonce size.
pub const NONCE_LEN: usize = 32;
/// Relay handshake tag size (full BLAKE3 output).
pub const AUTH_TAG_LEN: usize = 32;
/// MAC appended to every sealed relay frame (128 bits).
pub const RELAY_TAG_LEN: usize = 16;
/// Shortest cluster secret accepted (128 bits).
pub const CLUSTER_SECRET_MIN: usize = 16;
/// Longest cluster secret accepted (a sanity bound for a config value).
pub const CLUSTER_SECRET_MAX: usize = 4096;

/// BLAKE3 key-derivation context for the relay key. Never change: it would split clusters.
pub const RELAY_KEY_CONTEXT: &str = "SCD 2026-11 relay key v1";
/// BLAKE3 key-derivation context for the heartbeat key.
pub const HEARTBEAT_KEY_CONTEXT: &str = "SCD 2026-11 heartbeat key v1";

/// Magic bytes opening every heartbeat (the seed's "message ID").
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"SCHB";
/// The only heartbeat kind.
pub const HEARTBEAT_KIND: u8 = 1;
/// Bytes of a heartbeat covered by its MAC (also its `payload_size` field).
pub const HEARTBEAT_PAYLOAD_LEN: usize = 68;
/// Heartbeat MAC size (full BLAKE3 output).
pub const HEARTBEAT_MAC_LEN: usize = 32;
/// Size of one heartbeat datagram.
pub const HEARTBEAT_LEN: usize = HEARTBEAT_PAYLOAD_LEN + HEARTBEAT_MAC_LEN;
/// The MTU a heartbeat must fit in, with its IP and UDP headers.
pub const HEARTBEAT_MTU_MAX: usize = 1400;
/// IPv6 header (40) + UDP header (8): the worst case around a heartbeat.
pub const IP_UDP_HEADERS_MAX: usize = 48;
/// Most senders a `HeartbeatVerifier` remembers (bounds its memory).
pub const HEARTBEAT_SENDERS_MAX: usize = 4096;
/// Most session hashes in one SyncHashes frame, and most entries in its SyncPlaces answer.
pub const SYNC_HASHES_MAX: usize = 4096;

const _: () = assert!(HEADER_LEN == 2 + 1 + 1 + 4 + 8 + 4);
const _: () = assert!(SID_LEN == 2 * ADDR_LEN + 4 + SESSION_HASH_LEN);
const _: () = assert!(ID_TEXT_MAX == 117);
const _: () = assert!(ID_TEXT_MAX <= PHP_ID_MAX);
const _: () = assert!(ID_TEXT_MAX <= u8::MAX as usize);
const _: () = assert!(SESSION_HASH_LEN * 8 >= 128);
const _: () = assert!(RELAY_TAG_LEN * 8 >= 128);
const _: () = assert!(HEARTBEAT_PAYLOAD_LEN == 4 + 1 + 1 + 2 + 8 + ADDR_LEN + 8 + 8 + 8 + 4 + 4);
const _: () = assert!(HEARTBEAT_LEN + IP_UDP_HEADERS_MAX <= HEARTBEAT_MTU_MAX);
const _: () = assert!(CLIENT_NAME_MAX <= u8::MAX as usize);
const _: () = assert!(STAT_NAME_MAX <= u8::MAX as usize);
const _: () = assert!(ERROR_MESSAGE_MAX <= u16::MAX as usize);
const _: () = assert!(LEASE_REASON_MAX <= u16::MAX as usize);
const _: () = assert!(STATS_ENTRIES_MAX <= u16::MAX as usize);
// The largest stats reply fits the default body limit, so a daemon never has to truncate it.
const _: () = assert!(2 + STATS_ENTRIES_MAX * (1 + STAT_NAME_MAX + 8) <= BODY_MAX_DEFAULT as usize);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION_MAX);
// A batch holds at least one largest copy (count + entry head + data).
const _: () = assert!(
    4 + SESSION_HASH_LEN + 8 + 4 + 4 + 4 + DATA_MAX_DEFAULT as usize
        <= BATCH_BODY_MAX_DEFAULT as usize
);
const _: () = assert!(BODY_MAX_DEFAULT <= BATCH_BODY_MAX_DEFAULT);
// A full ReplicateBatchAck (count, then hash + status + version per entry) fits the default body
// limit.
const _: () =
    assert!(4 + REPLICATE_BATCH_MAX * (SESSION_HASH_LEN + 2 + 8) <= BODY_MAX_DEFAULT as usize);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION_NEGOTIATION);
// A full SyncPlaces answer (count, then hash + master + backup + epoch + version per entry) fits
// the default body limit.
const _: () = assert!(
    4 + SYNC_HASHES_MAX * (SESSION_HASH_LEN + 2 * ADDR_LEN + 4 + 8) <= BODY_MAX_DEFAULT as usize
);
