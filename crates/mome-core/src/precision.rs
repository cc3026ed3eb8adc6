//! Numeric precision and the mixed-precision design.
//!
//! libtorch's autocast is not exposed by `tch`, so mome does mixed precision by hand:
//!
//! * **Master weights stay fp32.** Every parameter of a [`tch::nn::VarStore`] is
//!   created and kept in `Kind::Float`; the optimizer ([`crate::optim::AdamW`]) and its
//!   state are fp32, and checkpoints store fp32 weights.
//! * **Matmuls run in the compute kind.** Model code casts weights and activations
//!   at each matmul / linear / attention product with [`Precision::cast`]
//!   (`x.matmul(&p.cast(&w))`). For [`Precision::Fp32`] the cast is a no-op
//!   (a shallow clone); for [`Precision::Bf16`] it is `to_kind(BFloat16)`, which
//!   autograd differentiates, so gradients flow back to the fp32 master weights
//!   **in fp32**.
//! * **Numerically sensitive ops stay fp32:** layer norm, softmax (attention
//!   probabilities are computed with [`Precision::to_fp32`] on the scores), the
//!   log-softmax of the LM head and the loss. Use [`Precision::to_fp32`] before them.
//! * bf16 has fp32's exponent range, so no loss scaling is needed. fp16 is not
//!   offered for that reason. bf16 is only allowed on CUDA ([`Precision::validate`]):
//!   CPU bf16 matmuls are slow and not what a user wants by accident.
//!
//! ```
//! use mome_core::Precision;
//! use tch::{Kind, Tensor};
//! let p: Precision = serde_json::from_str("\"fp32\"").unwrap();
//! let w = Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu));
//! assert_eq!(p.cast(&w).kind(), Kind::Float);
//! assert_eq!(Precision::Bf16.cast(&w).kind(), Kind::BFloat16);
//! assert!(Precision::Bf16.validate(tch::Device::Cpu).is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// Training / inference precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// bf16 matmuls with fp32 master weights, norms, softmax and loss (CUDA only).
    Bf16,
}

impl Precision {
    /// The kind matmul inputs are cast to.
    pub fn compute_kind(&self) -> Kind {
        match self {
            Self::Fp32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    /// Checks the precision can be used on `device` (bf16 needs CUDA).
    pub fn validate(&self, device: Device) -> Result<()> {
        match (self, device) {
            (Self::Bf16, Device::Cuda(_)) | (Self::Fp32, _) => Ok(()),
            (Self::Bf16, d) => Err(Error::Config(format!(
                "precision: bf16 needs a CUDA device, got {d:?}; use precision fp32 on the CPU"
            ))),
        }
    }

    /// Casts a floating tensor to the compute kind (a shallow clone when it already
    /// has it, e.g. always for fp32). Differentiable: gradients reach `t` in its kind.
    pub fn cast(&self, t: &Tensor) -> Tensor {
        let k = self.compute_kind();
        if t.kind() == k {
            t.shallow_clone()
        } else {
            t.to_kind(k)
        }
    }

    /// Casts to fp32 (a shallow clone when already fp32): use before layer norm,
    /// softmax and losses.
    pub fn to_fp32(&self, t: &Tensor) -> Tensor {
        if t.kind() == Kind::Float {
            t.shallow_clone()
        } else {
            t.to_kind(Kind::Float)
        }
    }

    /// `x @ w^T + b` with `x` and `w` cast to the compute kind, as model code needs for
    /// linear layers; the result has the compute kind.
    pub fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let b = b.map(|b| self.cast(b));
        self.cast(x).linear(&self.cast(w), b.as_ref())
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Self::Fp32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(Error::Config(format!(
                "precision: `{s}` is not one of fp32, bf16"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_and_validation() {
        assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp16".parse::<Precision>().is_err());
        assert!(Precision::Fp32.validate(Device::Cpu).is_ok());
        assert!(Precision::Bf16.validate(Device::Cuda(0)).is_ok());
        let e = Precision::Bf16
            .validate(Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16") && e.contains("CUDA"), "{e}");
    }

    #[test]
    fn cast_keeps_master_grads_fp32() {
        let w = Tensor::ones([3, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::ones([4, 2], (Kind::Float, Device::Cpu));
        let y = Precision::Bf16.linear(&x, &w, None);
        assert_eq!(y.kind(), Kind::BFloat16);
        Precision::Bf16.to_fp32(&y).sum(Kind::Float).backward();
        let g = w.grad();
        assert_eq!(g.kind(), Kind::Float);
        assert_eq!(g.sum(Kind::Double).double_value(&[]), 24.0);
    }
}
