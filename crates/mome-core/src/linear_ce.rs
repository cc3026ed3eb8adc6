//! Fused linear cross-entropy: the LM head `hidden @ weightᵀ` and the mean
//! cross-entropy of its logits, without the full `[positions, vocab]` logits (method
//! §3's next-token objective, the loss of every student, teacher and expert).
//!
//! Positions are processed in chunks. For each chunk the logits `z = h·Wᵀ` are made in
//! the compute kind, turned *in place* into `dL/dz = (softmax(z) − onehot(target)) / n`
//! (with the row losses `logsumexp(z) − z[target]` on the side), and immediately used
//! for `dL/dh = dz·W` and `dL/dW += dzᵀ·h` (accumulated in fp32). The gradients are
//! thus computed in the forward pass, as in Liger-Kernel's FusedLinearCrossEntropy and
//! llm.c's fused classifier, and handed to autograd through a surrogate
//! `⟨h, dL/dh⟩ + ⟨W, dL/dW⟩` whose value is subtracted again: the returned loss has
//! the exact value and exactly these gradients (times the upstream gradient, so loss
//! weights and accumulation scaling work as usual).
//!
//! Per chunk, the softmax/loss/gradient step is either mome's CUDA kernel
//! ([`crate::kernels`], one read-read-write pass over the chunk's logits) or
//! [`softmax_xent_grad_reference`] (libtorch operators, the same arithmetic); the whole
//! unfused computation is [`LinearCe::Reference`]. Which one runs is
//! `[train.kernels] linear_ce` ([`crate::fusion`]).
//!
//! ```
//! use mome_core::fusion::{KernelConfig, LinearCe};
//! use mome_core::linear_ce::{linear_cross_entropy, LinearCrossEntropy};
//! use tch::{Device, Kind, Tensor};
//!
//! let h = Tensor::randn([6, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
//! let w = Tensor::randn([10, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
//! let targets = Tensor::from_slice(&[1i64, 2, -100, 9, 0, 3]);
//! let input = LinearCrossEntropy { hidden: &h, weight: &w, targets: &targets, compute: Kind::Float };
//! let chunked = linear_cross_entropy(&input, LinearCe::Chunked, &KernelConfig { ce_chunk: 4, ..Default::default() }).unwrap();
//! let reference = linear_cross_entropy(&input, LinearCe::Reference, &KernelConfig::default()).unwrap();
//! assert!((chunked.double_value(&[]) - reference.double_value(&[])).abs() < 1e-5);
//! chunked.backward(); // gradients of h and w, as the reference's would be
//! ```

use tch::{Kind, Reduction, Tensor};

use crate::fusion::{KernelConfig, LinearCe};
use crate::{Error, Result};

/// The target that counts for nothing.
pub const IGNORE_INDEX: i64 = -100;

/// The inputs of [`linear_cross_entropy`].
#[derive(Debug)]
pub struct LinearCrossEntropy<'a> {
    /// Hidden states `[N, D]` (any float kind; differentiable).
    pub hidden: &'a Tensor,
    /// The head `[V, D]` (fp32 master weights or the compute kind; differentiable).
    pub weight: &'a Tensor,
    /// Targets `[N]`, int64 in `[0, V)` or [`IGNORE_INDEX`].
    pub targets: &'a Tensor,
    /// The kind of the matmuls and logits (bf16 under bf16 compute).
    pub compute: Kind,
}

impl LinearCrossEntropy<'_> {
    fn head(&self) -> LinearHead<'_> {
        LinearHead {
            hidden: self.hidden,
            weight: self.weight,
            compute: self.compute,
        }
    }

    fn shapes(&self) -> Result<(i64, i64, i64)> {
        let (n, d, v) = self.head().shapes()?;
        if self.targets.size() != [n] {
            return Err(Error::Config(format!(
                "linear cross-entropy takes targets [N] for hidden [N, D]; got {:?}, {:?}",
                self.targets.size(),
                self.hidden.size()
            )));
        }
        if self.targets.kind() != Kind::Int64 {
            return Err(Error::Config(format!(
                "linear cross-entropy targets must be int64, got {:?}",
                self.targets.kind()
            )));
        }
        Ok((n, d, v))
    }
}

fn in_kind(t: &Tensor, k: Kind) -> Result<Tensor> {
    Ok(if t.kind() == k {
        t.shallow_clone()
    } else {
        t.f_to_kind(k)?
    })
}

/// The number of counted targets (not [`IGNORE_INDEX`]) of `targets`, as a scalar
/// fp32 tensor, at least 1: the divisor of every mean cross-entropy.
pub fn counted_targets(targets: &Tensor) -> Result<Tensor> {
    Ok(targets
        .f_ne(IGNORE_INDEX)?
        .f_sum(Kind::Float)?
        .f_clamp_min(1.0)?)
}

/// The mean cross-entropy of `logits` `[N, V]` (any float kind: the log-softmax is
/// taken in fp32) against `targets` `[N]` over the counted targets (0 when none
/// counts), under autograd: the unfused computation.
pub fn mean_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let sum = logits
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss::<Tensor>(targets, None, Reduction::Sum, IGNORE_INDEX)?;
    Ok(sum.f_div(&counted_targets(targets)?)?)
}

/// The mean cross-entropy of `hidden @ weightᵀ` against `targets` over the counted
/// targets (0 when none counts), fp32, differentiable with respect to `hidden` and
/// `weight`, by the path `how` (chunk size from `kernels`). No host synchronisation.
pub fn linear_cross_entropy(
    input: &LinearCrossEntropy<'_>,
    how: LinearCe,
    kernels: &KernelConfig,
) -> Result<Tensor> {
    let (n, _, v) = input.shapes()?;
    let k = input.compute;
    if how == LinearCe::Reference {
        return mean_cross_entropy(&input.head().logits()?, input.targets);
    }
    let count = counted_targets(input.targets)?;
    let scale = count.reciprocal().reshape([1]);
    let targets = input.targets.contiguous();
    let row_loss = Tensor::f_empty([n], (Kind::Float, input.hidden.device()))?;
    let head = input.head();
    let chunk = kernels.ce_chunk_rows(n, v, k.elt_size_in_bytes() as i64);
    let grads = linear_head_grads(&head, chunk, |start, z| {
        let c = z.size()[0];
        let tc = targets.narrow(0, start, c);
        let lc = row_loss.narrow(0, start, c);
        softmax_xent_grad(how, z, &tc, &scale, &lc)
    })?;
    let value = (row_loss.f_sum(Kind::Float)? * scale.reshape([])).detach();
    Ok(value + grads)
}

/// The per-chunk softmax cross-entropy step of `how` in place on the logits `z`
/// `[C, V]` (see [`softmax_xent_grad_reference`]): mome's CUDA kernel under
/// [`LinearCe::Fused`], libtorch operators otherwise.
pub fn softmax_xent_grad(
    how: LinearCe,
    z: &Tensor,
    targets: &Tensor,
    scale: &Tensor,
    loss: &Tensor,
) -> Result<()> {
    match how {
        LinearCe::Fused => crate::kernels::softmax_xent_grad(z, targets, scale, loss),
        _ => softmax_xent_grad_reference(z, targets, scale, loss),
    }
}

/// A linear head `hidden @ weightᵀ` whose loss is computed chunk by chunk
/// ([`linear_head_grads`]).
#[derive(Debug)]
pub struct LinearHead<'a> {
    /// Hidden states `[N, D]` (any float kind; differentiable).
    pub hidden: &'a Tensor,
    /// The head `[V, D]` (fp32 master weights or the compute kind; differentiable).
    pub weight: &'a Tensor,
    /// The kind of the matmuls and logits.
    pub compute: Kind,
}

impl LinearHead<'_> {
    /// The full logits `hidden @ weightᵀ`, both cast to the compute kind (the
    /// unfused head; `hidden` may have leading batch dimensions).
    pub fn logits(&self) -> Result<Tensor> {
        let k = self.compute;
        Ok(in_kind(self.hidden, k)?.f_linear::<Tensor>(&in_kind(self.weight, k)?, None)?)
    }

    /// `(N, D, V)`, or an error naming the shapes.
    pub fn shapes(&self) -> Result<(i64, i64, i64)> {
        let (hs, ws) = (self.hidden.size(), self.weight.size());
        match (&hs[..], &ws[..]) {
            ([n, d], [v, d2]) if d == d2 && *v > 0 => Ok((*n, *d, *v)),
            _ => Err(Error::Config(format!(
                "a linear head takes hidden [N, D] and weight [V, D]; got {hs:?}, {ws:?}"
            ))),
        }
    }
}

/// The engine of every fused linear loss (cross-entropy here, KD in mome-distill):
/// for each chunk of `chunk` rows, the logits `z = h·Wᵀ` `[C, V]` are made in the
/// compute kind and handed to `step(start_row, &z)`, which must overwrite them *in
/// place* with `dL/dz` for the caller's loss `L` (and record the loss value itself);
/// `dL/dh = dz·W` and `dL/dW += dzᵀ·h` (fp32 accumulation) follow at once, so no more
/// than one chunk of logits ever exists. Returns the surrogate
/// `⟨h, dL/dh⟩ + ⟨W, dL/dW⟩ − (the same, detached)`: its value is 0, its gradients
/// are exactly those (times the upstream gradient). Add it to the loss value. When
/// neither `hidden` nor `weight` requires grad, `step` still runs (it computes the
/// values) and the result is a zero.
pub fn linear_head_grads<E: From<Error>>(
    head: &LinearHead<'_>,
    chunk: i64,
    mut step: impl FnMut(i64, &Tensor) -> std::result::Result<(), E>,
) -> std::result::Result<Tensor, E> {
    let (n, d, v) = head.shapes()?;
    let k = head.compute;
    let device = head.hidden.device();
    let need_h = head.hidden.requires_grad();
    let need_w = head.weight.requires_grad();
    let h = in_kind(&head.hidden.detach(), k)?.contiguous();
    let w = in_kind(&head.weight.detach(), k)?.contiguous();
    let gh = need_h
        .then(|| Tensor::f_empty([n, d], (k, device)))
        .transpose()
        .map_err(tch_err)?;
    let gw = need_w
        .then(|| Tensor::f_zeros([v, d], (Kind::Float, device)))
        .transpose()
        .map_err(tch_err)?;
    // cuBLAS adds a bf16/fp16 product straight into the fp32 accumulator.
    let fp32_accumulate = device.is_cuda() && matches!(k, Kind::BFloat16 | Kind::Half);
    let chunk = chunk.clamp(1, n.max(1));
    let guard = tch::no_grad_guard();
    let mut start = 0;
    while start < n {
        let c = chunk.min(n - start);
        let hc = h.narrow(0, start, c);
        let z = hc.f_mm(&w.tr()).map_err(tch_err)?;
        step(start, &z)?;
        if let Some(gh) = &gh {
            let _ = z.f_mm_out(&gh.narrow(0, start, c), &w).map_err(tch_err)?;
        }
        if let Some(gw) = &gw {
            let mut gw = gw.shallow_clone();
            let r = if k == Kind::Float {
                gw.f_addmm_(&z.tr(), &hc)
            } else if fp32_accumulate {
                gw.f_addmm_dtype_out(&gw, &z.tr(), &hc, Kind::Float)
            } else {
                z.tr()
                    .f_mm(&hc)
                    .and_then(|p| p.f_to_kind(Kind::Float))
                    .and_then(|p| gw.f_add_(&p))
            };
            let _ = r.map_err(tch_err)?;
        }
        start += c;
    }
    drop(guard);
    let mut surrogate: Option<Tensor> = None;
    let mut add = |t: Tensor| {
        surrogate = Some(match surrogate.take() {
            Some(s) => s + t,
            None => t,
        })
    };
    if let Some(gh) = gh {
        add((head.hidden * in_kind(&gh, head.hidden.kind())?)
            .f_sum(Kind::Float)
            .map_err(tch_err)?);
    }
    if let Some(gw) = gw {
        add((head.weight * in_kind(&gw, head.weight.kind())?)
            .f_sum(Kind::Float)
            .map_err(tch_err)?);
    }
    Ok(match surrogate {
        // s - s: zero, with the gradients of s.
        Some(s) => &s - s.detach(),
        None => Tensor::f_zeros([], (Kind::Float, device)).map_err(tch_err)?,
    })
}

fn tch_err<E: From<Error>>(e: tch::TchError) -> E {
    E::from(Error::from(e))
}

/// The reference of the fused kernel, in place on one chunk `z` `[C, V]`: writes
/// `loss[r] = logsumexp(z[r]) − z[r, t_r]` (fp32; 0 where `t_r` is [`IGNORE_INDEX`],
/// NaN where it is outside `[0, V)`), and replaces `z[r]` by
/// `(softmax(z[r]) − onehot(t_r)) · scale` (0 for ignored rows), all in fp32 before
/// the final cast to `z`'s kind.
pub fn softmax_xent_grad_reference(
    z: &Tensor,
    targets: &Tensor,
    scale: &Tensor,
    loss: &Tensor,
) -> Result<()> {
    let v = z.size()[1];
    let device = z.device();
    let counted = targets.ne(IGNORE_INDEX);
    let in_range = targets.ge(0).logical_and(&targets.lt(v));
    let valid = counted.logical_and(&in_range);
    let t = targets.clamp(0, v - 1).unsqueeze(1);
    let lsm = z.f_log_softmax(-1, Kind::Float)?;
    let picked = lsm.f_gather(1, &t, false)?.squeeze_dim(1);
    let nan = Tensor::full([], f64::NAN, (Kind::Float, device));
    let zero = Tensor::zeros([], (Kind::Float, device));
    let row = picked
        .neg()
        .where_self(&in_range, &nan)
        .where_self(&counted, &zero);
    loss.shallow_clone().f_copy_(&row)?;
    let valid_f = valid.to_kind(Kind::Float);
    let mut g = lsm.f_exp()?;
    let _ = g.f_scatter_add_(1, &t, &valid_f.neg().unsqueeze(1))?;
    let _ = g.f_mul_(&(valid_f * scale).unsqueeze(1))?;
    let mut z = z.shallow_clone();
    z.f_copy_(&g)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use tch::Device;

    fn case(n: i64, d: i64, v: i64, seed: i64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(seed);
        let h = Tensor::randn([n, d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = (Tensor::randn([v, d], (Kind::Float, Device::Cpu)) * 0.5).set_requires_grad(true);
        let t = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
        // Some ignored positions.
        let _ = t.narrow(0, 1, 1).shallow_clone().fill_(IGNORE_INDEX);
        let _ = t.narrow(0, n - 1, 1).shallow_clone().fill_(IGNORE_INDEX);
        (h, w, t)
    }

    fn run(
        h: &Tensor,
        w: &Tensor,
        t: &Tensor,
        how: LinearCe,
        chunk: usize,
    ) -> (f64, Tensor, Tensor) {
        h.shallow_clone().zero_grad();
        w.shallow_clone().zero_grad();
        let input = LinearCrossEntropy {
            hidden: h,
            weight: w,
            targets: t,
            compute: Kind::Float,
        };
        let k = KernelConfig {
            ce_chunk: chunk,
            ..Default::default()
        };
        let loss = linear_cross_entropy(&input, how, &k).unwrap();
        // An upstream gradient other than 1 (a loss weight).
        (loss * 0.75).backward();
        let l = linear_cross_entropy(&input, how, &k)
            .unwrap()
            .double_value(&[]);
        (l, h.grad().copy(), w.grad().copy())
    }

    #[test]
    fn chunked_matches_the_reference_in_value_and_gradients() {
        let (h, w, t) = case(37, 8, 50, 3);
        let (l0, gh0, gw0) = run(&h, &w, &t, LinearCe::Reference, 0);
        for chunk in [1, 5, 16, 37, 100] {
            let (l1, gh1, gw1) = run(&h, &w, &t, LinearCe::Chunked, chunk);
            assert_relative_eq!(l0, l1, max_relative = 1e-6);
            let dh = (&gh0 - &gh1).abs().max().double_value(&[]);
            let dw = (&gw0 - &gw1).abs().max().double_value(&[]);
            assert!(
                dh < 1e-6 && dw < 1e-6,
                "chunk {chunk}: |dh| {dh}, |dw| {dw}"
            );
        }
        // The ignored rows get no gradient.
        assert_eq!(gh0.get(1).abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn all_ignored_is_zero_with_zero_gradients() {
        let (h, w, _) = case(4, 3, 5, 1);
        let t = Tensor::full([4], IGNORE_INDEX, (Kind::Int64, Device::Cpu));
        let (l, gh, gw) = run(&h, &w, &t, LinearCe::Chunked, 2);
        assert_eq!(l, 0.0);
        assert_eq!(gh.abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(gw.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn a_target_outside_the_vocabulary_gives_a_nan_loss_not_a_silent_zero() {
        let (h, w, _) = case(3, 2, 4, 2);
        let t = Tensor::from_slice(&[0i64, 7, 1]);
        let input = LinearCrossEntropy {
            hidden: &h,
            weight: &w,
            targets: &t,
            compute: Kind::Float,
        };
        let l = linear_cross_entropy(&input, LinearCe::Chunked, &KernelConfig::default()).unwrap();
        assert!(l.double_value(&[]).is_nan());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let h = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        let w = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
        let t = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
        let input = LinearCrossEntropy {
            hidden: &h,
            weight: &w,
            targets: &t,
            compute: Kind::Float,
        };
        let e = linear_cross_entropy(&input, LinearCe::Chunked, &KernelConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden [N, D]"), "{e}");
    }
}
