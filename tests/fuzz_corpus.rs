//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) and a few
//! thousand random and mutated inputs through every fuzz target in the
//! ordinary test run, so a parser that panics fails CI even where cargo-fuzz
//! (nightly) is not available. The assertion is that nothing panics.

use deckhand::fuzzing::TARGETS;
use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_corpus_and_survives_it() {
    for (name, f) in TARGETS {
        let inputs = corpus(name);
        assert!(!inputs.is_empty(), "fuzz/corpus/{name} is empty");
        for input in &inputs {
            f(input);
            // Every prefix too: torn inputs are what disks and networks deliver.
            for cut in (0..input.len()).step_by(input.len().div_ceil(64).max(1)) {
                f(&input[..cut]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), pick in 0usize..64) {
        let (_, f) = TARGETS[pick % TARGETS.len()];
        f(&data);
    }

    /// Corpus entries with bytes flipped, inserted or removed.
    #[test]
    fn mutated_corpus_never_panics(pick in 0usize..64, at in any::<usize>(), byte in any::<u8>(), op in 0u8..3) {
        let (name, f) = TARGETS[pick % TARGETS.len()];
        for mut input in corpus(name) {
            let i = if input.is_empty() { 0 } else { at % input.len() };
            match op {
                0 if !input.is_empty() => input[i] = byte,
                1 => input.insert(i, byte),
                _ if !input.is_empty() => { input.remove(i); }
                _ => {}
            }
            f(&input);
        }
    }
}
