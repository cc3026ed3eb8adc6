//! Knowledge-distillation losses (method.md §4).
//!
//! Notation: `z_s`, `z_t` student and teacher logits `[B, T, V]`, `T` the temperature,
//! `q = softmax(z_s / T)`, `p = softmax(z_t / T)`, `m` the mask of real (non-padding)
//! positions `[B, T]`. Every loss is computed per position, multiplied by `T^2`
//! (Hinton's gradient-scale correction, applied to every kind for comparability) and
//! averaged over the masked positions (the research code's "batchmean" divides by
//! sequences instead; mome divides by tokens).
//!
//! | [`KdLoss`] | per position |
//! |---|---|
//! | `ForwardKl` | `KL(p ‖ q) = Σ_v p (log p − log q)` |
//! | `TeacherWeightedCe` | `−Σ_v p log q` = `KL(p ‖ q) + H(p)` |
//! | `ReverseKl` | `KL(q ‖ p) = Σ_v q (log q − log p)` |
//! | `JensenShannon` | `½ KL(p ‖ μ) + ½ KL(q ‖ μ)`, `μ = (p + q)/2` |
//!
//! Numerics: logits are cast to fp32 before `log_softmax` (bf16 inputs included);
//! every `0 · log 0` term is removed with `where` on *sanitised* operands, so -inf
//! logits (masked vocabulary entries) and one-hot-like teachers give neither NaN
//! values nor NaN gradients. Reverse KL needs `log p` where the student puts mass
//! but the teacher has none: there `log p` is floored at [`LOG_PROB_FLOOR`].
//!
//! Sparse teachers ([`Teacher::TopK`], read from a teacher cache) hold the teacher's
//! top-K token ids and log-probabilities. The distribution is taken over K+1
//! buckets: the K tokens, plus one explicit *rest* bucket holding the remaining
//! mass `1 − Σ_topK p` for the teacher and `1 − Σ_topK q` for the student (the
//! student's own probability of every other token, not a renormalisation). Each
//! loss is then the same formula over those buckets; by the data-processing
//! inequality the bucketed forward KL is a lower bound of the full one and equals
//! it when K = V (then the rest bucket is dropped). The student's rest mass is
//! floored at `1e-12` (log ≥ −27.6) so its log stays finite when the student puts
//! all its mass on the K tokens.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Reverse KL and the sparse rest bucket use `max(log p, LOG_PROB_FLOOR)` where the
/// teacher's probability underflows to 0 (e^-100 ≈ 3.7e-44).
pub const LOG_PROB_FLOOR: f64 = -100.0;

/// The student's rest-bucket probability is at least this (see the module docs).
pub const REST_FLOOR: f64 = 1e-12;

/// Which divergence between teacher and student is minimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KdLoss {
    /// Hinton's `T^2 KL(p_t ‖ q_s)`.
    #[serde(alias = "kl", alias = "forward")]
    ForwardKl,
    /// Teacher-weighted cross-entropy `−T^2 Σ_v p_t log q_s`: the research code's
    /// default, which it calls "inverse KL". It equals forward KL plus the teacher's
    /// entropy `T^2 H(p_t)` (a constant for the student, so the gradients are those
    /// of forward KL); it is **not** reverse KL.
    #[serde(alias = "inverse_kl")]
    TeacherWeightedCe,
    /// True reverse KL `T^2 KL(q_s ‖ p_t)` (mode-seeking, as in MiniLLM).
    ReverseKl,
    /// Jensen-Shannon divergence (symmetric, bounded by `T^2 ln 2`).
    #[serde(alias = "js")]
    JensenShannon,
}

impl KdLoss {
    /// All kinds, in documentation order.
    pub const ALL: [KdLoss; 4] = [
        KdLoss::ForwardKl,
        KdLoss::TeacherWeightedCe,
        KdLoss::ReverseKl,
        KdLoss::JensenShannon,
    ];

    /// The config name (`forward_kl`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            KdLoss::ForwardKl => "forward_kl",
            KdLoss::TeacherWeightedCe => "teacher_weighted_ce",
            KdLoss::ReverseKl => "reverse_kl",
            KdLoss::JensenShannon => "jensen_shannon",
        }
    }
}

impl std::fmt::Display for KdLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A teacher distribution stored sparsely: per position the top-K token ids and
/// their log-probabilities at the distillation temperature.
#[derive(Debug)]
pub struct SparseTeacher {
    /// `[B, T, K]` int64 token ids.
    pub ids: Tensor,
    /// `[B, T, K]` log-probabilities (any float kind; used in fp32).
    pub logprobs: Tensor,
    /// The full vocabulary size V; with K < V a rest bucket is added.
    pub vocab_size: i64,
}

/// The teacher side of a KD loss.
#[derive(Debug, Clone, Copy)]
pub enum Teacher<'a> {
    /// Dense teacher logits `[B, T, V]` (softmax at temperature T is taken here).
    Logits(&'a Tensor),
    /// A sparse top-K teacher (already at the temperature).
    TopK(&'a SparseTeacher),
}

/// A KD loss and its per-position values.
#[derive(Debug)]
pub struct KdOutput {
    /// Scalar fp32 loss: mean of `per_token` over the masked positions.
    pub loss: Tensor,
    /// `[B, T]` fp32 loss per position (already scaled by `T^2`; 0 where masked).
    pub per_token: Tensor,
    /// Scalar fp32 number of masked-in positions.
    pub tokens: Tensor,
}

/// `(student log-probs, teacher log-probs)` over the same buckets, fp32.
fn bucket_logprobs(
    student_logits: &Tensor,
    teacher: Teacher<'_>,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let s = student_logits
        .f_to_kind(Kind::Float)?
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)?;
    match teacher {
        Teacher::Logits(z_t) => {
            if z_t.size() != student_logits.size() {
                return Err(Error::Shape(format!(
                    "teacher logits {:?} vs student logits {:?}",
                    z_t.size(),
                    student_logits.size()
                )));
            }
            let t = z_t
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_div_scalar(temperature)?
                .f_log_softmax(-1, Kind::Float)?;
            Ok((s, t))
        }
        Teacher::TopK(sp) => {
            let ss = student_logits.size();
            let is = sp.ids.size();
            if is.len() != 3 || is[..2] != ss[..2] || sp.logprobs.size() != is {
                return Err(Error::Shape(format!(
                    "sparse teacher ids {is:?} / log-probs {:?} vs student logits {ss:?}",
                    sp.logprobs.size()
                )));
            }
            let v = *ss.last().unwrap_or(&0);
            if sp.vocab_size != v || is[2] > v || is[2] == 0 {
                return Err(Error::Shape(format!(
                    "sparse teacher with K = {} over a {}-token vocabulary, student has {v}",
                    is[2], sp.vocab_size
                )));
            }
            let ids = sp.ids.f_to_kind(Kind::Int64)?;
            let s_k = s.f_gather(-1, &ids, false)?;
            let t_k = sp.logprobs.f_detach()?.f_to_kind(Kind::Float)?;
            if is[2] == v {
                return Ok((s_k, t_k));
            }
            // Student rest mass: log(1 - Σ q_k), computed as log(-expm1(lse)) with lse
            // clamped below 0 so the log's argument is >= ~REST_FLOOR.
            let lse = s_k
                .f_logsumexp([-1i64].as_slice(), true)?
                .f_clamp_max((-REST_FLOOR).ln_1p())?;
            let s_rest = lse.f_expm1()?.f_neg()?.f_clamp_min(REST_FLOOR)?.f_log()?;
            // Teacher rest mass: what the top-K leaves (0 -> -inf, dropped by `where`).
            let p_sum = t_k
                .f_exp()?
                .f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
            let t_rest = p_sum
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_clamp_min(0.0)?
                .f_log()?;
            Ok((
                Tensor::f_cat(&[s_k, s_rest], -1)?,
                Tensor::f_cat(&[t_k, t_rest], -1)?,
            ))
        }
    }
}

/// `x` where `cond`, else 0 (so that 0·x terms never see -inf or NaN operands).
fn keep(x: &Tensor, cond: &Tensor) -> Result<Tensor> {
    Ok(x.f_where_scalarother(cond, 0.0)?)
}

/// Per-position divergence over the last dim from log-probabilities `s` (student)
/// and `t` (teacher), not yet scaled or masked.
pub fn divergence(kind: KdLoss, s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let sum = |x: Tensor| -> Result<Tensor> {
        Ok(x.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?)
    };
    let p = t.f_exp()?;
    let p_pos = p.f_gt(0.0)?;
    match kind {
        KdLoss::ForwardKl => {
            let diff = keep(t, &p_pos)?.f_sub(&keep(s, &p_pos)?)?;
            sum(p.f_mul(&diff)?)
        }
        KdLoss::TeacherWeightedCe => sum(p.f_mul(&keep(s, &p_pos)?)?.f_neg()?),
        KdLoss::ReverseKl => {
            let q = s.f_exp()?;
            let q_pos = q.f_gt(0.0)?;
            let t_floor = t.f_clamp_min(LOG_PROB_FLOOR)?;
            let diff = keep(s, &q_pos)?.f_sub(&keep(&t_floor, &q_pos)?)?;
            sum(q.f_mul(&diff)?)
        }
        KdLoss::JensenShannon => {
            let q = s.f_exp()?;
            let q_pos = q.f_gt(0.0)?;
            let any = p_pos.f_logical_or(&q_pos)?;
            let (t0, s0) = (keep(t, &any)?, keep(s, &any)?);
            let log_m = t0.f_logaddexp(&s0)?.f_sub_scalar(std::f64::consts::LN_2)?;
            let kl_pm = p.f_mul(&keep(t, &p_pos)?.f_sub(&keep(&log_m, &p_pos)?)?)?;
            let kl_qm = q.f_mul(&keep(s, &q_pos)?.f_sub(&keep(&log_m, &q_pos)?)?)?;
            Ok(sum(kl_pm)?.f_add(&sum(kl_qm)?)?.f_mul_scalar(0.5)?)
        }
    }
}

/// The KD loss `kind` between `student_logits` `[B, T, V]` and `teacher` at
/// `temperature`, averaged over `mask` (`[B, T]`, bool or 0/1; `None` = every
/// position). Differentiable w.r.t. the student only; no host synchronisation.
pub fn kd_loss(
    kind: KdLoss,
    student_logits: &Tensor,
    teacher: Teacher<'_>,
    mask: Option<&Tensor>,
    temperature: f64,
) -> Result<KdOutput> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Config(format!(
            "temperature = {temperature}: must be finite and > 0"
        )));
    }
    let size = student_logits.size();
    if size.len() != 3 {
        return Err(Error::Shape(format!(
            "student logits must be [B, T, V], got {size:?}"
        )));
    }
    let (s, t) = bucket_logprobs(student_logits, teacher, temperature)?;
    let per = divergence(kind, &s, &t)?.f_mul_scalar(temperature * temperature)?;
    let (per, tokens) = match mask {
        Some(m) => {
            if m.size() != size[..2] {
                return Err(Error::Shape(format!(
                    "mask {:?} vs logits {size:?}",
                    m.size()
                )));
            }
            let mb = m.f_to_device(per.device())?.f_ne(0)?;
            (keep(&per, &mb)?, mb.f_sum(Kind::Float)?)
        }
        None => {
            let n = (size[0] * size[1]) as f64;
            (per, Tensor::f_full([], n, (Kind::Float, s.device()))?)
        }
    };
    let loss = per.f_sum(Kind::Float)?.f_div(&tokens.f_clamp_min(1.0)?)?;
    Ok(KdOutput {
        loss,
        per_token: per,
        tokens,
    })
}
