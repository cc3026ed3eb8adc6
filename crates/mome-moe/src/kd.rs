//! Knowledge distillation for JEET / MoE-CE training: a [`MoeLoss`] that runs a
//! frozen teacher on each batch and returns mome-distill's `alpha * CE + beta * KD`
//! (method §4 and §6: the experts are trained by distillation from the teacher).
//!
//! The teacher, the KD divergence, the temperature and the weighting strategy are
//! mome-distill's ([`TeacherSection`], [`DistillSettings`]: the `teacher` and
//! `[distill]` keys of a `mome distill` config). Like `mome distill`, each loss
//! evaluation writes a line to `run_dir/distill_metrics.jsonl`:
//! `{"kind":"distill","step":S,"micro":M,"domain":D,"alpha":..,"beta":..,"ce":..,"kd":..}`
//! (`kd` is `null` when the KD weight was 0 and the teacher was skipped); this
//! reads the losses on the host once per micro-batch. On resume the file is cut
//! back to the checkpoint's step and replayed into strategies that read the losses
//! (adaptive), so they continue exactly.
//!
//! The teacher is online (`teacher = { dir = ... }`: run on each batch) or a top-K
//! teacher cache (`teacher = { cache = ... }`, from `mome teacher-cache build`:
//! the batch's rows are read by `(domain, sequence index)`), as in `mome distill`.
//! Data parallel ([`LossContext::group`]): CE and KD are averaged over the ranks
//! before they reach the strategy and the metrics file (adaptive weights are those
//! of the global batch, equal on every rank); rank 0 alone writes the file; a
//! teacher cache is read for the rank's rows only (the items it is given).
//!
//! A cache is checked against the student's vocabulary and the temperature (and,
//! with `dir` too, that teacher's weights) in [`DistillLoss::new`], and against the
//! training shards in [`MoeLoss::begin`], before any step.

use mome_core::dist::{mean_to_host, GroupHandle};
use mome_core::metrics::MetricsWriter;
use mome_data::sampler::SeqRef;
use mome_data::shards::ShardSet;
use mome_distill::cache::TeacherCache;
use mome_distill::losses::{kd_loss, KdLoss, Teacher};
use mome_distill::strategy::WeightStrategy;
use mome_distill::teacher::load_teacher;
use mome_distill::{strategy_history, DistillSettings, TeacherSection, DISTILL_METRICS};
use mome_experts::{causal_lm_loss, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use tch::{nn, Device, Tensor};

use crate::error::{Error, Result};
use crate::train::{LossContext, MoeLoss};

/// The KD loss of MoE training (see the module docs).
pub struct DistillLoss {
    teacher: TeacherImpl,
    /// The training split and its domains (for cache rows), set by `begin`.
    split: String,
    domains: Vec<String>,
    kind: KdLoss,
    temperature: f64,
    settings: DistillSettings,
    strategy: Option<Box<dyn WeightStrategy>>,
    writer: Option<MetricsWriter>,
    group: Option<GroupHandle>,
    start_step: u64,
    grad_accum: u64,
    calls: u64,
}

/// Where the teacher distribution comes from.
enum TeacherImpl {
    Online {
        _vs: nn::VarStore,
        model: Gpt2LmHeadModel,
    },
    Cache(TeacherCache),
}

impl std::fmt::Debug for DistillLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistillLoss")
            .field("settings", &self.settings)
            .field("start_step", &self.start_step)
            .field("calls", &self.calls)
            .finish()
    }
}

impl DistillLoss {
    /// Loads the frozen teacher of `teacher` on `device` and checks it against the
    /// expert shape `student` (same vocabulary, at least as many positions); or,
    /// with `teacher.cache`, opens the cache and checks its vocabulary, its
    /// temperature and (with `teacher.dir` too) its teacher. The cache is checked
    /// against the training shards when training begins.
    pub fn new(
        teacher: &TeacherSection,
        settings: &DistillSettings,
        student: &Gpt2Config,
        device: Device,
    ) -> Result<Self> {
        settings.validate()?;
        if let Some(cdir) = &teacher.cache {
            let cache = TeacherCache::open(cdir)?;
            let cv = cache.manifest().vocab_size as i64;
            if cv != student.vocab_size {
                return Err(Error::Config(format!(
                    "the teacher cache {} has a vocabulary of {} tokens, the experts {}",
                    cdir.display(),
                    cv,
                    student.vocab_size
                )));
            }
            cache.check_temperature(settings.temperature)?;
            if let Some(dir) = &teacher.dir {
                cache.check_teacher(dir)?;
            }
            return Ok(Self::with_teacher(TeacherImpl::Cache(cache), settings));
        }
        let dir = teacher.dir.as_ref().ok_or_else(|| {
            Error::Config(
                "KD needs a teacher: teacher = { dir = \"MODEL_DIR\" } or teacher = { cache = \"CACHE_DIR\" }"
                    .into(),
            )
        })?;
        let (vs, model, _sha) = load_teacher(dir, device, teacher.bf16)?;
        let tc = model.config();
        if tc.vocab_size != student.vocab_size {
            return Err(Error::Config(format!(
                "the teacher {} has a vocabulary of {} tokens, the experts {}",
                dir.display(),
                tc.vocab_size,
                student.vocab_size
            )));
        }
        if tc.n_positions < student.n_positions {
            return Err(Error::Config(format!(
                "the teacher {} has {} positions, fewer than the experts' {}",
                dir.display(),
                tc.n_positions,
                student.n_positions
            )));
        }
        Ok(Self::with_teacher(
            TeacherImpl::Online { _vs: vs, model },
            settings,
        ))
    }

    fn with_teacher(teacher: TeacherImpl, settings: &DistillSettings) -> Self {
        Self {
            teacher,
            split: String::new(),
            domains: Vec::new(),
            kind: settings.loss,
            temperature: settings.temperature,
            settings: settings.clone(),
            strategy: None,
            writer: None,
            group: None,
            start_step: 0,
            grad_accum: 1,
            calls: 0,
        }
    }

    /// The settings (loss, temperature, strategy).
    pub fn settings(&self) -> &DistillSettings {
        &self.settings
    }

    /// Checks that a teacher cache was built for `split` of `shards` (a no-op for an
    /// online teacher). Training runs it in [`MoeLoss::begin`]; call it earlier to
    /// fail before a run folder is created.
    pub fn check_data(&self, shards: &ShardSet, split: &str) -> Result<()> {
        if let TeacherImpl::Cache(cache) = &self.teacher {
            cache.check_shards(shards, split)?;
        }
        Ok(())
    }
}

impl MoeLoss for DistillLoss {
    fn begin(&mut self, ctx: &LossContext<'_>) -> Result<()> {
        self.check_data(ctx.shards, ctx.split)?;
        self.split = ctx.split.to_string();
        self.domains = ctx.domains.to_vec();
        let mut strategy = self.settings.strategy.build(ctx.train.max_steps)?;
        let path = ctx.run_dir.join(DISTILL_METRICS);
        if ctx.resumed && strategy.needs_losses() {
            for (step, ce, kd) in strategy_history(&path, ctx.start_step)? {
                strategy.weights(step, ce, kd);
            }
        }
        let primary = ctx.group.is_none_or(|g| g.rank() == 0);
        self.writer = if primary {
            Some(MetricsWriter::open(
                &path,
                ctx.resumed.then_some(ctx.start_step),
            )?)
        } else {
            None
        };
        self.strategy = Some(strategy);
        self.group = ctx.group.cloned();
        self.start_step = ctx.start_step;
        self.grad_accum = ctx.train.grad_accum.max(1);
        self.calls = 0;
        Ok(())
    }

    fn loss(
        &mut self,
        logits: &Tensor,
        ids: &Tensor,
        domain: usize,
        items: &[SeqRef],
    ) -> Result<Tensor> {
        let Some(strategy) = self.strategy.as_mut() else {
            return Err(Error::Config(
                "internal: DistillLoss used before begin() (train it with train_moe)".into(),
            ));
        };
        let step = self.start_step + self.calls / self.grad_accum + 1;
        let micro = self.calls % self.grad_accum;
        self.calls += 1;
        let ce = causal_lm_loss(logits, ids, None)?;
        let planned =
            (!strategy.needs_losses()).then(|| strategy.weights(step, f64::NAN, f64::NAN));
        let kd = if planned.is_none_or(|(_, b)| b != 0.0) {
            let out = match &self.teacher {
                TeacherImpl::Online { model, .. } => {
                    let t = tch::no_grad(|| model.forward(Gpt2Input::ids(ids)))?.logits;
                    kd_loss(
                        self.kind,
                        logits,
                        Teacher::Logits(&t),
                        None,
                        self.temperature,
                    )?
                }
                TeacherImpl::Cache(cache) => {
                    let refs = items
                        .iter()
                        .map(|r| {
                            self.domains
                                .get(r.domain)
                                .map(|d| (d.as_str(), r.index))
                                .ok_or_else(|| {
                                    Error::Config(format!(
                                        "internal: batch item of unknown domain {}",
                                        r.domain
                                    ))
                                })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    if refs.len() as i64 != ids.size()[0] {
                        return Err(Error::Config(format!(
                            "internal: {} batch items for {} rows (the teacher cache needs the batch's sequences)",
                            refs.len(),
                            ids.size()[0]
                        )));
                    }
                    let sp = cache.rows(&self.split, &refs, logits.device())?;
                    kd_loss(
                        self.kind,
                        logits,
                        Teacher::TopK(&sp),
                        None,
                        self.temperature,
                    )?
                }
            };
            Some(out.loss)
        } else {
            None
        };
        let parts: Vec<Tensor> = std::iter::once(ce.detach())
            .chain(kd.iter().map(|k| k.detach()))
            .collect();
        // The global batch's values: the same weights on every rank.
        let vals = mean_to_host(&Tensor::f_stack(&parts, 0)?, self.group.as_ref())?;
        let kd_value = kd.as_ref().map(|_| vals[1]);
        let (alpha, beta) = match planned {
            Some(w) => w,
            None => strategy.weights(step, vals[0], kd_value.unwrap_or(f64::NAN)),
        };
        if let Some(writer) = self.writer.as_mut() {
            writer.write(&serde_json::json!({
                "kind": "distill", "step": step, "micro": micro, "domain": domain,
                "alpha": alpha, "beta": beta, "ce": vals[0], "kd": kd_value,
            }))?;
        }
        Ok(match &kd {
            Some(k) if beta != 0.0 => {
                if alpha != 0.0 {
                    ce.f_mul_scalar(alpha)?.f_add(&k.f_mul_scalar(beta)?)?
                } else {
                    k.f_mul_scalar(beta)?
                }
            }
            _ => ce.f_mul_scalar(alpha)?,
        })
    }
}
