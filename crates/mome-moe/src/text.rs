//! Text in, text out: prompts through a model folder, a GPT-2 (`config.json`) or a
//! mixture of modular experts (`moe_config.json`, routed with its router, a router
//! file or one named expert), with a tokenizer. The library side of
//! `mome generate`.
//!
//! ```no_run
//! use mome_moe::text::{generate_text, TextJob};
//!
//! # fn main() -> mome_moe::Result<()> {
//! let job = TextJob::new("runs/demo/moe/moe-ce/model", "runs/demo/tokenizer/tokenizer.json");
//! for g in generate_text(&job, &["def read_config(path):".to_string()])? {
//!     println!("{} [{:?}]", g.text, g.routing.map(|r| r.label));
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mome_data::tokenizer::load_tokenizer;
use mome_experts::{generate, GenerationConfig, Gpt2LmHeadModel};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::{Setting, UsedExperts};
use crate::error::{Error, Result};
use crate::generate::generate_routed;
use crate::io::{load_router, CONFIG_FILE, ROUTER_FILE};
use crate::model::MoeModel;
use crate::routing::{check_router_classes, LabelRouter, SequenceRouter};

/// What to generate with (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct TextJob {
    /// A GPT-2 or MoE folder.
    pub model: PathBuf,
    /// The `tokenizer.json` the model was trained with.
    pub tokenizer: PathBuf,
    /// Sampling settings (`eos_token_id` and `pad_token_id` come from the model).
    pub generation: GenerationConfig,
    /// Where the model runs.
    pub device: Device,
    /// MoE: route with this router file (default: the folder's `router.json`).
    pub router: Option<PathBuf>,
    /// MoE: send every prompt to this domain expert instead of routing.
    pub expert: Option<String>,
    /// MoE: the combination setting (default: the routed expert, plus the common
    /// expert when the model has one).
    pub setting: Option<Setting>,
}

impl TextJob {
    /// `model` with `tokenizer`, on the CPU, default sampling, MoE defaults.
    pub fn new(model: impl Into<PathBuf>, tokenizer: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            tokenizer: tokenizer.into(),
            generation: GenerationConfig::default(),
            device: Device::Cpu,
            router: None,
            expert: None,
            setting: None,
        }
    }
}

/// A MoE prompt's routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRouting {
    /// The router's class.
    pub label: String,
    /// Its probability per class.
    pub probabilities: BTreeMap<String, f32>,
    /// Whether the router was confident.
    pub confident: bool,
    /// The experts that generated.
    pub experts: Vec<String>,
}

/// One prompt's generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedText {
    /// The prompt.
    pub prompt: String,
    /// Prompt and continuation, decoded.
    pub text: String,
    /// Tokens generated.
    pub new_tokens: usize,
    /// A MoE's routing of the prompt.
    pub routing: Option<TextRouting>,
}

fn tokenizer_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what} ({}): {e}", path.display()))
}

/// Generates a continuation of every prompt (see the module docs).
pub fn generate_text(job: &TextJob, prompts: &[String]) -> Result<Vec<GeneratedText>> {
    let is_moe = job.model.join(CONFIG_FILE).is_file();
    if !is_moe && (job.router.is_some() || job.expert.is_some() || job.setting.is_some()) {
        return Err(Error::Config(format!(
            "a router, an expert and a setting (`--router`, `--expert`, `--setting`) are for a MoE folder; {} has no {CONFIG_FILE}",
            job.model.display()
        )));
    }
    let (tok, tok_sha) = load_tokenizer(&job.tokenizer)?;
    let vocab = tok.get_vocab_size(true) as i64;
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            tok.encode(p.as_str(), true)
                .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
                .map_err(|e| tokenizer_error("tokenizing a prompt", &job.tokenizer, e))
        })
        .collect::<Result<_>>()?;
    let decode = |prompt: &[i64], new: &[i64]| -> Result<String> {
        let all: Vec<u32> = prompt.iter().chain(new).map(|&i| i as u32).collect();
        tok.decode(&all, true)
            .map_err(|e| tokenizer_error("decoding", &job.tokenizer, e))
    };
    let cfg_for = |eos: Option<i64>| GenerationConfig {
        eos_token_id: eos,
        pad_token_id: eos.unwrap_or(0),
        ..job.generation.clone()
    };
    let wrong_tokenizer = |model_vocab: i64| {
        Error::Config(format!(
            "the tokenizer has {vocab} tokens but the model only {model_vocab}: wrong tokenizer for this model?"
        ))
    };
    if !is_moe {
        let (_vs, model) = Gpt2LmHeadModel::from_pretrained(&job.model, job.device)?;
        if vocab > model.config().vocab_size {
            return Err(wrong_tokenizer(model.config().vocab_size));
        }
        let outs = generate(&model, &ids, &cfg_for(model.config().eos_token_id))?;
        return prompts
            .iter()
            .zip(&ids)
            .zip(outs)
            .map(|((p, prompt), out)| {
                Ok(GeneratedText {
                    prompt: p.clone(),
                    text: decode(prompt, &out)?,
                    new_tokens: out.len(),
                    routing: None,
                })
            })
            .collect();
    }
    let (_vs, model) = MoeModel::load(&job.model, job.device)?;
    let ecfg = &model.config().expert;
    if vocab > ecfg.vocab_size {
        return Err(wrong_tokenizer(ecfg.vocab_size));
    }
    let setting = job
        .setting
        .clone()
        .unwrap_or_else(|| Setting::routed(model.config().common_expert));
    let router = moe_router(job, &model, &setting, &tok_sha)?;
    let outs = generate_routed(
        &model,
        router.as_ref(),
        &setting,
        &ids,
        &cfg_for(ecfg.eos_token_id),
    )?;
    let classes = router.classes().to_vec();
    prompts
        .iter()
        .zip(&ids)
        .zip(outs)
        .map(|((p, prompt), g)| {
            Ok(GeneratedText {
                prompt: p.clone(),
                text: decode(prompt, &g.tokens)?,
                new_tokens: g.tokens.len(),
                routing: Some(TextRouting {
                    label: classes[g.routing.label].clone(),
                    probabilities: classes
                        .iter()
                        .cloned()
                        .zip(g.routing.probabilities.iter().copied())
                        .collect(),
                    confident: g.routing.confident,
                    experts: g
                        .active
                        .iter()
                        .map(|&id| model.expert_name(id).to_string())
                        .collect(),
                }),
            })
        })
        .collect()
}

/// The router of a MoE generation: the job's expert, its router file, the folder's
/// `router.json`, or (for settings whose routing does not matter) the first domain.
fn moe_router(
    job: &TextJob,
    model: &MoeModel,
    setting: &Setting,
    tok_sha: &str,
) -> Result<Box<dyn SequenceRouter>> {
    let domains = model.domains().to_vec();
    if let Some(e) = &job.expert {
        return Ok(Box::new(LabelRouter::new(domains, e)?));
    }
    let router = match &job.router {
        Some(p) => Some(mome_router::Router::load(p)?),
        None => load_router(&job.model)?,
    };
    if let Some(r) = router {
        check_router_classes(r.classes(), model.config())?;
        if let Some(want) = r.tokenizer_sha256() {
            if want != tok_sha {
                return Err(Error::Config(format!(
                    "the router was trained with tokenizer {want}, the tokenizer given is {tok_sha}"
                )));
            }
        }
        return Ok(Box::new(r));
    }
    let routing_free = setting.average
        || matches!(&setting.used, UsedExperts::None)
        || matches!(&setting.used, UsedExperts::Some(v) if v.len() == 1)
        || domains.len() == 1;
    if !routing_free {
        return Err(Error::Config(format!(
            "{} has no {ROUTER_FILE}: give a router file (`mome generate --router FILE`), an expert (`--expert NAME`), or a setting that needs no routing (`--setting`: average=true, or a single used expert)",
            job.model.display()
        )));
    }
    Ok(Box::new(LabelRouter::new(domains.clone(), &domains[0])?))
}
