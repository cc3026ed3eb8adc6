//! How CE and KD are weighted: `L = alpha * CE + beta * KD` (method.md §4).
//!
//! A strategy is called once per loss evaluation (per micro-batch, as the research
//! code's `compute_loss` is) with the optimizer step and, when it asks for them
//! ([`WeightStrategy::needs_losses`]), the detached values of this evaluation's CE
//! and KD. Reading those values is a host synchronisation per micro-batch: only the
//! adaptive strategy pays it. Strategies that do not read the losses are called
//! with NaN for both and their weights are known before the losses are computed,
//! so a zero weight lets the trainer skip that term (CE-only runs never run the
//! teacher).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A rule giving `(alpha, beta)` for each loss evaluation. Implement it to add a
/// strategy; [`StrategyConfig`] builds the shipped ones.
pub trait WeightStrategy: Send {
    /// Short name for logs and reports.
    fn name(&self) -> String;
    /// Whether [`WeightStrategy::weights`] reads `ce` and `kd` (forces a host sync).
    fn needs_losses(&self) -> bool {
        false
    }
    /// The weights of this evaluation at optimizer step `step` (1-based). `ce` and
    /// `kd` are this evaluation's losses when [`WeightStrategy::needs_losses`], else
    /// NaN. Called exactly once per evaluation, in order (also when a run resumes:
    /// the logged values are replayed).
    fn weights(&mut self, step: u64, ce: f64, kd: f64) -> (f64, f64);
}

/// Constant `alpha`, `beta = 1 - alpha`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fixed {
    /// Weight of CE.
    pub alpha: f64,
}

impl WeightStrategy for Fixed {
    fn name(&self) -> String {
        format!("fixed(alpha={})", self.alpha)
    }
    fn weights(&mut self, _step: u64, _ce: f64, _kd: f64) -> (f64, f64) {
        (self.alpha, 1.0 - self.alpha)
    }
}

/// CE only on odd steps, KD only on even steps (`(1, 0)`, `(0, 1)`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Alternating;

impl WeightStrategy for Alternating {
    fn name(&self) -> String {
        "alternating".into()
    }
    fn weights(&mut self, step: u64, _ce: f64, _kd: f64) -> (f64, f64) {
        if step % 2 == 1 {
            (1.0, 0.0)
        } else {
            (0.0, 1.0)
        }
    }
}

/// The research code's `_calculate_differential_weights` (method.md §4), with guards.
///
/// Histories `H_ce`, `H_kd` of the last `k` loss values. While either is shorter
/// than `k` the initial `(alpha, 1 - alpha)` is used. Else, per history,
/// `d = H[-1] - H[-k]`, `avg = mean(H[-k:])`, `w = 1 - clamp(d / avg, 0, 1)` (a
/// rising loss loses weight), and `alpha = w_ce / (w_ce + w_kd)`, `beta = w_kd /
/// (w_ce + w_kd)`.
///
/// Guards (the research code has none): if `avg <= 0` or `d / avg` is not finite,
/// that history's `w = 1` (no evidence that the loss rises); if `w_ce + w_kd = 0`
/// (both losses rose by at least their mean over the window) the initial weights
/// are used for that evaluation. A non-finite loss value is not pushed into the
/// history (the trainer stops on it anyway).
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    /// Initial CE weight.
    pub alpha: f64,
    /// History length `k` (>= 2).
    pub k: usize,
    h_ce: VecDeque<f64>,
    h_kd: VecDeque<f64>,
}

impl Adaptive {
    /// A strategy with initial weight `alpha` and history length `k` (>= 2).
    pub fn new(alpha: f64, k: usize) -> Result<Self> {
        if k < 2 {
            return Err(Error::Config(format!(
                "adaptive history k = {k}: must be >= 2"
            )));
        }
        Ok(Self {
            alpha,
            k,
            h_ce: VecDeque::with_capacity(k),
            h_kd: VecDeque::with_capacity(k),
        })
    }

    /// The research code's default `k = max(20, total_steps / 100)`.
    pub fn default_k(total_steps: u64) -> usize {
        20usize.max((total_steps / 100) as usize)
    }

    fn push(h: &mut VecDeque<f64>, k: usize, v: f64) {
        if v.is_finite() {
            if h.len() == k {
                h.pop_front();
            }
            h.push_back(v);
        }
    }

    /// `w` of one full history (see the type docs).
    pub fn history_weight(h: &VecDeque<f64>) -> f64 {
        let (Some(first), Some(last)) = (h.front(), h.back()) else {
            return 1.0;
        };
        let d = last - first;
        let avg = h.iter().sum::<f64>() / h.len() as f64;
        let r = d / avg;
        if avg <= 0.0 || !r.is_finite() {
            return 1.0;
        }
        1.0 - r.clamp(0.0, 1.0)
    }
}

impl WeightStrategy for Adaptive {
    fn name(&self) -> String {
        format!("adaptive(alpha0={}, k={})", self.alpha, self.k)
    }
    fn needs_losses(&self) -> bool {
        true
    }
    fn weights(&mut self, _step: u64, ce: f64, kd: f64) -> (f64, f64) {
        Self::push(&mut self.h_ce, self.k, ce);
        Self::push(&mut self.h_kd, self.k, kd);
        let init = (self.alpha, 1.0 - self.alpha);
        if self.h_ce.len() < self.k || self.h_kd.len() < self.k {
            return init;
        }
        let w_ce = Self::history_weight(&self.h_ce);
        let w_kd = Self::history_weight(&self.h_kd);
        let total = w_ce + w_kd;
        if total <= 0.0 || !total.is_finite() {
            return init;
        }
        (w_ce / total, w_kd / total)
    }
}

fn default_alpha() -> f64 {
    0.5
}

/// The `strategy` of a distillation config: `{ kind = "fixed", alpha = 0.5 }`,
/// `{ kind = "adaptive", alpha = 0.5, history = 20 }` or `{ kind = "alternating" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// [`Fixed`].
    Fixed {
        /// CE weight (1 = no KD).
        #[serde(default = "default_alpha")]
        alpha: f64,
    },
    /// [`Adaptive`].
    Adaptive {
        /// Initial CE weight.
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// History length `k`; default `max(20, max_steps / 100)`.
        #[serde(default)]
        history: Option<usize>,
    },
    /// [`Alternating`].
    Alternating,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig::Fixed { alpha: 0.5 }
    }
}

impl StrategyConfig {
    /// Rejects weights outside `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        match self {
            StrategyConfig::Fixed { alpha } | StrategyConfig::Adaptive { alpha, .. } => {
                if !(0.0..=1.0).contains(alpha) {
                    return Err(Error::Config(format!(
                        "strategy alpha = {alpha}: must be in [0, 1]"
                    )));
                }
            }
            StrategyConfig::Alternating => {}
        }
        if let StrategyConfig::Adaptive {
            history: Some(k), ..
        } = self
        {
            if *k < 2 {
                return Err(Error::Config(format!(
                    "strategy history = {k}: must be >= 2"
                )));
            }
        }
        Ok(())
    }

    /// Whether the teacher is never used (fixed alpha = 1).
    pub fn is_ce_only(&self) -> bool {
        matches!(self, StrategyConfig::Fixed { alpha } if *alpha == 1.0)
    }

    /// A short label (`ce_only`, `fixed`, `adaptive`, `alternating`).
    pub fn label(&self) -> &'static str {
        match self {
            _ if self.is_ce_only() => "ce_only",
            StrategyConfig::Fixed { .. } => "fixed",
            StrategyConfig::Adaptive { .. } => "adaptive",
            StrategyConfig::Alternating => "alternating",
        }
    }

    /// Builds the strategy for a run of `total_steps` optimizer steps.
    pub fn build(&self, total_steps: u64) -> Result<Box<dyn WeightStrategy>> {
        self.validate()?;
        Ok(match self {
            StrategyConfig::Fixed { alpha } => Box::new(Fixed { alpha: *alpha }),
            StrategyConfig::Adaptive { alpha, history } => Box::new(Adaptive::new(
                *alpha,
                history.unwrap_or_else(|| Adaptive::default_k(total_steps)),
            )?),
            StrategyConfig::Alternating => Box::new(Alternating),
        })
    }
}
