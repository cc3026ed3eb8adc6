//! Corpus replay of the mome-data fuzz targets, without cargo-fuzz: every file of
//! `fuzz/seeds/<target>/` (written by `fuzz/make_seeds.py`) and of
//! `fuzz/regressions/<target>/` (minimised crash inputs) goes through the target's
//! own invariants (`fuzz/data_checks.rs`), plus the repository's own tokenizer and
//! the shard template's manifest.

#[allow(dead_code)]
#[path = "../../../fuzz/data_checks.rs"]
mod data_checks;
#[allow(dead_code)]
#[path = "../../../fuzz/replay.rs"]
mod replay;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Replays `inputs` through a check that panics on a broken invariant; names the
/// inputs that broke it.
fn broken(inputs: Vec<(String, Vec<u8>)>, check: fn(&[u8])) -> Vec<String> {
    replay::replay(inputs, |d| {
        check(d);
        false
    })
    .failed
}

#[test]
fn every_data_target_keeps_its_invariants_on_its_corpus() {
    let dir = fuzz_dir();
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json");
    let mut tok_inputs = replay::corpus(&dir, "tokenizer_json");
    tok_inputs.push((
        tokenizer.display().to_string(),
        std::fs::read(&tokenizer).unwrap(),
    ));
    let mut shard_inputs = replay::corpus(&dir, "shards");
    let mut template = vec![0u8];
    template.extend(data_checks::template_manifest());
    shard_inputs.push(("the template's manifest".into(), template));

    let mut failed = Vec::new();
    failed.extend(broken(
        replay::corpus(&dir, "corpus_jsonl"),
        data_checks::corpus_jsonl,
    ));
    failed.extend(broken(
        replay::corpus(&dir, "corpus_parquet"),
        data_checks::corpus_parquet,
    ));
    failed.extend(broken(tok_inputs, data_checks::tokenizer_json));
    failed.extend(broken(shard_inputs, data_checks::shards));
    let _ = std::fs::remove_dir_all(data_checks::scratch());
    assert!(failed.is_empty(), "invariants broken by {failed:#?}");
}
