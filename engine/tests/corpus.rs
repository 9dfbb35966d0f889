//! Replays every seed in `fuzz/corpus/slab_recovery/` through the same check the fuzz target
//! runs (`scd_engine::fuzz_checks::slab_recovery`), so the normal `cargo test` covers them.

use std::path::Path;

#[test]
fn slab_recovery_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/slab_recovery");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 4, "the seed corpus is missing: {seeds:?}");
    for seed in seeds {
        let data = std::fs::read(&seed).unwrap();
        let recovered = scd_engine::fuzz_checks::slab_recovery(&data);
        eprintln!("{}: {recovered} sessions", seed.display());
        if seed.ends_with("clean") {
            assert_eq!(recovered, 8, "the clean seed holds 8 sessions");
        }
    }
    // Edge inputs: nothing, a name only, an empty file, a file of one partial slot.
    for data in [&[][..], &[1][..], &[1, 0][..], &[5; 300][..]] {
        assert_eq!(scd_engine::fuzz_checks::slab_recovery(data), 0);
    }
}
