//! Corpus replay of the `toml_configs` fuzz target (`fuzz-torch/`), without
//! cargo-fuzz: every file of `fuzz-torch/seeds/toml_configs/` and of
//! `fuzz-torch/regressions/toml_configs/` (minimised crash inputs), and the seeds as
//! `checks::seeds` makes them now from `configs/`, go through the target's own
//! invariants (`fuzz-torch/checks/configs.rs`).
//! The seed folder is written by the fuzz target itself (`MOME_FUZZ_SEEDS`, see
//! `fuzz-torch/Cargo.toml`).

#[allow(dead_code)]
#[path = "../../../fuzz-torch/checks/configs.rs"]
mod checks;
#[allow(dead_code)]
#[path = "../../../fuzz/replay.rs"]
mod replay;

use std::path::Path;

#[test]
fn toml_configs_keeps_its_invariants_on_its_corpus() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut inputs = replay::corpus(&repo.join("fuzz-torch"), "toml_configs");
    assert!(inputs.len() >= 20, "{} corpus files", inputs.len());
    inputs.extend(checks::seeds(&repo));
    let outcome = replay::replay(inputs, |d| {
        checks::toml_configs(d);
        false
    });
    let _ = std::fs::remove_dir_all(checks::scratch());
    assert!(
        outcome.failed.is_empty(),
        "invariants broken by {:#?}",
        outcome.failed
    );
}
