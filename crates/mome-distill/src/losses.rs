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
pub(crate) fn bucket_logprobs(
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

/// The teacher restricted to positions `start..start + len` (views, no copy).
enum TeacherChunk {
    Logits(Tensor),
    TopK(SparseTeacher),
}

impl TeacherChunk {
    fn of(teacher: Teacher<'_>, start: i64, len: i64) -> Result<Self> {
        Ok(match teacher {
            Teacher::Logits(z) => TeacherChunk::Logits(z.f_detach()?.f_narrow(1, start, len)?),
            Teacher::TopK(sp) => TeacherChunk::TopK(SparseTeacher {
                ids: sp.ids.f_narrow(1, start, len)?,
                logprobs: sp.logprobs.f_detach()?.f_narrow(1, start, len)?,
                vocab_size: sp.vocab_size,
            }),
        })
    }
    fn as_teacher(&self) -> Teacher<'_> {
        match self {
            TeacherChunk::Logits(z) => Teacher::Logits(z),
            TeacherChunk::TopK(sp) => Teacher::TopK(sp),
        }
    }
}

/// `z / T` in fp32, as `z · (1/T)` with a one-element fp32 `inv_t`: type promotion
/// makes that one kernel for bf16 `z` (cast and scale together) and never aliases
/// `z`.
fn scaled_f32(z: &Tensor, inv_t: &Tensor) -> Result<Tensor> {
    Ok(z.f_mul(inv_t)?)
}

/// Writes `gscale · grad` (masked rows zeroed first) into `dst`, the chunk of the
/// gradient buffer, in one kernel with one rounding to `dst`'s kind.
fn finish_grad(
    mut grad: Tensor,
    mask: Option<&Tensor>,
    gscale: &Tensor,
    dst: &Tensor,
) -> Result<()> {
    if let Some(m) = mask {
        let _ = grad.f_masked_fill_(&m.f_logical_not()?.f_unsqueeze(-1)?, 0.0)?;
    }
    let _ = grad.f_mul_out(dst, gscale)?;
    Ok(())
}

/// Closed-form KD loss of one chunk: returns the per-position divergence `D`
/// (unscaled, unmasked, `[B, L]`) and writes `gscale · ∂(Σ D)/∂(z / T)` into
/// `dst` (the caller's `gscale` is `T / tokens`, since `∂(T^2 D)/∂z = T
/// ∂D/∂(z/T)`), for the (detached) student logits chunk `z`, without autograd over
/// `[B, L, V]` tensors. `None` (and nothing written) for the kinds done by autograd
/// instead (dense Jensen-Shannon).
///
/// With `s = log_softmax(z / T)`, `q = exp(s)` and `g = ∂D/∂s`, the log-softmax
/// backward gives `∂D/∂(z/T) = g − q Σ_v g`:
/// * forward KL / teacher-weighted CE (dense): `g = −p` → `q − p` (autograd's
///   `q Σp − p` with `Σp = 1`). The value is `Σ p (t − s)` (`−Σ p s`) summed with
///   `nansum`, which drops exactly the `0 · ∞` terms the autograd path removes with
///   `where` (`p = 0` with `t = −∞` or `s = −∞`); a NaN in either side's logits
///   still reaches the value through `0 · Σ_v (q − p)`;
/// * reverse KL (dense): `g = q (s − t̃ + 1)` → `q (s − t̃ − KL)`
///   (`t̃ = max(t, LOG_PROB_FLOOR)`, up to `Σq = 1`);
/// * sparse teachers (every kind): `D` is a function of the K student bucket
///   log-probs `s_k` only (the rest bucket is a function of them), so `g` is
///   `∂D/∂s_k` (taken by autograd over the small `[B, L, K]` tensors, clamps and
///   all) scattered to the ids, and the gradient is `scatter(g_k) − q Σ_k g_k`.
///
/// Full-vocabulary passes per chunk (fp32 unless said): dense forward KL: cast +
/// scale, log-softmax (per side), two `exp`, `q − p`, its row sum, `t − s`, `· p`,
/// `nansum`, and the scaled cast into `dst`; sparse: cast + scale, log-softmax,
/// `exp`, `· (−Σ g_k)` and the scaled cast.
#[allow(clippy::too_many_arguments)]
fn analytic_chunk(
    kind: KdLoss,
    z: &Tensor,
    teacher: Teacher<'_>,
    inv_t: &Tensor,
    gscale: &Tensor,
    mask: Option<&Tensor>,
    dst: &Tensor,
) -> Result<Option<Tensor>> {
    let sum_last = |x: &Tensor| -> Result<Tensor> {
        Ok(x.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?)
    };
    match teacher {
        Teacher::Logits(z_t) => {
            if z_t.size() != z.size() {
                return Err(Error::Shape(format!(
                    "teacher logits {:?} vs student logits {:?}",
                    z_t.size(),
                    z.size()
                )));
            }
            if kind == KdLoss::JensenShannon {
                return Ok(None);
            }
            let mut s = scaled_f32(z, inv_t)?.f_log_softmax(-1, Kind::Float)?;
            let mut t = scaled_f32(&z_t.f_detach()?, inv_t)?.f_log_softmax(-1, Kind::Float)?;
            match kind {
                KdLoss::ForwardKl | KdLoss::TeacherWeightedCe => {
                    let p = t.f_exp()?;
                    // grad = q − p, built in the buffer of q.
                    let mut grad = s.f_exp()?;
                    let _ = grad.f_sub_(&p)?;
                    let nan_guard = sum_last(&grad)?.f_mul_scalar(0.0)?;
                    let per = if kind == KdLoss::ForwardKl {
                        let _ = t.f_sub_(&s)?.f_mul_(&p)?;
                        t.f_nansum([-1i64].as_slice(), false, Kind::Float)?
                    } else {
                        let _ = s.f_mul_(&p)?;
                        s.f_nansum([-1i64].as_slice(), false, Kind::Float)?
                            .f_neg()?
                    };
                    finish_grad(grad, mask, gscale, dst)?;
                    Ok(Some(per.f_add(&nan_guard)?))
                }
                KdLoss::ReverseKl => {
                    let q = s.f_exp()?;
                    let q_zero = q.f_eq(0.0)?;
                    // w = s − max(t, floor) where q > 0, else 0 (in the buffer of s).
                    let _ = t.f_clamp_min_(LOG_PROB_FLOOR)?;
                    let _ = s.f_sub_(&t)?.f_masked_fill_(&q_zero, 0.0)?;
                    let qw = q.f_mul(&s)?;
                    let per = sum_last(&qw)?;
                    // grad = q w + q − q Σ(q w + q) = q w − q (KL + Σq − 1).
                    let q_sum = q.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
                    let c = per.f_unsqueeze(-1)?.f_add(&q_sum)?.f_sub_scalar(1.0)?;
                    let mut grad = qw;
                    let _ = grad.f_sub_(&q.f_mul(&c)?)?;
                    finish_grad(grad, mask, gscale, dst)?;
                    Ok(Some(per))
                }
                KdLoss::JensenShannon => Ok(None),
            }
        }
        Teacher::TopK(sp) => {
            let ss = z.size();
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
            let mut s = scaled_f32(z, inv_t)?.f_log_softmax(-1, Kind::Float)?;
            let ids = sp.ids.f_to_kind(Kind::Int64)?;
            // s_k: a leaf for the small bucket-level autograd.
            let s_k = s
                .f_gather(-1, &ids, false)?
                .f_detach()?
                .set_requires_grad(true);
            let (per, g_k) = tch::with_grad(|| -> Result<(Tensor, Tensor)> {
                let t_k = sp.logprobs.f_detach()?.f_to_kind(Kind::Float)?;
                let (sb, tb) = if is[2] == v {
                    (s_k.shallow_clone(), t_k)
                } else {
                    let l = s_k
                        .f_logsumexp([-1i64].as_slice(), true)?
                        .f_clamp_max((-REST_FLOOR).ln_1p())?;
                    let s_rest = l.f_expm1()?.f_neg()?.f_clamp_min(REST_FLOOR)?.f_log()?;
                    let p_sum =
                        t_k.f_exp()?
                            .f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
                    let t_rest = p_sum
                        .f_neg()?
                        .f_add_scalar(1.0)?
                        .f_clamp_min(0.0)?
                        .f_log()?;
                    (
                        Tensor::f_cat(&[&s_k, &s_rest], -1)?,
                        Tensor::f_cat(&[&t_k, &t_rest], -1)?,
                    )
                };
                let per = divergence(kind, &sb, &tb)?;
                let total = per.f_sum(Kind::Float)?;
                let g = Tensor::f_run_backward(&[&total], &[&s_k], false, false)?;
                Ok((per.f_detach()?, g[0].shallow_clone()))
            })?;
            // grad = scatter(g_k) − q Σ g_k, built in the buffer of s.
            let c = g_k
                .f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?
                .f_neg()?;
            let _ = s.f_exp_()?.f_mul_(&c)?.f_scatter_add_(-1, &ids, &g_k)?;
            finish_grad(s, mask, gscale, dst)?;
            Ok(Some(per))
        }
    }
}

/// `1/T` as a one-element fp32 tensor on `device` (see `scaled_f32`).
pub(crate) fn inv_temperature(temperature: f64, device: tch::Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&[(1.0 / temperature) as f32])?.f_to_device(device)?)
}

/// One chunk of a KD loss, for [`kd_chunk_grad`].
pub(crate) struct KdChunk<'a> {
    pub kind: KdLoss,
    /// The (detached) student logits of the chunk, `[B, L, V]`, any float kind.
    pub logits: &'a Tensor,
    /// The teacher restricted to the same positions.
    pub teacher: Teacher<'a>,
    pub temperature: f64,
    /// [`inv_temperature`].
    pub inv_t: &'a Tensor,
    /// `[B, L]` bool, or every position.
    pub mask: Option<&'a Tensor>,
}

/// The per-position KD loss of one chunk (`T^2 D`, `[B, L]` fp32, 0 where masked),
/// writing `factor · ∂(Σ T^2 D)/∂z` into `dst` (the chunk's gradient buffer, in its
/// kind; `factor` a one-element fp32 tensor, e.g. `weight / tokens`): in closed form
/// (`analytic_chunk`) for every kind but dense Jensen-Shannon, which autograd does
/// over the fp32 chunk.
pub(crate) fn kd_chunk_grad(c: &KdChunk<'_>, factor: &Tensor, dst: &Tensor) -> Result<Tensor> {
    let t2 = c.temperature * c.temperature;
    // ∂(T^2 D)/∂z = T ∂D/∂(z/T): the closed forms take `factor · T`.
    let gscale = factor.f_mul_scalar(c.temperature)?;
    if let Some(per) = analytic_chunk(c.kind, c.logits, c.teacher, c.inv_t, &gscale, c.mask, dst)? {
        let per = per.f_mul_scalar(t2)?;
        return match c.mask {
            Some(m) => keep(&per, m),
            None => Ok(per),
        };
    }
    let s = c
        .logits
        .f_to_kind(Kind::Float)?
        .f_detach()?
        .set_requires_grad(true);
    tch::with_grad(|| -> Result<Tensor> {
        let (sl, tl) = bucket_logprobs(&s, c.teacher, c.temperature)?;
        let mut per = divergence(c.kind, &sl, &tl)?.f_mul_scalar(t2)?;
        if let Some(m) = c.mask {
            per = keep(&per, m)?;
        }
        let total = per.f_sum(Kind::Float)?;
        let gs = Tensor::f_run_backward(&[&total], &[&s], false, false)?;
        // Scaled in fp32 before the one cast to the logits' kind (what autograd's
        // cast back through `to_kind` does).
        let mut dst = dst.shallow_clone();
        dst.f_copy_(&gs[0].f_mul(factor)?)?;
        Ok(per.f_detach()?)
    })
}

/// [`kd_loss`] computed `chunk` positions at a time, with the same value, per-position
/// values and gradient, but bounded memory: the fp32 `[B, chunk, V]` temporaries
/// (log-softmaxes, probabilities, products; several per KD kind) exist for one chunk
/// at a time instead of for the whole `[B, T, V]` (4 GiB each at B = 32, T = 1024,
/// V = 32000).
///
/// How: each chunk's gradient w.r.t. that chunk of the (detached) student logits is
/// computed at once, in closed form in one pass over the chunk (`analytic_chunk`:
/// every kind with a sparse teacher, forward KL, teacher-weighted CE and reverse KL
/// with a dense one; one fp32 upcast and one log-softmax per side, no autograd
/// graph over `[B, chunk, V]`) or, for dense Jensen-Shannon, by autograd over the
/// fp32 chunk; with closed forms a `chunk` ≥ T is one chunk. The chunk gradients
/// are written into one
/// `[B, T, V]` buffer of the logits' kind, and the returned loss is
/// `value + <logits, G> - <logits, G>.detach()`, whose value is `value` and whose
/// gradient w.r.t. the student logits is `G` (times the upstream gradient, so
/// `beta * loss` works; the forward of `<z, G>` is NaN when the student logits
/// hold an infinity, so unlike [`kd_loss`] this one needs finite student logits).
/// The chunk gradients are computed eagerly here (under
/// grad mode even inside `no_grad`); higher-order gradients are not supported. When
/// the student logits do not require grad, this is just a chunked forward.
pub fn kd_loss_chunked(
    kind: KdLoss,
    student_logits: &Tensor,
    teacher: Teacher<'_>,
    mask: Option<&Tensor>,
    temperature: f64,
    chunk: i64,
) -> Result<KdOutput> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Config(format!(
            "temperature = {temperature}: must be finite and > 0"
        )));
    }
    if chunk <= 0 {
        return Err(Error::Config(format!("KD chunk = {chunk}: must be > 0")));
    }
    let size = student_logits.size();
    if size.len() != 3 {
        return Err(Error::Shape(format!(
            "student logits must be [B, T, V], got {size:?}"
        )));
    }
    let t_len = size[1];
    let want_grad = student_logits.requires_grad();
    // Closed-form gradients (see `analytic_chunk`) for every kind but dense JS.
    let analytic =
        want_grad && !(kind == KdLoss::JensenShannon && matches!(teacher, Teacher::Logits(_)));
    if chunk >= t_len && !analytic {
        return kd_loss(kind, student_logits, teacher, mask, temperature);
    }
    let chunk = chunk.min(t_len.max(1));
    let mb = match mask {
        Some(m) => {
            if m.size() != size[..2] {
                return Err(Error::Shape(format!(
                    "mask {:?} vs logits {size:?}",
                    m.size()
                )));
            }
            Some(m.f_to_device(student_logits.device())?.f_ne(0)?)
        }
        None => None,
    };
    let tokens = match &mb {
        Some(m) => m.f_sum(Kind::Float)?,
        None => Tensor::f_full(
            [],
            (size[0] * size[1]) as f64,
            (Kind::Float, student_logits.device()),
        )?,
    };
    let detached = student_logits.f_detach()?;
    let grad = if want_grad {
        // Every chunk writes its slice, so no zero fill.
        Some(detached.f_empty_like()?)
    } else {
        None
    };
    let denom = tokens.f_clamp_min(1.0)?;
    let factor = denom.f_reciprocal()?;
    let inv_t = inv_temperature(temperature, student_logits.device())?;
    let mut per_chunks = Vec::new();
    let mut start = 0;
    while start < t_len {
        let len = chunk.min(t_len - start);
        let tc = TeacherChunk::of(teacher, start, len)?;
        let zc = detached.f_narrow(1, start, len)?;
        let mc = match &mb {
            Some(m) => Some(m.f_narrow(1, start, len)?),
            None => None,
        };
        let per = match &grad {
            Some(g) => kd_chunk_grad(
                &KdChunk {
                    kind,
                    logits: &zc,
                    teacher: tc.as_teacher(),
                    temperature,
                    inv_t: &inv_t,
                    mask: mc.as_ref(),
                },
                &factor,
                &g.f_narrow(1, start, len)?,
            )?,
            None => {
                let (sl, tl) = bucket_logprobs(&zc, tc.as_teacher(), temperature)?;
                let per = divergence(kind, &sl, &tl)?.f_mul_scalar(temperature * temperature)?;
                match &mc {
                    Some(m) => keep(&per, m)?,
                    None => per,
                }
            }
        };
        per_chunks.push(per);
        start += len;
    }
    let per_token = Tensor::f_cat(&per_chunks, 1)?;
    let value = per_token.f_sum(Kind::Float)?.f_div(&denom)?;
    let loss = match grad {
        Some(g) => {
            // <z, G>: its gradient w.r.t. z is G. `dot` makes no [B, T, V] product in
            // the forward; BLAS dot takes a 32-bit length, so larger inputs use mul+sum.
            let z = student_logits.f_flatten(0, -1)?;
            let g = g.f_flatten(0, -1)?;
            let lin = if z.numel() < i32::MAX as usize {
                z.f_dot(&g)?
            } else {
                z.f_mul(&g)?.f_sum(Kind::Float)?
            }
            .f_to_kind(Kind::Float)?;
            value.f_add(&lin.f_sub(&lin.f_detach()?)?)?
        }
        None => value,
    };
    Ok(KdOutput {
        loss,
        per_token,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn grad_of(loss: &Tensor, z: &Tensor) -> Tensor {
        Tensor::run_backward(&[loss], &[z], false, false).remove(0)
    }

    #[test]
    fn chunked_kd_equals_kd_value_and_gradient() {
        tch::manual_seed(7);
        let (b, t, v, k) = (2, 9, 30, 5);
        let opts = (Kind::Float, Device::Cpu);
        let teacher_logits = Tensor::randn([b, t, v], opts) * 2.0;
        let (vals, ids) = (&teacher_logits / 2.0)
            .log_softmax(-1, Kind::Float)
            .topk(k, -1, true, true);
        let sparse = SparseTeacher {
            ids,
            logprobs: vals,
            vocab_size: v,
        };
        let mask = Tensor::ones([b, t], (Kind::Int64, Device::Cpu));
        let _ = mask.narrow(0, 1, 1).narrow(1, 6, 3).fill_(0);
        for kind in KdLoss::ALL {
            for (ti, teacher) in [Teacher::Logits(&teacher_logits), Teacher::TopK(&sparse)]
                .into_iter()
                .enumerate()
            {
                for m in [None, Some(&mask)] {
                    for chunk in [1, 4, 8] {
                        let z = (Tensor::randn([b, t, v], opts) * 2.0).set_requires_grad(true);
                        let a = kd_loss(kind, &z, teacher, m, 2.0).unwrap();
                        let ga = grad_of(&(&a.loss * 0.5), &z);
                        let c = kd_loss_chunked(kind, &z, teacher, m, 2.0, chunk).unwrap();
                        let gc = grad_of(&(&c.loss * 0.5), &z);
                        let (va, vc) = (a.loss.double_value(&[]), c.loss.double_value(&[]));
                        assert!(
                            approx::relative_eq!(va, vc, epsilon = 1e-6, max_relative = 1e-5),
                            "{kind} teacher {ti} chunk {chunk}: {va} vs {vc}"
                        );
                        let pd = (&a.per_token - &c.per_token).abs().max().double_value(&[]);
                        assert!(pd < 1e-5, "{kind} per-token diff {pd}");
                        let gd = (&ga - &gc).abs().max().double_value(&[]);
                        let gm = ga.abs().max().double_value(&[]);
                        assert!(
                            gd <= 1e-5 * gm.max(1e-3),
                            "{kind} teacher {ti} chunk {chunk}: grad diff {gd} (max {gm})"
                        );
                        assert_eq!(a.tokens.double_value(&[]), c.tokens.double_value(&[]));
                    }
                }
            }
        }
    }

    #[test]
    fn chunked_kd_without_grad_and_with_bf16_logits() {
        tch::manual_seed(8);
        let opts = (Kind::Float, Device::Cpu);
        let z = Tensor::randn([2, 6, 20], opts);
        let zt = Tensor::randn([2, 6, 20], opts);
        let a = kd_loss(KdLoss::ForwardKl, &z, Teacher::Logits(&zt), None, 1.0).unwrap();
        let c = tch::no_grad(|| {
            kd_loss_chunked(KdLoss::ForwardKl, &z, Teacher::Logits(&zt), None, 1.0, 4).unwrap()
        });
        assert!((a.loss.double_value(&[]) - c.loss.double_value(&[])).abs() < 1e-6);
        // bf16 student logits: the gradient comes back in bf16, like autograd's.
        let zb = z.to_kind(Kind::BFloat16).set_requires_grad(true);
        let a = kd_loss(KdLoss::ForwardKl, &zb, Teacher::Logits(&zt), None, 2.0).unwrap();
        let ga = grad_of(&a.loss, &zb);
        let c =
            kd_loss_chunked(KdLoss::ForwardKl, &zb, Teacher::Logits(&zt), None, 2.0, 4).unwrap();
        let gc = grad_of(&c.loss, &zb);
        assert_eq!(gc.kind(), Kind::BFloat16);
        assert!((a.loss.double_value(&[]) - c.loss.double_value(&[])).abs() < 1e-5);
        let gd = (ga.to_kind(Kind::Float) - gc.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        let gm = ga.to_kind(Kind::Float).abs().max().double_value(&[]);
        assert!(gd <= 0.01 * gm, "bf16 grad diff {gd} (max {gm})");
    }

    /// The closed-form (fused) gradients of `kd_loss_chunked` against the autograd
    /// reference `kd_loss`: every kind, dense teachers with -inf logits, sparse
    /// teachers with K < V and K = V, masks, temperatures, one chunk and several,
    /// fp32 and bf16 student logits.
    #[test]
    fn fused_kd_gradient_equals_autograd_reference() {
        tch::manual_seed(11);
        let (b, t, v) = (2, 7, 24);
        let opts = (Kind::Float, Device::Cpu);
        let teacher_logits = Tensor::randn([b, t, v], opts) * 3.0;
        // Masked vocabulary entries and a near one-hot position.
        let _ = teacher_logits.narrow(2, 0, 3).fill_(f64::NEG_INFINITY);
        let _ = teacher_logits.narrow(1, 2, 1).narrow(2, 5, 1).fill_(80.0);
        let mask = Tensor::ones([b, t], (Kind::Int64, Device::Cpu));
        let _ = mask.narrow(0, 0, 1).narrow(1, 4, 3).fill_(0);
        for temp in [1.0, 0.7, 2.0] {
            let lp = (&teacher_logits / temp).log_softmax(-1, Kind::Float);
            let sparse: Vec<SparseTeacher> = [5, v]
                .into_iter()
                .map(|k| {
                    let (vals, ids) = lp.topk(k, -1, true, true);
                    SparseTeacher {
                        ids,
                        logprobs: vals.to_kind(Kind::Half),
                        vocab_size: v,
                    }
                })
                .collect();
            let teachers = [
                Teacher::Logits(&teacher_logits),
                Teacher::TopK(&sparse[0]),
                Teacher::TopK(&sparse[1]),
            ];
            for kind in KdLoss::ALL {
                for (ti, teacher) in teachers.into_iter().enumerate() {
                    for m in [None, Some(&mask)] {
                        for chunk in [3, 100] {
                            for bf16 in [false, true] {
                                let z0 = Tensor::randn([b, t, v], opts) * 2.0;
                                let z = if bf16 { z0.to_kind(Kind::BFloat16) } else { z0 }
                                    .set_requires_grad(true);
                                let a = kd_loss(kind, &z, teacher, m, temp).unwrap();
                                let ga = grad_of(&(&a.loss * 0.5), &z).to_kind(Kind::Float);
                                let c = kd_loss_chunked(kind, &z, teacher, m, temp, chunk).unwrap();
                                let gc = grad_of(&(&c.loss * 0.5), &z);
                                assert_eq!(gc.kind(), z.kind());
                                let gc = gc.to_kind(Kind::Float);
                                let (va, vc) = (a.loss.double_value(&[]), c.loss.double_value(&[]));
                                let what = format!("{kind} teacher {ti} T {temp} chunk {chunk} bf16 {bf16} mask {}", m.is_some());
                                assert!(va.is_finite(), "{what}: {va}");
                                assert!(
                                    approx::relative_eq!(
                                        va,
                                        vc,
                                        epsilon = 1e-5,
                                        max_relative = 1e-5
                                    ),
                                    "{what}: {va} vs {vc}"
                                );
                                let pd =
                                    (&a.per_token - &c.per_token).abs().max().double_value(&[]);
                                assert!(pd < 1e-4, "{what}: per-token diff {pd}");
                                let gd = (&ga - &gc).abs().max().double_value(&[]);
                                let gm = ga.abs().max().double_value(&[]);
                                let tol = if bf16 { 1e-2 } else { 1e-5 };
                                assert!(
                                    gd <= tol * gm.max(1e-3),
                                    "{what}: grad diff {gd} (max {gm})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A NaN in the student's logits reaches the fused loss's value (as in `kd_loss`).
    #[test]
    fn fused_kd_propagates_nan() {
        let opts = (Kind::Float, Device::Cpu);
        let zt = Tensor::randn([1, 4, 10], opts);
        for kind in [
            KdLoss::ForwardKl,
            KdLoss::TeacherWeightedCe,
            KdLoss::ReverseKl,
        ] {
            let z = Tensor::randn([1, 4, 10], opts);
            let _ = z.narrow(1, 2, 1).narrow(2, 3, 1).fill_(f64::NAN);
            let z = z.set_requires_grad(true);
            let c = kd_loss_chunked(kind, &z, Teacher::Logits(&zt), None, 2.0, 2).unwrap();
            assert!(c.loss.double_value(&[]).is_nan(), "{kind}");
        }
    }
}
