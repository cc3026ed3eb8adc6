//! mome-moe: the mixture of modular experts of method.md §6–§7.
//!
//! - [`config`]: [`MoeConfig`] (`moe_config.json`), [`Arch`] (PLE, JEET, MoE-CE),
//!   combination [`Setting`]s and the paper's 21-setting grid.
//! - [`routing`]: per-sequence routing through the [`SequenceRouter`] trait (the
//!   learned router of mome-router plugs in through an adapter implementing it),
//!   [`LabelRouter`] for labelled shards, [`ExpertChoice`] and [`ResolvedSetting`].
//! - [`model`]: [`MoeModel`]: one shared token/position embedding, N domain experts
//!   (GPT-2 stacks fed the shared embeddings), an optional common expert, one shared
//!   LM head; the forward pass groups sequences by expert.
//! - [`io`]: save / load (validated) / export an expert as a Hugging Face GPT-2
//!   folder / PLE assembly.
//! - [`train`]: JEET and MoE-CE training on mome-core's trainer, routed expert only:
//!   the `mome moe train` job ([`MoeTrainParams`] → [`MoeTrainJob`] →
//!   [`run_moe_training`]), [`train_moe`] and [`bench_moe`] on the same step.
//! - [`kd`]: [`DistillLoss`], training the experts by distillation from a teacher.
//! - [`eval`]: per-setting, per-domain evaluation and the Markdown grid table.
//! - [`generate`](mod@generate): routed generation with one KV cache per active expert.
//! - [`text`]: text in, text out through a GPT-2 or MoE folder (`mome generate`).
//! - [`forgetting`]: the catastrophic forgetting study of method §8 (sequential vs
//!   balanced vs MoE training).
//!
//! See `docs/moe.md`.

pub mod config;
pub mod error;
pub mod eval;
pub mod forgetting;
pub mod generate;
pub mod io;
pub mod kd;
pub mod model;
pub mod routing;
pub mod text;
pub mod train;

pub use config::{paper_grid, Arch, ExpertId, MoeConfig, Setting, UsedExperts, COMMON, PAPER_GRID};
pub use error::{Error, Result};
pub use eval::{
    evaluate_settings, DomainRouting, EvalOptions, EvalReport, RoutingEval, SettingEval,
};
pub use generate::{generate, generate_routed, route_prompts, MoeGeneration};
pub use io::{build_ple, load_router, ROUTER_FILE};
pub use kd::DistillLoss;
pub use model::{Embeddings, MoeHeads, MoeModel, MoeOutput};
pub use routing::{
    check_router_classes, ExpertChoice, LabelRouter, ResolvedSetting, Routing, SequenceRouter,
};
pub use train::{
    bench_moe, run_moe_training, train_moe, CrossEntropy, MoeBench, MoeDataParams, MoeLoss,
    MoeSection, MoeTrainJob, MoeTrainParams, MoeTrainSummary, RunOptions,
};
