//! Training a GPT-2 causal language model from scratch on token shards: the job of
//! `mome train` (method §3: the teacher and the students share this code).
//!
//! [`LmParams`] is the config file (`out_dir`, `device`, `[model]`, `[data]`,
//! `[eval]`, `[train]`); [`ParamGuard::check`] opens the shards, resolves the model
//! shape and validates everything once into an [`LmJob`]; [`train_lm`] runs it with
//! mome-core's [`Trainer`] and [`LmObjective`] (next-token cross-entropy), and
//! [`bench_lm`] times that same step on random tokens.
//!
//! ```no_run
//! use mome_core::ParamGuard;
//! use mome_experts::train::{train_lm, LmParams};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut params: LmParams = mome_core::job::read_toml("configs/train-tiny.toml".as_ref())?;
//! params.train.max_steps = 20;
//! let summary = train_lm(&params.check()?)?;
//! println!("{} -> loss {:?}", summary.model_dir.display(), summary.train.final_loss);
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;

use mome_core::fusion::{KernelConfig, LinearCe};
use mome_core::job::{data_parallel_rank, DataParams, EvalParams};
use mome_core::trainer::{Batch, BenchOptions, BenchTiming, Objective, StepInfo};
use mome_core::{DeviceSpec, ParamGuard, Profiler, TrainConfig, TrainSummary, Trainer};
use mome_data::shards::ShardSet;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::eval::validation_metrics;
use crate::{
    causal_lm_head_loss, Error, Gpt2Config, Gpt2Input, Gpt2LmHeadModel, ModelSpec, Result,
};

/// The `mome train` config file (unchecked; see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmParams {
    /// Run folder: `checkpoints/`, `metrics.jsonl`, the final model in `model/`.
    pub out_dir: PathBuf,
    /// `auto` | `cpu` | `cuda` | `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// The model: a preset and/or Hugging Face GPT-2 fields.
    pub model: ModelSpec,
    /// Shards and sampler.
    pub data: DataParams,
    /// Validation during training.
    #[serde(default)]
    pub eval: EvalParams,
    /// Optimizer, schedule, steps, precision, seed.
    pub train: TrainConfig,
    /// Continue from the latest checkpoint of `out_dir` (a run option, not a key of
    /// the file).
    #[serde(skip)]
    pub resume: bool,
}

/// A checked [`LmParams`]: the resolved device and model shape.
#[derive(Debug, Clone)]
pub struct LmJob {
    params: LmParams,
    device: Device,
    model: Gpt2Config,
}

impl LmParams {
    /// Everything that needs no shards, with the model's vocabulary defaulting to
    /// `vocab` and its positions checked against `seq_len`.
    pub fn check_shape(&self, vocab: usize, seq_len: usize) -> Result<LmJob> {
        self.train.validate()?;
        self.data.validate()?;
        self.eval.validate()?;
        let device = self.device.resolve()?;
        self.train.precision.validate(device)?;
        let model = self.model.resolve(vocab)?;
        check_fits(&model, vocab, seq_len, "the model")?;
        Ok(LmJob {
            params: self.clone(),
            device,
            model,
        })
    }
}

/// Checks that a model of `cfg` reads token ids below `vocab` in sequences of
/// `seq_len` (`what` names it in errors).
pub fn check_fits(cfg: &Gpt2Config, vocab: usize, seq_len: usize, what: &str) -> Result<()> {
    if (cfg.vocab_size as usize) < vocab {
        return Err(Error::Config(format!(
            "{what} has a vocabulary of {} tokens, the shards {vocab}",
            cfg.vocab_size
        )));
    }
    if seq_len as i64 > cfg.n_positions {
        return Err(Error::Config(format!(
            "the shards hold {seq_len}-token sequences but {what} has {} positions",
            cfg.n_positions
        )));
    }
    Ok(())
}

impl ParamGuard for LmParams {
    type Checked = LmJob;
    type Error = Error;
    /// Opens the shards (checked against the tokenizer), then [`LmParams::check_shape`]
    /// with their vocabulary and sequence length, and the data-parallel batch split.
    fn check(&self) -> Result<LmJob> {
        let shards = self.data.open()?;
        data_parallel_rank(self.data.batch_size)?;
        self.check_shape(shards.vocab_size(), shards.seq_len())
    }
}

impl LmJob {
    /// The validated parameters.
    pub fn params(&self) -> &LmParams {
        &self.params
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }
    /// The resolved model shape.
    pub fn model(&self) -> &Gpt2Config {
        &self.model
    }

    /// The model, built with the run seed's initialisation in the compute kind of
    /// the run's precision.
    pub fn build_model(&self) -> Result<(nn::VarStore, Gpt2LmHeadModel)> {
        seeded_model(&self.model, self.device, &self.params.train)
    }
}

/// A model of `cfg` on `device`, initialised under `train.seed` (the same config
/// gives the same weights) and set to `train.precision`'s compute kind and
/// `train.kernels`.
pub fn seeded_model(
    cfg: &Gpt2Config,
    device: Device,
    train: &TrainConfig,
) -> Result<(nn::VarStore, Gpt2LmHeadModel)> {
    // libtorch's generator is process-global: ranks on threads of one process
    // (dist::LocalGroup) must not interleave their seeded initialisations.
    let vs = nn::VarStore::new(device);
    let mut model = {
        let _init = mome_core::rng::lock_default_generator();
        tch::manual_seed(train.seed as i64);
        Gpt2LmHeadModel::new(&vs.root(), cfg)?
    };
    model.set_compute_kind(train.precision.compute_kind())?;
    model.set_kernels(&train.kernels);
    Ok((vs, model))
}

/// Next-token cross-entropy of a GPT-2: the objective of `mome train` (and of
/// `mome bench train --mode lm`). The LM head and its loss run by the path of
/// `[train.kernels] linear_ce` ([`causal_lm_head_loss`]; the reference path upcasts
/// inside its log-softmax), and the ids are trusted (the shards' reader checked them
/// on the host).
#[derive(Debug)]
pub struct LmObjective<'a> {
    model: &'a Gpt2LmHeadModel,
    how: LinearCe,
    kernels: KernelConfig,
}

impl<'a> LmObjective<'a> {
    /// The objective of `model` with the run's `kernels` (resolved for the model's
    /// device and compute kind: an unusable `fused` is an error here, before training).
    pub fn new(model: &'a Gpt2LmHeadModel, kernels: &KernelConfig) -> Result<Self> {
        let how = kernels
            .linear_ce
            .resolve(model.device(), model.compute_kind())?;
        Ok(Self {
            model,
            how,
            kernels: *kernels,
        })
    }

    /// The loss path in use.
    pub fn linear_ce(&self) -> LinearCe {
        self.how
    }
}

impl Objective for LmObjective<'_> {
    type Error = Error;
    fn loss(&mut self, batch: &Batch, _at: StepInfo, prof: &mut Profiler) -> Result<Tensor> {
        let out = self
            .model
            .transformer()
            .forward(Gpt2Input::ids(&batch.ids).train(true).trusted_ids(true))?;
        prof.mark("forward");
        let loss = causal_lm_head_loss(
            self.model,
            &out.last_hidden_state,
            &batch.ids,
            self.how,
            &self.kernels,
        )?;
        prof.mark("loss");
        Ok(loss)
    }
}

/// What [`train_lm`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmSummary {
    /// The final model folder (Hugging Face layout; written by rank 0).
    pub model_dir: PathBuf,
    /// The trainer's summary.
    #[serde(flatten)]
    pub train: TrainSummary,
    /// Parameters of the model.
    pub parameters: i64,
    /// Parameters without embeddings and an untied head.
    pub non_embedding_parameters: i64,
    /// This process's rank (data parallel; 0 otherwise).
    pub rank: usize,
}

/// Trains (or, with `resume`, continues) the job's model to `train.max_steps` and
/// writes it to `out_dir/model`. Data parallel under `mome launch --gpus N`.
pub fn train_lm(job: &LmJob) -> Result<LmSummary> {
    let p = &job.params;
    let (vs, model) = job.build_model()?;
    let counts = model.param_count();
    let cfg = &job.model;
    if !p.train.quiet {
        eprintln!(
            "model: {} layers, d={}, {} heads, {} positions, vocab {}: {:.2}M parameters ({:.2}M non-embedding) on {:?}, {:?}",
            cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions, cfg.vocab_size,
            counts.total as f64 / 1e6, counts.non_embedding as f64 / 1e6, job.device, p.train.precision
        );
    }
    let shards = ShardSet::open(&p.data.shards)?;
    let eval_shards = ShardSet::open(&p.data.shards)?;
    let has_validation = eval_shards.splits().iter().any(|s| s == "validation");
    let mut source = p
        .data
        .source(shards, "train", p.train.seed, None, job.device, None)?;
    let mut trainer = Trainer::new_data_parallel(p.train.clone(), &vs, &p.out_dir, p.resume)?;
    let model_ref = &model;
    let mut eval_fn = |_step: u64| -> Result<serde_json::Value> {
        validation_metrics(model_ref, &eval_shards, &p.eval)
    };
    let summary = trainer.run(
        source.as_mut(),
        &mut LmObjective::new(&model, &p.train.kernels)?,
        if has_validation {
            Some(&mut eval_fn)
        } else {
            None
        },
        &[("config.json", cfg.to_hf_json()?.into_bytes())],
    )?;
    let model_dir = p.out_dir.join("model");
    if trainer.is_primary() {
        model.save_pretrained(&model_dir)?;
    }
    Ok(LmSummary {
        model_dir,
        train: summary,
        parameters: counts.total,
        non_embedding_parameters: counts.non_embedding,
        rank: trainer.rank(),
    })
}

/// What [`bench_lm`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmBench {
    /// The step's timing.
    pub timing: BenchTiming,
    /// Parameters of the model.
    pub parameters: i64,
    /// Model FLOPs per trained token ([`Gpt2LmHeadModel::train_flops_per_token`]).
    pub flops_per_token: f64,
    /// The LM head + cross-entropy path of the step (`auto` resolved).
    pub linear_ce: LinearCe,
}

/// Times [`train_lm`]'s step (same model, objective and trainer step) on random
/// tokens: `job.data.batch_size` sequences of `seq_len` tokens per micro-batch.
pub fn bench_lm(job: &LmJob, seq_len: usize, opts: &BenchOptions) -> Result<LmBench> {
    let p = &job.params;
    let (vs, model) = job.build_model()?;
    let mut source = mome_core::job::prefetched(
        mome_core::data::RandomBatches::new(
            job.model.vocab_size,
            p.data.batch_size,
            seq_len,
            1,
            Vec::new(),
            p.train.seed,
        )?,
        p.data.prefetch,
        job.device,
        None,
    );
    let mut trainer = Trainer::detached(p.train.clone(), &vs)?;
    let mut objective = LmObjective::new(&model, &p.train.kernels)?;
    let timing = trainer.bench(source.as_mut(), &mut objective, opts)?;
    Ok(LmBench {
        linear_ce: objective.linear_ce(),
        timing,
        parameters: model.param_count().total,
        flops_per_token: model.train_flops_per_token(seq_len as i64),
    })
}
