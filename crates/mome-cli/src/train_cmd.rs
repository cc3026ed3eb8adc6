//! `mome train --config FILE.toml [--resume]`: train a GPT-2 causal LM from scratch
//! on token shards (method §3: the teacher and the students share this code).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use mome_core::data::ShardBatches;
use mome_core::trainer::{TrainConfig, Trainer};
use mome_core::DeviceSpec;
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::ShardSet;
use mome_data::tokenizer::load_tokenizer;
use mome_experts::{causal_lm_loss, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use serde::Deserialize;
use tch::{nn, Tensor};

use mome_experts::eval::{evaluate, open_shards_for};

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
    /// Applies the overrides to a config's run folder, device and training settings,
    /// validating the training settings again when they change.
    pub fn apply(
        &self,
        out_dir: &mut PathBuf,
        device: &mut DeviceSpec,
        train: &mut TrainConfig,
    ) -> Result<()> {
        if let Some(out) = &self.out {
            *out_dir = out.clone();
        }
        if let Some(d) = self.device {
            *device = d;
        }
        if let Some(n) = self.max_steps {
            train.max_steps = n;
            train.validate()?;
        }
        train.quiet |= self.quiet;
        Ok(())
    }
}

/// Arguments of `mome train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// The whole `mome train` config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    /// Run folder: checkpoints, metrics.jsonl, the final model in `model/`.
    pub out_dir: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[serde(default)]
    pub device: DeviceSpec,
    /// The model: a preset and/or Hugging Face GPT-2 config fields.
    pub model: toml::Table,
    /// Data and sampler.
    pub data: DataSection,
    /// Evaluation during training.
    #[serde(default)]
    pub eval: EvalSection,
    /// Optimiser, schedule, steps, precision (mome-core's `TrainConfig`).
    pub train: TrainConfig,
}

/// `[data]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Shard folder made by `mome data encode`.
    pub shards: PathBuf,
    /// Optional tokenizer.json, checked against the shards' tokenizer hash.
    pub tokenizer: Option<PathBuf>,
    /// balanced | mixed | blocks | sequential
    #[serde(default = "default_sampler")]
    pub sampler: SamplerKind,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Domains to train on, in order (empty = all).
    #[serde(default)]
    pub domains: Vec<String>,
}

fn default_sampler() -> SamplerKind {
    SamplerKind::Mixed
}

/// `[eval]` (also each stage's `[*.eval]` in a pipeline config)
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Validation sequences per domain at each evaluation (0 = all).
    #[serde(default = "default_eval_max")]
    pub max_sequences: usize,
    /// Sequences per forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

fn default_eval_max() -> usize {
    64
}
pub(crate) fn default_eval_batch() -> usize {
    8
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            max_sequences: default_eval_max(),
            batch_size: default_eval_batch(),
        }
    }
}

/// Builds a [`Gpt2Config`] from a `[model]` table: `preset` (teacher-medium,
/// student-6l, student-3l, custom) plus Hugging Face GPT-2 fields that override it.
/// Unknown keys are rejected by name; `vocab_size` defaults to the shards' vocabulary.
pub fn model_config(table: &toml::Table, shards_vocab: usize) -> Result<Gpt2Config> {
    let vocab = table
        .get("vocab_size")
        .and_then(|v| v.as_integer())
        .unwrap_or(shards_vocab as i64);
    let preset = table.get("preset").map(|v| v.as_str().unwrap_or(""));
    let base = match preset {
        None | Some("custom") => Gpt2Config {
            vocab_size: vocab,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            ..Gpt2Config::student_3l(vocab)
        },
        Some("teacher-medium") => Gpt2Config::teacher_medium(vocab),
        Some("student-6l") => Gpt2Config::student_6l(vocab),
        Some("student-3l") => Gpt2Config::student_3l(vocab),
        Some(p) => bail!(
            "[model] preset = {p:?}: unknown preset (expected teacher-medium, student-6l, student-3l or custom)"
        ),
    };
    let mut json = serde_json::to_value(&base)?;
    let obj = json
        .as_object_mut()
        .context("internal: GPT-2 config is not an object")?;
    for (key, value) in table {
        if key == "preset" {
            continue;
        }
        if !obj.contains_key(key) {
            bail!("[model] unknown key `{key}` (expected preset or a Hugging Face GPT-2 config field such as n_layer, n_embd, n_head, n_positions, resid_pdrop)");
        }
        obj.insert(key.clone(), serde_json::to_value(value)?);
    }
    let cfg: Gpt2Config =
        serde_json::from_value(json).context("[model] invalid GPT-2 config field")?;
    cfg.validate()?;
    Ok(cfg)
}

/// Reads a TOML config file; unknown keys are errors naming the key.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
}

/// Checks the sections shared by training configs before any work starts.
pub fn validate_sections(
    path: &Path,
    train: &TrainConfig,
    data_batch_size: usize,
    eval: &EvalSection,
) -> Result<()> {
    train
        .validate()
        .with_context(|| format!("invalid [train] in {}", path.display()))?;
    if data_batch_size == 0 {
        bail!("[data] batch_size must be > 0");
    }
    if eval.batch_size == 0 {
        bail!("[eval] batch_size must be > 0");
    }
    Ok(())
}

/// Reads and validates a train config file (every check runs before any work).
pub fn load_train_file(path: &Path) -> Result<TrainFile> {
    let file: TrainFile = read_toml(path)?;
    validate_sections(path, &file.train, file.data.batch_size, &file.eval)?;
    Ok(file)
}

/// Data parallel (`mome launch`): this process's `(rank, world size)` from the
/// environment (`(0, 1)` without it), checking that the global batch of
/// `batch_size` sequences splits evenly over the ranks.
pub fn data_parallel_rank(batch_size: usize) -> Result<(usize, usize)> {
    let (rank, world) =
        mome_core::dist::DistEnv::from_env()?.map_or((0, 1), |e| (e.rank, e.world_size));
    if batch_size % world != 0 {
        bail!(
            "[data] batch_size = {batch_size} cannot be split over {world} ranks: it must be a multiple of the world size (the global batch is split, see docs/gpu.md)"
        );
    }
    Ok((rank, world))
}

/// Runs `mome train`.
pub fn run_train(a: TrainArgs) -> Result<()> {
    let a = a.run;
    let mut file = load_train_file(&a.config)?;
    a.apply(&mut file.out_dir, &mut file.device, &mut file.train)?;
    data_parallel_rank(file.data.batch_size)?;
    let device = file.device.resolve()?;
    file.train.precision.validate(device)?;

    let shards = ShardSet::open(&file.data.shards)
        .with_context(|| format!("opening shards {}", file.data.shards.display()))?;
    if let Some(tok) = &file.data.tokenizer {
        let (_, sha) = load_tokenizer(tok)?;
        shards.check_tokenizer(&sha)?;
    }
    let cfg = model_config(&file.model, shards.vocab_size())?;

    // Seeded initialisation: the same config gives the same initial weights.
    tch::manual_seed(file.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut model = Gpt2LmHeadModel::new(&vs.root(), &cfg)?;
    model.set_compute_kind(file.train.precision.compute_kind())?;
    let eval_shards = open_shards_for(&model, &file.data.shards)?;
    let counts = model.param_count();
    if !file.train.quiet {
        eprintln!(
            "model: {} layers, d={}, {} heads, {} positions, vocab {}: {:.2}M parameters ({:.2}M non-embedding) on {:?}, {:?}",
            cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions, cfg.vocab_size,
            counts.total as f64 / 1e6, counts.non_embedding as f64 / 1e6, device, file.train.precision
        );
    }
    let mut source = ShardBatches::new(
        shards,
        "train",
        SamplerConfig {
            kind: file.data.sampler,
            batch_size: file.data.batch_size,
            seed: file.train.seed,
            domains: file.data.domains.clone(),
        },
    )?;
    let has_validation = eval_shards.splits().iter().any(|s| s == "validation");

    let mut trainer = Trainer::new_data_parallel(file.train.clone(), &vs, &file.out_dir, a.resume)?;
    let config_json = cfg.to_hf_json()?.into_bytes();
    let mut loss_fn = |ids: &Tensor| -> mome_core::Result<Tensor> {
        let out = model.forward(Gpt2Input::ids(ids).train(true))?;
        Ok(causal_lm_loss(&out.logits, ids, None)?)
    };
    let (eval_max, eval_batch) = (file.eval.max_sequences, file.eval.batch_size);
    let model_ref = &model;
    let mut eval_fn = |_step: u64| -> mome_core::Result<serde_json::Value> {
        let r = evaluate(model_ref, &eval_shards, "validation", eval_max, eval_batch)?;
        let mut v = serde_json::json!({"val_loss": r.mean_loss, "val_ppl": r.mean_perplexity});
        for (d, e) in &r.domains {
            v[format!("val_loss_{d}")] = serde_json::json!(e.loss);
        }
        Ok(v)
    };
    let summary = trainer.run(
        &mut source,
        &mut loss_fn,
        if has_validation {
            Some(&mut eval_fn)
        } else {
            None
        },
        &[("config.json", config_json)],
    )?;
    if !trainer.is_primary() {
        // Data parallel: rank 0 writes the model and the summary.
        return Ok(());
    }
    let model_dir = file.out_dir.join("model");
    model.save_pretrained(&model_dir)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model_dir": model_dir,
            "start_step": summary.start_step,
            "final_step": summary.final_step,
            "final_loss": summary.final_loss,
            "tokens_seen": summary.tokens_seen,
            "elapsed_s": summary.elapsed_s,
            "last_eval": summary.last_eval,
            "parameters": counts.total,
            "non_embedding_parameters": counts.non_embedding,
        }))?
    );
    Ok(())
}
