//! Corpus replay of the `checkpoint` fuzz target (`fuzz-torch/`), without cargo-fuzz:
//! every file of `fuzz-torch/seeds/checkpoint/` and of `fuzz-torch/regressions/checkpoint/`
//! (minimised crash inputs), and the seeds as `checks::seeds` makes them now, go
//! through the target's own invariants (`fuzz-torch/checks/core.rs`).
//! The seed folder is written by the fuzz target itself (`MOME_FUZZ_SEEDS`, see
//! `fuzz-torch/Cargo.toml`).

#[allow(dead_code)]
#[path = "../../../fuzz-torch/checks/core.rs"]
mod checks;
#[allow(dead_code)]
#[path = "../../../fuzz/replay.rs"]
mod replay;

use std::path::Path;

#[test]
fn checkpoint_keeps_its_invariants_on_its_corpus() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz-torch");
    let mut inputs = replay::corpus(&fuzz_dir, "checkpoint");
    assert!(inputs.len() >= 4, "{} corpus files", inputs.len());
    inputs.extend(checks::seeds());
    let outcome = replay::replay(inputs, checks::checkpoint);
    let _ = std::fs::remove_dir_all(checks::scratch());
    // The valid seeds load; those with sizes beyond the files are refused.
    outcome.assert_outcome(
        &[
            "step_max",
            "step_past_max_steps",
            "seed_other",
            "elapsed_nan",
            "schedule_null",
        ],
        "valid_trainer_state.json",
    );
}
