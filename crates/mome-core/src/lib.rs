//! `mome-core`: the libtorch-backed core of mome.
//!
//! The crate where libtorch (`tch`) enters the workspace: mome-data, mome-router and
//! mome-plot stay free of it, and every crate above this one (mome-experts,
//! mome-distill, mome-moe, the CLI) links it (see `docs/architecture.md`). It provides
//! devices ([`DeviceSpec`]), the mixed-precision design ([`Precision`]), safetensors
//! I/O ([`tensor_io`]), AdamW ([`optim`]), learning-rate schedules and gradient
//! clipping ([`schedule`]), checkpoints ([`checkpoint`]), JSONL metrics ([`metrics`]),
//! progress reporting ([`progress`]), the training loop ([`trainer`]) and its
//! data-parallel process group ([`dist`]; NCCL with the `nccl` feature).
//!
//! ```
//! use mome_core::tensor_io::{named_tensors, read_safetensors, write_safetensors, load_into};
//! use tch::{nn, Device};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let _lin = nn::linear(vs.root() / "fc", 3, 2, Default::default());
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("model.safetensors");
//! write_safetensors(&path, &named_tensors(&vs)).unwrap();
//!
//! let vs2 = nn::VarStore::new(Device::Cpu);
//! let _lin2 = nn::linear(vs2.root() / "fc", 3, 2, Default::default());
//! let report = load_into(&vs2, &read_safetensors(&path, Device::Cpu).unwrap(), true).unwrap();
//! assert_eq!(report.loaded, ["fc.bias", "fc.weight"]);
//! assert!(vs.variables()["fc.weight"].equal(&vs2.variables()["fc.weight"]));
//! ```

pub mod device;
pub mod error;
pub mod precision;
pub mod tensor_io;

pub use device::DeviceSpec;
pub use error::{Error, Result};
pub use precision::Precision;
pub mod checkpoint;
pub mod data;
pub mod dist;
mod fused;
pub mod fusion;
pub mod job;
pub mod kernels;
pub mod linear_ce;
pub mod metrics;
pub mod norm;
pub mod optim;
pub mod profile;
pub mod progress;
pub mod rng;
pub mod schedule;
pub mod trainer;

pub use mome_data::params::ParamGuard;
pub use profile::Profiler;
pub use trainer::{
    Batch, BatchSource, BenchOptions, BenchTiming, GradReduce, Objective, RunContext, StepInfo,
    TrainConfig, TrainSummary, Trainer,
};
