//! Corpus replay of the `moe_folder` fuzz target (`fuzz-torch/`), without cargo-fuzz:
//! every file of `fuzz-torch/seeds/moe_folder/` and of `fuzz-torch/regressions/moe_folder/`
//! (minimised crash inputs), and the seeds as `checks::seeds` makes them now, go
//! through the target's own invariants (`fuzz-torch/checks/moe.rs`).
//! The seed folder is written by the fuzz target itself (`MOME_FUZZ_SEEDS`, see
//! `fuzz-torch/Cargo.toml`).

#[allow(dead_code)]
#[path = "../../../fuzz-torch/checks/moe.rs"]
mod checks;
#[allow(dead_code)]
#[path = "../../../fuzz/replay.rs"]
mod replay;

use std::path::Path;

#[test]
fn moe_folder_keeps_its_invariants_on_its_corpus() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz-torch");
    let mut inputs = replay::corpus(&fuzz_dir, "moe_folder");
    assert!(inputs.len() >= 4, "{} corpus files", inputs.len());
    inputs.extend(checks::seeds());
    let outcome = replay::replay(inputs, checks::moe_folder);
    let _ = std::fs::remove_dir_all(checks::scratch());
    // The valid seeds load; those with sizes beyond the files are refused.
    outcome.assert_outcome(
        &[
            "expert_vocab_huge",
            "expert_n_embd_overflow",
            "many_domains",
            "ple_common",
            "expert_config_other_shape",
        ],
        "valid_moe_config.json",
    );
}
