//! `mome train --config FILE.toml [--resume]`: train a GPT-2 causal LM from scratch
//! on token shards (mome-experts' [`train_lm`]; method §3), and the options every
//! command that trains from a TOML config shares.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mome_core::{DeviceSpec, ParamGuard, TrainConfig};
use mome_experts::{train_lm, LmParams};

/// Command-line options of every command that trains from a TOML config
/// (`mome train`, `mome distill`, `mome moe train`).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config (see configs/ and docs/config.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the latest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// Override the config's `out_dir`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the config's `device`.
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Override `train.max_steps`.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// No progress bar or log lines.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// Reads the config file into `T`.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(mome_core::job::read_toml(&self.config)?)
    }

    /// Applies the overrides to a config's run folder, device, training settings
    /// and resume flag (validated once, with the rest, by the job's check).
    pub fn apply(
        &self,
        out_dir: &mut PathBuf,
        device: &mut DeviceSpec,
        train: &mut TrainConfig,
        resume: &mut bool,
    ) {
        if let Some(out) = &self.out {
            *out_dir = out.clone();
        }
        if let Some(d) = self.device {
            *device = d;
        }
        if let Some(n) = self.max_steps {
            train.max_steps = n;
        }
        train.quiet |= self.quiet;
        *resume = self.resume;
    }
}

/// Arguments of `mome train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// Prints a summary as pretty JSON (rank 0 only under data parallelism).
pub fn print_summary<T: serde::Serialize>(summary: &T, rank: usize) -> Result<()> {
    if rank == 0 {
        println!("{}", serde_json::to_string_pretty(summary)?);
    }
    Ok(())
}

/// Runs `mome train`.
pub fn run_train(a: TrainArgs) -> Result<()> {
    let a = a.run;
    let mut p: LmParams = a.read()?;
    a.apply(&mut p.out_dir, &mut p.device, &mut p.train, &mut p.resume);
    let job = p
        .check()
        .with_context(|| format!("invalid config {}", a.config.display()))?;
    let s = train_lm(&job)?;
    print_summary(&s, s.rank)
}
