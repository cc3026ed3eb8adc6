//! Corpus replay of the `teacher_cache` fuzz target (`fuzz-torch/`), without cargo-fuzz:
//! every file of `fuzz-torch/seeds/teacher_cache/` and of `fuzz-torch/regressions/teacher_cache/`
//! (minimised crash inputs), and the seeds as `checks::seeds` makes them now, go
//! through the target's own invariants (`fuzz-torch/checks/distill.rs`).
//! The seed folder is written by the fuzz target itself (`MOME_FUZZ_SEEDS`, see
//! `fuzz-torch/Cargo.toml`).

#[allow(dead_code)]
#[path = "../../../fuzz-torch/checks/distill.rs"]
mod checks;
#[allow(dead_code)]
#[path = "../../../fuzz/replay.rs"]
mod replay;

use std::path::Path;

#[test]
fn teacher_cache_keeps_its_invariants_on_its_corpus() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz-torch");
    let mut inputs = replay::corpus(&fuzz_dir, "teacher_cache");
    assert!(inputs.len() >= 4, "{} corpus files", inputs.len());
    inputs.extend(checks::seeds());
    let outcome = replay::replay(inputs, checks::teacher_cache);
    let _ = std::fs::remove_dir_all(checks::scratch());
    // A vocabulary below the ids of the rows opens (only reading a row can tell):
    // the check asserts that every row read is an error or inside the vocabulary.
    // The valid seeds load; those with sizes beyond the files are refused.
    outcome.assert_outcome(
        &[
            "seq_len_overflow",
            "top_k_overflow",
            "top_k_zero",
            "top_k_above_vocab",
            "sequences_overflow",
        ],
        "valid_manifest.json",
    );
}
