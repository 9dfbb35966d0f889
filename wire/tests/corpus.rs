//! Replays every seed in `fuzz/corpus/<target>/` through the same checks the fuzz targets run
//! (`scd_wire::fuzz_checks`), so the normal `cargo test` covers the fuzz properties; then runs
//! the same checks on a fixed, seeded stream of pseudo-random inputs.

use std::path::PathBuf;

use scd_wire::fuzz_checks;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 4] = [
    ("frame_decoder", fuzz_checks::frame_decoder),
    ("round_trip", fuzz_checks::round_trip),
    ("session_id", fuzz_checks::session_id),
    ("heartbeat", fuzz_checks::heartbeat),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_seed_passes_its_fuzz_check() {
    for (target, check) in TARGETS {
        let mut seeds: Vec<_> = std::fs::read_dir(corpus_dir(target))
            .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
            .map(|entry| entry.unwrap().path())
            .collect();
        seeds.sort();
        assert!(
            seeds.len() >= 10,
            "fuzz/corpus/{target} should hold a real seed corpus, has {}",
            seeds.len()
        );
        for seed in seeds {
            let bytes = std::fs::read(&seed).unwrap();
            // A panic names the seed, so a failure can be replayed with the fuzz target.
            eprintln!("replaying {}", seed.display());
            check(&bytes);
        }
    }
}

/// SplitMix64: a fixed seed gives the same inputs on every run, so a failure always replays.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn seeded_random_inputs_pass_every_check() {
    let mut rng = SplitMix(0x5cd_0001);
    for i in 0..2_000 {
        let len = (rng.next() % 300) as usize;
        let input = rng.bytes(len);
        for (_, check) in TARGETS {
            check(&input);
        }
        // Random bytes rarely look like a frame; also mutate real frames so the decoders'
        // deeper paths get exercised.
        let seeds = std::fs::read_dir(corpus_dir("frame_decoder")).unwrap();
        if let Some(seed) = seeds.into_iter().nth(i % 34) {
            let mut frame = std::fs::read(seed.unwrap().path()).unwrap();
            if !frame.is_empty() {
                let at = (rng.next() as usize) % frame.len();
                frame[at] = rng.next() as u8;
                let cut = (rng.next() as usize) % (frame.len() + 1);
                fuzz_checks::frame_decoder(&frame[..cut]);
                fuzz_checks::frame_decoder(&frame);
            }
        }
    }
}
