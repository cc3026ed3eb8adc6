//! `mome pipeline --config FILE.toml --out RUN_DIR`: every stage of the method in
//! order, in this process, resumable stage by stage (mome-pipeline's
//! [`run_pipeline`]; see docs/pipeline.md).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mome_pipeline::{run_pipeline, PipelineOptions};

/// Arguments of `mome pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Pipeline config (configs/demo.toml, configs/paper.toml; docs/pipeline.md).
    #[arg(long)]
    config: PathBuf,
    /// Run folder: one sub-folder per stage and report.md.
    #[arg(long)]
    out: PathBuf,
    /// Re-run this stage and every later one (earlier ones run only if not up to date).
    #[arg(long, value_name = "STAGE", conflicts_with = "only")]
    from: Option<String>,
    /// Re-run just this stage (its upstream stages must be complete and up to date).
    #[arg(long, value_name = "STAGE")]
    only: Option<String>,
    /// Print only errors and the final report path.
    #[arg(long)]
    quiet: bool,
}

/// Runs `mome pipeline`.
pub fn run(a: PipelineArgs) -> Result<()> {
    let s = run_pipeline(&PipelineOptions {
        config: a.config,
        out: a.out,
        from: a.from,
        only: a.only,
        quiet: a.quiet,
    })?;
    println!("{}", s.report.display());
    Ok(())
}
