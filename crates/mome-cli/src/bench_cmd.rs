//! `mome bench train --config FILE.toml --json`: the throughput of the production
//! training step of a config (mome-pipeline's [`run_bench`]: `mome train`'s,
//! `mome distill`'s or `mome moe train`'s step on random tokens). The reference side
//! (PyTorch + Hugging Face on the same machine) is `scripts/bench_reference.py`;
//! `scripts/bench_compare.py` prints the ratios.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mome_core::fusion::{FusionMode, LinearCeMode};
use mome_core::optim::AdamWImpl;
use mome_core::profile::KernelTrace;
use mome_core::trainer::BenchOptions;
use mome_core::DeviceSpec;
use mome_pipeline::bench::{run_bench, BenchMode, BenchParams, BenchRun, H100_BF16_DENSE_PEAK};

/// `mome bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the production training step of a config (random tokens of its shape).
    Train(BenchTrainArgs),
}

/// Arguments of `mome bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// A `mome train` TOML config (model, batch size, precision, optimizer), plus
    /// optional `[distill]` (the KD modes' settings, as `mome distill`'s) and
    /// `[bench]` (mode, teacher shape, synthetic cache, MoE domains) sections.
    #[arg(long)]
    config: PathBuf,
    /// Override `[bench] mode`: lm, kd-online, kd-cache, moe-jeet, moe-ce.
    #[arg(long)]
    mode: Option<BenchMode>,
    /// Untimed steps first (allocator and cuBLAS warm-up).
    #[arg(long, default_value_t = BenchOptions::default().warmup)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = BenchOptions::default().steps)]
    steps: usize,
    /// Also time each phase of the step (device synchronised between phases).
    #[arg(long)]
    profile: bool,
    /// Steps averaged by `--profile`.
    #[arg(long, default_value_t = 5)]
    profile_steps: usize,
    /// Sequence length (default: the model's n_positions).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Override the config's batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Vocabulary size when the config's model sets none.
    #[arg(long, default_value_t = 32000)]
    vocab_size: usize,
    /// Override `[bench] kd_chunk` (0: the unchunked KD loss).
    #[arg(long)]
    kd_chunk: Option<usize>,
    /// Override the config's device.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Peak FLOP/s used for MFU (default: H100 dense bf16, 989.4e12).
    #[arg(long, default_value_t = H100_BF16_DENSE_PEAK)]
    peak_flops: f64,
    /// Override `[train] adamw`: auto, fused, flat or per-param.
    #[arg(long)]
    adamw: Option<AdamWImpl>,
    /// Override `[train.kernels] linear_ce`: auto, reference, chunked or fused.
    #[arg(long)]
    linear_ce: Option<LinearCeMode>,
    /// Override `[train.kernels] linear_kd` (KD modes): auto, reference, chunked or
    /// fused.
    #[arg(long)]
    linear_kd: Option<LinearCeMode>,
    /// Override `[train.kernels] ce_chunk` (positions per chunk; 0: about 256 MiB of
    /// logits).
    #[arg(long)]
    ce_chunk: Option<usize>,
    /// Override `[train.kernels] add_layer_norm`: auto, reference or fused.
    #[arg(long)]
    add_layer_norm: Option<FusionMode>,
    /// Write a kernel-level trace of the whole bench (warm-up, timed and profiled
    /// steps; libtorch's Kineto profiler) to PATH as Chrome trace JSON
    /// (`scripts/trace_summary.py PATH --steps N` sums the kernels per step). The
    /// timings of a traced bench include the tracer's overhead.
    #[arg(long, value_name = "PATH")]
    trace: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `mome bench train`.
pub fn run_bench_cmd(cmd: BenchCommand) -> Result<()> {
    let BenchCommand::Train(a) = cmd;
    let params = BenchParams::read(&a.config)?;
    let run = BenchRun {
        config: a.config.clone(),
        mode: a.mode,
        steps: BenchOptions {
            warmup: a.warmup,
            steps: a.steps,
            profile_steps: if a.profile { a.profile_steps } else { 0 },
        },
        seq_len: a.seq_len,
        batch_size: a.batch_size,
        vocab_size: a.vocab_size,
        kd_chunk: a.kd_chunk,
        device: a.device,
        adamw: a.adamw,
        linear_ce: a.linear_ce,
        linear_kd: a.linear_kd,
        ce_chunk: a.ce_chunk,
        add_layer_norm: a.add_layer_norm,
        peak_flops: a.peak_flops,
    };
    let trace = match &a.trace {
        Some(_) => {
            let device = a.device.unwrap_or(params.run.device).resolve()?;
            Some(KernelTrace::start(device).context("starting the kernel trace")?)
        }
        None => None,
    };
    let r = run_bench(&params, &run).with_context(|| format!("bench {}", a.config.display()))?;
    if let (Some(t), Some(path)) = (trace, &a.trace) {
        t.finish(path)
            .with_context(|| format!("writing the kernel trace {}", path.display()))?;
        eprintln!("kernel trace: {}", path.display());
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "{} [{}]: {:.0} tokens/s, {:.1} ms/step, MFU {:.1}% (peak {:.0} TFLOP/s), loss {:.3}",
        r.config,
        r.mode,
        r.tokens_per_second,
        r.step_seconds * 1e3,
        r.mfu * 100.0,
        r.peak_flops / 1e12,
        r.final_loss
    );
    if let Some(p) = &r.profile {
        println!(
            "profile ({} synchronised steps, {:.1} ms/step):",
            p.steps, p.step_ms
        );
        for ph in &p.phases {
            println!("  {:<16} {:>9.2} ms {:>5.1}%", ph.name, ph.ms, ph.pct);
        }
    }
    Ok(())
}
