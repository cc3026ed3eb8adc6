//! `mome experiment forgetting --config FILE.toml --out DIR`: the catastrophic
//! forgetting study of method §8 (sequential vs balanced batches vs MoE; crate
//! mome-moe, module `forgetting`). Output: DIR/forgetting.json, DIR/report.md,
//! DIR/forgetting.png, and DIR/complete.json last.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mome_core::trainer::TrainConfig;
use mome_core::DeviceSpec;
use mome_data::shards::ShardSet;
use mome_data::tokenizer::load_tokenizer;
use mome_moe::forgetting::{run_forgetting as run_study, ForgettingJob, Regime};
use mome_moe::Arch;
use serde::Deserialize;

use crate::train_cmd::{model_config, read_toml, EvalSection};

/// Arguments of `mome experiment forgetting`.
#[derive(Debug, Args)]
pub struct ForgettingArgs {
    /// TOML config (configs/experiments/forgetting-demo.toml).
    #[arg(long)]
    config: PathBuf,
    /// Output folder (overrides the config's `out_dir`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Shard folder (overrides `[data] shards`; the config's tokenizer is then not
    /// checked unless --tokenizer is given too).
    #[arg(long)]
    shards: Option<PathBuf>,
    /// tokenizer.json checked against the shards (overrides `[data] tokenizer`).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Override the config's `device`.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

/// `[data]` of the experiment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingData {
    /// Shard folder made by `mome data encode`.
    pub shards: PathBuf,
    /// Optional tokenizer.json, checked against the shards' tokenizer hash.
    pub tokenizer: Option<PathBuf>,
    /// Sequences per batch (a multiple of the number of domains).
    pub batch_size: usize,
}

fn default_evals() -> u64 {
    4
}
fn default_arch() -> String {
    "jeet".into()
}
fn default_regimes() -> Vec<Regime> {
    Regime::ALL.to_vec()
}

/// `[forgetting]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingSection {
    /// Domains in sequential order (empty: the shards' domains, sorted).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Evaluations per sequential phase.
    #[serde(default = "default_evals")]
    pub evals_per_phase: u64,
    /// MoE regime architecture: `jeet` or `moe-ce`.
    #[serde(default = "default_arch")]
    pub moe_arch: String,
    /// Regimes to run (sequential, balanced, moe).
    #[serde(default = "default_regimes")]
    pub regimes: Vec<Regime>,
}

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgettingFile {
    /// Output folder.
    pub out_dir: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[serde(default)]
    pub device: DeviceSpec,
    /// Shards and batch size.
    pub data: ForgettingData,
    /// Validation at every evaluation.
    #[serde(default)]
    pub eval: EvalSection,
    /// The student shape (a `[model]` table as `mome train`'s).
    pub student: toml::Table,
    /// What is compared.
    pub forgetting: ForgettingSection,
    /// Optimizer, schedule, precision, seed; `max_steps` is every regime's budget.
    pub train: TrainConfig,
}

/// Runs `mome experiment forgetting`.
pub fn run_forgetting(a: ForgettingArgs) -> Result<()> {
    if let Some(env) = mome_core::dist::DistEnv::from_env()? {
        anyhow::bail!(
            "MOME_WORLD_SIZE = {}: `mome experiment forgetting` runs one process (its \
             regimes are independent runs: spread several studies with `mome launch --jobs FILE`)",
            env.world_size
        );
    }
    let mut file: ForgettingFile = read_toml(&a.config)?;
    if let Some(o) = a.out {
        file.out_dir = o;
    }
    if let Some(s) = a.shards {
        // The config's tokenizer belongs to the config's shards.
        file.data.shards = s;
        file.data.tokenizer = None;
    }
    if let Some(t) = a.tokenizer {
        file.data.tokenizer = Some(t);
    }
    if let Some(d) = a.device {
        file.device = d;
    }
    file.train.quiet |= a.quiet;
    file.train
        .validate()
        .with_context(|| format!("invalid [train] in {}", a.config.display()))?;
    let device = file.device.resolve()?;
    file.train.precision.validate(device)?;
    let shards = ShardSet::open(&file.data.shards)
        .with_context(|| format!("opening shards {}", file.data.shards.display()))?;
    let tokenizer_sha256 = match &file.data.tokenizer {
        Some(t) => Some(load_tokenizer(t)?.1),
        None => None,
    };
    let job = ForgettingJob {
        out_dir: file.out_dir.clone(),
        shards: file.data.shards.clone(),
        tokenizer_sha256,
        domains: file.forgetting.domains.clone(),
        student: model_config(&file.student, shards.vocab_size())?,
        batch_size: file.data.batch_size,
        train: file.train.clone(),
        evals_per_phase: file.forgetting.evals_per_phase,
        eval_max_sequences: file.eval.max_sequences,
        eval_batch_size: file.eval.batch_size,
        moe_arch: file.forgetting.moe_arch.parse::<Arch>()?,
        regimes: file.forgetting.regimes.clone(),
    };
    let report = run_study(&job, device)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "out_dir": job.out_dir,
            "report": job.out_dir.join(mome_moe::forgetting::REPORT_FILE),
            "json": job.out_dir.join(mome_moe::forgetting::JSON_FILE),
            "png": job.out_dir.join(mome_moe::forgetting::PNG_FILE),
            "max_forgetting": report.finding.max_forgetting,
            "paper_finding_holds": report.finding.paper_finding_holds,
            "seconds": report.seconds,
        }))?
    );
    Ok(())
}
