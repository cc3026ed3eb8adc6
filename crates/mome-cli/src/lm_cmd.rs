//! `mome eval`, `mome generate`: causal language models (method §3); `generate` also
//! runs a mixture of modular experts (routed, one KV cache per active expert).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use mome_core::DeviceSpec;
use mome_data::tokenizer::load_tokenizer;
use mome_experts::eval::evaluate_dir;
use mome_experts::{generate, GenerationConfig, Gpt2LmHeadModel};
use mome_moe::{
    check_router_classes, generate_routed, load_router, LabelRouter, MoeModel, SequenceRouter,
    Setting, UsedExperts, ROUTER_FILE,
};

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
    setting: Option<String>,
    /// MoE only: print each prompt's routing (label, probabilities, confident, experts).
    #[arg(long)]
    show_routing: bool,
}

/// Runs `mome generate`.
pub fn run_generate(a: GenerateArgs) -> Result<()> {
    if a.model.join(mome_moe::io::CONFIG_FILE).is_file() {
        return run_generate_moe(a);
    }
    if a.router.is_some() || a.expert.is_some() || a.setting.is_some() || a.show_routing {
        bail!(
            "--router, --expert, --setting and --show-routing are for a MoE folder; {} has no {}",
            a.model.display(),
            mome_moe::io::CONFIG_FILE
        );
    }
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
    let cfg = gen_config(&a, model.config().eos_token_id);
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

fn gen_config(a: &GenerateArgs, eos: Option<i64>) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        eos_token_id: eos,
        pad_token_id: eos.unwrap_or(0),
    }
}

/// The router of a MoE generation: `--expert`, `--router`, `MODEL/router.json`, or
/// (for settings whose routing does not matter) the first domain.
fn moe_router(
    a: &GenerateArgs,
    model: &MoeModel,
    setting: &Setting,
    tok_sha: &str,
) -> Result<Box<dyn SequenceRouter>> {
    let domains = model.domains().to_vec();
    if let Some(e) = &a.expert {
        return Ok(Box::new(LabelRouter::new(domains, e)?));
    }
    let router = match &a.router {
        Some(p) => Some(
            mome_router::Router::load(p)
                .with_context(|| format!("loading router {}", p.display()))?,
        ),
        None => load_router(&a.model)?,
    };
    if let Some(r) = router {
        check_router_classes(r.classes(), model.config())?;
        if let Some(want) = r.tokenizer_sha256() {
            if want != tok_sha {
                bail!("the router was trained with tokenizer {want}, --tokenizer is {tok_sha}");
            }
        }
        return Ok(Box::new(r));
    }
    let routing_free = setting.average
        || matches!(&setting.used, UsedExperts::None)
        || matches!(&setting.used, UsedExperts::Some(v) if v.len() == 1)
        || domains.len() == 1;
    if !routing_free {
        bail!(
            "{} has no {ROUTER_FILE}: give --router FILE, --expert NAME, or a --setting that needs no routing (average=true, or a single used expert)",
            a.model.display()
        );
    }
    Ok(Box::new(LabelRouter::new(domains.clone(), &domains[0])?))
}

fn run_generate_moe(a: GenerateArgs) -> Result<()> {
    let device = a.device.resolve()?;
    let (tok, tok_sha) = load_tokenizer(&a.tokenizer)?;
    let (_vs, model) = MoeModel::load(&a.model, device)
        .with_context(|| format!("loading MoE {}", a.model.display()))?;
    let ecfg = &model.config().expert;
    let vocab = tok.get_vocab_size(true) as i64;
    if vocab > ecfg.vocab_size {
        bail!(
            "the tokenizer has {vocab} tokens but the model only {}: wrong tokenizer for this model?",
            ecfg.vocab_size
        );
    }
    let setting: Setting = match &a.setting {
        Some(s) => s.parse()?,
        None => Setting::routed(model.config().common_expert),
    };
    let router = moe_router(&a, &model, &setting, &tok_sha)?;
    let mut prompts = Vec::new();
    for p in &a.prompt {
        let enc = tok
            .encode(p.as_str(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
        prompts.push(enc.get_ids().iter().map(|&i| i as i64).collect::<Vec<_>>());
    }
    let cfg = gen_config(&a, ecfg.eos_token_id);
    let outs = generate_routed(&model, router.as_ref(), &setting, &prompts, &cfg)?;
    let classes = router.classes().to_vec();
    for ((p, prompt), g) in a.prompt.iter().zip(&prompts).zip(outs) {
        let ids: Vec<u32> = prompt.iter().chain(&g.tokens).map(|&i| i as u32).collect();
        let text = tok
            .decode(&ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        let experts: Vec<&str> = g.active.iter().map(|&id| model.expert_name(id)).collect();
        let probabilities: serde_json::Map<String, serde_json::Value> = classes
            .iter()
            .zip(&g.routing.probabilities)
            .map(|(c, &p)| (c.clone(), serde_json::json!(p)))
            .collect();
        let routing = serde_json::json!({
            "label": classes[g.routing.label],
            "probabilities": probabilities,
            "confident": g.routing.confident,
            "experts": experts,
        });
        if a.json {
            let mut v =
                serde_json::json!({"prompt": p, "text": text, "new_tokens": g.tokens.len()});
            if a.show_routing {
                v["routing"] = routing;
            }
            println!("{v}");
        } else {
            if a.show_routing {
                let probs: Vec<String> = classes
                    .iter()
                    .zip(&g.routing.probabilities)
                    .map(|(c, p)| format!("{c}={p:.3}"))
                    .collect();
                println!(
                    "[routing] label={} confident={} p: {} experts: {}",
                    classes[g.routing.label],
                    g.routing.confident,
                    probs.join(" "),
                    experts.join("+")
                );
            }
            println!("{text}");
        }
    }
    Ok(())
}
