//! AdamW with decoupled weight decay and bias correction, over the trainable
//! variables of a [`tch::nn::VarStore`].
//!
//! * **Weight-decay groups by name** ([`decays`]): no decay for biases (`*.bias`),
//!   norms (`ln_*`, `ln_f`, `*layernorm*`, `*norm*`) and embeddings (`wte`, `wpe`,
//!   `*embed*`); decay for everything else (matmul weights).
//! * **State** (step, `exp_avg`, `exp_avg_sq`, all fp32) is exported and imported as
//!   named tensors ([`AdamW::state_tensors`], [`AdamW::load_state`]) for checkpoints.
//! * **Skipped parameters:** a parameter with `requires_grad() == false` or no
//!   gradient is not touched by a step (its moments are not decayed). Freeze a module
//!   for a step with `set_requires_grad(false)` (tch cannot reset a gradient to
//!   "none", and a zeroed gradient is a real zero gradient).
//! * **Three implementations of the same update:**
//!   - [`AdamWImpl::Fused`]: libtorch's `_fused_adamw_`, the kernel of
//!     `torch.optim.AdamW(fused=True)`, reached through mome-core's C++ shim (tch
//!     0.24 has no binding for it): one pass over parameters, gradients and moments
//!     for a whole group, the moments read and written once.
//!   - [`AdamWImpl::PerParam`]: about eight small kernels per parameter.
//!   - [`AdamWImpl::Flat`]: the gradients and parameters of a group (each run of
//!     consecutive parameters that have gradients) are concatenated into one flat
//!     buffer, updated with a handful of kernels against the flat moment buffers,
//!     and copied back. PerParam and Flat run the same kernels and agree bit for
//!     bit; Fused computes the same formula in one kernel (fp32 registers) and
//!     agrees with them to float rounding.
//!
//!   [`AdamWImpl::Auto`] is Fused on every device: 10.8× faster than PerParam on
//!   the CPU (`cargo bench -p mome-core --bench optim`), and on one H100 the whole
//!   training step is 9.3% faster for the teacher-medium shape and 3.7% for the
//!   3-layer student than with Flat (docs/performance.md); `[train] adamw` chooses
//!   another.
//!
//! The moments of each group live in one flat fp32 buffer per moment; the
//! per-parameter tensors are views into it, so all implementations share state.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::{fused, Error, Result};

/// AdamW hyperparameters (the learning rate is the peak; schedules scale it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Learning rate (peak learning rate when a schedule is used).
    pub lr: f64,
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay for the decay group.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    /// Rejects invalid values, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, v: f64, why: &str| {
            Err(Error::Config(format!("optimizer.{field} = {v}: {why}")))
        };
        if !self.lr.is_finite() || self.lr < 0.0 {
            return bad("lr", self.lr, "must be finite and >= 0");
        }
        for (i, b) in [self.betas.0, self.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&b) {
                return bad(&format!("betas.{i}"), b, "must be in [0, 1)");
            }
        }
        if !self.eps.is_finite() || self.eps <= 0.0 {
            return bad("eps", self.eps, "must be finite and > 0");
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return bad("weight_decay", self.weight_decay, "must be finite and >= 0");
        }
        Ok(())
    }
}

/// Whether the parameter called `name` gets weight decay (see the module docs).
///
/// ```
/// use mome_core::optim::decays;
/// assert!(decays("h.0.attn.c_attn.weight"));
/// assert!(!decays("h.0.attn.c_attn.bias"));
/// assert!(!decays("h.0.ln_1.weight"));
/// assert!(!decays("wte.weight"));
/// ```
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let no_decay = lower.ends_with(".bias")
        || lower == "bias"
        || lower.contains("ln_")
        || lower.contains("ln_f")
        || lower.contains("layernorm")
        || lower.contains("norm")
        || lower.contains("wte")
        || lower.contains("wpe")
        || lower.contains("embed");
    !no_decay
}

/// The trainable variables of `vs` with their names, sorted by name.
pub fn trainable_named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let ptrs: HashSet<usize> = vs
        .trainable_variables()
        .iter()
        .filter(|t| t.numel() > 0)
        .map(|t| t.data_ptr() as usize)
        .collect();
    let mut out: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.numel() > 0 && ptrs.contains(&(t.data_ptr() as usize)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Which AdamW implementation runs (same update; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdamWImpl {
    /// Fused on every device (see [`AdamW::effective_impl`]).
    #[default]
    Auto,
    /// One set of kernels per parameter.
    PerParam,
    /// Multi-tensor update over flat buffers per group.
    Flat,
    /// libtorch's `_fused_adamw_` over each group.
    Fused,
}

impl std::str::FromStr for AdamWImpl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "per-param" => Ok(Self::PerParam),
            "flat" => Ok(Self::Flat),
            "fused" => Ok(Self::Fused),
            _ => Err(Error::Config(format!(
                "AdamW implementation `{s}`: expected auto, per-param, flat or fused"
            ))),
        }
    }
}

struct Param {
    name: String,
    tensor: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

struct Group {
    decay: bool,
    members: Vec<usize>,
    offsets: Vec<i64>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The step number as a 0-d fp32 tensor on the group's device, read by the fused
    /// kernel.
    step: Tensor,
}

/// AdamW over a fixed list of named fp32 parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    groups: Vec<Group>,
    step: u64,
    device: Device,
    imp: AdamWImpl,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("cfg", &self.cfg)
            .field("params", &self.params.len())
            .field("step", &self.step)
            .field("device", &self.device)
            .field("impl", &self.imp)
            .finish()
    }
}

/// Name prefix of first-moment tensors in [`AdamW::state_tensors`].
pub const EXP_AVG_PREFIX: &str = "exp_avg/";
/// Name prefix of second-moment tensors in [`AdamW::state_tensors`].
pub const EXP_AVG_SQ_PREFIX: &str = "exp_avg_sq/";
/// Name of the step counter (an i64 scalar) in [`AdamW::state_tensors`].
pub const STEP_KEY: &str = "step";

impl AdamW {
    /// AdamW over the trainable variables of `vs`.
    pub fn new(vs: &nn::VarStore, cfg: AdamWConfig) -> Result<Self> {
        Self::from_params(trainable_named(vs), cfg)
    }

    /// AdamW over the given named parameters (fp32, unique names). Parameters may
    /// live on several devices (experts placed on different GPUs): the flat moment
    /// buffers are kept per (weight-decay group, device).
    pub fn from_params(named: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let mut named = named;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let device = named.first().map(|p| p.1.device()).unwrap_or(Device::Cpu);
        for w in named.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(Error::Config(format!(
                    "duplicate parameter name `{}`",
                    w[0].0
                )));
            }
        }
        for (name, t) in &named {
            if t.kind() != Kind::Float {
                return Err(Error::Config(format!(
                    "parameter `{name}` is {:?}; master weights must be fp32 (see precision docs)",
                    t.kind()
                )));
            }
        }
        let mut params = Vec::with_capacity(named.len());
        let mut groups = Vec::new();
        // Devices in order of first appearance (experts placed on several GPUs).
        let mut devices: Vec<Device> = Vec::new();
        for (_, t) in &named {
            if !devices.contains(&t.device()) {
                devices.push(t.device());
            }
        }
        for (decay, dev) in [true, false]
            .into_iter()
            .flat_map(|d| devices.iter().map(move |&v| (d, v)))
        {
            let members: Vec<usize> = (0..named.len())
                .filter(|&i| decays(&named[i].0) == decay && named[i].1.device() == dev)
                .collect();
            if members.is_empty() {
                continue;
            }
            let mut offsets = Vec::with_capacity(members.len());
            let mut total = 0i64;
            for &i in &members {
                offsets.push(total);
                total += named[i].1.numel() as i64;
            }
            groups.push(Group {
                decay,
                members,
                offsets,
                exp_avg: Tensor::f_zeros([total], (Kind::Float, dev))?,
                exp_avg_sq: Tensor::f_zeros([total], (Kind::Float, dev))?,
                step: Tensor::f_zeros([], (Kind::Float, dev))?,
            });
        }
        // Per-parameter views into the flat moment buffers.
        let mut views: BTreeMap<usize, (Tensor, Tensor)> = BTreeMap::new();
        for g in &groups {
            for (&i, &off) in g.members.iter().zip(&g.offsets) {
                let t = &named[i].1;
                let n = t.numel() as i64;
                let shape = t.size();
                views.insert(
                    i,
                    (
                        g.exp_avg.f_narrow(0, off, n)?.f_view(shape.as_slice())?,
                        g.exp_avg_sq.f_narrow(0, off, n)?.f_view(shape.as_slice())?,
                    ),
                );
            }
        }
        for (i, (name, tensor)) in named.into_iter().enumerate() {
            let (exp_avg, exp_avg_sq) = views.remove(&i).expect("every parameter is in a group");
            params.push(Param {
                name,
                tensor,
                exp_avg,
                exp_avg_sq,
            });
        }
        Ok(Self {
            cfg,
            params,
            groups,
            step: 0,
            device,
            imp: AdamWImpl::Auto,
        })
    }

    /// Chooses the implementation (default [`AdamWImpl::Auto`]).
    pub fn with_impl(mut self, imp: AdamWImpl) -> Self {
        self.imp = imp;
        self
    }

    /// The implementation that runs ([`AdamWImpl::Auto`] resolved for the device of
    /// the first parameter).
    pub fn effective_impl(&self) -> AdamWImpl {
        self.impl_on(self.device)
    }

    /// The implementation that runs for parameters on `device`: [`AdamWImpl::Auto`]
    /// is Fused everywhere (see the module docs for the measurements behind it).
    fn impl_on(&self, _device: Device) -> AdamWImpl {
        match self.imp {
            AdamWImpl::Auto => AdamWImpl::Fused,
            other => other,
        }
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Parameter names with their weight-decay flag, sorted by name.
    pub fn param_groups(&self) -> Vec<(String, bool)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), decays(&p.name)))
            .collect()
    }

    /// The named parameters, sorted by name (shallow clones).
    pub fn params(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.tensor.shallow_clone()))
            .collect()
    }

    /// Sets every gradient to zero (gradients that do not exist stay undefined).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    fn active(p: &Param) -> Option<Tensor> {
        if !p.tensor.requires_grad() {
            return None;
        }
        let g = p.tensor.grad();
        g.defined().then_some(g)
    }

    /// One AdamW step with learning rate `lr`, in place, under `no_grad`, on the
    /// parameters' device. Performs no host synchronisation.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step_masked(lr, None)
    }

    /// [`AdamW::step`] on the parameters with `owned[i]` only (indices as in
    /// [`AdamW::params`]); the others keep their values and moments. The step count
    /// advances as in a full step. Used by the sharded data-parallel update, where
    /// each rank updates its share ([`AdamW::shard_owners`]).
    pub fn step_owned(&mut self, lr: f64, owned: &[bool]) -> Result<()> {
        if owned.len() != self.params.len() {
            return Err(Error::Config(format!(
                "ownership mask of {} entries for {} parameters",
                owned.len(),
                self.params.len()
            )));
        }
        self.step_masked(lr, Some(owned))
    }

    /// The rank that updates each parameter when `world` ranks share the update:
    /// every (decay group, device) buffer is cut into `world` contiguous ranges of
    /// about equal size and a parameter goes to the range holding its middle, so each
    /// rank's share is a few flat runs.
    pub fn shard_owners(&self, world: usize) -> Vec<usize> {
        let world = world.max(1);
        let mut owners = vec![0; self.params.len()];
        for g in &self.groups {
            let total = g.exp_avg.numel().max(1) as f64;
            for (&i, &off) in g.members.iter().zip(&g.offsets) {
                let mid = off as f64 + self.params[i].tensor.numel() as f64 / 2.0;
                owners[i] = ((mid / total * world as f64) as usize).min(world - 1);
            }
        }
        owners
    }

    fn step_masked(&mut self, lr: f64, owned: Option<&[bool]>) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Config(format!(
                "learning rate {lr} must be finite and >= 0"
            )));
        }
        self.step += 1;
        let (b1, b2) = self.cfg.betas;
        let t = self.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let h = Hyper {
            lr,
            b1,
            b2,
            eps: self.cfg.eps,
            step_size: lr / bc1,
            bc2_sqrt,
        };
        let wd = self.cfg.weight_decay;
        let _guard = tch::no_grad_guard();
        for g in &self.groups {
            let imp = self.impl_on(g.exp_avg.device());
            let decay = if g.decay { wd } else { 0.0 };
            let grads: Vec<Option<Tensor>> = g
                .members
                .iter()
                .map(|&i| {
                    if owned.is_some_and(|o| !o[i]) {
                        None
                    } else {
                        Self::active(&self.params[i])
                    }
                })
                .collect();
            if imp == AdamWImpl::Fused {
                let mut lists: [Vec<Tensor>; 4] = Default::default();
                for (&i, grad) in g.members.iter().zip(grads) {
                    let Some(mut grad) = grad else { continue };
                    if grad.kind() != Kind::Float {
                        grad = grad.f_to_kind(Kind::Float)?;
                    }
                    let p = &self.params[i];
                    lists[0].push(p.tensor.shallow_clone());
                    lists[1].push(grad);
                    lists[2].push(p.exp_avg.shallow_clone());
                    lists[3].push(p.exp_avg_sq.shallow_clone());
                }
                if lists[0].is_empty() {
                    continue;
                }
                let _ = g.step.shallow_clone().f_fill_(self.step as f64)?;
                let [p, gr, m, v] = &lists;
                fused::fused_adamw(
                    p,
                    gr,
                    m,
                    v,
                    &g.step,
                    fused::FusedAdamW {
                        lr,
                        beta1: b1,
                        beta2: b2,
                        weight_decay: decay,
                        eps: self.cfg.eps,
                    },
                )?;
            } else if imp == AdamWImpl::Flat {
                // Maximal runs of consecutive active members: their moments are
                // adjacent in the flat buffers, so each run is one flat update (frozen
                // experts of a MoE split a group into a few runs).
                let mut k = 0;
                while k < grads.len() {
                    if grads[k].is_none() {
                        k += 1;
                        continue;
                    }
                    let start = k;
                    while k < grads.len() && grads[k].is_some() {
                        k += 1;
                    }
                    let run = &g.members[start..k];
                    let flat_g: Vec<Tensor> = grads[start..k]
                        .iter()
                        .map(|x| x.as_ref().expect("active run").f_reshape([-1]))
                        .collect::<std::result::Result<_, _>>()?;
                    let mut gf = Tensor::f_cat(&flat_g, 0)?;
                    if gf.kind() != Kind::Float {
                        gf = gf.f_to_kind(Kind::Float)?;
                    }
                    let flat_p: Vec<Tensor> = run
                        .iter()
                        .map(|&i| self.params[i].tensor.f_reshape([-1]))
                        .collect::<std::result::Result<_, _>>()?;
                    let mut pf = Tensor::f_cat(&flat_p, 0)?;
                    let off0 = g.offsets[start];
                    let len = gf.numel() as i64;
                    let mut m = g.exp_avg.f_narrow(0, off0, len)?;
                    let mut v = g.exp_avg_sq.f_narrow(0, off0, len)?;
                    update(&mut pf, &gf, &mut m, &mut v, decay, &h)?;
                    for (&i, &off) in run.iter().zip(&g.offsets[start..k]) {
                        let p = &self.params[i].tensor;
                        let n = p.numel() as i64;
                        let mut dst = p.shallow_clone();
                        dst.f_copy_(&pf.f_narrow(0, off - off0, n)?.f_view(p.size().as_slice())?)?;
                    }
                }
            } else {
                for (&i, grad) in g.members.iter().zip(grads) {
                    let Some(mut grad) = grad else { continue };
                    if grad.kind() != Kind::Float {
                        grad = grad.f_to_kind(Kind::Float)?;
                    }
                    let p = &self.params[i];
                    let (mut pt, mut m, mut v) = (
                        p.tensor.shallow_clone(),
                        p.exp_avg.shallow_clone(),
                        p.exp_avg_sq.shallow_clone(),
                    );
                    update(&mut pt, &grad, &mut m, &mut v, decay, &h)?;
                }
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors: [`STEP_KEY`] (i64 scalar) and, for each
    /// parameter `name`, `exp_avg/<name>` and `exp_avg_sq/<name>` (fp32, shallow
    /// clones sharing storage with the optimizer).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(STEP_KEY.to_string(), Tensor::from(self.step as i64))];
        for p in &self.params {
            out.push((
                format!("{EXP_AVG_PREFIX}{}", p.name),
                p.exp_avg.shallow_clone(),
            ));
            out.push((
                format!("{EXP_AVG_SQ_PREFIX}{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        out
    }

    /// Restores state written by [`AdamW::state_tensors`]. Every expected name must be
    /// present with the parameter's shape and no other names may appear; errors list
    /// all offending names. Nothing is changed unless the whole state is valid.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let given: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut expected: BTreeMap<String, (Vec<i64>, Tensor)> = BTreeMap::new();
        for p in &self.params {
            expected.insert(
                format!("{EXP_AVG_PREFIX}{}", p.name),
                (p.tensor.size(), p.exp_avg.shallow_clone()),
            );
            expected.insert(
                format!("{EXP_AVG_SQ_PREFIX}{}", p.name),
                (p.tensor.size(), p.exp_avg_sq.shallow_clone()),
            );
        }
        let mut problems = Vec::new();
        let step = match given.get(STEP_KEY) {
            Some(t) if t.numel() == 1 => t.f_int64_value(&[])?,
            Some(_) => {
                problems.push(format!("`{STEP_KEY}` must be a scalar"));
                0
            }
            None => {
                problems.push(format!("missing `{STEP_KEY}`"));
                0
            }
        };
        if step < 0 {
            problems.push(format!("negative step {step}"));
        }
        for (name, (shape, _)) in &expected {
            match given.get(name.as_str()) {
                None => problems.push(format!("missing `{name}`")),
                Some(t) if &t.size() != shape => problems.push(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    t.size()
                )),
                Some(_) => {}
            }
        }
        for name in given.keys() {
            if *name != STEP_KEY && !expected.contains_key(*name) {
                problems.push(format!("unexpected `{name}`"));
            }
        }
        if !problems.is_empty() {
            return Err(Error::OptimizerState(problems.join("; ")));
        }
        let _guard = tch::no_grad_guard();
        for (name, (_, mut dst)) in expected {
            dst.f_copy_(given[name.as_str()])?;
        }
        self.step = step as u64;
        Ok(())
    }
}

struct Hyper {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    step_size: f64,
    bc2_sqrt: f64,
}

/// The AdamW update of one (possibly flat) parameter, in place.
fn update(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    weight_decay: f64,
    h: &Hyper,
) -> Result<()> {
    if weight_decay != 0.0 {
        let _ = p.f_mul_scalar_(1.0 - h.lr * weight_decay)?;
    }
    let _ = m.f_lerp_(g, 1.0 - h.b1)?;
    let _ = v.f_mul_scalar_(h.b2)?;
    let _ = v.f_addcmul_(&g.f_mul_scalar(1.0 - h.b2)?, g)?;
    let mut denom = v.f_sqrt()?;
    let _ = denom.f_div_scalar_(h.bc2_sqrt)?;
    let _ = denom.f_add_scalar_(h.eps)?;
    let _ = p.f_addcdiv_(&m.f_mul_scalar(-h.step_size)?, &denom)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn decay_groups_by_name() {
        for n in [
            "h.0.attn.c_attn.weight",
            "h.1.mlp.c_fc.weight",
            "lm_head.weight",
            "fc.weight",
        ] {
            assert!(decays(n), "{n} should decay");
        }
        for n in [
            "h.0.attn.c_attn.bias",
            "h.0.ln_1.weight",
            "h.0.ln_2.bias",
            "ln_f.weight",
            "encoder.LayerNorm.weight",
            "block.norm1.weight",
            "wte.weight",
            "wpe.weight",
            "shared.embed_tokens.weight",
        ] {
            assert!(!decays(n), "{n} should not decay");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let r = vs.root();
        let _ = (&r / "fc").var("weight", &[2, 2], nn::Init::Const(1.0));
        let _ = (&r / "fc").var("bias", &[2], nn::Init::Const(1.0));
        let _ = (&r / "wte").var("weight", &[3, 2], nn::Init::Const(1.0));
        let _ = r.zeros_no_train("buffer", &[2]);
        let opt = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        assert_eq!(
            opt.param_groups(),
            vec![
                ("fc.bias".to_string(), false),
                ("fc.weight".to_string(), true),
                ("wte.weight".to_string(), false)
            ]
        );
    }

    #[test]
    fn config_validation_names_field() {
        let mut c = AdamWConfig::default();
        c.betas.1 = 1.0;
        assert!(c.validate().unwrap_err().to_string().contains("betas.1"));
        let c = AdamWConfig {
            lr: f64::NAN,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("optimizer.lr"));
        let c = AdamWConfig {
            weight_decay: -1.0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("weight_decay"));
    }

    /// Hand-computed reference of two AdamW steps on scalars, in f64.
    fn reference(p0: f64, grads: &[f64], lr: f64, wd: f64) -> f64 {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (i, &g) in grads.iter().enumerate() {
            let t = (i + 1) as i32;
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mhat = m / (1.0 - b1.powi(t));
            let vhat = v / (1.0 - b2.powi(t));
            p -= lr * mhat / (vhat.sqrt() + eps);
        }
        p
    }

    fn two_steps(imp: AdamWImpl) -> (Vec<f32>, Vec<f32>, AdamW) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = (vs.root() / "fc").var("weight", &[3], nn::Init::Const(0.0));
        let b = (vs.root() / "fc").var("bias", &[3], nn::Init::Const(0.0));
        tch::no_grad(|| {
            w.shallow_clone()
                .copy_(&Tensor::from_slice(&[1.0f32, -2.0, 0.5]));
            b.shallow_clone()
                .copy_(&Tensor::from_slice(&[0.3f32, 0.0, -1.0]));
        });
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(&vs, cfg).unwrap().with_impl(imp);
        // step 1: loss = sum(c1 * w) + sum(d1 * b); step 2 with other coefficients
        for (cw, cb) in [
            ([0.5f32, -1.0, 2.0], [1.0f32, 3.0, -0.25]),
            ([-0.2, 4.0, 2.0], [0.1, -3.0, 0.0]),
        ] {
            opt.zero_grad();
            let loss = (&w * Tensor::from_slice(&cw)).sum(Kind::Float)
                + (&b * Tensor::from_slice(&cb)).sum(Kind::Float);
            loss.backward();
            opt.step(0.1).unwrap();
        }
        (
            Vec::<f32>::try_from(&w).unwrap(),
            Vec::<f32>::try_from(&b).unwrap(),
            opt,
        )
    }

    /// A copy of the optimizer's state, as a checkpoint holds it.
    fn saved_state(opt: &AdamW) -> Vec<(String, Tensor)> {
        opt.state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect()
    }

    /// A fresh store with `two_steps`'s parameters (zeros); returns `fc.weight`.
    fn fc_store() -> (nn::VarStore, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = (vs.root() / "fc").var("weight", &[3], nn::Init::Const(0.0));
        let _ = (vs.root() / "fc").var("bias", &[3], nn::Init::Const(0.0));
        (vs, w)
    }

    #[test]
    fn matches_hand_computed_two_steps() {
        let (w, b, opt) = two_steps(AdamWImpl::PerParam);
        assert_eq!(opt.step_count(), 2);
        let w0 = [1.0, -2.0, 0.5];
        let gw = [[0.5, -0.2], [-1.0, 4.0], [2.0, 2.0]];
        for i in 0..3 {
            // weights decay (wd 0.5)
            assert_relative_eq!(
                w[i] as f64,
                reference(w0[i], &gw[i], 0.1, 0.5),
                epsilon = 1e-6
            );
        }
        let b0 = [0.3, 0.0, -1.0];
        let gb = [[1.0, 0.1], [3.0, -3.0], [-0.25, 0.0]];
        for i in 0..3 {
            // biases do not decay
            assert_relative_eq!(
                b[i] as f64,
                reference(b0[i], &gb[i], 0.1, 0.0),
                epsilon = 1e-6
            );
        }
    }

    #[test]
    fn flat_equals_per_param_on_cpu() {
        let (w1, b1, o1) = two_steps(AdamWImpl::PerParam);
        let (w2, b2, o2) = two_steps(AdamWImpl::Flat);
        assert_eq!(w1, w2);
        assert_eq!(b1, b2);
        for ((n1, t1), (n2, t2)) in o1.state_tensors().iter().zip(o2.state_tensors().iter()) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1}");
        }
    }

    #[test]
    fn skips_frozen_and_gradless_params() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = (vs.root() / "a").var("weight", &[2], nn::Init::Const(1.0));
        let b = (vs.root() / "b").var("weight", &[2], nn::Init::Const(1.0));
        let c = (vs.root() / "c").var("weight", &[2], nn::Init::Const(1.0));
        for imp in [AdamWImpl::PerParam, AdamWImpl::Flat, AdamWImpl::Fused] {
            let mut opt = AdamW::new(
                &vs,
                AdamWConfig {
                    weight_decay: 0.1,
                    ..Default::default()
                },
            )
            .unwrap()
            .with_impl(imp);
            let _ = b.set_requires_grad(false);
            let loss = (&a * 2.0 + &b * 3.0).sum(Kind::Float);
            loss.backward();
            let before_b = b.copy();
            let before_c = c.copy();
            opt.step(0.01).unwrap();
            assert!(b.equal(&before_b), "frozen param changed ({imp:?})");
            assert!(c.equal(&before_c), "gradless param changed ({imp:?})");
            assert!(!a.equal(&before_c), "active param unchanged ({imp:?})");
            let _ = b.set_requires_grad(true);
        }
    }

    /// Each of two ranks updates its share (`step_owned` with `shard_owners`), then
    /// takes the other's share: the same values as one full step, bit for bit.
    #[test]
    fn owned_steps_of_all_ranks_equal_one_full_step() {
        for imp in [AdamWImpl::Flat, AdamWImpl::Fused] {
            owned_steps_equal_full_step(imp);
        }
    }

    fn owned_steps_equal_full_step(imp: AdamWImpl) {
        let names = ["h.0.weight", "h.1.weight", "h.2.weight", "h.0.bias"];
        let sizes = [4i64, 6, 2, 3];
        let make = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let ps: Vec<Tensor> = names
                .iter()
                .zip(sizes)
                .enumerate()
                .map(|(k, (n, len))| {
                    let (path, leaf) = n.rsplit_once('.').expect("dotted name");
                    let p = path.split('.').fold(vs.root(), |p, s| p / s);
                    p.var(leaf, &[len], nn::Init::Const(0.1 * k as f64))
                })
                .collect();
            let cfg = AdamWConfig {
                lr: 0.05,
                weight_decay: 0.3,
                ..Default::default()
            };
            let opt = AdamW::new(&vs, cfg).unwrap().with_impl(imp);
            (vs, ps, opt)
        };
        let grads = |ps: &[Tensor], step: usize| {
            let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for (k, p) in ps.iter().enumerate() {
                let c = Tensor::arange(p.numel() as i64, (Kind::Float, Device::Cpu))
                    * (1.0 + k as f64)
                    - step as f64;
                loss += (p * c).sum(Kind::Float);
            }
            loss.backward();
        };
        let (_vs, full_ps, mut full) = make();
        let ranks: Vec<_> = (0..2).map(|_| make()).collect();
        let owners = ranks[0].2.shard_owners(2);
        // Both ranks own something; the split follows the sorted names.
        assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
        let mut ranks = ranks;
        for step in 0..3 {
            full.zero_grad();
            grads(&full_ps, step);
            full.step(0.05).unwrap();
            for (r, (_, ps, opt)) in ranks.iter_mut().enumerate() {
                opt.zero_grad();
                grads(ps, step);
                let owned: Vec<bool> = owners.iter().map(|&o| o == r).collect();
                opt.step_owned(0.05, &owned).unwrap();
            }
            // The exchange: every rank takes each parameter from its owner.
            let named: Vec<Vec<(String, Tensor)>> =
                ranks.iter().map(|(_, _, o)| o.params()).collect();
            for (i, &o) in owners.iter().enumerate() {
                let src = named[o][i].1.copy();
                for rank in &named {
                    tch::no_grad(|| rank[i].1.shallow_clone().copy_(&src));
                }
            }
        }
        for (r, (_, _, opt)) in ranks.iter().enumerate() {
            for ((n, a), (_, b)) in full.params().iter().zip(opt.params()) {
                assert!(a.equal(&b), "{imp:?}, rank {r}: {n}");
            }
        }
        assert!(full.step_owned(0.05, &[true]).is_err());
    }

    #[test]
    fn flat_runs_around_frozen_params_equal_per_param() {
        // Frozen b and d split the decay group into the runs [a], [c], [e0, e1].
        let run = |imp: AdamWImpl| {
            let vs = nn::VarStore::new(Device::Cpu);
            let names = ["a", "b", "c", "d", "e0", "e1"];
            let ps: Vec<Tensor> = names
                .iter()
                .enumerate()
                .map(|(k, n)| {
                    let t = (vs.root() / *n).var("weight", &[3], nn::Init::Const(0.0));
                    tch::no_grad(|| {
                        t.shallow_clone().copy_(&Tensor::from_slice(&[
                            0.1 * k as f32,
                            -0.5,
                            1.0 + k as f32,
                        ]))
                    });
                    t
                })
                .collect();
            let cfg = AdamWConfig {
                lr: 0.05,
                weight_decay: 0.3,
                ..Default::default()
            };
            let mut opt = AdamW::new(&vs, cfg).unwrap().with_impl(imp);
            let _ = ps[1].set_requires_grad(false);
            let _ = ps[3].set_requires_grad(false);
            for step in 0..3 {
                opt.zero_grad();
                let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
                for (k, p) in ps.iter().enumerate() {
                    let c = Tensor::from_slice(&[1.0f32 + k as f32, -2.0 * step as f32, 0.25]);
                    loss += (p * c).sum(Kind::Float);
                }
                loss.backward();
                opt.step(0.05).unwrap();
            }
            let values: Vec<Vec<f32>> = ps.iter().map(|p| Vec::try_from(p).unwrap()).collect();
            (values, opt)
        };
        let (v1, o1) = run(AdamWImpl::PerParam);
        let (v2, o2) = run(AdamWImpl::Flat);
        assert_eq!(v1, v2);
        assert_eq!(v1[1], vec![0.1, -0.5, 2.0], "frozen b moved");
        for ((n1, t1), (n2, t2)) in o1.state_tensors().iter().zip(o2.state_tensors().iter()) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1}");
        }
        // The fused kernel over the same groups: equal to float rounding, frozen
        // parameters untouched.
        let (v3, o3) = run(AdamWImpl::Fused);
        assert_eq!(v3[1], v1[1], "frozen b moved (fused)");
        assert_eq!(v3[3], v1[3], "frozen d moved (fused)");
        for (a, b) in v1.iter().flatten().zip(v3.iter().flatten()) {
            assert_relative_eq!(*a, *b, epsilon = 1e-6, max_relative = 1e-5);
        }
        for ((n1, t1), (_, t3)) in o1.state_tensors().iter().zip(o3.state_tensors().iter()) {
            let d = (t1.to_kind(Kind::Double) - t3.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d <= 1e-6, "{n1}: {d}");
        }
    }

    #[test]
    fn fused_matches_hand_computed_and_per_param() {
        let (w, b, opt) = two_steps(AdamWImpl::Fused);
        assert_eq!(opt.step_count(), 2);
        let (w0, b0) = ([1.0, -2.0, 0.5], [0.3, 0.0, -1.0]);
        let gw = [[0.5, -0.2], [-1.0, 4.0], [2.0, 2.0]];
        let gb = [[1.0, 0.1], [3.0, -3.0], [-0.25, 0.0]];
        for i in 0..3 {
            let rw = reference(w0[i], &gw[i], 0.1, 0.5);
            let rb = reference(b0[i], &gb[i], 0.1, 0.0);
            assert_relative_eq!(w[i] as f64, rw, epsilon = 1e-6);
            assert_relative_eq!(b[i] as f64, rb, epsilon = 1e-6);
        }
        // Resuming the fused optimizer from saved state continues the step count
        // (the bias corrections): a third step matches PerParam's third step.
        let third = |imp: AdamWImpl| {
            let (_, _, mut o) = two_steps(imp);
            o.zero_grad();
            let params = o.params();
            for (_, p) in &params {
                let loss = (p * 0.7).sum(Kind::Float);
                loss.backward();
            }
            o.step(0.1).unwrap();
            params
                .into_iter()
                .map(|(_, p)| Vec::<f32>::try_from(&p).unwrap())
                .collect::<Vec<_>>()
        };
        let (a, f) = (third(AdamWImpl::PerParam), third(AdamWImpl::Fused));
        for (x, y) in a.iter().flatten().zip(f.iter().flatten()) {
            assert_relative_eq!(*x, *y, epsilon = 1e-6);
        }
        let state = saved_state(&opt);
        let (vs, w2) = fc_store();
        tch::no_grad(|| w2.shallow_clone().copy_(&Tensor::from_slice(&w)));
        let mut resumed = AdamW::new(
            &vs,
            AdamWConfig {
                lr: 0.1,
                weight_decay: 0.5,
                ..Default::default()
            },
        )
        .unwrap()
        .with_impl(AdamWImpl::Fused);
        resumed.load_state(&state).unwrap();
        (&w2 * 0.7).sum(Kind::Float).backward();
        resumed.step(0.1).unwrap();
        let got = Vec::<f32>::try_from(&w2).unwrap();
        // fc.weight is the second parameter by name (bias < weight).
        for (x, y) in got.iter().zip(&a[1]) {
            assert_relative_eq!(*x, *y, epsilon = 1e-6);
        }
    }

    #[test]
    fn impl_names_parse() {
        for (s, imp) in [
            ("auto", AdamWImpl::Auto),
            ("per-param", AdamWImpl::PerParam),
            ("flat", AdamWImpl::Flat),
            ("fused", AdamWImpl::Fused),
        ] {
            assert_eq!(s.parse::<AdamWImpl>().unwrap(), imp);
        }
        let e = "fast".parse::<AdamWImpl>().unwrap_err().to_string();
        assert!(e.contains("auto, per-param, flat or fused"), "{e}");
    }

    #[test]
    fn state_round_trip_and_mismatch_errors() {
        let (_, _, opt) = two_steps(AdamWImpl::PerParam);
        let state = saved_state(&opt);
        let (vs, _) = fc_store();
        let mut fresh = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        fresh.load_state(&state).unwrap();
        assert_eq!(fresh.step_count(), 2);
        for ((n1, t1), (_, t2)) in state.iter().zip(fresh.state_tensors().iter()) {
            assert!(t1.equal(t2), "{n1}");
        }
        let mut bad: Vec<(String, Tensor)> = state
            .iter()
            .filter(|(n, _)| n != "exp_avg/fc.bias")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        bad.push((
            "exp_avg/other".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ));
        for (n, t) in bad.iter_mut() {
            if n == "exp_avg_sq/fc.weight" {
                *t = Tensor::zeros([4], (Kind::Float, Device::Cpu));
            }
        }
        let e = fresh.load_state(&bad).unwrap_err().to_string();
        assert!(e.contains("missing `exp_avg/fc.bias`"), "{e}");
        assert!(e.contains("unexpected `exp_avg/other`"), "{e}");
        assert!(e.contains("exp_avg_sq/fc.weight"), "{e}");
    }

    #[test]
    fn rejects_non_fp32_params() {
        let t = Tensor::zeros([2], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
        let e = AdamW::from_params(vec![("x".into(), t)], AdamWConfig::default()).unwrap_err();
        assert!(e.to_string().contains("fp32"));
    }
}
