#![no_main]
//! Messages of every kind built from the input: encode → decode gives the same message,
//! pipelined and sealed too.
//!
//! The check lives in `scd_wire::fuzz_checks`, shared with the corpus replay test.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scd_wire::fuzz_checks::round_trip(data));
