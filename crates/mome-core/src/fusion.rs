//! Which fused kernels a run uses: `[train.kernels]` of every training config, one
//! key per fusion. Each fusion has a plain-libtorch reference path (the default on the
//! CPU, selectable on CUDA) computing the same values.
//!
//! ```
//! use mome_core::fusion::{KernelConfig, LinearCe};
//! use tch::{Device, Kind};
//!
//! let k: KernelConfig = toml::from_str("linear_ce = \"chunked\"\nce_chunk = 512").unwrap();
//! k.validate().unwrap();
//! assert_eq!(k.linear_ce.resolve(Device::Cpu, Kind::Float).unwrap(), LinearCe::Chunked);
//! // `auto` is the reference path on the CPU (and `fused` on CUDA).
//! let auto = KernelConfig::default();
//! assert_eq!(auto.linear_ce.resolve(Device::Cpu, Kind::Float).unwrap(), LinearCe::Reference);
//! ```

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::{Error, Result};

/// How an LM head and its loss run: `linear_ce` (the head and its cross-entropy,
/// [`crate::linear_ce`]) and `linear_kd` (a student's head with its cross-entropy
/// and KD loss, mome-distill's `linear_kd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinearCeMode {
    /// `fused` on CUDA with bf16 or fp32 compute when NVRTC can be loaded (measured
    /// on an H100: docs/performance.md, 2026-12-07), `reference` everywhere else.
    #[default]
    Auto,
    /// The full `[positions, vocab]` logits, then log-softmax and NLL under autograd.
    Reference,
    /// Chunks of positions with the gradient computed in the forward pass (libtorch
    /// operators per chunk); never holds more than one chunk's logits.
    Chunked,
    /// `chunked` with mome's CUDA kernel for each chunk's softmax, loss and gradient
    /// (CUDA only, bf16 or fp32 compute).
    Fused,
}

impl std::str::FromStr for LinearCeMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "reference" => Ok(Self::Reference),
            "chunked" => Ok(Self::Chunked),
            "fused" => Ok(Self::Fused),
            _ => Err(Error::Config(format!(
                "linear_ce `{s}`: expected auto, reference, chunked or fused"
            ))),
        }
    }
}

/// The path [`LinearCeMode::resolve`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinearCe {
    /// See [`LinearCeMode::Reference`].
    Reference,
    /// See [`LinearCeMode::Chunked`].
    Chunked,
    /// See [`LinearCeMode::Fused`].
    Fused,
}

impl LinearCeMode {
    /// The path of `linear_ce` on `device` with matmuls in `compute`. `fused` off
    /// CUDA, with a compute kind other than bf16 / fp32, or when NVRTC cannot be
    /// loaded, is an error that says why.
    pub fn resolve(self, device: Device, compute: Kind) -> Result<LinearCe> {
        self.resolve_key("linear_ce", device, compute)
    }

    /// [`Self::resolve`] for the config key `key` (named in the errors).
    pub fn resolve_key(self, key: &str, device: Device, compute: Kind) -> Result<LinearCe> {
        let kernel_kind = matches!(compute, Kind::BFloat16 | Kind::Float);
        match self {
            Self::Reference => Ok(LinearCe::Reference),
            Self::Chunked => Ok(LinearCe::Chunked),
            // Measured on an H100 (docs/performance.md): fused is faster and smaller
            // on every config; the reference path elsewhere (CPU, fp16, no NVRTC).
            Self::Auto => Ok(
                if device.is_cuda() && kernel_kind && crate::kernels::nvrtc_available().is_ok() {
                    LinearCe::Fused
                } else {
                    LinearCe::Reference
                },
            ),
            Self::Fused => {
                if !device.is_cuda() {
                    return Err(Error::Config(format!(
                        "kernels.{key} = \"fused\" needs a CUDA device (the run is on {device:?}); use \"chunked\" or \"reference\""
                    )));
                }
                if !kernel_kind {
                    return Err(Error::Config(format!(
                        "kernels.{key} = \"fused\" takes bf16 or fp32 compute, not {compute:?}"
                    )));
                }
                crate::kernels::nvrtc_available().map_err(|why| {
                    Error::Config(format!(
                        "kernels.{key} = \"fused\": {why} (\"chunked\" needs no NVRTC)"
                    ))
                })?;
                Ok(LinearCe::Fused)
            }
        }
    }
}

/// How a fusion without a chunked variant runs: `add_layer_norm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FusionMode {
    /// `reference` for now: the add + layer norm kernels have not yet run on a GPU
    /// (their CUDA tests and bench are pending, docs/performance.md), so `fused` is
    /// opt-in until they are measured.
    #[default]
    Auto,
    /// libtorch operators under autograd.
    Reference,
    /// mome's fused autograd function: its CUDA kernels on CUDA, their libtorch
    /// references elsewhere (slower than `reference`; for tests).
    Fused,
}

impl std::str::FromStr for FusionMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "reference" => Ok(Self::Reference),
            "fused" => Ok(Self::Fused),
            _ => Err(Error::Config(format!(
                "`{s}`: expected auto, reference or fused"
            ))),
        }
    }
}

impl FusionMode {
    /// The path of `add_layer_norm` (`fused` runs the kernels on CUDA and their
    /// libtorch references elsewhere; see [`crate::norm`]).
    pub fn resolve_add_ln(self) -> crate::norm::AddLnPath {
        use crate::norm::AddLnPath;
        match self {
            Self::Reference | Self::Auto => AddLnPath::Reference,
            Self::Fused => AddLnPath::Fused,
        }
    }
}

/// Positions per chunk when `ce_chunk = 0`: as many as keep one chunk's logits near
/// 256 MiB (at least 64).
pub const CE_CHUNK_BYTES: i64 = 256 << 20;

/// `[train.kernels]`: the fused kernels of a run. Defaults in one place
/// ([`Default`]); every field may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// LM head + cross-entropy: `auto` (default), `reference`, `chunked` or `fused`.
    pub linear_ce: LinearCeMode,
    /// A distilled student's LM head + cross-entropy + KD loss (`mome distill`):
    /// `auto` (default), `reference` (full student logits, then the losses),
    /// `chunked` (chunks of positions, gradients in the forward pass; an online
    /// teacher's head is chunked too) or `fused` (`chunked` with mome's CUDA kernel
    /// for the cross-entropy part).
    pub linear_kd: LinearCeMode,
    /// Residual add (with the branch's dropout) + layer norm of every transformer
    /// block (students, teachers, experts; [`crate::norm`]): `auto` (default, the
    /// reference for now), `reference` or `fused`.
    pub add_layer_norm: FusionMode,
    /// Positions per chunk of the chunked and fused `linear_ce` and `linear_kd` (0, the default:
    /// chunks of about [`CE_CHUNK_BYTES`] of logits).
    pub ce_chunk: usize,
}

impl KernelConfig {
    /// Checks what needs no device (`ce_chunk` fits the tensor sizes).
    pub fn validate(&self) -> Result<()> {
        if i64::try_from(self.ce_chunk).is_err() {
            return Err(Error::Config(format!(
                "kernels.ce_chunk = {} is too large",
                self.ce_chunk
            )));
        }
        Ok(())
    }

    /// The chunk of positions for `positions` rows of `vocab` logits of
    /// `elem_bytes` bytes each.
    pub fn ce_chunk_rows(&self, positions: i64, vocab: i64, elem_bytes: i64) -> i64 {
        let rows = if self.ce_chunk > 0 {
            self.ce_chunk as i64
        } else {
            (CE_CHUNK_BYTES / (vocab.max(1) * elem_bytes.max(1))).max(64)
        };
        rows.clamp(1, positions.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_is_refused_off_cuda_and_auto_falls_back_to_the_reference() {
        let e = LinearCeMode::Fused
            .resolve(Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a CUDA device"), "{e}");
        assert_eq!(
            LinearCeMode::Auto
                .resolve(Device::Cpu, Kind::BFloat16)
                .unwrap(),
            LinearCe::Reference
        );
        // fp16 has no kernel: the reference path, even on CUDA.
        assert_eq!(
            LinearCeMode::Auto
                .resolve(Device::Cuda(0), Kind::Half)
                .unwrap(),
            LinearCe::Reference
        );
    }

    #[test]
    fn add_layer_norm_key_parses_and_auto_is_the_reference_for_now() {
        use crate::norm::AddLnPath;
        let k: KernelConfig = toml::from_str("add_layer_norm = \"fused\"").unwrap();
        assert_eq!(k.add_layer_norm.resolve_add_ln(), AddLnPath::Fused);
        assert_eq!(
            KernelConfig::default().add_layer_norm.resolve_add_ln(),
            AddLnPath::Reference
        );
        assert!("fast".parse::<FusionMode>().is_err());
        assert!(toml::from_str::<KernelConfig>("add_layer_norm = \"chunked\"").is_err());
    }

    #[test]
    fn chunk_rows_follow_the_byte_budget_or_the_key() {
        let k = KernelConfig::default();
        assert_eq!(k.ce_chunk_rows(1 << 20, 32_000, 2), (256 << 20) / 64_000);
        assert_eq!(k.ce_chunk_rows(100, 32_000, 2), 100);
        assert_eq!(k.ce_chunk_rows(1 << 20, 1 << 30, 4), 64);
        let k = KernelConfig {
            ce_chunk: 7,
            ..Default::default()
        };
        assert_eq!(k.ce_chunk_rows(100, 32_000, 2), 7);
        let bad: std::result::Result<KernelConfig, _> = toml::from_str("linear_ce = \"fast\"");
        assert!(bad.is_err());
    }
}
