#![no_main]
//! Arbitrary bytes through every stream decoder (local requests and replies, relay
//! handshake, relay bodies, the sealed-frame opener): no panic, decode → encode identical,
//! every prefix of a valid frame Incomplete, tampered sealed frames refused.
//!
//! The check lives in `scd_wire::fuzz_checks`, shared with the corpus replay test.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scd_wire::fuzz_checks::frame_decoder(data));
