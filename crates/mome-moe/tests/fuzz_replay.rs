//! Corpus replay of the `moe_folder` fuzz target (`fuzz-torch/`), without cargo-fuzz:
//! every file of `fuzz-torch/seeds/moe_folder/` and of `fuzz-torch/regressions/moe_folder/`
//! (minimised crash inputs), and the seeds as `checks::seeds` makes them now, go
//! through the target's own invariants (`fuzz-torch/checks/moe.rs`).
//! The seed folder is written by the fuzz target itself (`MOME_FUZZ_SEEDS`, see
//! `fuzz-torch/Cargo.toml`).

#[allow(dead_code)]
#[path = "../../../fuzz-torch/checks/moe.rs"]
mod checks;

use std::path::{Path, PathBuf};

const TARGET: &str = "moe_folder";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz-torch")
}

/// The files of the seed and regression folders, sorted.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(TARGET);
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

fn seeds() -> Vec<(String, Vec<u8>)> {
    checks::seeds()
}

#[test]
fn moe_folder_keeps_its_invariants_on_its_corpus() {
    let mut inputs = corpus();
    assert!(inputs.len() >= 4, "{} corpus files", inputs.len());
    inputs.extend(seeds());
    let mut failed = Vec::new();
    let mut loaded = Vec::new();
    for (name, data) in inputs {
        match std::panic::catch_unwind(|| checks::moe_folder(&data)) {
            Err(_) => failed.push(name),
            Ok(ok) => {
                if ok {
                    loaded.push(name);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(checks::scratch());
    assert!(failed.is_empty(), "invariants broken by {failed:#?}");
    // The valid seeds load; those with sizes beyond the files are refused.
    for name in loaded.iter() {
        let base = name.rsplit('/').next().unwrap();
        assert!(
            ![
                "expert_vocab_huge",
                "expert_n_embd_overflow",
                "many_domains",
                "ple_common",
                "expert_config_other_shape"
            ]
            .contains(&base),
            "{base} loaded"
        );
    }
    assert!(
        loaded.iter().any(|n| n.ends_with("valid_moe_config.json")),
        "the valid seed did not load: {loaded:?}"
    );
}
