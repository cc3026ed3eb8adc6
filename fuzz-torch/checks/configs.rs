//! The invariants of the `toml_configs` fuzz target (mome-pipeline and the crates of
//! every command): a TOML config of `mome train`, `distill`, `moe train`,
//! `experiment kd`, `experiment forgetting`, `pipeline` or `bench train`, read as
//! the command reads it and validated into its checked type (the full check, which
//! opens the shards the config names, and the checks that need no shards) gives a
//! typed error with a message or a checked job, never a panic. Shared by
//! `fuzz-torch/fuzz_targets/toml_configs.rs` (`#[path]`-included) and by `cargo
//! test -p mome-pipeline --test fuzz_replay`. A violated invariant panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mome_core::job::read_toml as read;
use mome_core::ParamGuard;
use mome_distill::experiment::KdExperimentParams;
use mome_distill::DistillParams;
use mome_experts::LmParams;
use mome_moe::forgetting::ForgettingParams;
use mome_moe::MoeTrainParams;
use mome_pipeline::bench::BenchParams;
use mome_pipeline::PipelineConfig;

/// This process's scratch folder (the corpus replay removes it when done).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mome-fuzz-configs-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// The commands, in mode order (the first byte of an input, modulo their number).
pub const COMMANDS: [&str; 7] = [
    "train",
    "distill",
    "moe",
    "experiment-kd",
    "experiment-forgetting",
    "pipeline",
    "bench",
];

fn ok_or_message<T, E: std::error::Error + 'static>(r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(!mome_data::error::chain(&e).is_empty());
            None
        }
    }
}

/// The shard shape the no-shards checks are run against.
const VOCAB: usize = 300;
const SEQ_LEN: usize = 4;

/// The first byte picks the command (see [`COMMANDS`]), the rest is its config file.
pub fn toml_configs(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let path = scratch().join("config.toml");
    std::fs::write(&path, body).expect("config");
    match mode as usize % COMMANDS.len() {
        0 => {
            if let Some(p) = ok_or_message(read::<LmParams>(&path)) {
                ok_or_message(p.check());
                if let Some(job) = ok_or_message(p.check_shape(VOCAB, SEQ_LEN)) {
                    job.model().validate().expect("a checked model validates");
                }
            }
        }
        1 => {
            if let Some(p) = ok_or_message(read::<DistillParams>(&path)) {
                ok_or_message(p.check());
                if let Some(job) = ok_or_message(p.check_shape(VOCAB, SEQ_LEN, None, false)) {
                    job.student()
                        .validate()
                        .expect("a checked student validates");
                }
            }
        }
        2 => {
            if let Some(p) = ok_or_message(read::<MoeTrainParams>(&path)) {
                ok_or_message(p.check());
                let domains = vec!["en".to_string(), "py".to_string()];
                if let Some(job) =
                    ok_or_message(p.check_shape(domains, VOCAB, SEQ_LEN, None, false))
                {
                    job.config()
                        .validate()
                        .expect("a checked MoE config validates");
                }
            }
        }
        3 => {
            if let Some(p) = ok_or_message(read::<KdExperimentParams>(&path)) {
                ok_or_message(p.check());
            }
        }
        4 => {
            if let Some(p) = ok_or_message(read::<ForgettingParams>(&path)) {
                ok_or_message(p.check());
            }
        }
        5 => {
            if let Some(p) = ok_or_message(PipelineConfig::load(&path)) {
                ok_or_message(p.check());
            }
        }
        _ => {
            if let Some(p) = ok_or_message(BenchParams::read(&path)) {
                if let Some(job) = ok_or_message(p.run.check_shape(VOCAB, SEQ_LEN)) {
                    job.model().validate().expect("a checked model validates");
                }
            }
        }
    }
}

/// The command of a config file of `configs/`, by its name.
fn command_of(rel: &str) -> usize {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if rel.starts_with("bench/") {
        6
    } else if rel.starts_with("experiments/kd") {
        3
    } else if rel.starts_with("experiments/forgetting") {
        4
    } else if name.starts_with("distill") {
        1
    } else if name.starts_with("moe") {
        2
    } else if ["demo.toml", "gpu.toml", "paper.toml", "paper-smoke.toml"].contains(&name) {
        5
    } else {
        0
    }
}

/// The seed inputs (written to `fuzz-torch/seeds/toml_configs/` for cargo-fuzz):
/// every config of `<repo>/configs/`, as its command, and a few broken ones.
pub fn seeds(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join("configs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("configs folder") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                let rel = p
                    .strip_prefix(repo.join("configs"))
                    .expect("inside")
                    .display()
                    .to_string();
                let mode = command_of(&rel) as u8;
                let bytes = std::fs::read(&p).expect("config");
                out.push((
                    rel.replace('/', "_").replace(".toml", ""),
                    [&[mode][..], &bytes].concat(),
                ));
            }
        }
    }
    for (i, c) in COMMANDS.iter().enumerate() {
        out.push((format!("empty_{c}"), vec![i as u8]));
        out.push((
            format!("huge_model_{c}"),
            [
                &[i as u8][..],
                b"[model]\nn_layer = 9223372036854775807\nn_embd = 9223372036854775807\nn_head = 1\n[train]\nmax_steps = 18446744073709551615\nlr = 1e308\n",
            ]
            .concat(),
        ));
    }
    out.sort();
    out
}
