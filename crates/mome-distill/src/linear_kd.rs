//! Fused linear KD: a distilled student's LM head, its next-token cross-entropy and
//! its KD loss against a teacher, `alpha · CE + beta · KD` (method §4, the objective
//! of §3), without the student's full `[B, T, V]` logits.
//!
//! With [`LinearCe::Chunked`] or [`LinearCe::Fused`] the positions are processed in
//! chunks of rows ([`mome_core::linear_ce::linear_head_grads`], the engine of the
//! fused linear cross-entropy): per chunk the student logits `z = h·Wᵀ` are made in
//! the compute kind; the KD gradient `beta · ∂KD/∂z` is written beside them in closed
//! form (mome-distill's KD chunk step, every divergence, dense and top-K teachers);
//! then the cross-entropy step turns `z` in place into `alpha · ∂CE/∂z` (mome's CUDA
//! kernel under `fused`, libtorch operators under `chunked`) and the two are added.
//! Under `fused`, forward KL and teacher-weighted CE against dense teacher logits
//! take one CUDA kernel for all of that (`mome_core::kernels::kd_xent_grad`: each
//! side's logits read twice, the gradient written once);
//! `dL/dh` and `dL/dW` follow at once. An online teacher's head is chunked the same
//! way ([`HeadTeacher::Head`]): its `[B, T, V]` logits never exist either. Like
//! Liger-Kernel's fused linear JSD, the gradients are computed in the forward pass
//! and reach autograd through a surrogate whose value is zero.
//!
//! Weights known before the losses ([`KdWeights::Fixed`], the fixed and alternating
//! strategies) cost one pass over the head. Weights computed from this batch's CE
//! and KD ([`KdWeights::FromLosses`], the adaptive strategy) take a forward-only pass
//! first (one more head matmul and KD value per chunk).
//!
//! [`LinearCe::Reference`] is the unfused computation: the full student logits
//! (and teacher logits), mome-experts' `causal_lm_loss` and [`kd_loss`], under
//! autograd. Which path runs is `[train.kernels] linear_kd`.
//!
//! ```
//! use mome_core::fusion::{KernelConfig, LinearCe};
//! use mome_distill::linear_kd::{linear_kd_loss, HeadTeacher, KdWeights, LinearKd};
//! use mome_distill::KdLoss;
//! use tch::{Device, Kind, Tensor};
//!
//! let opts = (Kind::Float, Device::Cpu);
//! let h = Tensor::randn([2, 5, 4], opts).set_requires_grad(true);
//! let w = Tensor::randn([11, 4], opts).set_requires_grad(true);
//! let teacher = Tensor::randn([2, 5, 11], opts);
//! let ids = Tensor::randint(11, [2, 5], (Kind::Int64, Device::Cpu));
//! let input = LinearKd {
//!     hidden: &h, weight: &w, compute: Kind::Float, input_ids: &ids,
//!     teacher: HeadTeacher::Logits(&teacher), loss: KdLoss::ForwardKl, temperature: 2.0,
//! };
//! let k = KernelConfig { ce_chunk: 3, ..Default::default() };
//! let fixed = || KdWeights::Fixed { alpha: 0.5, beta: 0.5 };
//! let chunked = linear_kd_loss(&input, fixed(), LinearCe::Chunked, &k).unwrap();
//! let reference = linear_kd_loss(&input, fixed(), LinearCe::Reference, &k).unwrap();
//! let d = chunked.loss.double_value(&[]) - reference.loss.double_value(&[]);
//! assert!(d.abs() < 1e-5);
//! chunked.loss.backward(); // the reference's gradients of h and w
//! ```

use mome_core::fusion::{KernelConfig, LinearCe};
use mome_core::kernels::{kd_xent_grad, KdXent, SoftTarget};
use mome_core::linear_ce::{counted_targets, linear_head_grads, softmax_xent_grad, LinearHead};
use mome_experts::{causal_lm_loss, next_token_targets};
use tch::{Kind, Tensor};

use crate::losses::{
    bucket_logprobs, divergence, inv_temperature, kd_chunk_grad, kd_loss, KdChunk, KdLoss,
    SparseTeacher, Teacher,
};
use crate::{Error, Result};

/// The teacher side of [`linear_kd_loss`].
#[derive(Debug, Clone, Copy)]
pub enum HeadTeacher<'a> {
    /// Teacher logits `[B, T, V]` (any float kind).
    Logits(&'a Tensor),
    /// A teacher's last hidden state `[B, T, Dt]` and its head `[V, Dt]`: its logits
    /// are made chunk by chunk in `compute` (never whole).
    Head {
        /// `[B, T, Dt]`.
        hidden: &'a Tensor,
        /// `[V, Dt]`.
        weight: &'a Tensor,
        /// The kind of the teacher's matmuls.
        compute: Kind,
    },
    /// A top-K teacher (a teacher cache's rows).
    TopK(&'a SparseTeacher),
}

/// The inputs of [`linear_kd_loss`].
#[derive(Debug)]
pub struct LinearKd<'a> {
    /// The student's last hidden state `[B, T, D]` (differentiable).
    pub hidden: &'a Tensor,
    /// The student's LM head `[V, D]` (differentiable).
    pub weight: &'a Tensor,
    /// The kind of the student's matmuls and logits.
    pub compute: Kind,
    /// The batch's token ids `[B, T]` (the CE targets are the next tokens).
    pub input_ids: &'a Tensor,
    /// The teacher.
    pub teacher: HeadTeacher<'a>,
    /// The KD divergence.
    pub loss: KdLoss,
    /// The KD temperature.
    pub temperature: f64,
}

/// Gives `(alpha, beta)` from this micro-batch's CE and KD values (detached fp32
/// scalars).
pub type WeightsFromLosses<'f> = &'f mut dyn FnMut(&Tensor, &Tensor) -> Result<(f64, f64)>;

/// How CE and KD are weighted in [`linear_kd_loss`].
pub enum KdWeights<'f> {
    /// Known before the losses.
    Fixed {
        /// The CE weight.
        alpha: f64,
        /// The KD weight.
        beta: f64,
    },
    /// From this micro-batch's CE and KD values (detached fp32 scalars).
    FromLosses(WeightsFromLosses<'f>),
}

impl std::fmt::Debug for KdWeights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KdWeights::Fixed { alpha, beta } => write!(f, "Fixed({alpha}, {beta})"),
            KdWeights::FromLosses(_) => write!(f, "FromLosses"),
        }
    }
}

/// What [`linear_kd_loss`] computed.
#[derive(Debug)]
pub struct LinearKdOutput {
    /// `alpha · ce + beta · kd`, fp32, differentiable w.r.t. the student's hidden
    /// state and head.
    pub loss: Tensor,
    /// The mean next-token cross-entropy (detached).
    pub ce: Tensor,
    /// The KD loss, `T^2`-scaled, averaged over every position (detached).
    pub kd: Tensor,
    /// The CE weight used.
    pub alpha: f64,
    /// The KD weight used.
    pub beta: f64,
}

/// The teacher of rows `start..start + len` of the flattened positions, `[1, len, ·]`.
enum RowTeacher {
    Logits(Tensor),
    TopK(SparseTeacher),
}

impl RowTeacher {
    fn as_teacher(&self) -> Teacher<'_> {
        match self {
            RowTeacher::Logits(z) => Teacher::Logits(z),
            RowTeacher::TopK(sp) => Teacher::TopK(sp),
        }
    }
}

/// The teacher flattened to rows: `[N, V]` logits, `[N, Dt]` hidden, `[N, K]` top-K.
enum FlatTeacher {
    Logits(Tensor),
    Head {
        hidden: Tensor,
        weight: Tensor,
    },
    TopK {
        ids: Tensor,
        logprobs: Tensor,
        vocab_size: i64,
    },
}

impl FlatTeacher {
    fn new(t: &HeadTeacher<'_>, b: i64, tl: i64, v: i64) -> Result<Self> {
        let n = b * tl;
        let want = |what: &str, got: Vec<i64>| {
            Error::Shape(format!(
                "linear KD: teacher {what} {got:?} vs student batch [{b}, {tl}] and vocabulary {v}"
            ))
        };
        Ok(match t {
            HeadTeacher::Logits(z) => {
                let s = z.size();
                if s != [b, tl, v] {
                    return Err(want("logits", s));
                }
                FlatTeacher::Logits(z.f_detach()?.f_reshape([n, v])?)
            }
            HeadTeacher::Head {
                hidden,
                weight,
                compute,
            } => {
                let (hs, ws) = (hidden.size(), weight.size());
                if hs.len() != 3 || hs[..2] != [b, tl] || ws != [v, hs[2]] {
                    return Err(want("hidden / head", [hs, ws].concat()));
                }
                let k = *compute;
                FlatTeacher::Head {
                    hidden: hidden.f_detach()?.f_reshape([n, hs[2]])?.f_to_kind(k)?,
                    weight: weight.f_detach()?.f_to_kind(k)?,
                }
            }
            HeadTeacher::TopK(sp) => {
                let s = sp.ids.size();
                if s.len() != 3 || s[..2] != [b, tl] || sp.logprobs.size() != s {
                    return Err(want("top-K ids", s));
                }
                FlatTeacher::TopK {
                    ids: sp.ids.f_reshape([n, s[2]])?,
                    logprobs: sp.logprobs.f_detach()?.f_reshape([n, s[2]])?,
                    vocab_size: sp.vocab_size,
                }
            }
        })
    }

    fn rows(&self, start: i64, len: i64) -> Result<RowTeacher> {
        Ok(match self {
            FlatTeacher::Logits(z) => {
                RowTeacher::Logits(z.f_narrow(0, start, len)?.f_unsqueeze(0)?)
            }
            FlatTeacher::Head { hidden, weight } => {
                let z = tch::no_grad(|| hidden.f_narrow(0, start, len)?.f_mm(&weight.tr()))?;
                RowTeacher::Logits(z.f_unsqueeze(0)?)
            }
            FlatTeacher::TopK {
                ids,
                logprobs,
                vocab_size,
            } => RowTeacher::TopK(SparseTeacher {
                ids: ids.f_narrow(0, start, len)?.f_unsqueeze(0)?,
                logprobs: logprobs.f_narrow(0, start, len)?.f_unsqueeze(0)?,
                vocab_size: *vocab_size,
            }),
        })
    }
}

/// `alpha · CE + beta · KD` of a student head against `teacher`, by the path `how`
/// (chunk size: `kernels.ce_chunk`). See the module docs. No host synchronisation
/// with [`KdWeights::Fixed`].
pub fn linear_kd_loss(
    input: &LinearKd<'_>,
    weights: KdWeights<'_>,
    how: LinearCe,
    kernels: &KernelConfig,
) -> Result<LinearKdOutput> {
    let temperature = input.temperature;
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Config(format!(
            "temperature = {temperature}: must be finite and > 0"
        )));
    }
    let (hs, ws) = (input.hidden.size(), input.weight.size());
    let (b, tl, d, v) = match (&hs[..], &ws[..]) {
        ([b, t, d], [v, d2]) if d == d2 && *v > 0 => (*b, *t, *d, *v),
        _ => {
            return Err(Error::Shape(format!(
                "linear KD takes hidden [B, T, D] and weight [V, D]; got {hs:?}, {ws:?}"
            )))
        }
    };
    if input.input_ids.size() != [b, tl] {
        return Err(Error::Shape(format!(
            "linear KD: input_ids {:?} vs hidden {hs:?}",
            input.input_ids.size()
        )));
    }
    if how == LinearCe::Reference {
        return reference(input, weights);
    }
    let n = b * tl;
    let device = input.hidden.device();
    let teacher = FlatTeacher::new(&input.teacher, b, tl, v)?;
    let targets = next_token_targets(input.input_ids, None)?.f_reshape([n])?;
    let count = counted_targets(&targets)?;
    let tokens = (n as f64).max(1.0);
    let inv_t = inv_temperature(temperature, device)?;
    let chunk = kernels.ce_chunk_rows(n, v, input.compute.elt_size_in_bytes() as i64);
    let h = input.hidden.f_reshape([n, d])?;
    let head = LinearHead {
        hidden: &h,
        weight: input.weight,
        compute: input.compute,
    };
    let ce_rows = Tensor::f_empty([n], (Kind::Float, device))?;
    let kd_rows = Tensor::f_empty([n], (Kind::Float, device))?;
    let values = |ce_rows: &Tensor, kd_rows: &Tensor| -> Result<(Tensor, Tensor)> {
        Ok((
            ce_rows.f_sum(Kind::Float)?.f_div(&count)?.f_detach()?,
            kd_rows
                .f_sum(Kind::Float)?
                .f_div_scalar(tokens)?
                .f_detach()?,
        ))
    };
    // Per chunk at row `start`: keeps its KD values `per` and runs the CE step on `z`
    // (row losses kept, `z` turned into `scale · ∂CE/∂z`).
    let rows_step = |start: i64, z: &Tensor, per: &Tensor, scale: &Tensor| -> Result<()> {
        let c = z.size()[0];
        kd_rows
            .f_narrow(0, start, c)?
            .f_copy_(&per.f_reshape([c])?)?;
        Ok(softmax_xent_grad(
            how,
            z,
            &targets.f_narrow(0, start, c)?,
            scale,
            &ce_rows.f_narrow(0, start, c)?,
        )?)
    };
    let (alpha, beta) = match weights {
        KdWeights::Fixed { alpha, beta } => (alpha, beta),
        KdWeights::FromLosses(f) => {
            // A forward-only pass for this batch's CE and KD values.
            let frozen = LinearHead {
                hidden: &h.f_detach()?,
                weight: &input.weight.f_detach()?,
                compute: input.compute,
            };
            let zero = Tensor::f_zeros([1], (Kind::Float, device))?;
            let _ = linear_head_grads(&frozen, chunk, |start, z| {
                let c = z.size()[0];
                let tc = teacher.rows(start, c)?;
                let (sl, tlp) = bucket_logprobs(&z.f_unsqueeze(0)?, tc.as_teacher(), temperature)?;
                let per =
                    divergence(input.loss, &sl, &tlp)?.f_mul_scalar(temperature * temperature)?;
                rows_step(start, z, &per, &zero)
            })?;
            let (ce, kd) = values(&ce_rows, &kd_rows)?;
            f(&ce, &kd)?
        }
    };
    let ce_scale = count.f_reciprocal()?.f_mul_scalar(alpha)?.f_reshape([1])?;
    let kd_factor = Tensor::f_from_slice(&[(beta / tokens) as f32])?.f_to_device(device)?;
    // mome's kernel does CE + dense forward KL / teacher-weighted CE in one pass.
    let kernel = (how == LinearCe::Fused
        && matches!(input.loss, KdLoss::ForwardKl | KdLoss::TeacherWeightedCe)
        && !matches!(teacher, FlatTeacher::TopK { .. }))
    .then(|| -> Result<Tensor> {
        // [alpha / count, beta T / tokens]: the factors of the two gradients.
        Ok(Tensor::f_cat(
            &[&ce_scale, &kd_factor.f_mul_scalar(temperature)?],
            0,
        )?)
    })
    .transpose()?;
    let target = match input.loss {
        KdLoss::TeacherWeightedCe => SoftTarget::TeacherWeightedCe,
        _ => SoftTarget::ForwardKl,
    };
    let mut kd_grad: Option<Tensor> = None;
    let grads = linear_head_grads(&head, chunk, |start, z| {
        let c = z.size()[0];
        let tc = teacher.rows(start, c)?;
        if let (Some(scale), RowTeacher::Logits(zt)) = (&kernel, &tc) {
            let zt = zt.f_squeeze_dim(0)?;
            let zt = if zt.kind() == z.kind() {
                zt
            } else {
                zt.f_to_kind(z.kind())?
            };
            kd_xent_grad(&KdXent {
                z,
                teacher: &zt.f_contiguous()?,
                targets: &targets.f_narrow(0, start, c)?,
                scale,
                ce: &ce_rows.f_narrow(0, start, c)?,
                kd: &kd_rows.f_narrow(0, start, c)?,
                inv_t: (1.0 / temperature) as f32,
                t2: (temperature * temperature) as f32,
                target,
            })?;
            return Ok::<(), Error>(());
        }
        let buf = match &kd_grad {
            Some(g) if g.size()[1] >= c => g.f_narrow(1, 0, c)?,
            _ => {
                let g = Tensor::f_empty([1, c, v], (z.kind(), device))?;
                kd_grad = Some(g.shallow_clone());
                g
            }
        };
        let z3 = z.f_unsqueeze(0)?;
        let per = kd_chunk_grad(
            &KdChunk {
                kind: input.loss,
                logits: &z3,
                teacher: tc.as_teacher(),
                temperature,
                inv_t: &inv_t,
                mask: None,
            },
            &kd_factor,
            &buf,
        )?;
        rows_step(start, z, &per, &ce_scale)?;
        let mut z = z.shallow_clone();
        let _ = z.f_add_(&buf.f_squeeze_dim(0)?)?;
        Ok::<(), Error>(())
    })?;
    let (ce, kd) = values(&ce_rows, &kd_rows)?;
    let loss = ce
        .f_mul_scalar(alpha)?
        .f_add(&kd.f_mul_scalar(beta)?)?
        .f_add(&grads)?;
    Ok(LinearKdOutput {
        loss,
        ce,
        kd,
        alpha,
        beta,
    })
}

/// The unfused computation (see the module docs).
fn reference(input: &LinearKd<'_>, weights: KdWeights<'_>) -> Result<LinearKdOutput> {
    let logits = LinearHead {
        hidden: input.hidden,
        weight: input.weight,
        compute: input.compute,
    }
    .logits()?;
    let teacher_logits;
    let teacher = match input.teacher {
        HeadTeacher::Logits(z) => Teacher::Logits(z),
        HeadTeacher::Head {
            hidden,
            weight,
            compute,
        } => {
            let head = LinearHead {
                hidden,
                weight,
                compute,
            };
            teacher_logits = tch::no_grad(|| head.logits())?;
            Teacher::Logits(&teacher_logits)
        }
        HeadTeacher::TopK(sp) => Teacher::TopK(sp),
    };
    let ce = causal_lm_loss(&logits, input.input_ids, None)?;
    let kd = kd_loss(input.loss, &logits, teacher, None, input.temperature)?.loss;
    let (alpha, beta) = match weights {
        KdWeights::Fixed { alpha, beta } => (alpha, beta),
        KdWeights::FromLosses(f) => f(&ce.f_detach()?, &kd.f_detach()?)?,
    };
    let loss = ce.f_mul_scalar(alpha)?.f_add(&kd.f_mul_scalar(beta)?)?;
    Ok(LinearKdOutput {
        loss,
        ce: ce.f_detach()?,
        kd: kd.f_detach()?,
        alpha,
        beta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use tch::Device;

    struct Case {
        h: Tensor,
        w: Tensor,
        ids: Tensor,
        th: Tensor,
        tw: Tensor,
        sparse: SparseTeacher,
    }

    fn case(b: i64, t: i64, d: i64, v: i64, seed: i64) -> Case {
        tch::manual_seed(seed);
        let o = (Kind::Float, Device::Cpu);
        let th = Tensor::randn([b, t, 6], o);
        let tw = Tensor::randn([v, 6], o);
        let tz = th.linear::<Tensor>(&tw, None) / 2.0;
        let (top, ids) = tz
            .log_softmax(-1, Kind::Float)
            .topk(5.min(v), -1, true, true);
        Case {
            h: Tensor::randn([b, t, d], o).set_requires_grad(true),
            w: (Tensor::randn([v, d], o) * 0.5).set_requires_grad(true),
            ids: Tensor::randint(v, [b, t], (Kind::Int64, Device::Cpu)),
            th,
            tw,
            sparse: SparseTeacher {
                ids,
                logprobs: top,
                vocab_size: v,
            },
        }
    }

    fn run(
        c: &Case,
        teacher: HeadTeacher<'_>,
        kind: KdLoss,
        how: LinearCe,
        chunk: usize,
        adaptive: bool,
    ) -> (f64, f64, f64, Tensor, Tensor) {
        c.h.shallow_clone().zero_grad();
        c.w.shallow_clone().zero_grad();
        let input = LinearKd {
            hidden: &c.h,
            weight: &c.w,
            compute: Kind::Float,
            input_ids: &c.ids,
            teacher,
            loss: kind,
            temperature: 2.0,
        };
        let k = KernelConfig {
            ce_chunk: chunk,
            ..Default::default()
        };
        let mut f = |ce: &Tensor, kd: &Tensor| -> Result<(f64, f64)> {
            let (ce, kd) = (ce.double_value(&[]), kd.double_value(&[]));
            Ok((ce / (ce + kd), kd / (ce + kd)))
        };
        let w = if adaptive {
            KdWeights::FromLosses(&mut f)
        } else {
            KdWeights::Fixed {
                alpha: 0.3,
                beta: 0.7,
            }
        };
        let out = linear_kd_loss(&input, w, how, &k).unwrap();
        // An upstream gradient other than 1.
        (&out.loss * 0.75).backward();
        (
            out.loss.double_value(&[]),
            out.ce.double_value(&[]),
            out.kd.double_value(&[]),
            c.h.grad().copy(),
            c.w.grad().copy(),
        )
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn chunked_equals_the_reference_for_every_divergence_and_teacher() {
        let c = case(2, 7, 5, 13, 4);
        let tz = c.th.linear::<Tensor>(&c.tw, None);
        for kind in KdLoss::ALL {
            let teachers = [
                HeadTeacher::Logits(&tz),
                HeadTeacher::Head {
                    hidden: &c.th,
                    weight: &c.tw,
                    compute: Kind::Float,
                },
                HeadTeacher::TopK(&c.sparse),
            ];
            for (ti, t) in teachers.into_iter().enumerate() {
                for adaptive in [false, true] {
                    let (l0, ce0, kd0, gh0, gw0) =
                        run(&c, t, kind, LinearCe::Reference, 0, adaptive);
                    for chunk in [1, 4, 14, 100] {
                        let (l1, ce1, kd1, gh1, gw1) =
                            run(&c, t, kind, LinearCe::Chunked, chunk, adaptive);
                        let what = format!("{kind} teacher {ti} chunk {chunk} adaptive {adaptive}");
                        assert_relative_eq!(l0, l1, max_relative = 1e-5);
                        assert_relative_eq!(ce0, ce1, max_relative = 1e-5);
                        assert_relative_eq!(kd0, kd1, max_relative = 1e-4, epsilon = 1e-6);
                        let (dh, dw) = (max_diff(&gh0, &gh1), max_diff(&gw0, &gw1));
                        assert!(dh < 1e-5 && dw < 1e-5, "{what}: |dh| {dh}, |dw| {dw}");
                    }
                }
            }
        }
    }

    #[test]
    fn weights_reach_the_gradient() {
        // alpha = 0: the gradient is the KD term's alone (and the reverse).
        let c = case(1, 4, 3, 9, 8);
        let tz = c.th.linear::<Tensor>(&c.tw, None);
        let input = LinearKd {
            hidden: &c.h,
            weight: &c.w,
            compute: Kind::Float,
            input_ids: &c.ids,
            teacher: HeadTeacher::Logits(&tz),
            loss: KdLoss::ForwardKl,
            temperature: 1.0,
        };
        let k = KernelConfig {
            ce_chunk: 2,
            ..Default::default()
        };
        let kd_only = linear_kd_loss(
            &input,
            KdWeights::Fixed {
                alpha: 0.0,
                beta: 1.0,
            },
            LinearCe::Chunked,
            &k,
        )
        .unwrap();
        kd_only.loss.backward();
        let g_kd = c.h.grad().copy();
        c.h.shallow_clone().zero_grad();
        let logits = c.h.linear::<Tensor>(&c.w, None);
        kd_loss(KdLoss::ForwardKl, &logits, Teacher::Logits(&tz), None, 1.0)
            .unwrap()
            .loss
            .backward();
        assert!(max_diff(&g_kd, &c.h.grad()) < 1e-6);
        assert_relative_eq!(
            kd_only.loss.double_value(&[]),
            kd_only.kd.double_value(&[]),
            max_relative = 1e-6
        );
    }

    #[test]
    fn mismatched_teachers_are_shape_errors() {
        let c = case(2, 3, 4, 7, 1);
        let wrong = Tensor::zeros([2, 3, 8], (Kind::Float, Device::Cpu));
        let input = LinearKd {
            hidden: &c.h,
            weight: &c.w,
            compute: Kind::Float,
            input_ids: &c.ids,
            teacher: HeadTeacher::Logits(&wrong),
            loss: KdLoss::ForwardKl,
            temperature: 1.0,
        };
        let e = linear_kd_loss(
            &input,
            KdWeights::Fixed {
                alpha: 1.0,
                beta: 1.0,
            },
            LinearCe::Chunked,
            &KernelConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("teacher logits"), "{e}");
    }
}
