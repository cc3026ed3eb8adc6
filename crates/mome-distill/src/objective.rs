//! The distillation loss of one micro-batch, shared by `mome distill` (a GPT-2
//! student, [`DistillObjective`]) and by JEET / MoE-CE training (mome-moe's experts):
//! `alpha * CE + beta * KD` against a frozen teacher (method §4, §6).
//!
//! [`KdTerm`] holds the teacher ([`TeacherModel`]: online, a top-K teacher cache, or
//! none for CE-only runs), the KD divergence and temperature, the weighting strategy
//! and the side metrics file. Per micro-batch it computes CE on the data, the KD term
//! when its weight is not known to be 0 (a CE-only step never runs the teacher), the
//! weights and their combination. The teacher's logits stay in its compute kind; the
//! KD loss is computed `kd_chunk` positions at a time ([`kd_loss_chunked`]: bounded
//! fp32 temporaries, gradient in closed form) or whole ([`kd_loss`]).
//!
//! A teacher cache's rows are read by the batch source on its reader thread
//! ([`KdTerm::cache_hook`], [`mome_core::data::Prefetch`]) and reach the loss in
//! [`Batch::aux`], already on the device.
//!
//! `run_dir/distill_metrics.jsonl` gets one line per micro-batch:
//! `{"kind":"distill","step":S,"micro":M,["domain":D,]"alpha":..,"beta":..,"ce":..,"kd":..}`
//! (`kd` is `null` when the KD weight was 0 and the teacher was skipped; `domain`
//! for MoE training). The values stay on the device and are read in one transfer at
//! the trainer's sync steps (log, eval, checkpoint, last), except with the adaptive
//! strategy, which reads CE and KD every micro-batch. On resume the file is cut
//! back to the checkpoint's step and its lines are replayed into the strategy.
//! Data parallel: CE and KD are averaged over the ranks before they reach the
//! strategy and the file (the global batch's weights on every rank); rank 0 writes.

use std::sync::Arc;

use mome_core::data::PrefetchHook;
use mome_core::dist::{mean_to_host, GroupHandle};
use mome_core::fusion::{KernelConfig, LinearCe};
use mome_core::linear_ce::{linear_cross_entropy, LinearCrossEntropy, LinearHead};
use mome_core::metrics::MetricsWriter;
use mome_core::trainer::{Batch, Objective, RunContext, StepInfo};
use mome_core::Profiler;
use mome_experts::{causal_lm_loss, next_token_targets, Gpt2Input, Gpt2LmHeadModel};
use tch::{nn, Device, Kind, Tensor};

use crate::cache::TeacherCache;
use crate::linear_kd::{linear_kd_loss, HeadTeacher, KdWeights, LinearKd};
use crate::losses::{kd_loss, kd_loss_chunked, SparseTeacher, Teacher};
use crate::strategy::WeightStrategy;
use crate::trainer::{strategy_history, DistillSettings, DISTILL_METRICS};
use crate::{Error, Result};

/// Where the teacher distribution comes from.
pub enum TeacherModel {
    /// No teacher: the strategy must never give KD a weight (CE only).
    None,
    /// A frozen GPT-2 run on each batch (under `no_grad`, in its compute kind).
    Online {
        /// Its variables (kept alive).
        vs: nn::VarStore,
        /// The model.
        model: Box<Gpt2LmHeadModel>,
    },
    /// A top-K teacher cache, read by the batch source ([`KdTerm::cache_hook`]).
    Cache {
        /// The cache.
        cache: Arc<TeacherCache>,
        /// The split its rows are read from.
        split: String,
    },
}

impl std::fmt::Debug for TeacherModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TeacherModel::None => write!(f, "TeacherModel::None"),
            TeacherModel::Online { model, .. } => write!(
                f,
                "TeacherModel::Online({} layers, {:?})",
                model.config().n_layer,
                model.compute_kind()
            ),
            TeacherModel::Cache { cache, split } => {
                write!(
                    f,
                    "TeacherModel::Cache({}, {split})",
                    cache.root().display()
                )
            }
        }
    }
}

impl TeacherModel {
    /// A frozen copy of `model`'s variables in `vs` for inference: no parameter
    /// requires grad, stored and run in bf16 when `bf16`.
    pub fn online(mut vs: nn::VarStore, mut model: Gpt2LmHeadModel, bf16: bool) -> Result<Self> {
        vs.freeze();
        if bf16 {
            vs.bfloat16();
            model.set_compute_kind(tch::Kind::BFloat16)?;
        }
        Ok(TeacherModel::Online {
            vs,
            model: Box::new(model),
        })
    }

    /// Parameters of an online teacher.
    pub fn parameters(&self) -> Option<i64> {
        match self {
            TeacherModel::Online { model, .. } => Some(model.param_count().total),
            _ => None,
        }
    }

    /// Model FLOPs per token of the teacher's forward (an online teacher).
    pub fn forward_flops_per_token(&self, seq_len: i64) -> f64 {
        match self {
            TeacherModel::Online { model, .. } => model.train_flops_per_token(seq_len) / 3.0,
            _ => 0.0,
        }
    }

    /// Whether an online teacher runs in bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self, TeacherModel::Online { model, .. } if model.compute_kind() == tch::Kind::BFloat16)
    }
}

/// A teacher cache's rows of `batch` (read by [`KdTerm::cache_hook`]).
fn cache_rows(batch: &Batch, cache: &TeacherCache) -> Result<SparseTeacher> {
    let [tid, tlp] = batch.aux.as_slice() else {
        return Err(Error::Config(format!(
            "internal: the batch carries {} side tensors, not the teacher cache's rows (ids, log-probabilities); build the source with KdTerm::cache_hook",
            batch.aux.len()
        )));
    };
    Ok(SparseTeacher {
        ids: tid.shallow_clone(),
        logprobs: tlp.shallow_clone(),
        vocab_size: cache.manifest().vocab_size as i64,
    })
}

/// A student given by its head, for [`KdTerm::loss_head`].
#[derive(Debug, Clone, Copy)]
pub struct StudentHead<'a> {
    /// The last hidden state `[B, T, D]` (differentiable).
    pub hidden: &'a Tensor,
    /// The LM head `[V, D]` (differentiable).
    pub weight: &'a Tensor,
    /// The kind of the head's matmul.
    pub compute: Kind,
}

struct Pending {
    step: u64,
    micro: u64,
    domain: Option<usize>,
    alpha: f64,
    beta: f64,
    ce: Tensor,
    kd: Option<Tensor>,
}

/// `alpha * CE + beta * KD` of one micro-batch (see the module docs).
pub struct KdTerm {
    teacher: TeacherModel,
    settings: DistillSettings,
    /// Positions per KD chunk (`None`: the whole sequence at once).
    chunk: Option<i64>,
    /// The path of a student given by its head ([`KdTerm::loss_head`]).
    linear_kd: LinearCe,
    kernels: KernelConfig,
    strategy: Option<Box<dyn WeightStrategy>>,
    writer: Option<MetricsWriter>,
    group: Option<GroupHandle>,
    pending: Vec<Pending>,
}

impl std::fmt::Debug for KdTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdTerm")
            .field("teacher", &self.teacher)
            .field("settings", &self.settings)
            .field("chunk", &self.chunk)
            .field("linear_kd", &self.linear_kd)
            .finish()
    }
}

impl KdTerm {
    /// The term of `settings` with `teacher` on `device` (which decides the
    /// `auto` KD chunk).
    pub fn new(teacher: TeacherModel, settings: &DistillSettings, device: Device) -> Self {
        Self {
            chunk: settings.chunk_on(device),
            linear_kd: LinearCe::Reference,
            kernels: KernelConfig::default(),
            teacher,
            settings: settings.clone(),
            strategy: None,
            writer: None,
            group: None,
            pending: Vec::new(),
        }
    }

    /// The term with the run's `[train.kernels]`: `linear_kd` resolved for the
    /// student's `device` and `compute` kind (an unusable `fused` is an error here,
    /// before training); see [`KdTerm::loss_head`].
    pub fn with_kernels(
        mut self,
        kernels: &KernelConfig,
        device: Device,
        compute: Kind,
    ) -> Result<Self> {
        self.linear_kd = kernels
            .linear_kd
            .resolve_key("linear_kd", device, compute)?;
        self.kernels = *kernels;
        // The frozen teacher's blocks follow the same keys as the student's.
        if let TeacherModel::Online { model, .. } = &mut self.teacher {
            model.set_kernels(kernels);
        }
        Ok(self)
    }

    /// The path of [`KdTerm::loss_head`] (`[train.kernels] linear_kd`, resolved).
    pub fn linear_kd(&self) -> LinearCe {
        self.linear_kd
    }

    /// The settings.
    pub fn settings(&self) -> &DistillSettings {
        &self.settings
    }

    /// The teacher.
    pub fn teacher(&self) -> &TeacherModel {
        &self.teacher
    }

    /// Positions per KD chunk in effect (`None`: unchunked).
    pub fn chunk(&self) -> Option<i64> {
        self.chunk
    }

    /// For a cache teacher: the batch-source hook that reads each batch's rows
    /// (`[B, T, K]` ids and log-probabilities, cut to the batch's length) into
    /// [`Batch::aux`] on the reader thread.
    pub fn cache_hook(&self) -> Option<PrefetchHook> {
        let TeacherModel::Cache { cache, split } = &self.teacher else {
            return None;
        };
        let (cache, split) = (Arc::clone(cache), split.clone());
        Some(Box::new(move |b: &mut Batch, domains: &[String]| {
            let refs = b
                .items
                .iter()
                .map(|r| {
                    domains
                        .get(r.domain)
                        .map(|d| (d.as_str(), r.index))
                        .ok_or_else(|| {
                            mome_core::Error::Other(format!(
                                "teacher cache: batch item of unknown domain {}",
                                r.domain
                            ))
                        })
                })
                .collect::<mome_core::Result<Vec<_>>>()?;
            if refs.len() as i64 != b.ids.size()[0] {
                return Err(mome_core::Error::Other(format!(
                    "teacher cache: {} batch items for {} rows (the cache needs the batch's sequences)",
                    refs.len(),
                    b.ids.size()[0]
                )));
            }
            let mut sp = cache
                .rows(&split, &refs, Device::Cpu)
                .map_err(|e| mome_core::Error::Other(e.to_string()))?;
            let t = b.ids.size()[1];
            if t < sp.ids.size()[1] {
                sp.ids = sp.ids.f_narrow(1, 0, t)?.f_contiguous()?;
                sp.logprobs = sp.logprobs.f_narrow(1, 0, t)?.f_contiguous()?;
            }
            b.aux = vec![sp.ids, sp.logprobs];
            Ok(())
        }))
    }

    /// Builds the strategy (replaying a resumed run's history) and opens the
    /// metrics file (rank 0 of a run with a folder).
    pub fn begin(&mut self, ctx: &RunContext<'_>) -> Result<()> {
        let mut strategy = self.settings.strategy.build(ctx.train.max_steps)?;
        self.writer = None;
        if let Some(dir) = ctx.run_dir {
            let path = dir.join(DISTILL_METRICS);
            if ctx.resumed && strategy.needs_losses() {
                for (step, ce, kd) in strategy_history(&path, ctx.start_step)? {
                    strategy.weights(step, ce, kd);
                }
            }
            if ctx.writes_files() {
                self.writer = Some(MetricsWriter::open(
                    &path,
                    ctx.resumed.then_some(ctx.start_step),
                )?);
            }
        }
        self.strategy = Some(strategy);
        self.group = ctx.group.cloned();
        self.pending.clear();
        Ok(())
    }

    /// The loss of one micro-batch: `logits` are the student's `[B, T, V]` (any
    /// float kind), `batch` the micro-batch on the device; `domain` is written into
    /// the metrics line (MoE training).
    pub fn loss(
        &mut self,
        logits: &Tensor,
        batch: &Batch,
        at: StepInfo,
        domain: Option<usize>,
        prof: &mut Profiler,
    ) -> Result<Tensor> {
        let strategy = self.strategy.as_mut().ok_or_else(|| {
            Error::Config("internal: KdTerm::loss before begin (train it with a Trainer)".into())
        })?;
        let ids = &batch.ids;
        let ce = causal_lm_loss(logits, ids, None)?;
        let planned =
            (!strategy.needs_losses()).then(|| strategy.weights(at.step, f64::NAN, f64::NAN));
        let kd = if planned.is_none_or(|(_, b)| b != 0.0) {
            let (kind, temp, chunk) = (self.settings.loss, self.settings.temperature, self.chunk);
            let kd_of = |teacher: Teacher<'_>| -> Result<Tensor> {
                Ok(match chunk {
                    Some(c) => kd_loss_chunked(kind, logits, teacher, None, temp, c)?,
                    None => kd_loss(kind, logits, teacher, None, temp)?,
                }
                .loss)
            };
            let k = match &self.teacher {
                TeacherModel::None => {
                    return Err(Error::Config(
                        "the strategy needs a KD term but no teacher is configured".into(),
                    ))
                }
                TeacherModel::Online { model, .. } => {
                    let t = tch::no_grad(|| {
                        model.forward_compute_logits(Gpt2Input::ids(ids).trusted_ids(true))
                    })?
                    .logits;
                    prof.mark("teacher_forward");
                    kd_of(Teacher::Logits(&t))?
                }
                TeacherModel::Cache { cache, .. } => {
                    let sp = cache_rows(batch, cache)?;
                    kd_of(Teacher::TopK(&sp))?
                }
            };
            Some(k)
        } else {
            None
        };
        let (alpha, beta) = match planned {
            Some(w) => w,
            None => {
                let kd_t = kd.as_ref().ok_or_else(|| {
                    Error::Config("internal: an adaptive strategy without a KD term".into())
                })?;
                // The global batch's losses: the same weights on every rank.
                let both = Tensor::f_stack(&[ce.f_detach()?, kd_t.f_detach()?], 0)?;
                let v = mean_to_host(&both, self.group.as_ref())?;
                strategy.weights(at.step, v[0], v[1])
            }
        };
        let loss = match &kd {
            Some(k) if beta != 0.0 => {
                if alpha != 0.0 {
                    ce.f_mul_scalar(alpha)?.f_add(&k.f_mul_scalar(beta)?)?
                } else {
                    k.f_mul_scalar(beta)?
                }
            }
            _ => ce.f_mul_scalar(alpha)?,
        };
        prof.mark("loss");
        self.pending.push(Pending {
            step: at.step,
            micro: at.micro,
            domain,
            alpha,
            beta,
            ce: ce.f_detach()?,
            kd: kd.as_ref().map(|k| k.f_detach()).transpose()?,
        });
        Ok(loss)
    }

    /// The loss of one micro-batch of a student given by its last hidden state
    /// `hidden` `[B, T, D]` and LM head `weight` `[V, D]` (matmuls in `compute`), by
    /// the path [`KdTerm::linear_kd`]: with [`LinearCe::Reference`] exactly
    /// [`KdTerm::loss`] of the head's logits; with the chunked and fused paths
    /// ([`crate::linear_kd`]) neither the student's nor an online teacher's
    /// `[B, T, V]` logits are made.
    pub fn loss_head(
        &mut self,
        student: StudentHead<'_>,
        batch: &Batch,
        at: StepInfo,
        domain: Option<usize>,
        prof: &mut Profiler,
    ) -> Result<Tensor> {
        let how = self.linear_kd;
        if how == LinearCe::Reference {
            let logits = LinearHead {
                hidden: student.hidden,
                weight: student.weight,
                compute: student.compute,
            }
            .logits()?;
            return self.loss(&logits, batch, at, domain, prof);
        }
        let strategy = self.strategy.as_mut().ok_or_else(|| {
            Error::Config("internal: KdTerm::loss before begin (train it with a Trainer)".into())
        })?;
        let ids = &batch.ids;
        let planned =
            (!strategy.needs_losses()).then(|| strategy.weights(at.step, f64::NAN, f64::NAN));
        if let Some((alpha, 0.0)) = planned {
            // CE only: the teacher is not run.
            let hs = student.hidden.size();
            let h = student.hidden.f_reshape([-1, *hs.last().unwrap_or(&0)])?;
            let targets = next_token_targets(ids, None)?.f_reshape([-1])?;
            let ce = linear_cross_entropy(
                &LinearCrossEntropy {
                    hidden: &h,
                    weight: student.weight,
                    targets: &targets,
                    compute: student.compute,
                },
                how,
                &self.kernels,
            )?;
            prof.mark("loss");
            self.pending.push(Pending {
                step: at.step,
                micro: at.micro,
                domain,
                alpha,
                beta: 0.0,
                ce: ce.f_detach()?,
                kd: None,
            });
            return Ok(ce.f_mul_scalar(alpha)?);
        }
        let teacher_hidden;
        let sparse;
        let teacher = match &self.teacher {
            TeacherModel::None => {
                return Err(Error::Config(
                    "the strategy needs a KD term but no teacher is configured".into(),
                ))
            }
            TeacherModel::Online { model, .. } => {
                teacher_hidden = tch::no_grad(|| {
                    model
                        .transformer()
                        .forward(Gpt2Input::ids(ids).trusted_ids(true))
                })?
                .last_hidden_state;
                prof.mark("teacher_forward");
                HeadTeacher::Head {
                    hidden: &teacher_hidden,
                    weight: model.lm_head_weight(),
                    compute: model.compute_kind(),
                }
            }
            TeacherModel::Cache { cache, .. } => {
                sparse = cache_rows(batch, cache)?;
                HeadTeacher::TopK(&sparse)
            }
        };
        let input = LinearKd {
            hidden: student.hidden,
            weight: student.weight,
            compute: student.compute,
            input_ids: ids,
            teacher,
            loss: self.settings.loss,
            temperature: self.settings.temperature,
        };
        let group = self.group.clone();
        let mut from_losses = |ce: &Tensor, kd: &Tensor| -> Result<(f64, f64)> {
            // The global batch's losses: the same weights on every rank.
            let both = Tensor::f_stack(&[ce.shallow_clone(), kd.shallow_clone()], 0)?;
            let v = mean_to_host(&both, group.as_ref())?;
            Ok(strategy.weights(at.step, v[0], v[1]))
        };
        let weights = match planned {
            Some((alpha, beta)) => KdWeights::Fixed { alpha, beta },
            None => KdWeights::FromLosses(&mut from_losses),
        };
        let out = linear_kd_loss(&input, weights, how, &self.kernels)?;
        prof.mark("loss");
        self.pending.push(Pending {
            step: at.step,
            micro: at.micro,
            domain,
            alpha: out.alpha,
            beta: out.beta,
            ce: out.ce,
            kd: Some(out.kd),
        });
        Ok(out.loss)
    }

    /// After optimizer step `step`: at the trainer's sync steps, the pending metrics
    /// lines are read (averaged over the ranks) and written.
    pub fn end_step(&mut self, _step: u64, sync: bool) -> Result<()> {
        if sync {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending lines (rank 0), with CE and KD averaged over the ranks
    /// (every rank calls this at the same steps).
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(self.pending.len() * 2);
        for p in &self.pending {
            parts.push(p.ce.f_reshape([1])?);
            parts.push(match &p.kd {
                Some(k) => k.f_reshape([1])?,
                None => p.ce.f_reshape([1])?,
            });
        }
        let vals = mean_to_host(&Tensor::f_cat(&parts, 0)?, self.group.as_ref())?;
        if let Some(writer) = self.writer.as_mut() {
            for (i, p) in self.pending.iter().enumerate() {
                let kd = p.kd.as_ref().map(|_| vals[2 * i + 1]);
                let mut line = serde_json::json!({
                    "kind": "distill", "step": p.step, "micro": p.micro,
                    "alpha": p.alpha, "beta": p.beta, "ce": vals[2 * i], "kd": kd,
                });
                if let Some(d) = p.domain {
                    line["domain"] = serde_json::json!(d);
                }
                writer.write(&line)?;
            }
        }
        self.pending.clear();
        Ok(())
    }
}

/// A GPT-2 student trained by [`KdTerm`]: the objective of `mome distill` (and of
/// `mome bench train --mode kd-online|kd-cache`).
#[derive(Debug)]
pub struct DistillObjective<'a> {
    student: &'a Gpt2LmHeadModel,
    kd: KdTerm,
}

impl<'a> DistillObjective<'a> {
    /// `student` trained with `kd`.
    pub fn new(student: &'a Gpt2LmHeadModel, kd: KdTerm) -> Self {
        Self { student, kd }
    }

    /// The KD term.
    pub fn kd(&self) -> &KdTerm {
        &self.kd
    }
}

impl Objective for DistillObjective<'_> {
    type Error = Error;
    fn begin(&mut self, ctx: &RunContext<'_>) -> Result<()> {
        self.kd.begin(ctx)
    }
    fn loss(&mut self, batch: &Batch, at: StepInfo, prof: &mut Profiler) -> Result<Tensor> {
        let input = Gpt2Input::ids(&batch.ids).train(true).trusted_ids(true);
        if self.kd.linear_kd() == LinearCe::Reference {
            let out = self.student.forward_compute_logits(input)?;
            prof.mark("forward");
            return self.kd.loss(&out.logits, batch, at, None, prof);
        }
        let out = self.student.transformer().forward(input)?;
        prof.mark("forward");
        let head = StudentHead {
            hidden: &out.last_hidden_state,
            weight: self.student.lm_head_weight(),
            compute: self.student.compute_kind(),
        };
        self.kd.loss_head(head, batch, at, None, prof)
    }
    fn end_step(&mut self, step: u64, sync: bool) -> Result<()> {
        self.kd.end_step(step, sync)
    }
}
