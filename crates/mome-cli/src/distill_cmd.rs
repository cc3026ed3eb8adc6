//! `mome distill`, `mome teacher-cache build` and `mome experiment kd|forgetting`
//! (method §4, §8; see docs/distill.md): parse, call mome-distill / mome-moe, print.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mome_core::{DeviceSpec, ParamGuard};
use mome_distill::experiment::{run_kd_experiment, KdExperimentParams};
use mome_distill::{build_cache, run_distill, CacheBuildOptions, DistillParams, ValueDtype};
use mome_moe::forgetting::{run_forgetting, ForgettingParams};

use crate::train_cmd::{print_summary, RunArgs};

/// Arguments of `mome distill` (config: see configs/distill-demo.toml and docs/distill.md).
#[derive(Debug, Args)]
pub struct DistillArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// Runs `mome distill`.
pub fn run_distill_cmd(a: DistillArgs) -> Result<()> {
    let a = a.run;
    let mut p: DistillParams = a.read()?;
    a.apply(&mut p.out_dir, &mut p.device, &mut p.train, &mut p.resume);
    let job = p
        .check()
        .with_context(|| format!("invalid config {}", a.config.display()))?;
    let out = run_distill(&job)?;
    print_summary(&out, out.rank)
}

/// `mome teacher-cache ...`
#[derive(Debug, Subcommand)]
pub enum TeacherCacheCommand {
    /// Run the teacher once over the training shards; store top-K ids and log-probs.
    Build(CacheBuildArgs),
}

/// Arguments of `mome teacher-cache build`.
#[derive(Debug, Args)]
pub struct CacheBuildArgs {
    /// Teacher model folder (config.json + model.safetensors).
    #[arg(long)]
    teacher: PathBuf,
    /// Shard folder.
    #[arg(long)]
    shards: PathBuf,
    /// Entries per position.
    #[arg(long)]
    top_k: usize,
    /// Output folder (replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Softmax temperature of the stored log-probs (must equal the distillation's).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// f16 | bf16
    #[arg(long, default_value = "f16")]
    values: ValueDtype,
    /// Splits to cache.
    #[arg(long, default_value = "train")]
    split: Vec<String>,
    /// Sequences per teacher forward.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Device.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Run the teacher in bf16.
    #[arg(long)]
    bf16: bool,
}

/// Runs `mome teacher-cache`.
pub fn run_teacher_cache(c: TeacherCacheCommand) -> Result<()> {
    let TeacherCacheCommand::Build(a) = c;
    let opts = CacheBuildOptions {
        top_k: a.top_k,
        temperature: a.temperature,
        value_dtype: a.values,
        splits: a.split,
        batch_size: a.batch_size,
        bf16_teacher: a.bf16,
        quiet: false,
    };
    let m = build_cache(&a.teacher, &a.shards, &a.out, &opts, a.device.resolve()?)?;
    let tokens = m.tokens();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "out": a.out,
            "top_k": m.top_k,
            "id_dtype": m.id_dtype,
            "value_dtype": m.value_dtype,
            "temperature": m.temperature,
            "tokens": tokens,
            "bytes_per_token": m.bytes_per_token(),
            "bytes": tokens * m.bytes_per_token() as u64,
            "build_seconds": m.build_seconds,
        }))?
    );
    Ok(())
}

/// `mome experiment ...`
#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// The paper's KD comparison: CE only, fixed, adaptive, alternating x losses.
    Kd(KdArgs),
    /// Catastrophic forgetting: sequential vs balanced batches vs MoE (method §8).
    Forgetting(ForgettingArgs),
}

/// Arguments of `mome experiment kd`.
#[derive(Debug, Args)]
pub struct KdArgs {
    /// TOML config (configs/experiments/kd-demo.toml, kd-gpu.toml).
    #[arg(long)]
    config: PathBuf,
    /// Override the config's `device`.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Override the config's `out_dir`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

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

/// Runs `mome experiment …`.
pub fn run_experiment(c: ExperimentCommand) -> Result<()> {
    match c {
        ExperimentCommand::Kd(a) => {
            let mut p: KdExperimentParams = mome_core::job::read_toml(&a.config)?;
            if let Some(d) = a.device {
                p.device = d;
            }
            if let Some(o) = a.out {
                p.out_dir = o;
            }
            p.train.quiet |= a.quiet;
            if let Some(t) = p.teacher_train.as_mut() {
                t.train.quiet |= a.quiet;
            }
            let job = p
                .check()
                .with_context(|| format!("invalid config {}", a.config.display()))?;
            let r = run_kd_experiment(&job)?;
            println!("{}", r.report.display());
        }
        ExperimentCommand::Forgetting(a) => {
            let mut p: ForgettingParams = mome_core::job::read_toml(&a.config)?;
            if let Some(o) = a.out {
                p.out_dir = o;
            }
            if let Some(s) = a.shards {
                // The config's tokenizer belongs to the config's shards.
                p.data.shards = s;
                p.data.tokenizer = None;
            }
            if let Some(t) = a.tokenizer {
                p.data.tokenizer = Some(t);
            }
            if let Some(d) = a.device {
                p.device = d;
            }
            p.train.quiet |= a.quiet;
            let job = p
                .check()
                .with_context(|| format!("invalid config {}", a.config.display()))?;
            let r = run_forgetting(&job)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "out_dir": job.out_dir,
                    "report": job.out_dir.join(mome_moe::forgetting::REPORT_FILE),
                    "json": job.out_dir.join(mome_moe::forgetting::JSON_FILE),
                    "png": job.out_dir.join(mome_moe::forgetting::PNG_FILE),
                    "max_forgetting": r.finding.max_forgetting,
                    "paper_finding_holds": r.finding.paper_finding_holds,
                    "seconds": r.seconds,
                }))?
            );
        }
    }
    Ok(())
}
