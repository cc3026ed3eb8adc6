//! The layers of a GPT-2 block, with HF parameter names: `Conv1D`, layer norm,
//! causal self-attention, the MLP and the block itself.

use mome_core::norm::{add_layer_norm, AddLayerNorm, AddLnOutput, AddLnPath};
use tch::{nn, Device, Kind, Tensor};

use super::{Activation, Gpt2Config};
use crate::error::{Error, Result};

pub(crate) fn check_float_kind(kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Ok(()),
        other => Err(Error::Config(format!(
            "compute kind must be a floating kind (Float, BFloat16, Half, Double), got {other:?}"
        ))),
    }
}

/// HF `Conv1D`: weight `[in, out]`, `y = x @ W + b`.
#[derive(Debug)]
pub(crate) struct Conv1D {
    weight: Tensor,
    bias: Tensor,
    n_out: i64,
}

impl Conv1D {
    pub(crate) fn new(p: &nn::Path, n_in: i64, n_out: i64, std: f64) -> Self {
        let weight = p.var(
            "weight",
            &[n_in, n_out],
            nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let bias = p.var("bias", &[n_out], nn::Init::Const(0.0));
        Self {
            weight,
            bias,
            n_out,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        let mut out_size = x.size();
        let n_in = *out_size.last().expect("Conv1D input has at least one dim");
        *out_size.last_mut().expect("non-empty") = self.n_out;
        let x2 = x.to_kind(kind).reshape([-1, n_in]);
        self.bias
            .to_kind(kind)
            .addmm(&x2, &self.weight.to_kind(kind))
            .reshape(out_size)
    }

    pub(crate) fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
        out.push((format!("{prefix}.bias"), self.bias.shallow_clone()));
    }
}

/// Layer norm computed in fp32, fused with the residual add before it.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(p: &nn::Path, dim: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[dim], nn::Init::Const(1.0));
        let bias = p.var("bias", &[dim], nn::Init::Const(0.0));
        Self { weight, bias, eps }
    }

    /// `sum = residual + dropout(branch)` (the residual without a branch; the branch
    /// comes with its dropout probability) and `LN(sum)` in `out_kind`, computed in
    /// fp32 ([`mome_core::norm`]).
    pub(crate) fn add_forward(
        &self,
        residual: &Tensor,
        branch: Option<(&Tensor, f64)>,
        out_kind: Kind,
        path: AddLnPath,
    ) -> Result<AddLnOutput> {
        Ok(add_layer_norm(
            &AddLayerNorm {
                residual,
                branch: branch.map(|b| b.0),
                weight: &self.weight,
                bias: &self.bias,
                eps: self.eps,
                dropout: branch.map_or(0.0, |b| b.1),
                out_kind,
            },
            path,
        )?)
    }

    pub(crate) fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
        out.push((format!("{prefix}.bias"), self.bias.shallow_clone()));
    }
}

/// The attention mask handed to every block of one forward pass.
#[derive(Debug)]
pub(crate) struct AttnMask {
    /// Boolean `[B or 1, 1, T, S]`, `true` = may attend.
    mask: Option<Tensor>,
    is_causal: bool,
}

/// Builds the mask for `t` new positions after `past` cached ones.
///
/// Without padding and cache: `is_causal`. Otherwise an explicit boolean mask
/// combining causality and the `[B, past + t]` padding mask (1 = keep). Each query may
/// always attend to itself so that padded query rows never see an all-masked row (which
/// would give NaN); their outputs are meaningless and must be ignored by the caller.
pub(crate) fn build_attn_mask(
    attention_mask: Option<&Tensor>,
    b: i64,
    t: i64,
    past: i64,
    device: Device,
) -> Result<AttnMask> {
    let s = past + t;
    if attention_mask.is_none() && past == 0 {
        return Ok(AttnMask {
            mask: None,
            is_causal: t > 1,
        });
    }
    if attention_mask.is_none() && t == 1 {
        return Ok(AttnMask {
            mask: None,
            is_causal: false,
        });
    }
    let q = Tensor::arange(t, (Kind::Int64, device)).view([t, 1]) + past;
    let k = Tensor::arange(s, (Kind::Int64, device)).view([1, s]);
    let causal = k.le_tensor(&q).view([1, 1, t, s]);
    let mask = match attention_mask {
        None => causal,
        Some(m) => {
            if m.size() != [b, s] {
                return Err(Error::Input(format!(
                    "attention_mask must have shape [{b}, {s}] (batch, cached + new positions), got {:?}",
                    m.size()
                )));
            }
            let keep = m.to_device(device).ne(0).view([b, 1, 1, s]);
            let diag = k.eq_tensor(&q).view([1, 1, t, s]);
            causal.logical_and(&keep).logical_or(&diag)
        }
    };
    Ok(AttnMask {
        mask: Some(mask),
        is_causal: false,
    })
}

#[derive(Debug)]
pub(crate) struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: i64,
    head_dim: i64,
    scale: f64,
    attn_pdrop: f64,
}

impl Attention {
    pub(crate) fn new(p: &nn::Path, cfg: &Gpt2Config, layer_idx: i64) -> Self {
        let c = cfg.n_embd;
        let std = cfg.initializer_range;
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let mut scale = if cfg.scale_attn_weights {
            1.0 / (cfg.head_dim() as f64).sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        Self {
            c_attn: Conv1D::new(&p.sub("c_attn"), c, 3 * c, std),
            c_proj: Conv1D::new(&p.sub("c_proj"), c, c, proj_std),
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
            scale,
            attn_pdrop: cfg.attn_pdrop,
        }
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        kind: Kind,
        train: bool,
    ) -> Tensor {
        let size = x.size();
        let (b, t, c) = (size[0], size[1], size[2]);
        let qkv = self.c_attn.forward(x, kind);
        let parts = qkv.split(c, -1);
        let heads = |z: &Tensor| {
            z.reshape([b, t, self.n_head, self.head_dim])
                .transpose(1, 2)
        };
        let q = heads(&parts[0]);
        let mut k = heads(&parts[1]);
        let mut v = heads(&parts[2]);
        if let Some(slot) = kv {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(&[pk, k], 2);
                v = Tensor::cat(&[pv, v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask.mask.as_ref(),
            if train { self.attn_pdrop } else { 0.0 },
            mask.is_causal,
            self.scale,
            false,
        );
        let y = y.transpose(1, 2).reshape([b, t, c]);
        // The residual dropout of the output happens in the add after it.
        self.c_proj.forward(&y, kind)
    }
}

#[derive(Debug)]
pub(crate) struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    act: Activation,
}

impl Mlp {
    pub(crate) fn new(p: &nn::Path, cfg: &Gpt2Config) -> Self {
        let std = cfg.initializer_range;
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        Self {
            c_fc: Conv1D::new(&p.sub("c_fc"), cfg.n_embd, cfg.inner_dim(), std),
            c_proj: Conv1D::new(&p.sub("c_proj"), cfg.inner_dim(), cfg.n_embd, proj_std),
            act: cfg.activation_function,
        }
    }

    /// `c_proj(act(c_fc(x)))`; its residual dropout happens in the add after it.
    pub(crate) fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        let h = self.act.apply(&self.c_fc.forward(x, kind));
        self.c_proj.forward(&h, kind)
    }
}

/// One pre-LN GPT-2 block: `h = x + drop(attn(ln_1(x))); out = h + drop(mlp(ln_2(h)))`.
///
/// Each residual add (with the dropout of its branch) is fused with the layer norm
/// after it ([`mome_core::norm`]): the block takes the previous block's MLP output
/// still unadded (`pending`) and returns its own, so that `out` is formed by the next
/// block's `ln_1` (or the stack's `ln_f`).
#[derive(Debug)]
pub struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
    resid_pdrop: f64,
}

/// What one block hands on: its output is `hidden + mlp`, left to the next add.
pub(crate) struct BlockOutput {
    /// The block's input, `x + pending`: the previous block's output.
    pub input: Tensor,
    /// `h = input + attn(ln_1(input))`.
    pub hidden: Tensor,
    /// `mlp(ln_2(h))`, not yet dropped out nor added to `h`.
    pub mlp: Tensor,
    /// The dropout probability of `mlp` in that add (0 outside training).
    pub mlp_dropout: f64,
}

/// The inputs of [`Gpt2Block::forward`] besides the residual.
pub(crate) struct BlockInput<'a> {
    /// The previous block's MLP output, not yet added to the residual, with its
    /// dropout probability.
    pub pending: Option<(&'a Tensor, f64)>,
    pub mask: &'a AttnMask,
    pub kv: Option<&'a mut Option<(Tensor, Tensor)>>,
    /// The compute kind of the matmuls and attention.
    pub kind: Kind,
    pub train: bool,
    pub add_ln: AddLnPath,
}

impl Gpt2Block {
    /// Builds block `layer_idx` at `p` (e.g. `transformer.h.3`).
    pub fn new(p: &nn::Path, cfg: &Gpt2Config, layer_idx: i64) -> Self {
        Self {
            ln_1: LayerNorm::new(&p.sub("ln_1"), cfg.n_embd, cfg.layer_norm_epsilon),
            attn: Attention::new(&p.sub("attn"), cfg, layer_idx),
            ln_2: LayerNorm::new(&p.sub("ln_2"), cfg.n_embd, cfg.layer_norm_epsilon),
            mlp: Mlp::new(&p.sub("mlp"), cfg),
            resid_pdrop: cfg.resid_pdrop,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, i: BlockInput<'_>) -> Result<BlockOutput> {
        let a = self.ln_1.add_forward(x, i.pending, i.kind, i.add_ln)?;
        let attn = self.attn.forward(&a.normed, i.mask, i.kv, i.kind, i.train);
        let p = if i.train { self.resid_pdrop } else { 0.0 };
        let h = self
            .ln_2
            .add_forward(&a.sum, Some((&attn, p)), i.kind, i.add_ln)?;
        let mlp = self.mlp.forward(&h.normed, i.kind);
        Ok(BlockOutput {
            input: a.sum,
            hidden: h.sum,
            mlp,
            mlp_dropout: p,
        })
    }

    pub(crate) fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.ln_1.named(&format!("{prefix}.ln_1"), out);
        self.attn
            .c_attn
            .named(&format!("{prefix}.attn.c_attn"), out);
        self.attn
            .c_proj
            .named(&format!("{prefix}.attn.c_proj"), out);
        self.ln_2.named(&format!("{prefix}.ln_2"), out);
        self.mlp.c_fc.named(&format!("{prefix}.mlp.c_fc"), out);
        self.mlp.c_proj.named(&format!("{prefix}.mlp.c_proj"), out);
    }
}
