//! Writes a tiny random GPT-2 with Rust's `save_pretrained`, plus inputs and Rust
//! logits in `expected.safetensors`, for `scripts/make_gpt2_fixture.py --check-load DIR`.
//!
//! ```text
//! cargo run -p mome-experts --example export_tiny -- DIR [--untied]
//! ```

use mome_experts::{Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use tch::{nn, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: export_tiny DIR [--untied]"))?;
    let untied = args.iter().any(|a| a == "--untied");
    let cfg = Gpt2Config {
        vocab_size: 64,
        n_positions: 32,
        n_embd: 32,
        n_layer: 2,
        n_head: 4,
        tie_word_embeddings: !untied,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::default()
    };
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2LmHeadModel::new(&vs.root(), &cfg)?;
    // spread the weights so that the logits are far from uniform
    tch::no_grad(|| {
        for (name, mut t) in model.named_parameters() {
            let base = if name.contains(".ln_") && name.ends_with("weight") {
                1.0
            } else {
                0.0
            };
            t.copy_(&(t.randn_like() * 0.25 + base));
        }
    });
    model.save_pretrained(dir)?;
    let ids = Tensor::from_slice(&[5i64, 9, 33, 12, 60, 7, 21, 3, 2, 2, 2, 40, 41, 42, 43, 44])
        .view([2, 8]);
    let mask =
        Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]).view([2, 8]);
    let logits = model
        .forward(Gpt2Input::ids(&ids).attention_mask(&mask))?
        .logits;
    mome_core::tensor_io::write_safetensors(
        &std::path::Path::new(dir).join("expected.safetensors"),
        &[
            ("input_ids".into(), ids),
            ("attention_mask".into(), mask),
            ("logits".into(), logits.to_kind(Kind::Float)),
        ],
    )?;
    println!("wrote {dir} (tied: {})", !untied);
    Ok(())
}
