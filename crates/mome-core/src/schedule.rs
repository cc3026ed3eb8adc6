//! Learning-rate schedules and gradient clipping.
//!
//! Steps are **1-based**: `lr_at(s)` is the learning rate of the `s`-th optimizer step.
//! Warmup rises linearly, `peak_lr * s / warmup_steps`, reaching `peak_lr` at step
//! `warmup_steps`. After it, with `progress = (s - warmup) / (total - warmup)` in
//! `[0, 1]`: `Constant` stays at `peak_lr`; `Linear` goes from `peak_lr` to `min_lr`;
//! `Cosine` is `min_lr + (peak_lr - min_lr) * (1 + cos(pi * progress)) / 2`. Steps
//! past `total_steps` keep the final value.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::{fused, Error, Result};

/// The decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Constant at the peak.
    Constant,
    /// Linear decay to `min_lr` at `total_steps`.
    #[default]
    Linear,
    /// Cosine decay to `min_lr` at `total_steps`.
    Cosine,
}

/// A learning-rate schedule (see the module docs).
///
/// ```
/// use mome_core::schedule::{LrSchedule, ScheduleKind};
/// let s = LrSchedule { kind: ScheduleKind::Linear, warmup_steps: 10, total_steps: 110, peak_lr: 1e-3, min_lr: 0.0 };
/// s.validate().unwrap();
/// assert_eq!(s.lr_at(10), 1e-3);
/// assert!((s.lr_at(60) - 5e-4).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Linear warmup steps (0: none).
    pub warmup_steps: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Peak learning rate.
    pub peak_lr: f64,
    /// Final learning rate of `Linear` / `Cosine`.
    pub min_lr: f64,
}

impl LrSchedule {
    /// Rejects invalid schedules, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.total_steps == 0 {
            return Err(Error::Config("schedule.total_steps must be > 0".into()));
        }
        if self.warmup_steps > self.total_steps {
            return Err(Error::Config(format!(
                "schedule.warmup_steps = {} exceeds total_steps = {}",
                self.warmup_steps, self.total_steps
            )));
        }
        for (field, v) in [("peak_lr", self.peak_lr), ("min_lr", self.min_lr)] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Config(format!(
                    "schedule.{field} = {v}: must be finite and >= 0"
                )));
            }
        }
        if self.min_lr > self.peak_lr {
            return Err(Error::Config(format!(
                "schedule.min_lr = {} exceeds peak_lr = {}",
                self.min_lr, self.peak_lr
            )));
        }
        Ok(())
    }

    /// The learning rate of the `step`-th optimizer step (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps > 0 && step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        let progress = if span == 0 {
            1.0
        } else {
            (step.saturating_sub(self.warmup_steps) as f64 / span as f64).clamp(0.0, 1.0)
        };
        let (peak, min) = (self.peak_lr, self.min_lr);
        match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Linear => peak - (peak - min) * progress,
            ScheduleKind::Cosine => {
                min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// The gradients of the trainable `params` that exist, grouped by device in order
/// of first appearance.
fn grads_by_device(params: &[Tensor]) -> Vec<Vec<Tensor>> {
    let mut groups: Vec<(Device, Vec<Tensor>)> = Vec::new();
    for p in params.iter().filter(|p| p.requires_grad()) {
        let g = p.grad();
        if !g.defined() {
            continue;
        }
        let dev = g.device();
        match groups.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, v)) => v.push(g),
            None => groups.push((dev, vec![g])),
        }
    }
    groups.into_iter().map(|(_, v)| v).collect()
}

/// The total L2 norm of the gradients of `params` as a 0-d fp32 tensor on their
/// device (squares accumulated in fp32), without a host sync. `None` when no
/// parameter has a gradient. Frozen parameters (`requires_grad() == false`, e.g. the
/// inactive experts of a MoE step) are skipped: their gradients hold no new values.
///
/// One multi-tensor kernel per device (libtorch's `_foreach_norm`, as
/// `torch.nn.utils.clip_grad_norm_`), not a reduction per parameter.
pub fn grad_norm_tensor(params: &[Tensor]) -> Result<Option<Tensor>> {
    let _guard = tch::no_grad_guard();
    let groups = grads_by_device(params);
    let mut parts = groups.iter().map(|grads| fused::foreach_sq_norm(grads));
    let Some(first) = parts.next() else {
        return Ok(None);
    };
    // Parameters on several devices: the norm lives on the first one's.
    let mut sq = first?;
    for part in parts {
        sq = sq.f_add(&part?.f_to_device(sq.device())?)?;
    }
    Ok(Some(sq.f_sqrt()?))
}

/// Scales the gradients of `params` in place by `min(1, max_norm / (norm + 1e-6))`,
/// with `norm` a device tensor from [`grad_norm_tensor`]; no host sync. One
/// multi-tensor kernel per device and gradient dtype (`_foreach_mul_`).
pub fn clip_grads_with_norm(params: &[Tensor], norm: &Tensor, max_norm: f64) -> Result<()> {
    let _guard = tch::no_grad_guard();
    const KINDS: [Kind; 4] = [Kind::Float, Kind::BFloat16, Kind::Half, Kind::Double];
    let groups = grads_by_device(params);
    if let Some(g) = groups.iter().flatten().find(|g| !KINDS.contains(&g.kind())) {
        return Err(Error::Config(format!(
            "cannot clip a gradient of dtype {:?}",
            g.kind()
        )));
    }
    let coef = (norm.f_add_scalar(1e-6)?.f_reciprocal()? * max_norm).f_clamp_max(1.0)?;
    for grads in groups {
        let c = coef.f_to_device(grads[0].device())?;
        for kind in KINDS {
            let same: Vec<Tensor> = grads
                .iter()
                .filter(|g| g.kind() == kind)
                .map(|g| g.shallow_clone())
                .collect();
            fused::foreach_mul_(&same, &c)?;
        }
    }
    Ok(())
}

/// Clips the gradients of the trainable variables of `vs` to total L2 norm
/// `max_norm` (like `torch.nn.utils.clip_grad_norm_`) and returns the norm before
/// clipping (0.0 when there are no gradients). One host sync.
pub fn clip_grad_norm(vs: &nn::VarStore, max_norm: f64) -> Result<f64> {
    if !max_norm.is_finite() || max_norm <= 0.0 {
        return Err(Error::Config(format!(
            "clip_grad_norm = {max_norm}: must be finite and > 0"
        )));
    }
    let params = vs.trainable_variables();
    let Some(norm) = grad_norm_tensor(&params)? else {
        return Ok(0.0);
    };
    clip_grads_with_norm(&params, &norm, max_norm)?;
    Ok(norm.f_double_value(&[])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use tch::Device;

    fn sched(kind: ScheduleKind) -> LrSchedule {
        LrSchedule {
            kind,
            warmup_steps: 10,
            total_steps: 110,
            peak_lr: 1e-3,
            min_lr: 1e-4,
        }
    }

    #[test]
    fn warmup_and_decay_values() {
        for kind in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            let s = sched(kind);
            s.validate().unwrap();
            assert_eq!(s.lr_at(0), 0.0);
            assert_relative_eq!(s.lr_at(1), 1e-4);
            assert_relative_eq!(s.lr_at(5), 5e-4);
            assert_relative_eq!(s.lr_at(10), 1e-3);
        }
        let c = sched(ScheduleKind::Constant);
        assert_relative_eq!(c.lr_at(110), 1e-3);
        let l = sched(ScheduleKind::Linear);
        assert_relative_eq!(l.lr_at(60), 0.5 * (1e-3 + 1e-4));
        assert_relative_eq!(l.lr_at(110), 1e-4);
        assert_relative_eq!(l.lr_at(500), 1e-4);
        let co = sched(ScheduleKind::Cosine);
        assert_relative_eq!(co.lr_at(60), 0.5 * (1e-3 + 1e-4), epsilon = 1e-15);
        assert_relative_eq!(
            co.lr_at(35),
            1e-4 + 9e-4 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())
        );
        assert_relative_eq!(co.lr_at(110), 1e-4, epsilon = 1e-15);
        // no warmup: first step is at the peak
        let nw = LrSchedule {
            warmup_steps: 0,
            ..l
        };
        assert_relative_eq!(nw.lr_at(1), 1e-3 - 9e-4 / 110.0);
    }

    #[test]
    fn validation_names_field() {
        let s = LrSchedule {
            warmup_steps: 200,
            ..sched(ScheduleKind::Linear)
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("warmup_steps"));
        let s = LrSchedule {
            min_lr: -1.0,
            ..sched(ScheduleKind::Linear)
        };
        assert!(s.validate().unwrap_err().to_string().contains("min_lr"));
        let s = LrSchedule {
            peak_lr: f64::INFINITY,
            ..sched(ScheduleKind::Linear)
        };
        assert!(s.validate().unwrap_err().to_string().contains("peak_lr"));
        let s = LrSchedule {
            total_steps: 0,
            warmup_steps: 0,
            ..sched(ScheduleKind::Linear)
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("total_steps"));
    }

    #[test]
    fn clip_grad_norm_scales_to_max() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[2], nn::Init::Const(0.0));
        let b = vs.root().var("b", &[1], nn::Init::Const(0.0));
        let _unused = vs.root().var("c", &[1], nn::Init::Const(0.0));
        // grads: a -> [3, 0], b -> [4]; total norm 5
        let loss = (&a * Tensor::from_slice(&[3.0f32, 0.0])).sum(Kind::Float)
            + (&b * 4.0).sum(Kind::Float);
        loss.backward();
        let n = clip_grad_norm(&vs, 1.0).unwrap();
        assert_relative_eq!(n, 5.0, epsilon = 1e-6);
        let ga = Vec::<f32>::try_from(a.grad()).unwrap();
        let gb = Vec::<f32>::try_from(b.grad()).unwrap();
        assert_relative_eq!(ga[0] as f64, 0.6, epsilon = 1e-6);
        assert_relative_eq!(gb[0] as f64, 0.8, epsilon = 1e-6);
        // below the max: unchanged
        let n2 = clip_grad_norm(&vs, 10.0).unwrap();
        assert_relative_eq!(n2, 1.0, epsilon = 1e-5);
        assert_relative_eq!(
            Vec::<f32>::try_from(b.grad()).unwrap()[0] as f64,
            0.8,
            epsilon = 1e-6
        );
        assert!(clip_grad_norm(&vs, 0.0).is_err());
    }
}
