//! The causal language-model loss: shifted next-token cross-entropy, fp32.

use mome_core::fusion::{KernelConfig, LinearCe};
use mome_core::linear_ce::{linear_cross_entropy, mean_cross_entropy, LinearCrossEntropy};
use tch::{Kind, Reduction, Tensor};

use super::model::{check_int_kind, Gpt2LmHeadModel};
use crate::error::{Error, Result};

/// The shapes of `logits` `[B, T, V]` and `input_ids` `[B, T]` (integer ids, at
/// least 2 positions), checked against each other.
fn checked_shapes(logits: &Tensor, input_ids: &Tensor) -> Result<(Vec<i64>, Vec<i64>)> {
    let ls = logits.size();
    let is = input_ids.size();
    if ls.len() != 3 || is.len() != 2 || ls[0] != is[0] || ls[1] != is[1] {
        return Err(Error::Input(format!(
            "logits [B, T, V] and input_ids [B, T] disagree: {ls:?} vs {is:?}"
        )));
    }
    checked_ids(input_ids)?;
    Ok((ls, is))
}

/// The shape `[B, T]` of `input_ids`: integer ids, at least 2 positions.
fn checked_ids(input_ids: &Tensor) -> Result<Vec<i64>> {
    let is = input_ids.size();
    if is.len() != 2 {
        return Err(Error::Input(format!(
            "input_ids must be [B, T], got {is:?}"
        )));
    }
    check_int_kind(input_ids, "input_ids")?;
    if is[1] < 2 {
        return Err(Error::Input(format!(
            "need at least 2 positions for a next-token loss, got {}",
            is[1]
        )));
    }
    Ok(is)
}

fn shifted_targets(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (ls, is) = checked_shapes(logits, input_ids)?;
    let (t, v) = (ls[1], ls[2]);
    let device = logits.device();
    let logits = logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .reshape([-1, v]);
    let mut targets = input_ids
        .to_device(device)
        .to_kind(Kind::Int64)
        .narrow(1, 1, t - 1);
    if let Some(m) = attention_mask {
        if m.size() != is {
            return Err(Error::Input(format!(
                "attention_mask must have the shape of input_ids {is:?}, got {:?}",
                m.size()
            )));
        }
        let m = m.to_device(device).ne(0);
        let keep = m.narrow(1, 0, t - 1).logical_and(&m.narrow(1, 1, t - 1));
        targets = targets.where_self(&keep, &Tensor::from(-100i64).to_device(device));
    }
    Ok((logits, targets.reshape([-1])))
}

/// Shifted next-token cross-entropy, fp32, summed over counted targets.
///
/// Target `ids[:, t+1]` is predicted from position `t`; with a mask it counts only when
/// both positions are real (mask 1). For right padding this is exactly Hugging Face's
/// `labels = ids` with pads set to -100; for left padding it also skips the first real
/// token, whose context is only padding. Returns `(sum, count)`.
pub fn causal_lm_loss_sum(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<(Tensor, i64)> {
    let (logits, targets) = shifted_targets(logits, input_ids, attention_mask)?;
    let count = targets.ne(-100).sum(Kind::Int64).f_int64_value(&[])?;
    let sum = logits.f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, -100, 0.0)?;
    Ok((sum, count))
}

/// Targets aligned with *every* position: `[B * T]` with `ids[:, t+1]` at position
/// `t` and -100 (ignored) at the last position and where the mask drops a pair, and
/// the logits as a `[B * T, V]` view (no copy of the full-vocabulary tensor).
fn aligned_targets(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (ls, _) = checked_shapes(logits, input_ids)?;
    let targets = aligned_ids(input_ids, attention_mask, logits.device())?;
    Ok((logits.reshape([-1, ls[2]]), targets))
}

/// The targets of [`aligned_targets`], on `device`.
fn aligned_ids(
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    device: tch::Device,
) -> Result<Tensor> {
    let is = checked_ids(input_ids)?;
    let (b, t) = (is[0], is[1]);
    let ids = input_ids.to_device(device).to_kind(Kind::Int64);
    let ignore = Tensor::full([b, 1], -100i64, (Kind::Int64, device));
    let mut targets = Tensor::cat(&[ids.narrow(1, 1, t - 1), ignore], 1);
    if let Some(m) = attention_mask {
        if m.size() != is {
            return Err(Error::Input(format!(
                "attention_mask must have the shape of input_ids {is:?}, got {:?}",
                m.size()
            )));
        }
        let m = m.to_device(device).ne(0);
        let pair = m.narrow(1, 0, t - 1).logical_and(&m.narrow(1, 1, t - 1));
        let keep = Tensor::cat(&[pair, Tensor::zeros([b, 1], (Kind::Bool, device))], 1);
        targets = targets.where_self(&keep, &Tensor::from(-100i64).to_device(device));
    }
    Ok(targets.reshape([-1]))
}

/// Mean shifted next-token cross-entropy over counted targets (see
/// [`causal_lm_loss_sum`]), fp32, differentiable. No host synchronisation: with no
/// counted target at all the result is 0.
///
/// `logits` may be fp32 or the compute kind (bf16): the upcast happens inside one
/// `log_softmax(.., Float)` over all positions (the last one is ignored through its
/// target), so no shifted copy and no separate fp32 copy of the logits is made.
pub fn causal_lm_loss(
    logits: &Tensor,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (logits, targets) = aligned_targets(logits, input_ids, attention_mask)?;
    Ok(mean_cross_entropy(&logits, &targets)?)
}

/// Next-token targets aligned with every position of `input_ids` `[B, T]`: `[B * T]`
/// int64 with `ids[:, t+1]` at position `t` and -100 (ignored) at the last position
/// and where `attention_mask` drops a pair (see [`causal_lm_loss_sum`]).
pub fn next_token_targets(input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
    aligned_ids(input_ids, attention_mask, input_ids.device())
}

/// [`causal_lm_loss`] of `model`'s LM head applied to `hidden` `[B, T, n_embd]` (the
/// last hidden state), computed by the path `how` ([`mome_core::linear_ce`]): with
/// [`LinearCe::Reference`] exactly `causal_lm_loss(model.lm_head_logits(hidden))`; the
/// chunked and fused paths never hold the full logits and compute the gradients of
/// `hidden` and of the head in the forward pass.
pub fn causal_lm_head_loss(
    model: &Gpt2LmHeadModel,
    hidden: &Tensor,
    input_ids: &Tensor,
    how: LinearCe,
    kernels: &KernelConfig,
) -> Result<Tensor> {
    if how == LinearCe::Reference {
        return causal_lm_loss(&model.lm_head_logits(hidden)?, input_ids, None);
    }
    let hs = hidden.size();
    if hs.len() != 3 || hs[..2] != input_ids.size()[..] {
        return Err(Error::Input(format!(
            "hidden [B, T, D] and input_ids [B, T] disagree: {hs:?} vs {:?}",
            input_ids.size()
        )));
    }
    let targets = next_token_targets(input_ids, None)?;
    let h = hidden.reshape([-1, hs[2]]);
    Ok(linear_cross_entropy(
        &LinearCrossEntropy {
            hidden: &h,
            weight: model.lm_head_weight(),
            targets: &targets,
            compute: model.compute_kind(),
        },
        how,
        kernels,
    )?)
}

#[cfg(test)]
mod loss_tests {
    use super::*;
    use tch::Device;

    /// The original formulation: shifted copy + cross_entropy.
    fn reference(logits: &Tensor, ids: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (l, t) = shifted_targets(logits, ids, mask).unwrap();
        let count = t.ne(-100).sum(Kind::Float).clamp_min(1.0);
        l.cross_entropy_loss::<Tensor>(&t, None, Reduction::Sum, -100, 0.0) / count
    }

    #[test]
    fn aligned_loss_equals_shifted_cross_entropy_value_and_grad() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let ids = Tensor::randint(50, [3, 7], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([3, 7], (Kind::Int64, Device::Cpu));
        let _ = mask.narrow(1, 5, 2).narrow(0, 1, 1).fill_(0);
        for m in [None, Some(&mask)] {
            let z = (Tensor::randn([3, 7, 50], opts) * 3.0).set_requires_grad(true);
            let a = causal_lm_loss(&z, &ids, m).unwrap();
            let ga = Tensor::run_backward(&[&a], &[&z], false, false).remove(0);
            let b = reference(&z, &ids, m);
            let gb = Tensor::run_backward(&[&b], &[&z], false, false).remove(0);
            let (va, vb) = (a.double_value(&[]), b.double_value(&[]));
            assert!((va - vb).abs() < 1e-5 * vb.abs().max(1.0), "{va} vs {vb}");
            let gd = (&ga - &gb).abs().max().double_value(&[]);
            assert!(gd < 1e-6, "grad diff {gd}");
        }
    }

    #[test]
    fn bf16_logits_upcast_inside_the_loss() {
        tch::manual_seed(4);
        let ids = Tensor::randint(40, [2, 5], (Kind::Int64, Device::Cpu));
        let z = Tensor::randn([2, 5, 40], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let a = causal_lm_loss(&z, &ids, None).unwrap();
        assert_eq!(a.kind(), Kind::Float);
        let b = reference(&z.to_kind(Kind::Float), &ids, None);
        assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-5);
    }
}
