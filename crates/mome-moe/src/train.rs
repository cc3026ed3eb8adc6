//! JEET / MoE-CE training (method §6) on mome-core's [`Trainer`].
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
//! [`Trainer`]; the [`MoeLoss`] gets the items of the rank's rows and the group in
//! [`LossContext::group`] (to average values over the ranks, as [`crate::kd::DistillLoss`]
//! does). The frozen experts have no gradient and are skipped by the all-reduce.
//!
//! Loss: [`MoeLoss`] gets `(logits, ids, domain, items)` (`items`: the batch's
//! sequences, row order, as [`SeqRef`]s into the source's domains) and returns the
//! scalar loss.
//! [`CrossEntropy`] is the next-token loss on the data; the method's knowledge
//! distillation from the teacher is [`crate::kd::DistillLoss`] (mome-distill's
//! `alpha * CE + beta * KD` against a frozen teacher). Any closure
//! `FnMut(&Tensor, &Tensor, usize) -> Result<Tensor>` (logits, ids, domain) is a
//! [`MoeLoss`] too.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;

use mome_core::data::ShardBatches;
use mome_core::dist::{local_items, GroupHandle};
use mome_core::trainer::{BatchSource, TrainConfig, TrainSummary, Trainer};
use mome_data::sampler::SeqRef;
use mome_data::shards::ShardSet;
use tch::{nn, Tensor};

use crate::config::{Arch, ExpertId, Setting};
use crate::error::{Error, Result};
use crate::model::MoeModel;
use crate::routing::ExpertChoice;

/// What [`train_moe`] tells a [`MoeLoss`] before the first batch.
#[derive(Debug, Clone, Copy)]
pub struct LossContext<'a> {
    /// The run folder (for side metrics files).
    pub run_dir: &'a Path,
    /// The step training starts from (0, or the resumed checkpoint's step).
    pub start_step: u64,
    /// Whether the run continues from a checkpoint.
    pub resumed: bool,
    /// The training settings (steps, accumulation, logging).
    pub train: &'a TrainConfig,
    /// The training shards.
    pub shards: &'a ShardSet,
    /// The split training reads.
    pub split: &'a str,
    /// The source's domains, in order ([`SeqRef::domain`] indexes them).
    pub domains: &'a [String],
    /// The process group of a data-parallel run (`None`: one process). Every rank
    /// calls the loss at the same points: values of the global batch are the mean
    /// over the ranks; rank 0 alone writes files.
    pub group: Option<&'a GroupHandle>,
}

/// The training loss of one batch of a known domain.
pub trait MoeLoss {
    /// `logits` `[B, T, V]` fp32, `ids` `[B, T]`, `domain` the expert index,
    /// `items` the batch's sequences in row order ([`LossContext::domains`]).
    fn loss(
        &mut self,
        logits: &Tensor,
        ids: &Tensor,
        domain: usize,
        items: &[SeqRef],
    ) -> Result<Tensor>;
    /// Called once by [`train_moe`] after the trainer is set up (and a checkpoint
    /// restored), before the first batch. The default does nothing.
    fn begin(&mut self, _ctx: &LossContext<'_>) -> Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&Tensor, &Tensor, usize) -> Result<Tensor>> MoeLoss for F {
    fn loss(
        &mut self,
        logits: &Tensor,
        ids: &Tensor,
        domain: usize,
        _items: &[SeqRef],
    ) -> Result<Tensor> {
        self(logits, ids, domain)
    }
}

/// Shifted next-token cross-entropy on the data.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

impl MoeLoss for CrossEntropy {
    fn loss(
        &mut self,
        logits: &Tensor,
        ids: &Tensor,
        _domain: usize,
        _items: &[SeqRef],
    ) -> Result<Tensor> {
        Ok(mome_experts::causal_lm_loss(logits, ids, None)?)
    }
}

/// Wraps [`ShardBatches`] and publishes each batch's domain (as an expert index)
/// and sequences.
struct DomainSource {
    inner: ShardBatches,
    to_expert: Vec<usize>,
    last: Rc<Cell<Option<usize>>>,
    items: Rc<RefCell<Vec<SeqRef>>>,
}

impl BatchSource for DomainSource {
    fn next_batch(&mut self) -> mome_core::Result<Tensor> {
        let b = self.inner.next_batch()?;
        let d = self.inner.last_domain().ok_or_else(|| {
            mome_core::Error::Config(
                "MoE training needs single-domain batches (sampler = \"blocks\")".into(),
            )
        })?;
        self.last.set(Some(self.to_expert[d]));
        let mut items = self.items.borrow_mut();
        items.clear();
        items.extend_from_slice(self.inner.last_items());
        Ok(b)
    }
    fn state(&self) -> serde_json::Value {
        self.inner.state()
    }
    fn restore(&mut self, state: &serde_json::Value) -> mome_core::Result<()> {
        self.inner.restore(state)
    }
    fn read_rank_slice(&mut self, rank: usize, world: usize) -> mome_core::Result<bool> {
        self.inner.read_rank_slice(rank, world)
    }
}

/// Sets which domain experts are trainable this step (the others are frozen).
fn set_domain_trainable(model: &MoeModel, trainable: &[usize]) -> Result<()> {
    for i in 0..model.domains().len() {
        model.set_expert_trainable(ExpertId::Domain(i), trainable.contains(&i))?;
    }
    Ok(())
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
    eval_fn: Option<&mut dyn FnMut(u64) -> mome_core::Result<serde_json::Value>>,
) -> Result<TrainSummary> {
    if model.arch() == Arch::Ple {
        return Err(Error::Config(
            "PLE experts are trained separately (distillation) and frozen; train jeet or moe-ce"
                .into(),
        ));
    }
    let mut to_expert = Vec::new();
    let mut unknown = Vec::new();
    for d in source.domains() {
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
    let group = match run.group {
        Some(g) => Some(g.clone()),
        None => mome_core::dist::init_from_env(vs.device())?.map(GroupHandle::new),
    };
    let setting = crate::routing::ResolvedSetting::new(
        &Setting::routed(model.config().common_expert),
        model.config(),
    )?;
    let ga = cfg.grad_accum.max(1);
    model.set_all_trainable(true);
    let train_cfg = cfg.clone();
    let mut trainer = Trainer::with_group(cfg, vs, run.run_dir, run.resume, group.clone())?;
    loss.begin(&LossContext {
        run_dir: run.run_dir,
        start_step: trainer.step(),
        resumed: trainer.resumed_from().is_some(),
        train: &train_cfg,
        shards: source.shards(),
        split: source.split(),
        domains: source.domains(),
        group: group.as_ref(),
    })?;
    let last = Rc::new(Cell::new(None));
    let items = Rc::new(RefCell::new(Vec::new()));
    let mut src = DomainSource {
        inner: source,
        to_expert,
        last: last.clone(),
        items: items.clone(),
    };
    let n = model.domains().len();
    let mut calls = 0u64;
    let mut this_step: Vec<usize> = Vec::new();
    let mut loss_fn = |ids: &Tensor| -> mome_core::Result<Tensor> {
        let d = last
            .get()
            .ok_or_else(|| mome_core::Error::Other("internal: batch without a domain".into()))?;
        if calls % ga == 0 {
            this_step.clear();
        }
        calls += 1;
        if !this_step.contains(&d) {
            this_step.push(d);
        }
        set_domain_trainable(model, &this_step)?;
        let b = ids.size()[0] as usize;
        let choices = vec![ExpertChoice::label(d, n); b];
        let out = model.forward_resolved(ids, &choices, &setting, true)?;
        let items = items.borrow();
        let local = local_items(&items, b, group.as_ref())?;
        Ok(loss.loss(&out.logits, ids, d, local)?)
    };
    let config_json = serde_json::to_vec_pretty(model.config())?;
    let result = trainer.run(
        &mut src,
        &mut loss_fn,
        eval_fn,
        &[(crate::io::CONFIG_FILE, config_json)],
    );
    model.set_all_trainable(true);
    Ok(result?)
}
