//! Residual add + layer norm, the joint of a pre-LN transformer block (GPT-2, the
//! experts of method §4 and the MoE of §6): `sum = x + y`, `out = LN(sum)`, with the
//! residual stream in fp32 and the normalised output in the compute kind.
//!
//! Two paths compute the same values ([`AddLnPath`], config key
//! `[train.kernels] add_layer_norm`, [`crate::fusion::KernelConfig`]):
//!
//! * [`AddLnPath::Reference`]: libtorch operators under autograd (the branch's
//!   dropout, the add, an fp32 layer norm, a cast), several passes over `[rows, d]`;
//! * [`AddLnPath::Fused`]: one autograd function (`csrc/add_layer_norm.cpp`) whose
//!   forward reads `x` and `y` once and writes the sum, the output and the row
//!   statistics, and whose backward writes `dx`, `dy` and the parameter gradients in
//!   one pass, both as mome's CUDA kernels (`kernels/add_layer_norm.cu`). The branch's
//!   dropout happens inside them: its mask is a hash of a seed drawn from the device's
//!   generator and of each element's index, recomputed in the backward (no mask is
//!   stored; a different mask than torch's dropout draws, of the same law). On the CPU
//!   the same function runs the kernels' libtorch references, so its autograd wiring is
//!   tested without a GPU. The kernels take an fp32 or bf16 residual with parameters of
//!   its kind (fp32 for trained models, bf16 for a teacher stored in bf16), a branch of
//!   that kind or bf16 under an fp32 residual, and an fp32 or bf16 output, in rows of at
//!   most [`crate::kernels::ADD_LN_MAX_WIDTH`]; other tensors take the reference path.
//!
//! ```
//! use mome_core::norm::{add_layer_norm, AddLayerNorm, AddLnPath};
//! use tch::{Device, Kind, Tensor};
//!
//! let x = Tensor::randn([2, 3, 8], (Kind::Float, Device::Cpu));
//! let y = Tensor::randn([2, 3, 8], (Kind::Float, Device::Cpu));
//! let (w, b) = (Tensor::ones([8], (Kind::Float, Device::Cpu)), Tensor::zeros([8], (Kind::Float, Device::Cpu)));
//! let a = AddLayerNorm { residual: &x, branch: Some(&y), weight: &w, bias: &b, eps: 1e-5, dropout: 0.0, out_kind: Kind::Float };
//! let fused = add_layer_norm(&a, AddLnPath::Fused).unwrap();
//! let reference = add_layer_norm(&a, AddLnPath::Reference).unwrap();
//! assert!(fused.sum.allclose(&(&x + &y), 1e-6, 1e-6, false));
//! assert!(fused.normed.allclose(&reference.normed, 1e-5, 1e-5, false));
//! ```

use tch::{Kind, Tensor};

use crate::{Error, Result};

/// How [`add_layer_norm`] runs (the resolved `add_layer_norm` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddLnPath {
    /// libtorch operators under autograd.
    Reference,
    /// The fused autograd function (CUDA kernels; their references off CUDA).
    Fused,
}

/// The inputs of [`add_layer_norm`].
#[derive(Debug)]
pub struct AddLayerNorm<'a> {
    /// The residual stream `[.., d]`.
    pub residual: &'a Tensor,
    /// The branch added to it (`[.., d]`, same shape), or none: a plain layer norm.
    pub branch: Option<&'a Tensor>,
    /// The layer norm's weight `[d]`.
    pub weight: &'a Tensor,
    /// The layer norm's bias `[d]`.
    pub bias: &'a Tensor,
    /// Added to the variance.
    pub eps: f64,
    /// Dropout of the branch before the add (its probability; 0: none). The caller
    /// passes 0 outside training.
    pub dropout: f64,
    /// The kind of the normalised output (the next matmul's compute kind).
    pub out_kind: Kind,
}

/// The outputs of [`add_layer_norm`].
#[derive(Debug)]
pub struct AddLnOutput {
    /// `residual + branch` (the residual itself without a branch): the next residual.
    pub sum: Tensor,
    /// `LN(sum)` in `out_kind`, computed in fp32.
    pub normed: Tensor,
}

/// `sum = residual + branch; normed = LN(sum)` (see the module docs).
pub fn add_layer_norm(a: &AddLayerNorm<'_>, path: AddLnPath) -> Result<AddLnOutput> {
    let d = *a
        .residual
        .size()
        .last()
        .ok_or_else(|| Error::Config("add + layer norm of a 0-d tensor".into()))?;
    if a.weight.size() != [d] || a.bias.size() != [d] {
        return Err(Error::Config(format!(
            "layer norm over {d} features with weight {:?} and bias {:?}",
            a.weight.size(),
            a.bias.size()
        )));
    }
    if let Some(y) = a.branch {
        if y.size() != a.residual.size() {
            return Err(Error::Config(format!(
                "residual {:?} and branch {:?} differ in shape",
                a.residual.size(),
                y.size()
            )));
        }
    }
    if !(0.0..=1.0).contains(&a.dropout) {
        return Err(Error::Config(format!(
            "branch dropout {} is outside [0, 1]",
            a.dropout
        )));
    }
    if path == AddLnPath::Fused && fused_takes(a, d) {
        let x = a.residual.f_contiguous()?;
        let y = a.branch.map(Tensor::f_contiguous).transpose()?;
        let (sum, normed) = crate::fused::add_layer_norm(&AddLayerNorm {
            residual: &x,
            branch: y.as_ref(),
            ..*a
        })?;
        return Ok(AddLnOutput {
            sum: sum.unwrap_or(x),
            normed,
        });
    }
    reference(a, d)
}

/// Whether the fused function takes these tensors (else the reference runs).
fn fused_takes(a: &AddLayerNorm<'_>, d: i64) -> bool {
    let float_or_bf16 = |k: Kind| matches!(k, Kind::Float | Kind::BFloat16);
    let dev = a.residual.device();
    let xk = a.residual.kind();
    float_or_bf16(xk)
        && a.weight.kind() == xk
        && a.bias.kind() == xk
        && a.weight.device() == dev
        && a.bias.device() == dev
        // The sum keeps the residual's kind: a branch no wider than the residual.
        && a.branch.is_none_or(|y| {
            (y.kind() == xk || (xk == Kind::Float && y.kind() == Kind::BFloat16))
                && y.device() == dev
        })
        && float_or_bf16(a.out_kind)
        && a.dropout < 1.0
        && d <= crate::kernels::ADD_LN_MAX_WIDTH
        && a.residual.numel() > 0
}

fn reference(a: &AddLayerNorm<'_>, d: i64) -> Result<AddLnOutput> {
    let sum = match a.branch {
        Some(y) if a.dropout > 0.0 => a.residual.f_add(&y.f_dropout(a.dropout, true)?)?,
        Some(y) => a.residual.f_add(y)?,
        None => a.residual.shallow_clone(),
    };
    let normed = sum
        .f_to_kind(Kind::Float)?
        .f_layer_norm(
            [d],
            Some(&a.weight.f_to_kind(Kind::Float)?),
            Some(&a.bias.f_to_kind(Kind::Float)?),
            a.eps,
            true,
        )?
        .f_to_kind(a.out_kind)?;
    Ok(AddLnOutput { sum, normed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn shapes_are_checked_and_other_kinds_take_the_reference() {
        let x = Tensor::zeros([3, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let a = AddLayerNorm {
            residual: &x,
            branch: None,
            weight: &w,
            bias: &w,
            eps: 1e-5,
            dropout: 0.0,
            out_kind: Kind::Float,
        };
        assert!(add_layer_norm(&a, AddLnPath::Fused).is_err());
        // A double residual is not the kernels' kind: the reference computes it.
        let x = Tensor::randn([3, 8], (Kind::Double, Device::Cpu));
        let w = Tensor::ones([8], (Kind::Double, Device::Cpu));
        let a = AddLayerNorm {
            residual: &x,
            branch: Some(&x),
            weight: &w,
            bias: &w,
            eps: 1e-5,
            dropout: 0.0,
            out_kind: Kind::Double,
        };
        let o = add_layer_norm(&a, AddLnPath::Fused).unwrap();
        assert_eq!(o.normed.kind(), Kind::Double);
        assert!(o.sum.allclose(&(&x * 2.0), 0.0, 0.0, false));
    }
}
