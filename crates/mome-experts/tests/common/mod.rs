//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use mome_experts::{Gpt2Config, Gpt2LmHeadModel};
use tch::{nn, Device, Kind, Tensor};

/// The Hugging Face fixture made by scripts/make_gpt2_fixture.py.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2")
}

/// Tensors of the fixture's expected.safetensors, by name.
pub fn expected(name: &str) -> Tensor {
    let all = mome_core::tensor_io::read_safetensors(
        &fixture_dir().join("expected.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    all.into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture has no {name}"))
        .1
}

/// max |a - b| over positions where `mask` [B, T] is 1 (a, b: [B, T, ...]).
pub fn max_diff_masked(a: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> f64 {
    assert_eq!(a.size(), b.size());
    let mut d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs();
    if let Some(m) = mask {
        let mut m = m.to_kind(Kind::Double);
        while m.dim() < d.dim() {
            m = m.unsqueeze(-1);
        }
        d *= m;
    }
    d.max().double_value(&[])
}

/// A tiny config (vocab 64, 32 positions, 32 wide, 2 layers, 4 heads).
pub fn tiny_config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 64,
        n_positions: 32,
        n_embd: 32,
        n_layer: 2,
        n_head: 4,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::default()
    }
}

/// A tiny random model whose weights are spread (std 0.25) so that logits are far from
/// uniform; LN weights around 1.
pub fn spread_model(cfg: &Gpt2Config, seed: i64) -> (nn::VarStore, Gpt2LmHeadModel) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2LmHeadModel::new(&vs.root(), cfg).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in model.named_parameters() {
            let noise = t.randn_like();
            if name.contains(".ln_") {
                if name.ends_with("weight") {
                    t.copy_(&(noise * 0.2 + 1.0));
                } else {
                    t.copy_(&(noise * 0.1));
                }
            } else {
                t.copy_(&(noise * 0.25));
            }
        }
    });
    (vs, model)
}
