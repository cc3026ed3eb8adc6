//! `mome train`, `mome eval`, `mome generate`: causal language models (method §3).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use mome_core::DeviceSpec;
use mome_data::tokenizer::load_tokenizer;
use mome_experts::eval::{evaluate, open_shards_for};
use mome_experts::{generate, GenerationConfig, Gpt2LmHeadModel};

/// Arguments of `mome eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model folder (`config.json` + `model.safetensors`).
    #[arg(long)]
    model: PathBuf,
    /// Shard folder.
    #[arg(long)]
    shards: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "validation")]
    split: String,
    /// Evaluate at most this many sequences per domain (0 = all).
    #[arg(long, default_value_t = 0)]
    max_sequences: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Print JSON (default: a table).
    #[arg(long)]
    json: bool,
}

/// Runs `mome eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    let device = a.device.resolve()?;
    let (_vs, model) = Gpt2LmHeadModel::from_pretrained(&a.model, device)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let shards = open_shards_for(&model, &a.shards)?;
    let report = evaluate(&model, &shards, &a.split, a.max_sequences, a.batch_size)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:<10} {:>10} {:>12} {:>10}",
            "domain", "loss", "perplexity", "tokens"
        );
        for (d, e) in &report.domains {
            println!(
                "{d:<10} {:>10.4} {:>12.2} {:>10}",
                e.loss, e.perplexity, e.tokens
            );
        }
        println!(
            "{:<10} {:>10.4} {:>12.2} {:>10}   ({:.1}s, {:.0} tokens/s)",
            "all",
            report.mean_loss,
            report.mean_perplexity,
            report.tokens,
            report.seconds,
            report.tokens_per_second
        );
    }
    Ok(())
}

/// Arguments of `mome generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model folder (`config.json` + `model.safetensors`).
    #[arg(long)]
    model: PathBuf,
    /// tokenizer.json the model was trained with.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Prompt text; repeat for a batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Print JSON lines ({"prompt","completion","tokens"}).
    #[arg(long)]
    json: bool,
}

/// Runs `mome generate`.
pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let device = a.device.resolve()?;
    let (tok, _) = load_tokenizer(&a.tokenizer)?;
    let (_vs, model) = Gpt2LmHeadModel::from_pretrained(&a.model, device)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let vocab = tok.get_vocab_size(true) as i64;
    if vocab > model.config().vocab_size {
        bail!(
            "the tokenizer has {vocab} tokens but the model only {}: wrong tokenizer for this model?",
            model.config().vocab_size
        );
    }
    let mut prompts = Vec::new();
    for p in &a.prompt {
        let enc = tok
            .encode(p.as_str(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
        prompts.push(enc.get_ids().iter().map(|&i| i as i64).collect::<Vec<_>>());
    }
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        eos_token_id: model.config().eos_token_id,
        pad_token_id: model.config().eos_token_id.unwrap_or(0),
    };
    let outs = generate(&model, &prompts, &cfg)?;
    for ((p, prompt), out) in a.prompt.iter().zip(&prompts).zip(outs) {
        let new_tokens = out.len();
        let ids: Vec<u32> = prompt.iter().chain(&out).map(|&i| i as u32).collect();
        let text = tok
            .decode(&ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"prompt": p, "text": text, "new_tokens": new_tokens})
            );
        } else {
            println!("{text}");
        }
    }
    Ok(())
}
