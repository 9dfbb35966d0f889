//! The native PHP session module `cluster`: `session.save_handler = cluster` stores PHP sessions
//! in the local scd daemon. Built as `libcluster.so`, installed as `cluster.so`.
//!
//! # Layout
//!
//! - [`ffi`]: PHP's C ABI, by hand from the 8.2 headers: the module entry (`get_module`), the
//!   `ps_module` with the nine session hooks, the `cluster.*` ini entries, phpinfo. The crate's
//!   only `unsafe`; every hook is a trampoline into `handler` under `catch_unwind`.
//! - [`handler`]: what each hook does, in safe Rust, with the process-global state (one
//!   connection, at most one lock).
//! - [`conn`]: the blocking connection to scd over `scd_wire` (connect timeout, deadlines,
//!   reuse check).
//! - [`settings`]: the `cluster.*` settings and `session.save_path` parsers.
//! - [`report`]: warnings for PHP in fixed buffers.
//! - [`adopt`]: the migration window (`cluster.adopt_*`): old-format IDs, the old stores (PHP's
//!   `files` handler, phpredis) and the records the adoption keeps in scd.
//! - [`resp`]: a minimal Redis client for reading phpredis' sessions.
//! - [`constants`]: every limit and default.
//! - `build.rs` reads `php-config` and writes the module API number and build ID.

// Hook errors are `Report`s: 512-byte plain arrays on purpose (nothing to drop if PHP longjmps out
// of the FFI frame that shows them; see `report`). Moving them by value is cheap next to a socket
// round trip.
#![allow(clippy::result_large_err)]

pub mod adopt;
pub mod conn;
pub mod constants;
mod ffi;
pub mod handler;
pub mod report;
pub mod resp;
pub mod settings;

/// What `build.rs` found out about the PHP the module is built for.
pub mod build_info {
    include!(concat!(env!("OUT_DIR"), "/php_build.rs"));
}
