//! JEET / MoE-CE training (method §6) on mome-core's [`Trainer`]: the job of
//! `mome moe train` ([`MoeTrainParams`] → [`MoeTrainJob`] → [`run_moe_training`]),
//! the lower-level [`train_moe`] over a model and shards, and [`bench_moe`], which
//! times the same step on random tokens.
//!
//! With the `blocks` sampler every batch holds one domain. For each optimizer step
//! the batch's domain expert is the only domain expert with `requires_grad = true`;
//! the other domain experts are frozen for that step (`set_requires_grad(false)`,
//! which AdamW skips entirely: no gradient, no weight decay, no moment update) and
//! everything is unfrozen when training ends. The shared embedding and head, and
//! the common expert (MoE-CE), are trained on every batch. With `grad_accum > 1`,
//! the experts of all micro-batches of a step are trainable in that step.
//!
//! **Data parallel** (under `mome launch --gpus N`, or with [`RunOptions::group`]):
//! every rank draws the same global batch (so the same domain, and the same
//! trainable experts) and trains on its `1/N` of the rows through mome-core's
//! [`Trainer`]. The frozen experts have no gradient and are skipped by the
//! all-reduce.
//!
//! Loss: a [`MoeLoss`] gets `(logits, batch, domain)` and returns the scalar loss.
//! [`CrossEntropy`] is the next-token loss on the data; the method's knowledge
//! distillation from the teacher is [`crate::kd::DistillLoss`] (mome-distill's
//! [`mome_distill::KdTerm`], the same code as `mome distill`).

use std::path::{Path, PathBuf};

use mome_core::data::{PrefetchHook, RandomBatches, ShardBatches};
use mome_core::dist::GroupHandle;
use mome_core::fusion::{KernelConfig, LinearCe};
use mome_core::job::{data_parallel_rank, prefetched, EvalParams};
use mome_core::linear_ce::{linear_cross_entropy, LinearCrossEntropy};
use mome_core::trainer::{
    Batch, BatchSource, BenchOptions, BenchTiming, EvalFn, Objective, RunContext, StepInfo,
    TrainConfig, TrainSummary, Trainer,
};
use mome_core::{DeviceSpec, ParamGuard, Profiler};
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::ShardSet;
use mome_distill::{DistillSettings, TeacherSection};
use mome_experts::train::check_fits;
use mome_experts::{Gpt2Config, ModelSpec};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::config::{Arch, ExpertId, MoeConfig, Setting};
use crate::error::{Error, Result};
use crate::eval::{evaluate_settings, EvalOptions};
use crate::kd::DistillLoss;
use crate::model::{MoeHeads, MoeModel};
use crate::routing::{ExpertChoice, ResolvedSetting};

/// The training loss of one batch of a known domain.
pub trait MoeLoss {
    /// `logits` `[B, T, V]` (the compute kind), `batch` the micro-batch on the
    /// device (this rank's rows), `domain` the expert index.
    fn loss(
        &mut self,
        logits: &Tensor,
        batch: &Batch,
        domain: usize,
        at: StepInfo,
        prof: &mut Profiler,
    ) -> Result<Tensor>;
    /// The loss straight from the forward's LM heads, without the logits, when this
    /// loss can compute it (`None`: the objective makes the logits and calls
    /// [`MoeLoss::loss`]). The default returns `None`.
    fn head_loss(
        &mut self,
        _heads: &MoeHeads,
        _batch: &Batch,
        _domain: usize,
        _at: StepInfo,
        _prof: &mut Profiler,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Called once after the trainer is set up (and a checkpoint restored), before
    /// the first batch. The default does nothing.
    fn begin(&mut self, _ctx: &RunContext<'_>) -> Result<()> {
        Ok(())
    }
    /// After each optimizer step (`sync`: the trainer's sync steps).
    fn end_step(&mut self, _step: u64, _sync: bool) -> Result<()> {
        Ok(())
    }
    /// Checks that the loss can train on `split` of `shards` (a teacher cache built
    /// for them); called before anything is written.
    fn check_data(&self, _shards: &ShardSet, _split: &str) -> Result<()> {
        Ok(())
    }
    /// Work for the batch source's reader thread (a teacher cache's rows).
    fn source_hook(&self) -> Option<PrefetchHook> {
        None
    }
}

/// Shifted next-token cross-entropy on the data. Its LM head and loss run by the
/// path of `[train.kernels] linear_ce` ([`mome_core::linear_ce`]) whenever the batch's
/// heads are one linear map ([`MoeHeads::as_linear`]: always for single-domain
/// batches), and through the logits otherwise.
/// `Default` is the reference path.
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropy {
    how: LinearCe,
    kernels: KernelConfig,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        Self {
            how: LinearCe::Reference,
            kernels: KernelConfig::default(),
        }
    }
}

impl CrossEntropy {
    /// The loss of `model` with the run's `kernels` (resolved for the model's device
    /// and compute kind: an unusable `fused` is an error here, before training).
    pub fn new(kernels: &KernelConfig, model: &MoeModel) -> Result<Self> {
        Ok(Self {
            how: kernels
                .linear_ce
                .resolve(model.device(), model.compute_kind())?,
            kernels: *kernels,
        })
    }

    /// The LM head + cross-entropy path in use.
    pub fn linear_ce(&self) -> LinearCe {
        self.how
    }
}

impl MoeLoss for CrossEntropy {
    fn loss(
        &mut self,
        logits: &Tensor,
        batch: &Batch,
        _domain: usize,
        _at: StepInfo,
        prof: &mut Profiler,
    ) -> Result<Tensor> {
        let l = mome_experts::causal_lm_loss(logits, &batch.ids, None)?;
        prof.mark("loss");
        Ok(l)
    }

    fn head_loss(
        &mut self,
        heads: &MoeHeads,
        batch: &Batch,
        _domain: usize,
        _at: StepInfo,
        prof: &mut Profiler,
    ) -> Result<Option<Tensor>> {
        let how = self.how;
        if how == LinearCe::Reference {
            return Ok(None);
        }
        let Some((hidden, weight)) = heads.as_linear() else {
            return Ok(None);
        };
        let targets = mome_experts::next_token_targets(&batch.ids, None)?;
        let l = linear_cross_entropy(
            &LinearCrossEntropy {
                hidden: &hidden,
                weight: &weight,
                targets: &targets,
                compute: heads.compute_kind(),
            },
            how,
            &self.kernels,
        )?;
        prof.mark("loss");
        Ok(Some(l))
    }
}

/// The step's objective: the routed forward of the batch's domain expert (plus the
/// common expert) with the others frozen, then the [`MoeLoss`].
struct MoeObjective<'a> {
    model: &'a MoeModel,
    setting: ResolvedSetting,
    loss: &'a mut dyn MoeLoss,
    /// Source domain index → expert index (set by `begin`).
    to_expert: Vec<usize>,
    this_step: Vec<usize>,
}

impl<'a> MoeObjective<'a> {
    fn new(model: &'a MoeModel, loss: &'a mut dyn MoeLoss) -> Result<Self> {
        if model.arch() == Arch::Ple {
            return Err(Error::Config(
                "PLE experts are trained separately (distillation) and frozen; train jeet or moe-ce"
                    .into(),
            ));
        }
        let setting = ResolvedSetting::new(
            &Setting::routed(model.config().common_expert),
            model.config(),
        )?;
        Ok(Self {
            model,
            setting,
            loss,
            to_expert: Vec::new(),
            this_step: Vec::new(),
        })
    }
}

/// Source domains → expert indices, or the domains that have no expert.
fn expert_map(model: &MoeModel, domains: &[String]) -> Result<Vec<usize>> {
    let mut to_expert = Vec::new();
    let mut unknown = Vec::new();
    for d in domains {
        match model.config().domain_index(d) {
            Some(i) => to_expert.push(i),
            None => unknown.push(d.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(Error::Routing(format!(
            "training domains {unknown:?} are not experts of the model (experts: {:?})",
            model.domains()
        )));
    }
    Ok(to_expert)
}

impl Objective for MoeObjective<'_> {
    type Error = Error;
    fn begin(&mut self, ctx: &RunContext<'_>) -> Result<()> {
        self.to_expert = expert_map(self.model, ctx.domains)?;
        self.loss.begin(ctx)
    }
    fn loss(&mut self, batch: &Batch, at: StepInfo, prof: &mut Profiler) -> Result<Tensor> {
        let d = batch
            .domain
            .and_then(|d| self.to_expert.get(d).copied())
            .ok_or_else(|| {
                Error::Config(
                    "MoE training needs single-domain batches (sampler = \"blocks\")".into(),
                )
            })?;
        if at.micro == 0 {
            self.this_step.clear();
        }
        if !self.this_step.contains(&d) {
            self.this_step.push(d);
        }
        for i in 0..self.model.domains().len() {
            self.model
                .set_expert_trainable(ExpertId::Domain(i), self.this_step.contains(&i))?;
        }
        let b = batch.ids.size()[0] as usize;
        let choices = vec![ExpertChoice::label(d, self.model.domains().len()); b];
        let heads = self
            .model
            .forward_heads_resolved(&batch.ids, &choices, &self.setting, true)?;
        prof.mark("forward");
        if let Some(l) = self.loss.head_loss(&heads, batch, d, at, prof)? {
            return Ok(l);
        }
        let logits = heads.logits()?;
        self.loss.loss(&logits, batch, d, at, prof)
    }
    fn end_step(&mut self, step: u64, sync: bool) -> Result<()> {
        self.loss.end_step(step, sync)
    }
}

/// Where [`train_moe`] runs.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    /// Run folder: `checkpoints/`, `metrics.jsonl`.
    pub run_dir: &'a Path,
    /// Continue from the latest checkpoint of `run_dir`.
    pub resume: bool,
    /// Data parallel: this rank's process group. `None`: the group the environment
    /// describes (`mome launch`; none when `MOME_WORLD_SIZE` is not set).
    pub group: Option<&'a GroupHandle>,
    /// Read batches ahead on a thread ([`mome_core::job::DataParams::prefetch`]).
    pub prefetch: bool,
}

/// Trains a JEET or MoE-CE model (built at the root of `vs`) on `source`, whose
/// sampler must be `blocks` and whose domains must all be experts of the model.
///
/// Runs mome-core's [`Trainer`] in `run_dir` (checkpoints, `metrics.jsonl`, exact
/// resume with `resume`); `eval_fn` is handed to the trainer as is. Every parameter
/// is trainable again afterwards, also on error. Under `mome launch --gpus N` (or with
/// [`RunOptions::group`]) it is data parallel (see the module docs); every rank calls
/// it with the same model, source and config.
pub fn train_moe(
    model: &MoeModel,
    vs: &nn::VarStore,
    source: ShardBatches,
    cfg: TrainConfig,
    run: &RunOptions<'_>,
    loss: &mut dyn MoeLoss,
    eval_fn: Option<&mut EvalFn<'_, Error>>,
) -> Result<TrainSummary> {
    expert_map(model, source.domains())?;
    loss.check_data(source.shards(), source.split())?;
    let mut source = prefetched(source, run.prefetch, vs.device(), loss.source_hook());
    let mut objective = MoeObjective::new(model, loss)?;
    let group = match run.group {
        Some(g) => Some(g.clone()),
        None => mome_core::dist::init_from_env(vs.device())?.map(GroupHandle::new),
    };
    model.set_all_trainable(true);
    let mut trainer = Trainer::with_group(cfg, vs, run.run_dir, run.resume, group)?;
    let config_json = serde_json::to_vec_pretty(model.config())?;
    let result = trainer.run(
        source.as_mut(),
        &mut objective,
        eval_fn,
        &[(crate::io::CONFIG_FILE, config_json)],
    );
    model.set_all_trainable(true);
    result
}

fn default_true() -> bool {
    true
}

/// `[moe]` of a `mome moe train` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeSection {
    /// `jeet` or `moe-ce`.
    pub arch: Arch,
    /// Domains in expert order (empty: the train split's domains).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Non-confident routings go to the common expert alone (default true).
    #[serde(default = "default_true")]
    pub low_confidence_to_common: bool,
}

/// `[data]` of a `mome moe train` config (the sampler is always `blocks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeDataParams {
    /// Shard folder made by `mome data encode`.
    pub shards: PathBuf,
    /// Optional `tokenizer.json`, checked against the shards' tokenizer hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Sequences per (single-domain) micro-batch.
    pub batch_size: usize,
    /// Read batches ahead on a thread (default true).
    #[serde(default = "default_true")]
    pub prefetch: bool,
}

/// The `mome moe train` config file (unchecked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeTrainParams {
    /// Run folder: checkpoints, metrics.jsonl, the final MoE folder in `model/`.
    pub out_dir: PathBuf,
    /// `auto` | `cpu` | `cuda` | `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Architecture and domains.
    pub moe: MoeSection,
    /// Expert shape: a preset and/or Hugging Face GPT-2 fields.
    pub model: ModelSpec,
    /// Shards and batch size.
    pub data: MoeDataParams,
    /// Evaluation during training (routed setting).
    #[serde(default)]
    pub eval: EvalParams,
    /// Optional teacher (as `mome distill`'s): the experts are then trained by
    /// knowledge distillation.
    #[serde(default)]
    pub teacher: TeacherSection,
    /// KD loss, temperature, alpha strategy (as `mome distill`'s `[distill]`).
    /// Needs a teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillSettings>,
    /// Optimizer, schedule, steps, precision (mome-core's `TrainConfig`).
    pub train: TrainConfig,
    /// Continue from the latest checkpoint (a run option).
    #[serde(skip)]
    pub resume: bool,
    /// Expert parallelism: the experts' blocks on these devices in turn (a run
    /// option; not with data parallelism).
    #[serde(skip)]
    pub expert_devices: Vec<DeviceSpec>,
}

/// A checked [`MoeTrainParams`].
#[derive(Debug, Clone)]
pub struct MoeTrainJob {
    params: MoeTrainParams,
    device: Device,
    expert_devices: Vec<Device>,
    config: MoeConfig,
}

impl MoeTrainParams {
    /// Every check that needs no shards: the MoE config over `domains` with experts
    /// of vocabulary `vocab` reading `seq_len` positions; the teacher when
    /// `with_teacher` (against `shards` when given).
    pub fn check_shape(
        &self,
        domains: Vec<String>,
        vocab: usize,
        seq_len: usize,
        shards: Option<&ShardSet>,
        with_teacher: bool,
    ) -> Result<MoeTrainJob> {
        self.train.validate()?;
        self.eval.validate()?;
        if self.data.batch_size == 0 {
            return Err(Error::Config("[data] batch_size must be > 0".into()));
        }
        let device = self.device.resolve()?;
        self.train.precision.validate(device)?;
        if self.moe.arch == Arch::Ple {
            return Err(Error::Config(
                "[moe] arch = \"ple\": PLE models are assembled with `mome moe build`; train jeet or moe-ce"
                    .into(),
            ));
        }
        let expert = self.model.resolve(vocab)?;
        check_fits(&expert, vocab, seq_len, "the experts")?;
        let config = MoeConfig {
            arch: self.moe.arch,
            domains,
            expert,
            common_expert: self.moe.arch == Arch::MoeCe,
            low_confidence_to_common: self.moe.low_confidence_to_common,
        };
        config.validate()?;
        let expert_devices = self
            .expert_devices
            .iter()
            .map(|d| d.resolve())
            .collect::<mome_core::Result<Vec<_>>>()?;
        for d in &expert_devices {
            self.train.precision.validate(*d)?;
        }
        if with_teacher {
            match (&self.teacher.dir, &self.teacher.cache, &self.distill) {
                (None, None, None) => {}
                (None, None, Some(_)) => {
                    return Err(Error::Config(
                        "[distill] needs a teacher: teacher = { dir = \"MODEL_DIR\" }".into(),
                    ))
                }
                _ => {
                    let settings = self.distill.clone().unwrap_or_default();
                    settings.validate()?;
                    self.teacher
                        .check(&config.expert, shards, settings.temperature, true)?;
                }
            }
        }
        Ok(MoeTrainJob {
            params: self.clone(),
            device,
            expert_devices,
            config,
        })
    }
}

impl ParamGuard for MoeTrainParams {
    type Checked = MoeTrainJob;
    type Error = Error;
    fn check(&self) -> Result<MoeTrainJob> {
        let shards = ShardSet::open(&self.data.shards)?;
        if let Some(tok) = &self.data.tokenizer {
            let (_, sha) = mome_data::tokenizer::load_tokenizer(tok)?;
            shards.check_tokenizer(&sha)?;
        }
        let (_, world) = data_parallel_rank(self.data.batch_size)?;
        if world > 1 && !self.expert_devices.is_empty() {
            return Err(Error::Config("--expert-devices (expert parallelism) cannot be combined with data parallelism (mome launch --gpus N)".into()));
        }
        let domains = if self.moe.domains.is_empty() {
            shards.domains("train")?
        } else {
            self.moe.domains.clone()
        };
        self.check_shape(
            domains,
            shards.vocab_size(),
            shards.seq_len(),
            Some(&shards),
            true,
        )
    }
}

impl MoeTrainJob {
    /// The validated parameters.
    pub fn params(&self) -> &MoeTrainParams {
        &self.params
    }
    /// The MoE config the model is built with.
    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    /// The model at the root of a new var store, seeded with the run seed, in the
    /// run's compute kind, its experts placed on `expert_devices`.
    pub fn build_model(&self) -> Result<(nn::VarStore, MoeModel)> {
        let p = &self.params;
        let vs = nn::VarStore::new(self.device);
        let mut model = {
            let _g = mome_core::rng::lock_default_generator();
            tch::manual_seed(p.train.seed as i64);
            MoeModel::new(&vs.root(), &self.config)?
        };
        model.set_compute_kind(p.train.precision.compute_kind())?;
        model.set_kernels(&p.train.kernels);
        if !self.expert_devices.is_empty() {
            model.place_experts(&self.expert_devices)?;
        }
        Ok((vs, model))
    }

    /// The loss: KD from the teacher when one is configured, else CE.
    fn loss(&self) -> Result<Option<DistillLoss>> {
        let p = &self.params;
        if p.teacher.dir.is_none() && p.teacher.cache.is_none() {
            return Ok(None);
        }
        let settings = p.distill.clone().unwrap_or_default();
        Ok(Some(
            DistillLoss::new(
                &p.teacher,
                &settings,
                &self.config.expert,
                self.device,
                p.train.precision,
            )?
            .with_kernels(
                &p.train.kernels,
                self.device,
                p.train.precision.compute_kind(),
            )?,
        ))
    }
}

/// What [`run_moe_training`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeTrainSummary {
    /// The final MoE folder (rank 0).
    pub model_dir: PathBuf,
    /// `jeet` or `moe-ce`.
    pub arch: Arch,
    /// The trainer's summary.
    #[serde(flatten)]
    pub train: TrainSummary,
    /// Parameters of the whole model.
    pub total_parameters: i64,
    /// The KD settings (a KD run).
    pub distill: Option<DistillSettings>,
    /// `distill_metrics.jsonl` (a KD run).
    pub distill_metrics: Option<PathBuf>,
    /// This process's rank.
    pub rank: usize,
}

/// Trains (or resumes) the job's JEET / MoE-CE model and saves it to
/// `out_dir/model`.
pub fn run_moe_training(job: &MoeTrainJob) -> Result<MoeTrainSummary> {
    let p = &job.params;
    let cfg = &job.config;
    let (vs, model) = job.build_model()?;
    let (rank, _) = data_parallel_rank(p.data.batch_size)?;
    if !p.train.quiet {
        if !job.expert_devices.is_empty() {
            let placed: Vec<String> = model
                .expert_ids()
                .into_iter()
                .map(|id| format!("{}→{:?}", model.expert_name(id), model.expert_device(id)))
                .collect();
            eprintln!("expert placement: {}", placed.join(", "));
        }
        eprintln!(
            "moe {}: {} experts {:?}{}, each {} layers d={} {} heads; {:.2}M parameters on {:?}",
            cfg.arch.name(),
            cfg.domains.len(),
            cfg.domains,
            if cfg.common_expert { " + common" } else { "" },
            cfg.expert.n_layer,
            cfg.expert.n_embd,
            cfg.expert.n_head,
            model.total_parameters() as f64 / 1e6,
            job.device
        );
    }
    let eval_shards = ShardSet::open(&p.data.shards)?;
    let has_validation = eval_shards.splits().iter().any(|s| s == "validation");
    let source = ShardBatches::new(
        ShardSet::open(&p.data.shards)?,
        "train",
        SamplerConfig {
            kind: SamplerKind::Blocks,
            batch_size: p.data.batch_size,
            seed: p.train.seed,
            domains: cfg.domains.clone(),
        },
    )?;
    let opts = EvalOptions {
        split: "validation".into(),
        max_sequences: p.eval.max_sequences,
        batch_size: p.eval.batch_size,
        skip_unavailable: false,
    };
    let routed = [Setting::routed(cfg.common_expert)];
    let model_ref = &model;
    let mut eval_fn = |_step: u64| -> Result<serde_json::Value> {
        let r = evaluate_settings(model_ref, &eval_shards, &routed, &opts, None)?;
        let s = &r.settings[0];
        let mut v = serde_json::json!({"val_loss": s.mean_loss, "val_ppl": s.mean_loss.exp()});
        for (d, e) in &s.domains {
            v[format!("val_loss_{d}")] = serde_json::json!(e.loss);
        }
        Ok(v)
    };
    let mut kd = job.loss()?;
    let mut ce = CrossEntropy::new(&p.train.kernels, &model)?;
    let loss: &mut dyn MoeLoss = match kd.as_mut() {
        Some(k) => k,
        None => &mut ce,
    };
    let summary = train_moe(
        &model,
        &vs,
        source,
        p.train.clone(),
        &RunOptions {
            run_dir: &p.out_dir,
            resume: p.resume,
            group: None,
            prefetch: p.data.prefetch,
        },
        loss,
        if has_validation {
            Some(&mut eval_fn)
        } else {
            None
        },
    )?;
    let model_dir = p.out_dir.join("model");
    if rank == 0 {
        model.save(&model_dir)?;
    }
    Ok(MoeTrainSummary {
        model_dir,
        arch: cfg.arch,
        train: summary,
        total_parameters: model.total_parameters(),
        distill: kd.as_ref().map(|k| k.settings().clone()),
        distill_metrics: kd
            .as_ref()
            .map(|_| p.out_dir.join(mome_distill::DISTILL_METRICS)),
        rank,
    })
}

/// What [`bench_moe`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeBench {
    /// The step's timing.
    pub timing: BenchTiming,
    /// Parameters of the whole model.
    pub parameters: i64,
    /// Parameters of one expert stack.
    pub stack_parameters: i64,
    /// Stacks that run for a sequence (1 for JEET, 2 for MoE-CE: routed + common).
    pub active_stacks: i64,
    /// Parameters active for one sequence (embeddings, head and active stacks).
    pub active_parameters: i64,
    /// Model FLOPs per trained token: `6·(A·stack + vocab·d) + 12·A·layers·T·d`.
    pub flops_per_token: f64,
    /// The LM head + cross-entropy path of the step (`auto` resolved).
    pub linear_ce: LinearCe,
}

/// Times [`run_moe_training`]'s step (same model, objective, loss and trainer step)
/// on random tokens of `seq_len`: one domain per micro-batch, round-robin over the
/// experts (the `blocks` sampler's order), routed by label, with cross-entropy (no
/// teacher).
pub fn bench_moe(job: &MoeTrainJob, seq_len: usize, opts: &BenchOptions) -> Result<MoeBench> {
    let p = &job.params;
    let cfg = &job.config;
    let (vs, model) = job.build_model()?;
    model.set_all_trainable(true);
    let mut source: Box<dyn BatchSource> = prefetched(
        RandomBatches::new(
            cfg.expert.vocab_size,
            p.data.batch_size,
            seq_len,
            1,
            cfg.domains.clone(),
            p.train.seed,
        )?,
        p.data.prefetch,
        job.device,
        None,
    );
    let mut loss = CrossEntropy::new(&p.train.kernels, &model)?;
    let linear_ce = loss.linear_ce();
    let mut objective = MoeObjective::new(&model, &mut loss)?;
    let mut trainer = Trainer::detached(p.train.clone(), &vs)?;
    let timing = trainer.bench(source.as_mut(), &mut objective, opts);
    model.set_all_trainable(true);
    let timing = timing?;
    let stack_parameters: i64 = model
        .stack(ExpertId::Domain(0))?
        .named_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let common = cfg.common_expert;
    let active_stacks = 1 + i64::from(common);
    let e: &Gpt2Config = &cfg.expert;
    let flops_per_token = 6.0 * (active_stacks * stack_parameters + e.vocab_size * e.n_embd) as f64
        + 12.0 * (active_stacks * e.n_layer * seq_len as i64 * e.n_embd) as f64;
    let mut active = vec![ExpertId::Domain(0)];
    if common {
        active.push(ExpertId::Common);
    }
    Ok(MoeBench {
        timing,
        parameters: model.total_parameters(),
        stack_parameters,
        active_stacks,
        active_parameters: model.active_parameters(&active)?,
        flops_per_token,
        linear_ce,
    })
}
