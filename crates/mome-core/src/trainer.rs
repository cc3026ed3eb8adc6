//! The training loop used by `mome train` (and by distillation and MoE training).
//!
//! Each optimizer step `s` (1-based):
//! 1. reseeds torch with [`step_seed`]`(seed, s)` (exact resume without saving RNG state);
//! 2. runs `grad_accum` micro-batches: `loss_fn(batch)` on the device, `(loss /
//!    grad_accum).backward()`, the detached loss summed on the device;
//! 3. computes the gradient norm on the device and clips it (`clip_grad_norm`);
//! 4. records, on the device, the first step whose loss or gradient norm is NaN/Inf;
//! 5. takes an AdamW step with `lr = schedule.lr_at(s)` and zeroes the gradients.
//!
//! The host waits for the device only at log, eval and checkpoint steps and at the
//! end: there the non-finite record is read (→ [`Error::NonFinite`] naming the first
//! bad step, before anything is saved) and the mean loss since the last log line is
//! written to `metrics.jsonl` with lr, tokens/s, grad norm and elapsed time. Eval runs
//! every `eval_every` steps and at the end; checkpoints every `checkpoint_every` steps
//! and at the end (see [`crate::checkpoint`] for layout and resume semantics).
//!
//! Run folder: `run_dir/checkpoints/step-XXXXXXXX/`, `run_dir/metrics.jsonl`.
//!
//! **Data parallel** ([`Trainer::new_data_parallel`], or [`Trainer::with_collective`]
//! with a [`Collective`], or [`Trainer::with_group`]): one process per device (or,
//! with [`crate::dist::LocalGroup`], one thread per rank). At the start the variables are
//! broadcast from rank 0 and the ranks check that they resumed from the same step.
//! Every rank moves through the source's global batches and trains on its
//! contiguous `1/N` of the rows ([`crate::dist::rank_rows`]; the batch must divide
//! evenly): a source that supports [`BatchSource::read_rank_slice`] (the token
//! shards) reads only those rows, any other is read whole and sliced. After the
//! `grad_accum` micro-batches the gradients are summed over the ranks in flat buckets
//! and divided by `N` (step 3 then clips the global gradient): the update is the one
//! of the global batch on one device. With `grad_overlap` (default) each bucket's
//! sum starts during the last micro-batch's backward, as soon as its gradients are
//! made ([`crate::dist::OverlapReducer`]; NCCL runs it on a stream of its own). With
//! `shard_update` each rank clips and updates only its share of the parameters and
//! broadcasts it ([`AdamW::step_owned`]). Rank 0 alone writes
//! metrics, checkpoints and progress and runs `eval_fn`; logged losses are the mean
//! over the ranks, reduced at log steps only. Token counts are global. Rank 0 keeps
//! the single-process torch seed of each step; other ranks use
//! [`crate::dist::rank_seed`] (their dropout masks differ from rank 0's). Loss code
//! that needs values of the whole global batch (adaptive KD weights) reduces them
//! through [`Trainer::group`]; the source's per-row side data (teacher-cache rows)
//! is sliced with [`crate::dist::GroupHandle::rows`].
//! [`Trainer::new`] is single-process: it refuses `MOME_WORLD_SIZE > 1`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mome_data::sampler::SeqRef;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::{step_seed, CheckpointManager, TrainerState};
use crate::dist::{
    rank_rows, rank_seed, Collective, DistEnv, GradBuckets, GroupHandle, OverlapReducer,
    OVERLAP_BUCKET_ELEMENTS,
};
use crate::metrics::{MetricsWriter, TrainRecord};
use crate::optim::{AdamW, AdamWConfig, AdamWImpl};
use crate::profile::{gpu_memory_mib, sync, ProfileReport, Profiler};
use crate::progress::{Progress, ProgressMode};
use crate::schedule::{clip_grads_with_norm, grad_norm_tensor, LrSchedule, ScheduleKind};
use crate::tensor_io::{load_into, named_tensors};
use crate::{Error, Precision, Result};

/// One micro-batch of a [`BatchSource`].
///
/// Sources return it on the CPU; the trainer hands it to the [`Objective`] on the
/// device, with this rank's rows only (data parallel).
#[derive(Debug)]
pub struct Batch {
    /// `[B, T]` token ids, i64.
    pub ids: Tensor,
    /// The batch's sequences in row order, as indices into the source's
    /// [`BatchSource::domains`] (empty when the source has no such notion).
    pub items: Vec<SeqRef>,
    /// The domain of a single-domain batch (`blocks` / `sequential` samplers).
    pub domain: Option<usize>,
    /// Per-row side tensors (first dimension `B`) attached by the source, e.g. a
    /// teacher cache's rows read ahead by a [`crate::data::Prefetch`] hook.
    pub aux: Vec<Tensor>,
}

impl Batch {
    /// A batch of token ids alone.
    pub fn ids(ids: Tensor) -> Self {
        Self {
            ids,
            items: Vec::new(),
            domain: None,
            aux: Vec::new(),
        }
    }

    /// Rows `start..start + len` of every part.
    fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        let (s, l) = (start as i64, len as i64);
        Ok(Self {
            ids: self.ids.f_narrow(0, s, l)?,
            items: self
                .items
                .get(start..start + len)
                .map(<[SeqRef]>::to_vec)
                .unwrap_or_default(),
            domain: self.domain,
            aux: self
                .aux
                .iter()
                .map(|t| t.f_narrow(0, s, l))
                .collect::<std::result::Result<_, _>>()?,
        })
    }

    /// Every tensor on `device`. On CUDA the copies are queued non-blocking: from
    /// pinned host memory ([`crate::data::Prefetch`]) they overlap the device's
    /// work; from pageable memory CUDA makes them synchronous, as a blocking copy.
    fn to_device(&self, device: Device) -> Result<Self> {
        let move_ = |t: &Tensor| -> Result<Tensor> {
            if t.device() == device {
                return Ok(t.shallow_clone());
            }
            Ok(t.f_to_device_(device, t.f_kind()?, device.is_cuda(), false)?)
        };
        Ok(Self {
            ids: move_(&self.ids)?,
            items: self.items.clone(),
            domain: self.domain,
            aux: self.aux.iter().map(move_).collect::<Result<_>>()?,
        })
    }
}

/// A source of training batches whose position can be saved and restored.
pub trait BatchSource {
    /// The next micro-batch (`[B, T]` token ids, i64, on the CPU).
    fn next_batch(&mut self) -> Result<Batch>;
    /// The position, as JSON, such that [`BatchSource::restore`] continues from here.
    fn state(&self) -> serde_json::Value;
    /// Continues from a position returned by [`BatchSource::state`].
    fn restore(&mut self, state: &serde_json::Value) -> Result<()>;
    /// Data parallel: from now on, return only rank `rank`'s contiguous `1/world` of
    /// the rows of every batch ([`crate::dist::rank_rows`]) while moving through the
    /// data exactly as the whole batch would (so that [`BatchSource::state`] stays
    /// the global position). `Ok(false)` (the default): the source cannot, and the
    /// trainer reads whole batches and keeps its rows.
    fn read_rank_slice(&mut self, _rank: usize, _world: usize) -> Result<bool> {
        Ok(false)
    }
    /// The names [`Batch::items`] and [`Batch::domain`] index (default: none).
    fn domains(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Where a micro-batch sits in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    /// The optimizer step being computed (1-based).
    pub step: u64,
    /// The micro-batch within the step (0-based).
    pub micro: u64,
    /// Micro-batches per step.
    pub grad_accum: u64,
}

/// What an [`Objective`] learns before the first batch.
#[derive(Debug, Clone, Copy)]
pub struct RunContext<'a> {
    /// The run folder (`None`: a benchmark, which writes nothing).
    pub run_dir: Option<&'a Path>,
    /// The step training starts from (0, or the resumed checkpoint's step).
    pub start_step: u64,
    /// Whether the run continues from a checkpoint.
    pub resumed: bool,
    /// The training settings.
    pub train: &'a TrainConfig,
    /// The process group of a data-parallel run (`None`: one process). Values of the
    /// global batch are means over the ranks; rank 0 alone writes files.
    pub group: Option<&'a GroupHandle>,
    /// The source's domain names ([`BatchSource::domains`]).
    pub domains: &'a [String],
}

impl RunContext<'_> {
    /// Whether this process writes files (rank 0 of a run with a folder).
    pub fn writes_files(&self) -> bool {
        self.run_dir.is_some() && self.group.is_none_or(|g| g.rank() == 0)
    }
}

/// The loss of the training step: what `mome train`, `mome distill`, `mome moe
/// train` and `mome bench train` plug into the one [`Trainer`] step.
///
/// The error type is the caller's (its crate's error), so nothing converts it into
/// mome-core's.
pub trait Objective {
    /// The caller's error type.
    type Error: From<Error> + std::fmt::Display;
    /// Called once after the trainer is set up (and a checkpoint restored), before
    /// the first batch.
    fn begin(&mut self, _ctx: &RunContext<'_>) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
    /// The scalar fp32 loss of one micro-batch (on the device, this rank's rows),
    /// with the model in train mode. Phases may be marked on `prof`.
    fn loss(
        &mut self,
        batch: &Batch,
        at: StepInfo,
        prof: &mut Profiler,
    ) -> std::result::Result<Tensor, Self::Error>;
    /// After the optimizer step `step`; `sync` is true at the steps where the trainer
    /// itself reads the device (log, eval, checkpoint and last steps), where side
    /// metrics are best flushed.
    fn end_step(&mut self, _step: u64, _sync: bool) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
}

/// An objective whose errors are converted into `E` (the caller's error type, e.g.
/// to pair mome-experts' LM objective with an evaluation callback of another crate).
#[derive(Debug)]
pub struct MapErr<O, E> {
    inner: O,
    _error: std::marker::PhantomData<fn() -> E>,
}

impl<O, E> MapErr<O, E> {
    /// Wraps `inner`.
    pub fn new(inner: O) -> Self {
        Self {
            inner,
            _error: std::marker::PhantomData,
        }
    }
}

impl<O: Objective, E: From<O::Error> + From<Error> + std::fmt::Display> Objective for MapErr<O, E> {
    type Error = E;
    fn begin(&mut self, ctx: &RunContext<'_>) -> std::result::Result<(), E> {
        Ok(self.inner.begin(ctx)?)
    }
    fn loss(
        &mut self,
        batch: &Batch,
        at: StepInfo,
        prof: &mut Profiler,
    ) -> std::result::Result<Tensor, E> {
        Ok(self.inner.loss(batch, at, prof)?)
    }
    fn end_step(&mut self, step: u64, sync: bool) -> std::result::Result<(), E> {
        Ok(self.inner.end_step(step, sync)?)
    }
}

/// Any `FnMut(&Tensor) -> Result<Tensor>` (token ids on the device → loss) is an
/// objective with mome-core's error type.
impl<F: FnMut(&Tensor) -> Result<Tensor>> Objective for F {
    type Error = Error;
    fn loss(&mut self, batch: &Batch, _at: StepInfo, _prof: &mut Profiler) -> Result<Tensor> {
        self(&batch.ids)
    }
}

fn default_grad_accum() -> u64 {
    1
}
fn default_log_every() -> u64 {
    10
}
fn default_keep_last() -> usize {
    3
}

/// Training hyperparameters. Unknown fields are rejected; [`TrainConfig::validate`]
/// runs before any work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps to train for (total, across resumes).
    pub max_steps: u64,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_grad_accum")]
    pub grad_accum: u64,
    /// AdamW settings; `optimizer.lr` is the peak learning rate.
    #[serde(default)]
    pub optimizer: AdamWConfig,
    /// Learning-rate decay after warmup.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Linear warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Final learning rate of linear / cosine decay.
    #[serde(default)]
    pub min_lr: f64,
    /// Clip the gradient norm to this value (`None`: no clipping).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Write a train metrics line every N steps (and at the end).
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Evaluate every N steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Checkpoints kept (0: all).
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// Run seed (per-step torch seeds derive from it).
    #[serde(default)]
    pub seed: u64,
    /// Compute precision (used by the model code; validated against the device).
    #[serde(default)]
    pub precision: Precision,
    /// No progress output.
    #[serde(default)]
    pub quiet: bool,
    /// Data parallel: the dtype in which gradients cross between the GPUs
    /// (`fp32`, default; `bf16` halves the traffic, rounding each rank's gradient to
    /// bf16 before the sum, as DeepSpeed's bf16 communication does). Ignored with
    /// one process.
    #[serde(default)]
    pub grad_reduce: GradReduce,
    /// Data parallel: start each bucket's all-reduce as soon as backward has made
    /// its gradients (hooks on the gradient accumulation, PyTorch DDP's scheme),
    /// overlapping the communication with the rest of backward; `false` reduces
    /// everything after backward. Same arithmetic either way. Default `true`.
    #[serde(default = "default_true")]
    pub grad_overlap: bool,
    /// Data parallel: share the update between the ranks, as ZeRO-1 does: after the
    /// all-reduce each rank clips (with the global norm) and updates only its share
    /// of the parameters (about 1/N of each buffer, [`AdamW::shard_owners`]), then
    /// every rank broadcasts its updated share. The update's time is divided by N
    /// (it does not shrink with the per-rank batch); moments stay allocated for every
    /// parameter and are gathered on rank 0 before each checkpoint. Same arithmetic
    /// up to the summation order of the gradient norm. Default `false`.
    #[serde(default)]
    pub shard_update: bool,
    /// The AdamW implementation ([`AdamWImpl`]): `auto` (the default: `fused`,
    /// libtorch's `_fused_adamw_`, on every device), `fused`, `flat` or `per-param`.
    /// The same update to float rounding.
    #[serde(default)]
    pub adamw: AdamWImpl,
    /// `[train.kernels]`: which fused kernels the model's loss uses
    /// ([`crate::fusion::KernelConfig`]; every key optional).
    #[serde(default)]
    pub kernels: crate::fusion::KernelConfig,
}

fn default_true() -> bool {
    true
}

/// The dtype of the data-parallel gradient all-reduce ([`TrainConfig::grad_reduce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradReduce {
    /// The gradients' own dtype (fp32 master gradients): exact up to summation order.
    #[default]
    Fp32,
    /// Cast to bf16 for the all-reduce, back to fp32 after.
    Bf16,
}

impl GradReduce {
    /// The tensor kind the gradients are reduced in (`None`: their own).
    pub fn kind(self) -> Option<Kind> {
        match self {
            GradReduce::Fp32 => None,
            GradReduce::Bf16 => Some(Kind::BFloat16),
        }
    }
}

impl TrainConfig {
    /// A config with defaults for everything but `max_steps` and the learning rate.
    pub fn new(max_steps: u64, lr: f64) -> Self {
        Self {
            max_steps,
            grad_accum: 1,
            optimizer: AdamWConfig {
                lr,
                ..Default::default()
            },
            schedule: ScheduleKind::default(),
            warmup_steps: 0,
            min_lr: 0.0,
            clip_grad_norm: None,
            log_every: default_log_every(),
            eval_every: 0,
            checkpoint_every: 0,
            keep_last: default_keep_last(),
            seed: 0,
            precision: Precision::Fp32,
            quiet: false,
            grad_reduce: GradReduce::Fp32,
            grad_overlap: true,
            shard_update: false,
            adamw: AdamWImpl::Auto,
            kernels: Default::default(),
        }
    }

    /// The learning-rate schedule this config describes.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            kind: self.schedule,
            warmup_steps: self.warmup_steps,
            total_steps: self.max_steps,
            peak_lr: self.optimizer.lr,
            min_lr: self.min_lr,
        }
    }

    /// Rejects invalid settings, naming the field.
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("max_steps", self.max_steps),
            ("grad_accum", self.grad_accum),
            ("log_every", self.log_every),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return Err(Error::Config(format!("{field} must be > 0")));
            }
        }
        self.optimizer.validate()?;
        self.kernels.validate()?;
        if let Some(c) = self.clip_grad_norm {
            if !c.is_finite() || c <= 0.0 {
                return Err(Error::Config(format!(
                    "clip_grad_norm = {c}: must be finite and > 0"
                )));
            }
        }
        if self.warmup_steps > self.max_steps {
            return Err(Error::Config(format!(
                "warmup_steps = {} exceeds max_steps = {}",
                self.warmup_steps, self.max_steps
            )));
        }
        if !self.min_lr.is_finite() || self.min_lr < 0.0 || self.min_lr > self.optimizer.lr {
            return Err(Error::Config(format!(
                "min_lr = {}: must be finite, >= 0 and <= optimizer.lr ({})",
                self.min_lr, self.optimizer.lr
            )));
        }
        self.lr_schedule().validate()
    }
}

/// What [`Trainer::run`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Step the run started from (0, or the resumed checkpoint's step).
    pub start_step: u64,
    /// Last completed step.
    pub final_step: u64,
    /// Mean loss of the last log window (`None` if no step ran).
    pub final_loss: Option<f64>,
    /// Tokens consumed, over all sessions.
    pub tokens_seen: u64,
    /// Training wall time over all sessions, in seconds.
    pub elapsed_s: f64,
    /// The last checkpoint written by this run.
    pub last_checkpoint: Option<PathBuf>,
    /// The last evaluation result.
    pub last_eval: Option<serde_json::Value>,
}

/// The training loop (see the module docs).
#[derive(Debug)]
pub struct Trainer {
    cfg: TrainConfig,
    vs_variables: Vec<(String, Tensor)>,
    params: Vec<Tensor>,
    named_params: Vec<(String, Tensor)>,
    opt: AdamW,
    device: Device,
    /// `None`: a detached trainer ([`Trainer::detached`], benchmarks) writes nothing.
    ckpt: Option<CheckpointManager>,
    metrics: Option<MetricsWriter>,
    run_dir: Option<PathBuf>,
    dist: Option<GroupHandle>,
    buckets: GradBuckets,
    overlap: Option<OverlapReducer>,
    shard: Option<Shard>,
    step: u64,
    tokens_seen: u64,
    elapsed_before_s: f64,
    data_state: Option<serde_json::Value>,
    resumed_from: Option<PathBuf>,
}

/// The non-finite record: first bad step and its value, per watched quantity, on
/// the device (step -1: none yet).
struct NonFiniteWatch {
    loss_step: Tensor,
    loss_value: Tensor,
    norm_step: Tensor,
    norm_value: Tensor,
}

impl NonFiniteWatch {
    fn new(device: Device) -> Result<Self> {
        Ok(Self {
            loss_step: Tensor::f_full([], -1, (Kind::Int64, device))?,
            loss_value: Tensor::f_zeros([], (Kind::Float, device))?,
            norm_step: Tensor::f_full([], -1, (Kind::Int64, device))?,
            norm_value: Tensor::f_zeros([], (Kind::Float, device))?,
        })
    }

    fn record_one(step_t: &mut Tensor, value_t: &mut Tensor, x: &Tensor, step: u64) -> Result<()> {
        let bad = x
            .f_isfinite()?
            .f_logical_not()?
            .f_logical_and(&step_t.f_lt(0)?)?;
        let s = Tensor::f_full([], step as i64, (Kind::Int64, step_t.device()))?;
        *step_t = s.f_where_self(&bad, step_t)?;
        *value_t = x.f_to_kind(Kind::Float)?.f_where_self(&bad, value_t)?;
        Ok(())
    }

    fn record(&mut self, loss: &Tensor, norm: Option<&Tensor>, step: u64) -> Result<()> {
        Self::record_one(&mut self.loss_step, &mut self.loss_value, loss, step)?;
        if let Some(n) = norm {
            Self::record_one(&mut self.norm_step, &mut self.norm_value, n, step)?;
        }
        Ok(())
    }

    /// Host sync: the first non-finite loss or grad norm, as an error.
    fn check(&self) -> Result<()> {
        let v = Tensor::f_stack(
            &[
                self.loss_step.f_to_kind(Kind::Double)?,
                self.loss_value.f_to_kind(Kind::Double)?,
                self.norm_step.f_to_kind(Kind::Double)?,
                self.norm_value.f_to_kind(Kind::Double)?,
            ],
            0,
        )?
        .f_to_device(Device::Cpu)?;
        let v = Vec::<f64>::try_from(&v)?;
        let loss = (v[0] >= 0.0).then(|| (v[0] as u64, "loss", v[1]));
        let norm = (v[2] >= 0.0).then(|| (v[2] as u64, "grad_norm", v[3]));
        let first = match (loss, norm) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        match first {
            Some((step, what, value)) => Err(Error::NonFinite {
                step,
                what: what.into(),
                value,
            }),
            None => Ok(()),
        }
    }
}

impl Trainer {
    /// Prepares training of the variables of `vs` in `run_dir`.
    ///
    /// With `resume`, the latest complete checkpoint (if any) is loaded into `vs` and
    /// the optimizer, and the step, token count and batch-source state are restored
    /// ([`Trainer::run`] hands the state to the source). Without `resume`, a run folder
    /// that already holds checkpoints is an error.
    ///
    /// Single-process: with `MOME_WORLD_SIZE` above 1 in the environment this is an
    /// error (the caller has no data-parallel support; see
    /// [`Trainer::new_data_parallel`]).
    pub fn new(cfg: TrainConfig, vs: &nn::VarStore, run_dir: &Path, resume: bool) -> Result<Self> {
        if let Some(env) = DistEnv::from_env()? {
            if env.world_size > 1 {
                return Err(Error::Distributed(format!(
                    "MOME_WORLD_SIZE = {}: this caller of Trainer::new is single-process \
                     (`mome train`, `mome distill` and `mome moe train` are data parallel); run it as one process, or spread independent runs \
                     over the GPUs with `mome launch --jobs`",
                    env.world_size
                )));
            }
        }
        Self::with_collective(cfg, vs, run_dir, resume, None)
    }

    /// Like [`Trainer::new`], data parallel over the process group of the
    /// environment ([`crate::dist::init_from_env`]; see the module docs). Without
    /// `MOME_WORLD_SIZE` (or with 1 and no NCCL communicator) it is [`Trainer::new`].
    /// The caller's `loss_fn` must depend on the batch rows only (it gets this
    /// rank's slice).
    pub fn new_data_parallel(
        cfg: TrainConfig,
        vs: &nn::VarStore,
        run_dir: &Path,
        resume: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        cfg.precision.validate(vs.device())?;
        let dist = crate::dist::init_from_env(vs.device())?;
        Self::with_collective(cfg, vs, run_dir, resume, dist)
    }

    /// Like [`Trainer::new`] with an explicit process group (`None`: single process).
    /// Every rank of `dist` must call this with the same config, run folder and
    /// `resume`, and a model with the same variables.
    pub fn with_collective(
        cfg: TrainConfig,
        vs: &nn::VarStore,
        run_dir: &Path,
        resume: bool,
        dist: Option<Box<dyn Collective>>,
    ) -> Result<Self> {
        Self::with_group(cfg, vs, run_dir, resume, dist.map(GroupHandle::new))
    }

    /// Like [`Trainer::with_collective`] with a group handle the caller keeps a
    /// clone of (for collectives in its own loss code, see [`Trainer::group`]).
    pub fn with_group(
        cfg: TrainConfig,
        vs: &nn::VarStore,
        run_dir: &Path,
        resume: bool,
        dist: Option<GroupHandle>,
    ) -> Result<Self> {
        let primary = dist.as_ref().is_none_or(|d| d.rank() == 0);
        let r = Self::build(cfg, vs, Some(run_dir), resume, primary);
        match r {
            Ok(mut t) => {
                if let (Some(d), true) = (dist.as_ref(), t.cfg.grad_overlap) {
                    t.overlap = Some(OverlapReducer::new(
                        d.clone(),
                        &t.named_params,
                        t.cfg.grad_reduce.kind(),
                        OVERLAP_BUCKET_ELEMENTS,
                    ));
                }
                if let (Some(d), true) = (dist.as_ref(), t.cfg.shard_update) {
                    if d.world_size() > 1 {
                        t.shard = Some(Shard::new(&t.opt, &t.params, d.rank(), d.world_size()));
                    }
                }
                t.dist = dist;
                if let Err(e) = t.sync_start() {
                    if let Some(d) = t.dist.as_ref() {
                        d.finish(Err(e.to_string()));
                    }
                    return Err(e);
                }
                Ok(t)
            }
            Err(e) => {
                if let Some(d) = dist.as_ref() {
                    d.finish(Err(e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// The process group (`None`: single process), shared with the trainer: loss
    /// code uses it to reduce values over the ranks (every rank in the same order).
    pub fn group(&self) -> Option<GroupHandle> {
        self.dist.clone()
    }

    /// Data parallel: rank 0's variables everywhere, and the same resumed step.
    fn sync_start(&mut self) -> Result<()> {
        let Some(d) = self.dist.as_ref() else {
            return Ok(());
        };
        let vars: Vec<Tensor> = self
            .vs_variables
            .iter()
            .map(|(_, t)| t.shallow_clone())
            .collect();
        d.broadcast(&vars, 0)?;
        let steps = Tensor::f_from_slice(&[self.step as i64, 1])?.f_to_device(self.device)?;
        d.all_reduce_sum(std::slice::from_ref(&steps))?;
        let v = Vec::<i64>::try_from(&steps.f_to_device(Device::Cpu)?)?;
        let world = d.world_size() as i64;
        if v[1] != world || v[0] != self.step as i64 * world {
            return Err(Error::Distributed(format!(
                "the ranks start from different steps (rank {} is at step {}; the sum over \
                 {} ranks is {}): they must resume from the same checkpoint",
                d.rank(),
                self.step,
                v[1],
                v[0]
            )));
        }
        Ok(())
    }

    /// A single-process trainer without a run folder: it trains the variables of
    /// `vs` from step 0 and writes no checkpoint, metrics or progress. What
    /// [`Trainer::bench`] runs on: the step is the one of [`Trainer::run`].
    pub fn detached(mut cfg: TrainConfig, vs: &nn::VarStore) -> Result<Self> {
        cfg.quiet = true;
        Self::build(cfg, vs, None, false, true)
    }

    fn build(
        cfg: TrainConfig,
        vs: &nn::VarStore,
        run_dir: Option<&Path>,
        resume: bool,
        primary: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = vs.device();
        cfg.precision.validate(device)?;
        let ckpt = match run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                Some(CheckpointManager::new(
                    dir.join("checkpoints"),
                    cfg.keep_last,
                ))
            }
            None => None,
        };
        let latest = match &ckpt {
            Some(c) => c.latest()?,
            None => None,
        };
        if !resume {
            if let Some(p) = &latest {
                return Err(Error::Config(format!(
                    "{} already holds checkpoints (latest {}); pass --resume to continue \
                     that run, or choose another run directory",
                    run_dir.map_or(String::new(), |d| d.display().to_string()),
                    p.display()
                )));
            }
        }
        let mut opt = AdamW::new(vs, cfg.optimizer)?.with_impl(cfg.adamw);
        let (mut step, mut tokens_seen, mut elapsed_before_s, mut data_state) = (0, 0, 0.0, None);
        let resumed_from = if let (true, Some(path)) = (resume, latest) {
            let ck = CheckpointManager::load(&path, device)?;
            if ck.state.seed != cfg.seed {
                return Err(Error::Config(format!(
                    "seed = {} differs from the checkpoint's seed {} ({}); exact resume needs \
                     the same seed",
                    cfg.seed,
                    ck.state.seed,
                    path.display()
                )));
            }
            if ck.state.step > cfg.max_steps {
                return Err(Error::Config(format!(
                    "max_steps = {} is below the checkpoint's step {}",
                    cfg.max_steps, ck.state.step
                )));
            }
            load_into(vs, &ck.model, true)?;
            opt.load_state(&ck.optimizer)?;
            if opt.step_count() != ck.state.step {
                return Err(Error::Checkpoint {
                    path: path.clone(),
                    reason: format!(
                        "optimizer step {} differs from trainer step {}",
                        opt.step_count(),
                        ck.state.step
                    ),
                });
            }
            step = ck.state.step;
            tokens_seen = ck.state.tokens_seen;
            elapsed_before_s = ck.state.elapsed_s;
            data_state = Some(ck.state.data_state);
            Some(path)
        } else {
            None
        };
        let metrics = match run_dir {
            Some(dir) if primary => Some(MetricsWriter::open(
                &dir.join("metrics.jsonl"),
                resumed_from.as_ref().map(|_| step),
            )?),
            _ => None,
        };
        let named_params: Vec<(String, Tensor)> = opt.params();
        let params: Vec<Tensor> = named_params
            .iter()
            .map(|(_, t)| t.shallow_clone())
            .collect();
        let sizes: Vec<(usize, Kind)> = params
            .iter()
            .map(|t| Ok((t.numel(), t.f_kind()?)))
            .collect::<Result<_>>()?;
        let buckets = GradBuckets::plan(&sizes, crate::dist::DEFAULT_BUCKET_ELEMENTS);
        Ok(Self {
            vs_variables: named_tensors(vs),
            params,
            named_params,
            opt,
            device,
            ckpt,
            metrics,
            run_dir: run_dir.map(Path::to_path_buf),
            dist: None,
            buckets,
            overlap: None,
            shard: None,
            step,
            tokens_seen,
            elapsed_before_s,
            data_state,
            resumed_from,
            cfg,
        })
    }

    /// Completed optimizer steps.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The checkpoint this trainer resumed from.
    pub fn resumed_from(&self) -> Option<&Path> {
        self.resumed_from.as_deref()
    }

    /// The batch-source state of the resumed checkpoint (restored by `run`).
    pub fn resumed_data_state(&self) -> Option<&serde_json::Value> {
        self.data_state.as_ref()
    }

    /// The checkpoint manager of this run (`None` for a [`Trainer::detached`] one).
    pub fn checkpoints(&self) -> Option<&CheckpointManager> {
        self.ckpt.as_ref()
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// This process's rank (0 without a process group).
    pub fn rank(&self) -> usize {
        self.dist.as_ref().map_or(0, |d| d.rank())
    }

    /// Number of ranks (1 without a process group).
    pub fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, |d| d.world_size())
    }

    /// Whether this process writes metrics, checkpoints and final outputs (rank 0).
    pub fn is_primary(&self) -> bool {
        self.rank() == 0
    }

    fn save(
        &mut self,
        source: &dyn BatchSource,
        extra_files: &[(&str, Vec<u8>)],
        elapsed_s: f64,
    ) -> Result<PathBuf> {
        let state = TrainerState {
            step: self.step,
            tokens_seen: self.tokens_seen,
            data_state: source.state(),
            schedule: self.cfg.lr_schedule(),
            seed: self.cfg.seed,
            metrics_lines: self.metrics.as_ref().map_or(0, |m| m.lines()),
            elapsed_s,
            train_config: serde_json::to_value(&self.cfg)?,
            mome_core_version: env!("CARGO_PKG_VERSION").into(),
        };
        let extras: Vec<(&str, &[u8])> = extra_files
            .iter()
            .map(|(n, b)| (*n, b.as_slice()))
            .collect();
        let ckpt = self
            .ckpt
            .as_ref()
            .ok_or_else(|| Error::Other("internal: a detached trainer saves nothing".into()))?;
        ckpt.save(
            self.step,
            &self.vs_variables,
            &self.opt.state_tensors(),
            &extras,
            &state,
        )
    }

    /// Sharded update: every rank (rank 0 writes the checkpoint) takes the moments of
    /// each parameter from the rank that updates it.
    fn gather_moments(&self) -> Result<()> {
        let (Some(d), Some(shard)) = (self.dist.as_ref(), self.shard.as_ref()) else {
            return Ok(());
        };
        for (r, moments) in shard.moments.iter().enumerate() {
            d.broadcast(moments, r)?;
        }
        Ok(())
    }

    /// Trains from the current step to `max_steps`.
    ///
    /// Each step is [`Trainer`]'s one training step (see the module docs) with
    /// `objective`'s loss; `eval_fn(step)` runs under `no_grad` and returns JSON (an
    /// object of metrics) written as an eval line. `extra_files` are copied into every
    /// checkpoint (e.g. `config.json`). Errors are the objective's type.
    pub fn run<O: Objective + ?Sized>(
        &mut self,
        source: &mut dyn BatchSource,
        objective: &mut O,
        eval_fn: Option<&mut EvalFn<'_, O::Error>>,
        extra_files: &[(&str, Vec<u8>)],
    ) -> std::result::Result<TrainSummary, O::Error> {
        let r = self.drive(source, objective, eval_fn, extra_files, None);
        if let Some(d) = self.dist.as_ref() {
            d.finish(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        r
    }

    /// Times the training step: `opts.warmup` untimed steps, then `opts.steps` steps
    /// timed with the device synchronised around them, then (`opts.profile_steps`)
    /// steps with a synchronised [`Profiler`]. Every step is the one [`Trainer::run`]
    /// takes (same reseeding, loss, backward, clipping, AdamW, non-finite watch and
    /// host reads at log steps); only the run folder's writes are absent. Needs a
    /// [`Trainer::detached`] trainer.
    pub fn bench<O: Objective + ?Sized>(
        &mut self,
        source: &mut dyn BatchSource,
        objective: &mut O,
        opts: &BenchOptions,
    ) -> std::result::Result<BenchTiming, O::Error> {
        if self.ckpt.is_some() || self.step != 0 || opts.steps == 0 {
            return Err(Error::Config(
                "bench: needs a detached trainer at step 0 and steps > 0".into(),
            )
            .into());
        }
        let total = (opts.warmup + opts.steps + opts.profile_steps) as u64;
        self.cfg.max_steps = total;
        self.cfg.warmup_steps = self.cfg.warmup_steps.min(total);
        let mut clock = BenchClock {
            warmup: opts.warmup as u64,
            timed: opts.steps as u64,
            started: None,
            tokens_before: 0,
            seconds: 0.0,
            tokens: 0,
            peak_mem: None,
            last_loss: None,
            profiler: None,
        };
        self.drive(source, objective, None, &[], Some(&mut clock))?;
        let final_loss = match &clock.last_loss {
            Some(l) => l.f_double_value(&[]).map_err(Error::from)?,
            None => f64::NAN,
        };
        Ok(BenchTiming {
            steps: opts.steps,
            seconds: clock.seconds,
            step_seconds: clock.seconds / opts.steps as f64,
            tokens: clock.tokens,
            tokens_per_second: clock.tokens as f64 / clock.seconds.max(1e-12),
            final_loss,
            peak_gpu_memory_mib: clock.peak_mem,
            adamw: self.opt.effective_impl(),
            profile: clock.profiler.as_ref().and_then(Profiler::report),
        })
    }

    /// The training loop of [`Trainer::run`] and [`Trainer::bench`].
    fn drive<O: Objective + ?Sized>(
        &mut self,
        source: &mut dyn BatchSource,
        objective: &mut O,
        mut eval_fn: Option<&mut EvalFn<'_, O::Error>>,
        extra_files: &[(&str, Vec<u8>)],
        mut clock: Option<&mut BenchClock>,
    ) -> std::result::Result<TrainSummary, O::Error> {
        let (rank, world) = (self.rank(), self.world_size());
        let primary = rank == 0;
        if !primary {
            eval_fn = None;
        }
        if let Some(state) = self.data_state.take() {
            source.restore(&state)?;
        }
        let start_step = self.step;
        let domains = source.domains();
        let group = self.dist.clone();
        objective.begin(&RunContext {
            run_dir: self.run_dir.as_deref(),
            start_step,
            resumed: self.resumed_from.is_some(),
            train: &self.cfg,
            group: group.as_ref(),
            domains: &domains,
        })?;
        let started = Instant::now();
        let progress = Progress::new(
            self.cfg.max_steps,
            start_step,
            if self.cfg.quiet || !primary {
                ProgressMode::Quiet
            } else {
                ProgressMode::Auto
            },
            self.cfg.log_every,
        );
        if let Some(p) = &self.resumed_from {
            progress.println(&format!(
                "resumed from {} (step {})",
                p.display(),
                self.step
            ));
        }
        let mut watch = NonFiniteWatch::new(self.device)?;
        let device = self.device;
        let zero = move || Tensor::f_zeros([], (Kind::Float, device)).map_err(Error::from);
        let mut window_loss = zero()?;
        let (mut window_steps, mut window_tokens) = (0u64, 0u64);
        let mut window_start = Instant::now();
        let (mut final_loss, mut last_checkpoint, mut last_eval) = (None, None, None);
        // Each rank reads its own rows when the source can (shards: yes).
        let sliced = world > 1 && source.read_rank_slice(rank, world)?;
        let mut off = Profiler::off();
        if let Some(c) = clock.as_deref_mut() {
            // No warm-up: the timed steps start now.
            c.after_step(0, self.tokens_seen, &zero()?, device);
        }

        while self.step < self.cfg.max_steps {
            let step = self.step + 1;
            let prof = match clock.as_deref_mut() {
                Some(c) if step > c.warmup + c.timed => {
                    c.profiler.get_or_insert_with(|| Profiler::on(device))
                }
                _ => &mut off,
            };
            let (step_loss, norm, tokens) =
                self.train_step(source, objective, step, sliced, &mut watch, prof)?;
            window_tokens += tokens;
            window_loss = window_loss.f_add(&step_loss).map_err(Error::from)?;
            window_steps += 1;

            let last = step == self.cfg.max_steps;
            let is_log = step % self.cfg.log_every == 0 || last;
            let is_eval = eval_fn.is_some()
                && (last || (self.cfg.eval_every > 0 && step % self.cfg.eval_every == 0));
            let is_ckpt = self.ckpt.is_some()
                && (last
                    || (self.cfg.checkpoint_every > 0 && step % self.cfg.checkpoint_every == 0));
            objective.end_step(step, is_log || is_eval || is_ckpt)?;
            if let Some(c) = clock.as_deref_mut() {
                c.after_step(step, self.tokens_seen, &step_loss, device);
            }
            if !(is_log || is_eval || is_ckpt) {
                continue;
            }
            watch.check()?;
            let elapsed_s = self.elapsed_before_s + started.elapsed().as_secs_f64();
            if is_log {
                let rec = self.log_line(
                    &window_loss
                        .f_div_scalar(window_steps as f64)
                        .map_err(Error::from)?,
                    norm.as_ref(),
                    step,
                    window_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9),
                    elapsed_s,
                )?;
                progress.update(
                    step,
                    &format!(
                        "loss {:.4} lr {:.3e} gnorm {:.3} tok/s {:.0}",
                        rec.loss, rec.lr, rec.grad_norm, rec.tokens_per_s
                    ),
                );
                final_loss = Some(rec.loss);
                window_loss = zero()?;
                window_steps = 0;
                window_tokens = 0;
                window_start = Instant::now();
            }
            if is_eval {
                if let Some(f) = eval_fn.as_mut() {
                    let v = tch::no_grad(|| f(step))?;
                    if let Some(m) = self.metrics.as_mut() {
                        m.eval(step, &v)?;
                    }
                    progress.println(&format!("eval step {step}: {v}"));
                    last_eval = Some(v);
                }
            }
            if is_ckpt {
                self.gather_moments()?;
            }
            if is_ckpt && primary {
                let p = self.save(source, extra_files, elapsed_s)?;
                progress.println(&format!("checkpoint {}", p.display()));
                last_checkpoint = Some(p);
            }
        }
        progress.finish();
        Ok(TrainSummary {
            start_step,
            final_step: self.step,
            final_loss,
            tokens_seen: self.tokens_seen,
            elapsed_s: self.elapsed_before_s + started.elapsed().as_secs_f64(),
            last_checkpoint,
            last_eval,
        })
    }

    /// The one training step (see the module docs): `grad_accum` micro-batches of
    /// `objective`'s loss and backward, the gradient all-reduce (data parallel), the
    /// gradient norm and clipping, the non-finite record, AdamW and zeroing. Returns
    /// the step's mean loss and gradient norm (on the device) and its global token
    /// count.
    fn train_step<O: Objective + ?Sized>(
        &mut self,
        source: &mut dyn BatchSource,
        objective: &mut O,
        step: u64,
        sliced: bool,
        watch: &mut NonFiniteWatch,
        prof: &mut Profiler,
    ) -> std::result::Result<(Tensor, Option<Tensor>, u64), O::Error> {
        let (rank, world) = (self.rank(), self.world_size());
        let ga = self.cfg.grad_accum;
        prof.start_step();
        tch::manual_seed(rank_seed(step_seed(self.cfg.seed, step), rank));
        let mut step_loss = Tensor::f_zeros([], (Kind::Float, self.device)).map_err(Error::from)?;
        let mut tokens = 0u64;
        for micro in 0..ga {
            let batch = source.next_batch()?;
            // Token counts are global.
            let n = batch.ids.numel() as u64 * if sliced { world as u64 } else { 1 };
            tokens += n;
            self.tokens_seen += n;
            let batch = if world > 1 && !sliced {
                let rows = batch.ids.size().first().copied().unwrap_or(0).max(0) as usize;
                let (start, len) = rank_rows(rows, rank, world)?;
                batch.narrow(start, len)?
            } else {
                batch
            };
            let batch = batch.to_device(self.device)?;
            prof.mark("data");
            let at = StepInfo {
                step,
                micro,
                grad_accum: ga,
            };
            let loss = objective.loss(&batch, at, prof)?;
            if loss.numel() != 1 {
                return Err(Error::Other(format!(
                    "the objective returned a tensor of shape {:?}; expected a scalar",
                    loss.size()
                ))
                .into());
            }
            let loss = loss.f_reshape([]).map_err(Error::from)?;
            if micro + 1 == ga {
                if let Some(r) = self.overlap.as_mut() {
                    r.arm()?;
                }
            }
            loss.f_div_scalar(ga as f64)
                .and_then(|l| l.f_backward())
                .map_err(Error::from)?;
            prof.mark("backward");
            step_loss = step_loss
                .f_add(
                    &loss
                        .f_detach()
                        .and_then(|l| l.f_to_kind(Kind::Float))
                        .map_err(Error::from)?,
                )
                .map_err(Error::from)?;
        }
        let step_loss = step_loss.f_div_scalar(ga as f64).map_err(Error::from)?;
        self.reduce_and_update(step, &step_loss, watch, prof)
            .map(|norm| (step_loss, norm, tokens))
            .map_err(O::Error::from)
    }

    /// The update half of the step: all-reduce (data parallel), norm, clipping,
    /// non-finite record, AdamW, zeroing. Returns the gradient norm.
    fn reduce_and_update(
        &mut self,
        step: u64,
        step_loss: &Tensor,
        watch: &mut NonFiniteWatch,
        prof: &mut Profiler,
    ) -> Result<Option<Tensor>> {
        let rank = self.rank();
        if let Some(r) = self.overlap.as_mut() {
            r.finish()?;
            prof.mark("grad_reduce");
        } else if let Some(d) = self.dist.as_ref() {
            let (buckets, params) = (&self.buckets, &self.named_params);
            let kind = self.cfg.grad_reduce.kind();
            d.with(|g| buckets.all_reduce_mean_as(g, params, kind))?;
            prof.mark("grad_reduce");
        }
        let mut norm = match (self.dist.as_ref(), self.shard.as_ref()) {
            (Some(d), Some(shard)) => Some(sharded_grad_norm(d, &shard.params[rank], self.device)?),
            _ => grad_norm_tensor(&self.params)?,
        };
        if let Some(n) = norm.as_mut() {
            // Parameters on several devices (placed experts): keep the norm on
            // the trainer's device, with the rest of the step's bookkeeping.
            if n.device() != self.device {
                *n = n.f_to_device(self.device)?;
            }
        }
        watch.record(step_loss, norm.as_ref(), step)?;
        let lr = self.cfg.lr_schedule().lr_at(step);
        match (self.dist.as_ref(), self.shard.as_ref()) {
            (Some(d), Some(shard)) => {
                if let (Some(max), Some(n)) = (self.cfg.clip_grad_norm, &norm) {
                    clip_grads_with_norm(&shard.params[rank], n, max)?;
                }
                prof.mark("grad_clip");
                self.opt.step_owned(lr, &shard.owned)?;
                // Every rank takes the updated parameters from their owner.
                for (r, owned) in shard.params.iter().enumerate() {
                    let updated: Vec<Tensor> = owned
                        .iter()
                        .filter(|p| p.requires_grad() && p.grad().defined())
                        .map(Tensor::shallow_clone)
                        .collect();
                    d.broadcast(&updated, r)?;
                }
            }
            _ => {
                if let (Some(max), Some(n)) = (self.cfg.clip_grad_norm, &norm) {
                    clip_grads_with_norm(&self.params, n, max)?;
                }
                prof.mark("grad_clip");
                self.opt.step(lr)?;
            }
        }
        prof.mark("optimizer");
        self.opt.zero_grad();
        prof.mark("zero_grad");
        self.step = step;
        Ok(norm)
    }

    /// A log step: the window's mean loss (over the ranks) and the gradient norm read
    /// to the host, written to `metrics.jsonl` (rank 0).
    fn log_line(
        &mut self,
        mean_loss: &Tensor,
        norm: Option<&Tensor>,
        step: u64,
        tokens_per_s: f64,
        elapsed_s: f64,
    ) -> Result<TrainRecord> {
        if let Some(d) = self.dist.as_ref() {
            // The mean over the ranks (equal slices: the global batch's mean).
            d.all_reduce_mean(std::slice::from_ref(mean_loss))?;
        }
        let norm = match norm {
            Some(n) => n.shallow_clone(),
            None => Tensor::f_zeros([], (Kind::Float, self.device))?,
        };
        let vals = Vec::<f64>::try_from(
            &Tensor::f_stack(&[mean_loss.shallow_clone(), norm], 0)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?,
        )?;
        let rec = TrainRecord {
            step,
            loss: vals[0],
            lr: self.cfg.lr_schedule().lr_at(step),
            tokens_per_s,
            grad_norm: vals[1],
            elapsed_s,
        };
        if let Some(m) = self.metrics.as_mut() {
            m.train(&rec)?;
        }
        Ok(rec)
    }
}

/// The evaluation callback of [`Trainer::run`]: `step → JSON metrics`.
pub type EvalFn<'a, E> = dyn FnMut(u64) -> std::result::Result<serde_json::Value, E> + 'a;

/// How [`Trainer::bench`] times the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Untimed steps first (allocator, cuBLAS and cuDNN warm-up).
    pub warmup: usize,
    /// Timed steps (> 0).
    pub steps: usize,
    /// Steps profiled after the timed ones (0: no profile).
    pub profile_steps: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            warmup: 5,
            steps: 20,
            profile_steps: 0,
        }
    }
}

/// What [`Trainer::bench`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchTiming {
    /// Timed steps.
    pub steps: usize,
    /// Seconds of the timed steps (device synchronised before and after).
    pub seconds: f64,
    /// Mean seconds per optimizer step.
    pub step_seconds: f64,
    /// Training tokens of the timed steps.
    pub tokens: u64,
    /// Training tokens per second.
    pub tokens_per_second: f64,
    /// The loss of the last step (sanity: finite).
    pub final_loss: f64,
    /// Peak GPU memory of this process in MiB (nvidia-smi), before and after the
    /// timed steps (`None` on the CPU).
    pub peak_gpu_memory_mib: Option<u64>,
    /// The AdamW implementation that ran (`auto` resolved).
    pub adamw: AdamWImpl,
    /// The profiled steps' phases (`None` without `profile_steps`).
    pub profile: Option<ProfileReport>,
}

/// The bench's bookkeeping inside [`Trainer::drive`].
struct BenchClock {
    warmup: u64,
    timed: u64,
    started: Option<Instant>,
    tokens_before: u64,
    seconds: f64,
    tokens: u64,
    peak_mem: Option<u64>,
    last_loss: Option<Tensor>,
    profiler: Option<Profiler>,
}

impl BenchClock {
    fn after_step(&mut self, step: u64, tokens_seen: u64, loss: &Tensor, device: Device) {
        if step == self.warmup + self.timed {
            sync(device);
            self.seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            self.tokens = tokens_seen - self.tokens_before;
            self.peak_mem = self.peak_mem.max(gpu_memory_mib());
            self.last_loss = Some(loss.shallow_clone());
        }
        if step == self.warmup {
            sync(device);
            self.peak_mem = gpu_memory_mib();
            self.tokens_before = tokens_seen;
            self.started = Some(Instant::now());
        }
    }
}

/// The sharded update's split ([`TrainConfig::shard_update`]), fixed for the run.
#[derive(Debug)]
struct Shard {
    /// Per parameter (in [`AdamW::params`] order): whether this rank updates it.
    owned: Vec<bool>,
    /// Per rank: the parameters it updates.
    params: Vec<Vec<Tensor>>,
    /// Per rank: the AdamW moments of those parameters (broadcast before checkpoints).
    moments: Vec<Vec<Tensor>>,
}

impl Shard {
    /// `params` in `opt`'s order, split over `world` ranks by [`AdamW::shard_owners`].
    fn new(opt: &AdamW, params: &[Tensor], rank: usize, world: usize) -> Self {
        let owners = opt.shard_owners(world);
        // [step, exp_avg/p0, exp_avg_sq/p0, exp_avg/p1, ...] in `params` order.
        let state = opt.state_tensors();
        let mut by_rank: Vec<Vec<Tensor>> = (0..world).map(|_| Vec::new()).collect();
        let mut moments: Vec<Vec<Tensor>> = (0..world).map(|_| Vec::new()).collect();
        for (i, &o) in owners.iter().enumerate() {
            by_rank[o].push(params[i].shallow_clone());
            moments[o].push(state[1 + 2 * i].1.shallow_clone());
            moments[o].push(state[2 + 2 * i].1.shallow_clone());
        }
        Self {
            owned: owners.iter().map(|&o| o == rank).collect(),
            params: by_rank,
            moments,
        }
    }
}

/// The global gradient norm from each rank's share: the squared norms of the shares
/// summed over the ranks.
fn sharded_grad_norm(group: &GroupHandle, mine: &[Tensor], device: Device) -> Result<Tensor> {
    let sq = match grad_norm_tensor(mine)? {
        Some(n) => n.f_to_device(device)?.f_square()?,
        None => Tensor::f_zeros([], (Kind::Float, device))?,
    };
    group.all_reduce_sum(std::slice::from_ref(&sq))?;
    Ok(sq.f_sqrt()?)
}
