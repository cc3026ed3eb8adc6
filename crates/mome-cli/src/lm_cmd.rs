//! `mome train`, `mome eval`, `mome generate`: causal language models (method §3).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use mome_core::DeviceSpec;
use mome_data::shards::ShardSet;
use mome_data::tokenizer::load_tokenizer;
use mome_experts::{causal_lm_loss_sum, generate, GenerationConfig, Gpt2Input, Gpt2LmHeadModel};
use serde::Serialize;
use tch::{Kind, Tensor};

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

/// Per-domain evaluation figures.
#[derive(Debug, Clone, Serialize)]
pub struct DomainEval {
    /// Mean next-token cross-entropy (nats per token).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens evaluated.
    pub tokens: i64,
    /// Sequences evaluated.
    pub sequences: usize,
}

/// What `mome eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The split evaluated.
    pub split: String,
    /// domain -> figures, in the shards' domain order.
    pub domains: std::collections::BTreeMap<String, DomainEval>,
    /// Token-weighted mean loss over all domains.
    pub mean_loss: f64,
    /// `exp(mean_loss)`.
    pub mean_perplexity: f64,
    /// Target tokens evaluated over all domains.
    pub tokens: i64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Tokens per second.
    pub tokens_per_second: f64,
}

/// Evaluates `model` on every domain of `split` (no gradients, eval mode).
pub fn evaluate(
    model: &Gpt2LmHeadModel,
    shards: &ShardSet,
    split: &str,
    max_sequences: usize,
    batch_size: usize,
) -> Result<EvalReport> {
    if batch_size == 0 {
        bail!("batch_size must be > 0");
    }
    let started = Instant::now();
    let seq_len = shards.seq_len();
    let device = model.device();
    let mut domains = std::collections::BTreeMap::new();
    let (mut all_sum, mut all_tokens) = (0f64, 0i64);
    let _guard = tch::no_grad_guard();
    for domain in shards.domains(split)? {
        let reader = shards.reader(split, &domain)?;
        let n = match max_sequences {
            0 => reader.len(),
            m => m.min(reader.len()),
        };
        let (mut sum, mut tokens) = (Tensor::zeros([], (Kind::Double, device)), 0i64);
        let mut buf = vec![0i64; batch_size * seq_len];
        let mut start = 0;
        while start < n {
            let b = batch_size.min(n - start);
            for i in 0..b {
                reader.read_into_i64(start + i, &mut buf[i * seq_len..(i + 1) * seq_len])?;
            }
            let ids = Tensor::from_slice(&buf[..b * seq_len])
                .view([b as i64, seq_len as i64])
                .to_device(device);
            let out = model.forward(Gpt2Input::ids(&ids))?;
            let (s, c) = causal_lm_loss_sum(&out.logits, &ids, None)?;
            sum += s.to_kind(Kind::Double);
            tokens += c;
            start += b;
        }
        let sum = sum.double_value(&[]);
        let loss = sum / tokens.max(1) as f64;
        all_sum += sum;
        all_tokens += tokens;
        domains.insert(
            domain,
            DomainEval {
                loss,
                perplexity: loss.exp(),
                tokens,
                sequences: n,
            },
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let mean_loss = all_sum / all_tokens.max(1) as f64;
    Ok(EvalReport {
        split: split.to_string(),
        domains,
        mean_loss,
        mean_perplexity: mean_loss.exp(),
        tokens: all_tokens,
        seconds,
        tokens_per_second: all_tokens as f64 / seconds.max(1e-9),
    })
}

/// Opens shards and checks that `model` can read them (vocabulary and context length).
pub fn open_shards_for(model: &Gpt2LmHeadModel, path: &Path) -> Result<ShardSet> {
    let shards =
        ShardSet::open(path).with_context(|| format!("opening shards {}", path.display()))?;
    let cfg = model.config();
    shards.check_vocab(cfg.vocab_size as usize)?;
    if shards.seq_len() as i64 > cfg.n_positions {
        bail!(
            "the shards hold {}-token sequences but the model has only {} positions",
            shards.seq_len(),
            cfg.n_positions
        );
    }
    Ok(shards)
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
