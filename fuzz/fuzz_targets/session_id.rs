#![no_main]
//! The session-ID text parser on arbitrary bytes (parse → encode identical, PHP's rule
//! holds) and generated IDs through text and binary form.
//!
//! The check lives in `scd_wire::fuzz_checks`, shared with the corpus replay test.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scd_wire::fuzz_checks::session_id(data));
