//! GPT-2 in tch with Hugging Face parameter names, one idea per file:
//! [`config`] (the HF `config.json` and the paper's presets), [`layers`] (`Conv1D`,
//! layer norm, attention, MLP, the block), [`model`] (the stack, the transformer and
//! the LM head model), [`hf_io`] (`save_pretrained` / `from_pretrained`) and
//! [`loss`] (the causal LM loss).
//!
//! Variable paths equal the keys of `transformers.GPT2LMHeadModel`:
//! `transformer.wte.weight`, `transformer.wpe.weight`,
//! `transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}`,
//! `transformer.ln_f.{weight,bias}` and, only for untied models, `lm_head.weight`.
//! Linear layers use the HF `Conv1D` layout: weight `[in, out]`, `y = x @ W + b`.
//!
//! Mixed precision: parameters stay fp32 (master weights). Every linear layer and the
//! attention run in the model's `compute_kind` (weights and inputs are cast to it);
//! layer norms run in fp32; the residual stream stays fp32 (an fp32 residual plus a
//! low-precision branch promotes to fp32); logits are returned as fp32.

pub mod config;
pub mod hf_io;
pub mod layers;
pub mod loss;
pub mod model;

pub use config::{Activation, Gpt2Config, ModelSpec, Preset};
pub use hf_io::{CONFIG_FILE, WEIGHTS_FILE};
pub use layers::Gpt2Block;
pub use loss::{causal_lm_head_loss, causal_lm_loss, causal_lm_loss_sum, next_token_targets};
pub use model::{
    Gpt2Input, Gpt2LmHeadModel, Gpt2Model, Gpt2ModelOutput, Gpt2Output, Gpt2Stack, ParamCount,
    StackOutput,
};
