//! Corpus replay of the mome-data fuzz targets, without cargo-fuzz: every file of
//! `fuzz/seeds/<target>/` (written by `fuzz/make_seeds.py`) and of
//! `fuzz/regressions/<target>/` (minimised crash inputs) goes through the target's
//! own invariants (`fuzz/data_checks.rs`), plus the repository's own tokenizer and
//! the shard template's manifest.

#[allow(dead_code)]
#[path = "../../../fuzz/data_checks.rs"]
mod data_checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of the seed and regression folders of `target`, sorted.
fn corpus(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert_ne!(kind, "seeds", "{} is missing", dir.display());
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

/// Runs `inputs` through `check`; returns the names of those that broke it.
fn replay(inputs: Vec<(String, Vec<u8>)>, check: fn(&[u8])) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, data) in inputs {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(name);
        }
    }
    failed
}

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let fs = corpus(target);
    assert!(!fs.is_empty(), "no corpus for {target}");
    fs.into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect()
}

#[test]
fn every_data_target_keeps_its_invariants_on_its_corpus() {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json");
    let mut tok_inputs = files("tokenizer_json");
    tok_inputs.push((
        tokenizer.display().to_string(),
        std::fs::read(&tokenizer).unwrap(),
    ));
    let mut shard_inputs = files("shards");
    let mut template = vec![0u8];
    template.extend(data_checks::template_manifest());
    shard_inputs.push(("the template's manifest".into(), template));

    let mut failed = Vec::new();
    failed.extend(replay(files("corpus_jsonl"), data_checks::corpus_jsonl));
    failed.extend(replay(files("corpus_parquet"), data_checks::corpus_parquet));
    failed.extend(replay(tok_inputs, data_checks::tokenizer_json));
    failed.extend(replay(shard_inputs, data_checks::shards));
    let _ = std::fs::remove_dir_all(data_checks::scratch());
    assert!(failed.is_empty(), "invariants broken by {failed:#?}");
}
