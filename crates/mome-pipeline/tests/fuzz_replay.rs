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

use std::path::{Path, PathBuf};

const TARGET: &str = "toml_configs";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of the seed and regression folders, sorted.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = repo().join("fuzz-torch").join(kind).join(TARGET);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert_ne!(kind, "seeds", "{} is missing", dir.display());
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect()
}

#[test]
fn toml_configs_keeps_its_invariants_on_its_corpus() {
    let mut inputs = corpus();
    assert!(inputs.len() >= 20, "{} corpus files", inputs.len());
    inputs.extend(checks::seeds(&repo()));
    let mut failed = Vec::new();
    for (name, data) in inputs {
        if std::panic::catch_unwind(|| checks::toml_configs(&data)).is_err() {
            failed.push(name);
        }
    }
    let _ = std::fs::remove_dir_all(checks::scratch());
    assert!(failed.is_empty(), "invariants broken by {failed:#?}");
}
