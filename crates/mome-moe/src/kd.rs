//! Knowledge distillation for JEET / MoE-CE training: a [`MoeLoss`] that is
//! mome-distill's [`KdTerm`] (method §4 and §6: the experts are trained by
//! distillation from the teacher) — the same CE/KD code as `mome distill`.
//!
//! The teacher, the KD divergence, the temperature, the weighting strategy and the
//! KD chunk are mome-distill's ([`TeacherSection`], [`DistillSettings`]: the
//! `teacher` and `[distill]` keys of a `mome distill` config). Like `mome distill`,
//! each loss evaluation gives a line of `run_dir/distill_metrics.jsonl`, here with
//! the batch's `domain` (expert index); the values are read at the trainer's sync
//! steps. The teacher is online (run on each batch, bf16 when the run's precision
//! is) or a top-K teacher cache read ahead by the batch source.
//!
//! A cache is checked against the experts' vocabulary and the temperature (and,
//! with `dir` too, that teacher's weights) in [`DistillLoss::new`], and against the
//! training shards before training starts ([`MoeLoss::check_data`]).

use mome_core::data::PrefetchHook;
use mome_core::fusion::{KernelConfig, LinearCe};
use mome_core::trainer::{Batch, RunContext, StepInfo};
use mome_core::{Precision, Profiler};
use mome_data::shards::ShardSet;
use mome_distill::objective::StudentHead;
use mome_distill::{DistillSettings, KdTerm, TeacherModel, TeacherSection};
use mome_experts::Gpt2Config;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::MoeHeads;
use crate::train::MoeLoss;

/// The KD loss of MoE training (see the module docs).
#[derive(Debug)]
pub struct DistillLoss {
    kd: KdTerm,
}

impl DistillLoss {
    /// Loads the frozen teacher of `teacher` on `device` (bf16 under `precision`'s
    /// rule) and checks it against the expert shape `student` (same vocabulary, at
    /// least as many positions); or, with `teacher.cache`, opens the cache and checks
    /// its vocabulary, its temperature and (with `teacher.dir` too) its teacher.
    pub fn new(
        teacher: &TeacherSection,
        settings: &DistillSettings,
        student: &Gpt2Config,
        device: Device,
        precision: Precision,
    ) -> Result<Self> {
        settings.validate()?;
        if teacher.dir.is_none() && teacher.cache.is_none() {
            return Err(Error::Config(
                "KD needs a teacher: teacher = { dir = \"MODEL_DIR\" } or teacher = { cache = \"CACHE_DIR\" }"
                    .into(),
            ));
        }
        teacher.check(student, None, settings.temperature, true)?;
        let model = teacher.load(device, precision)?;
        Ok(Self {
            kd: KdTerm::new(model, settings, device),
        })
    }

    /// The loss with the run's `[train.kernels]` (`linear_kd` resolved for `device`
    /// and the experts' `compute` kind; an unusable `fused` is an error here). With a
    /// chunked or fused `linear_kd`, [`MoeLoss::head_loss`] computes the KD step from
    /// the heads without the logits (single-domain batches).
    pub fn with_kernels(
        self,
        kernels: &KernelConfig,
        device: Device,
        compute: Kind,
    ) -> Result<Self> {
        Ok(Self {
            kd: self.kd.with_kernels(kernels, device, compute)?,
        })
    }

    /// The settings (loss, temperature, strategy, KD chunk).
    pub fn settings(&self) -> &DistillSettings {
        self.kd.settings()
    }
}

impl MoeLoss for DistillLoss {
    fn loss(
        &mut self,
        logits: &Tensor,
        batch: &Batch,
        domain: usize,
        at: StepInfo,
        prof: &mut Profiler,
    ) -> Result<Tensor> {
        Ok(self.kd.loss(logits, batch, at, Some(domain), prof)?)
    }
    fn head_loss(
        &mut self,
        heads: &MoeHeads,
        batch: &Batch,
        domain: usize,
        at: StepInfo,
        prof: &mut Profiler,
    ) -> Result<Option<Tensor>> {
        if self.kd.linear_kd() == LinearCe::Reference {
            return Ok(None);
        }
        let Some((hidden, weight)) = heads.as_linear() else {
            return Ok(None);
        };
        let ids = batch.ids.size();
        let hidden = hidden.f_reshape([ids[0], ids[1], -1])?;
        let head = StudentHead {
            hidden: &hidden,
            weight: &weight,
            compute: heads.compute_kind(),
        };
        let loss = self.kd.loss_head(head, batch, at, Some(domain), prof)?;
        Ok(Some(loss))
    }
    fn begin(&mut self, ctx: &RunContext<'_>) -> Result<()> {
        Ok(self.kd.begin(ctx)?)
    }
    fn end_step(&mut self, step: u64, sync: bool) -> Result<()> {
        Ok(self.kd.end_step(step, sync)?)
    }
    fn check_data(&self, shards: &ShardSet, split: &str) -> Result<()> {
        if let TeacherModel::Cache { cache, .. } = self.kd.teacher() {
            cache.check_shards(shards, split)?;
        }
        Ok(())
    }
    fn source_hook(&self) -> Option<PrefetchHook> {
        self.kd.cache_hook()
    }
}
