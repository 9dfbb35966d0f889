#![no_main]
//! Arbitrary datagrams through the heartbeat opener and verifier, and generated
//! heartbeats through seal → open → replay refusal.
//!
//! The check lives in `scd_wire::fuzz_checks`, shared with the corpus replay test.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scd_wire::fuzz_checks::heartbeat(data));
