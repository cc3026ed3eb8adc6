//! `mome eval`, `mome generate`: causal language models (method §3); `generate` also
//! runs a mixture of modular experts (routed, one KV cache per active expert).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use mome_core::DeviceSpec;
use mome_experts::eval::evaluate_dir;
use mome_experts::GenerationConfig;
use mome_moe::text::{generate_text, TextJob};
use mome_moe::Setting;

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
    let report = evaluate_dir(
        &a.model,
        &a.shards,
        &a.split,
        a.max_sequences,
        a.batch_size,
        a.device.resolve()?,
    )
    .with_context(|| format!("evaluating {}", a.model.display()))?;
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
    /// Model folder: a GPT-2 (`config.json` + `model.safetensors`) or a MoE
    /// (`moe_config.json`, as saved by `mome moe build|train`).
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
    /// Print JSON lines ({"prompt","text","new_tokens"}, plus "routing" for a MoE).
    #[arg(long)]
    json: bool,
    /// MoE only: route prompts with this router file (default: MODEL/router.json).
    #[arg(long, conflicts_with = "expert")]
    router: Option<PathBuf>,
    /// MoE only: send every prompt to this domain expert instead of routing.
    #[arg(long)]
    expert: Option<String>,
    /// MoE only: the combination setting, e.g. "common=true,used=all,average=false"
    /// (default: the routed expert, plus the common expert when the model has one).
    #[arg(long)]
    setting: Option<Setting>,
    /// MoE only: print each prompt's routing (label, probabilities, confident, experts).
    #[arg(long)]
    show_routing: bool,
}

/// Runs `mome generate`.
pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let is_moe = a.model.join(mome_moe::io::CONFIG_FILE).is_file();
    if !is_moe && a.show_routing {
        bail!(
            "--show-routing is for a MoE folder; {} has no {}",
            a.model.display(),
            mome_moe::io::CONFIG_FILE
        );
    }
    let job = TextJob {
        model: a.model.clone(),
        tokenizer: a.tokenizer.clone(),
        generation: GenerationConfig {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            ..GenerationConfig::default()
        },
        device: a.device.resolve()?,
        router: a.router.clone(),
        expert: a.expert.clone(),
        setting: a.setting.clone(),
    };
    let outs = generate_text(&job, &a.prompt)
        .with_context(|| format!("generating with {}", a.model.display()))?;
    for g in outs {
        if a.json {
            let mut v =
                serde_json::json!({"prompt": g.prompt, "text": g.text, "new_tokens": g.new_tokens});
            if let (true, Some(r)) = (a.show_routing, &g.routing) {
                v["routing"] = serde_json::to_value(r)?;
            }
            println!("{v}");
            continue;
        }
        if let (true, Some(r)) = (a.show_routing, &g.routing) {
            let probs: Vec<String> = r
                .probabilities
                .iter()
                .map(|(c, p)| format!("{c}={p:.3}"))
                .collect();
            println!(
                "[routing] label={} confident={} p: {} experts: {}",
                r.label,
                r.confident,
                probs.join(" "),
                r.experts.join("+")
            );
        }
        println!("{}", g.text);
    }
    Ok(())
}
