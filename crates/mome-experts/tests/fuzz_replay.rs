//! Corpus replay of the `gpt2_pretrained` fuzz target (`fuzz-torch/`), without cargo-fuzz:
//! every file of `fuzz-torch/seeds/gpt2_pretrained/` and of `fuzz-torch/regressions/gpt2_pretrained/`
//! (minimised crash inputs), and the seeds as `checks::seeds` makes them now, go
//! through the target's own invariants (`fuzz-torch/checks/experts.rs`).
//! The seed folder is written by the fuzz target itself (`MOME_FUZZ_SEEDS`, see
//! `fuzz-torch/Cargo.toml`).

#[allow(dead_code)]
#[path = "../../../fuzz-torch/checks/experts.rs"]
mod checks;
#[allow(dead_code)]
#[path = "../../../fuzz/replay.rs"]
mod replay;

use std::path::Path;

#[test]
fn gpt2_pretrained_keeps_its_invariants_on_its_corpus() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz-torch");
    let mut inputs = replay::corpus(&fuzz_dir, "gpt2_pretrained");
    assert!(inputs.len() >= 4, "{} corpus files", inputs.len());
    inputs.extend(checks::seeds());
    let outcome = replay::replay(inputs, checks::gpt2_pretrained);
    let _ = std::fs::remove_dir_all(checks::scratch());
    // The valid seeds load; those with sizes beyond the files are refused.
    outcome.assert_outcome(
        &[
            "vocab_huge",
            "n_embd_overflow",
            "n_positions_huge",
            "n_layer_huge",
            "n_inner_max",
            "n_head_zero",
            "weights_truncated",
            "untied",
        ],
        "valid_both",
    );
}
