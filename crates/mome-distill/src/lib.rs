//! Knowledge distillation for mome (method.md §4; see `docs/distill.md`).
//!
//! - [`losses`]: forward KL, teacher-weighted CE (the research code's "inverse KL"),
//!   reverse KL and Jensen-Shannon, over dense teacher logits or a sparse top-K
//!   teacher, fp32 and NaN-free with -inf logits;
//! - [`strategy`]: how CE and KD are weighted ([`strategy::WeightStrategy`]: fixed,
//!   adaptive as in the research code with guards, alternating);
//! - [`linear_kd`]: the student's LM head, CE and KD loss fused chunk by chunk
//!   (never the full `[B, T, V]` logits; `[train.kernels] linear_kd`);
//! - [`objective`]: [`KdTerm`], the `alpha * CE + beta * KD` of one micro-batch,
//!   shared by distillation and MoE training, and [`DistillObjective`];
//! - [`trainer`]: the `mome distill` job ([`DistillParams`] → [`DistillJob`] →
//!   [`run_distill`]), a student trained against a frozen teacher by mome-core's
//!   `Trainer` (same checkpoints, resume and metrics as `mome train`, data parallel
//!   under `mome launch --gpus N`), and [`bench_distill`] on the same step;
//! - [`experiment`]: the paper's KD comparison ([`experiment::run_kd_experiment`]);
//! - [`cache`]: the offline top-K teacher cache ([`build_cache`], [`TeacherCache`]);
//! - [`teacher`]: loading a frozen teacher.
//!
//! A complete program (token shards, a teacher trained with mome-core's `Trainer`,
//! a student distilled by [`run_distill`]) is `examples/distill-student` in the
//! repository.
//!
//! ```
//! use mome_distill::losses::{kd_loss, KdLoss, Teacher};
//! use tch::{Kind, Tensor};
//! let s = Tensor::randn([2, 3, 5], (Kind::Float, tch::Device::Cpu));
//! let out = kd_loss(KdLoss::ForwardKl, &s, Teacher::Logits(&s), None, 2.0).unwrap();
//! assert!(out.loss.double_value(&[]).abs() < 1e-6); // KL(p || p) = 0
//! ```

pub mod cache;
pub mod error;
pub mod experiment;
pub mod linear_kd;
pub mod losses;
pub mod objective;
pub mod strategy;
pub mod teacher;
pub mod trainer;

pub use cache::{build_cache, CacheBuildOptions, CacheManifest, TeacherCache, ValueDtype};
pub use error::{Error, Result};
pub use losses::{kd_loss, KdLoss, KdOutput, SparseTeacher, Teacher};
pub use objective::{DistillObjective, KdTerm, TeacherModel};
pub use strategy::{Adaptive, Alternating, Fixed, StrategyConfig, WeightStrategy};
pub use trainer::{
    bench_distill, final_validation, run_distill, run_distill_with_group, strategy_history,
    BenchTeacher, DistillBench, DistillJob, DistillOutcome, DistillParams, DistillSettings,
    TeacherSection, AUTO_KD_CHUNK, DISTILL_METRICS,
};
