#![no_main]
//! Engine recovery on an arbitrary slab file (byte 0 picks the size class in its name, the
//! rest is the file): the store opens, serves only sessions that pass their CRC, and keeps
//! working.
//!
//! The check lives in `scd_engine::fuzz_checks`, shared with the corpus replay test.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    scd_engine::fuzz_checks::slab_recovery(data);
});
