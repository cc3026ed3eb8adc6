//! `mome bench train --config FILE.toml --json`: training-step throughput of a
//! `mome train` config, measured after warm-up with device synchronisation around
//! the timed steps. The reference side (PyTorch + Hugging Face on the same machine)
//! is `scripts/bench_reference.py`; `scripts/bench_compare.py` prints the ratios.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use mome_core::optim::AdamW;
use mome_core::DeviceSpec;
use mome_experts::{causal_lm_loss, Gpt2Input, Gpt2LmHeadModel};
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use crate::train_cmd::{load_train_file, model_config};

/// Dense bf16 peak of an H100 SXM (989.4 TFLOP/s, NVIDIA's datasheet, no sparsity):
/// the denominator of the model FLOPs utilisation printed by `mome bench train`.
pub const H100_BF16_DENSE_PEAK: f64 = 989.4e12;

/// `mome bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time training steps of a `mome train` config (random tokens of the config's shape).
    Train(BenchTrainArgs),
}

/// Arguments of `mome bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// A `mome train` TOML config (model, batch size, precision, optimizer).
    #[arg(long)]
    config: PathBuf,
    /// Untimed steps first (allocator and cuDNN/cuBLAS warm-up).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Sequence length (default: the model's n_positions).
    #[arg(long)]
    seq_len: Option<i64>,
    /// Vocabulary size (default: the config's, else 32000).
    #[arg(long, default_value_t = 32000)]
    vocab_size: usize,
    /// Override the config's device.
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Peak FLOP/s used for MFU (default: H100 dense bf16, 989.4e12).
    #[arg(long, default_value_t = H100_BF16_DENSE_PEAK)]
    peak_flops: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `mome bench train` prints.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Always "mome".
    pub implementation: &'static str,
    /// The config file.
    pub config: String,
    /// Device used.
    pub device: String,
    /// fp32 or bf16.
    pub precision: String,
    /// Parameters (distinct).
    pub parameters: i64,
    /// Sequences per optimizer step (batch × grad_accum).
    pub batch: i64,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Timed steps.
    pub steps: usize,
    /// Mean seconds per optimizer step.
    pub step_seconds: f64,
    /// Training tokens per second.
    pub tokens_per_second: f64,
    /// Model FLOPs per token: 6·(non-embedding parameters + LM head) + 12·layers·seq_len·d.
    pub flops_per_token: f64,
    /// Achieved model FLOP/s over `peak_flops`.
    pub mfu: f64,
    /// The peak used for `mfu`.
    pub peak_flops: f64,
    /// Peak GPU memory of this process in MiB as nvidia-smi reports it (None on CPU).
    pub peak_gpu_memory_mib: Option<u64>,
    /// Final loss (sanity: finite).
    pub final_loss: f64,
}

fn gpu_memory_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut it = l.split(',').map(str::trim);
        (it.next()? == me).then(|| it.next()?.parse().ok())?
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs `mome bench train`.
pub fn run_bench(cmd: BenchCommand) -> Result<()> {
    let BenchCommand::Train(a) = cmd;
    if a.steps == 0 {
        bail!("--steps must be > 0");
    }
    let file = load_train_file(&a.config)?;
    let device = a.device.unwrap_or(file.device).resolve()?;
    let precision = file.train.precision;
    precision.validate(device)?;
    let cfg = model_config(&file.model, a.vocab_size)?;
    let seq_len = a.seq_len.unwrap_or(cfg.n_positions);
    if seq_len < 2 || seq_len > cfg.n_positions {
        bail!("--seq-len must be in 2..={}", cfg.n_positions);
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(file.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut model = Gpt2LmHeadModel::new(&vs.root(), &cfg)?;
    model.set_compute_kind(precision.compute_kind())?;
    let mut opt = AdamW::new(&vs, file.train.optimizer)?;
    let b = file.data.batch_size as i64;
    let accum = file.train.grad_accum.max(1) as i64;
    let lr = file.train.optimizer.lr;
    let clip = file.train.clip_grad_norm;
    let batches: Vec<Tensor> = (0..accum)
        .map(|_| Tensor::randint(cfg.vocab_size, [b, seq_len], (Kind::Int64, device)))
        .collect();
    let params: Vec<Tensor> = vs.trainable_variables();
    let step = |opt: &mut AdamW| -> Result<Tensor> {
        let mut total = Tensor::zeros([], (Kind::Float, device));
        for ids in &batches {
            let out = model.forward(Gpt2Input::ids(ids).train(true))?;
            let loss = causal_lm_loss(&out.logits, ids, None)? / accum as f64;
            loss.backward();
            total += loss.detach();
        }
        if let Some(max) = clip {
            if let Some(norm) = mome_core::schedule::grad_norm_tensor(&params)? {
                mome_core::schedule::clip_grads_with_norm(&params, &norm, max)?;
            }
        }
        opt.step(lr)?;
        opt.zero_grad();
        Ok(total)
    };
    for _ in 0..a.warmup {
        let _ = step(&mut opt)?;
    }
    sync(device);
    let mut peak_mem = gpu_memory_mib();
    let started = Instant::now();
    let mut last = Tensor::zeros([], (Kind::Float, device));
    for _ in 0..a.steps {
        last = step(&mut opt)?;
    }
    sync(device);
    let secs = started.elapsed().as_secs_f64();
    peak_mem = peak_mem.max(gpu_memory_mib());
    let counts = model.param_count();
    let head = cfg.vocab_size * cfg.n_embd;
    let flops_per_token = 6.0 * (counts.non_embedding + head) as f64
        + 12.0 * (cfg.n_layer * seq_len * cfg.n_embd) as f64;
    let tokens = (b * accum * seq_len) as f64 * a.steps as f64;
    let tps = tokens / secs;
    let report = BenchReport {
        implementation: "mome",
        config: a.config.display().to_string(),
        device: format!("{device:?}"),
        precision: format!("{precision:?}").to_lowercase(),
        parameters: counts.total,
        batch: b * accum,
        seq_len,
        steps: a.steps,
        step_seconds: secs / a.steps as f64,
        tokens_per_second: tps,
        flops_per_token,
        mfu: tps * flops_per_token / a.peak_flops,
        peak_flops: a.peak_flops,
        peak_gpu_memory_mib: peak_mem,
        final_loss: last.double_value(&[]),
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}: {:.0} tokens/s, {:.1} ms/step, MFU {:.1}% (peak {:.0} TFLOP/s), loss {:.3}",
            report.config,
            report.tokens_per_second,
            report.step_seconds * 1e3,
            report.mfu * 100.0,
            report.peak_flops / 1e12,
            report.final_loss
        );
    }
    Ok(())
}
