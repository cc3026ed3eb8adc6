//! mome-experts: GPT-2 expert modules in tch with Hugging Face parameter names.
//!
//! - [`gpt2`]: configuration (HF `config.json`), [`Gpt2Block`], [`Gpt2Stack`] (an MoE
//!   expert: blocks + `ln_f` fed hidden states), [`Gpt2Model`], [`Gpt2LmHeadModel`],
//!   the causal LM loss, HF-compatible `save_pretrained` / `from_pretrained`.
//! - [`generate`](mod@generate): batched generation with a [`KvCache`].
//! - [`eval`]: the one shard-evaluation loop and per-domain LM evaluation.
//! - [`train`]: the LM training job of `mome train` ([`LmParams`] → [`LmJob`] →
//!   [`train_lm`]) and its benchmark on the same step ([`bench_lm`]).
//!
//! See `docs/experts.md`.
//!
//! ```no_run
//! use mome_experts::{causal_lm_loss, generate, GenerationConfig, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! fn demo() -> mome_experts::Result<()> {
//!     let cfg = Gpt2Config::student_3l(32000);
//!     let vs = nn::VarStore::new(Device::cuda_if_available());
//!     let mut model = Gpt2LmHeadModel::new(&vs.root(), &cfg)?;
//!     model.set_compute_kind(Kind::BFloat16)?;
//!     let ids = Tensor::from_slice(&[1i64, 500, 501, 502]).view([1, 4]).to_device(vs.device());
//!     let out = model.forward(Gpt2Input::ids(&ids).train(true))?;
//!     let loss = causal_lm_loss(&out.logits, &ids, None)?;
//!     loss.backward();
//!     model.save_pretrained("runs/student")?; // loadable by GPT2LMHeadModel.from_pretrained
//!     let (_vs2, back) = Gpt2LmHeadModel::from_pretrained("runs/student", Device::Cpu)?;
//!     let cfg = GenerationConfig { max_new_tokens: 20, eos_token_id: Some(2), pad_token_id: 2, ..Default::default() };
//!     let _new_tokens = generate(&back, &[vec![1, 500], vec![1]], &cfg)?;
//!     Ok(())
//! }
//! # demo().unwrap();
//! ```

pub mod error;
pub mod eval;
pub mod generate;
pub mod gpt2;
pub mod train;

pub use error::{Error, Result};
pub use generate::{generate, GenerationConfig, KvCache};
pub use gpt2::{
    causal_lm_head_loss, causal_lm_loss, causal_lm_loss_sum, next_token_targets, Activation,
    Gpt2Block, Gpt2Config, Gpt2Input, Gpt2LmHeadModel, Gpt2Model, Gpt2ModelOutput, Gpt2Output,
    Gpt2Stack, ModelSpec, ParamCount, Preset, StackOutput,
};
pub use train::{bench_lm, train_lm, LmJob, LmObjective, LmParams, LmSummary};
