//! SCD's wire formats: every byte that crosses a socket, as pure functions over byte slices.
//! The specification is `docs/wire.md`; this crate implements exactly that page.
//!
//! # Layout
//!
//! - [`constants`]: every limit and fixed size, with compile-time checks that they agree.
//! - [`frame`]: the 20-byte frame header, [`Limits`], [`DecodeError`] (`Incomplete` kept apart
//!   from `Invalid(Reason)`), and [`Frame`], the unit that is encoded.
//! - [`local`]: the local client protocol (PHP module ⇄ daemon): [`Request`], [`Reply`],
//!   [`decode_request`], [`decode_reply`].
//! - [`relay`]: daemon ⇄ daemon: the key-proving handshake, [`Sealer`]/[`Opener`] for MAC'd
//!   frames, and [`RelayMessage`].
//! - [`heartbeat`]: the UDP heartbeat datagram and the replay-refusing [`HeartbeatVerifier`].
//! - [`session_id`]: the `MASTER-PORT-BACKUP-PORT-VERSION-HASH` text and its binary form.
//! - [`mac`]: the cluster key, derived keys, constant-time comparison.
//! - `fuzz_checks` (hidden): the property checks that the fuzz targets and the corpus replay test
//!   both run.
//!
//! # Guarantees
//!
//! - No I/O, no clock, no randomness: callers pass in random bytes (session-ID HASH, handshake
//!   nonces) drawn from the OS's CSPRNG.
//! - Decoding never panics, whatever the input, and never allocates: decoded messages borrow
//!   their strings and session data from the input buffer. Every length is checked against its
//!   limit before it is used.
//! - Every valid frame has exactly one encoding: decode → encode gives back the same bytes.
//! - Secrets (MACs, tags, session HASHes) are compared in constant time.

pub mod constants;
pub mod frame;
pub mod heartbeat;
pub mod local;
pub mod mac;
pub mod relay;
pub mod session_id;

#[doc(hidden)]
pub mod fuzz_checks;

pub use frame::{Body, DecodeError, Frame, Header, Limits, Reason};
pub use heartbeat::{Heartbeat, HeartbeatError, HeartbeatVerifier};
pub use local::{
    ErrorCode, HelloOk, Reply, Request, StatEntries, decode_reply, decode_request, negotiate,
};
pub use mac::{ClusterKey, KeyError};
pub use relay::{
    BatchOutcome, ClientHandshake, Established, HandshakeMessage, HashList, Location, Opener,
    OutcomeList, PlaceList, RelayMessage, Replica, ReplicaList, Sealer, ServerHandshake, SyncRole,
    WitnessChange, decode_handshake,
};
pub use session_id::{IdBuf, IdError, IdField, IdProblem, SessionId, php_valid_key};
