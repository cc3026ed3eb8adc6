//! The invariants of the `gpt2_pretrained` fuzz target (mome-experts): a Hugging
//! Face GPT-2 folder (`config.json` + `model.safetensors`) made of a valid tiny
//! model with one file, or both, replaced by the input gives a typed error with a
//! message, or a model whose config validates and which holds no more parameters
//! than the weights file. Shared by `fuzz-torch/fuzz_targets/gpt2_pretrained.rs`
//! (`#[path]`-included) and by `cargo test -p mome-experts --test fuzz_replay`. A
//! violated invariant panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mome_experts::gpt2::{CONFIG_FILE, WEIGHTS_FILE};
use mome_experts::{Gpt2Config, Gpt2LmHeadModel};
use tch::{nn, Device};

/// This process's scratch folder (the corpus replay removes it when done).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mome-fuzz-experts-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// The tiny model of the template: 1 layer, 8 wide, 2 heads, 8 positions, 16 tokens.
pub fn tiny_config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 16,
        n_positions: 8,
        n_embd: 8,
        n_layer: 1,
        n_head: 2,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::default()
    }
}

/// `config.json` and `model.safetensors` of the tiny model (made once).
pub fn template() -> &'static (Vec<u8>, Vec<u8>) {
    static T: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    T.get_or_init(|| {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt2LmHeadModel::new(&vs.root(), &tiny_config()).expect("template model");
        let dir = scratch().join("template");
        model.save_pretrained(&dir).expect("template folder");
        (
            std::fs::read(dir.join(CONFIG_FILE)).expect("template config"),
            std::fs::read(dir.join(WEIGHTS_FILE)).expect("template weights"),
        )
    })
}

/// The first byte picks what the rest replaces: 0 `config.json`, 1
/// `model.safetensors`, 2 both (the config, a 0xFF byte, the weights).
/// Returns whether the input loaded.
pub fn gpt2_pretrained(data: &[u8]) -> bool {
    let Some((&mode, body)) = data.split_first() else {
        return false;
    };
    let (config, weights) = template();
    let (c, w): (&[u8], &[u8]) = match mode % 3 {
        0 => (body, weights),
        1 => (config, body),
        _ => match body.iter().position(|&b| b == 0xFF) {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body, &[][..]),
        },
    };
    let dir = scratch().join("gpt2");
    std::fs::create_dir_all(&dir).expect("model folder");
    std::fs::write(dir.join(CONFIG_FILE), c).expect("config");
    std::fs::write(dir.join(WEIGHTS_FILE), w).expect("weights");
    match Gpt2LmHeadModel::from_pretrained(&dir, Device::Cpu) {
        Ok((vs, model)) => {
            model
                .config()
                .validate()
                .expect("a loaded model's config validates");
            let held: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
            // f16/bf16/u8 files hold fewer bytes per parameter than the fp32 model,
            // never fewer elements.
            assert!(
                held as usize <= w.len(),
                "{held} parameters out of a {}-byte file",
                w.len()
            );
            true
        }
        Err(e) => {
            assert!(!mome_data::error::chain(&e).is_empty());
            false
        }
    }
}

fn with_config(mode: u8, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (config, _) = template();
    let mut v: serde_json::Value = serde_json::from_slice(config).expect("template json");
    edit(&mut v);
    let mut out = vec![mode];
    out.extend(serde_json::to_vec(&v).expect("json"));
    out
}

/// The seed inputs (written to `fuzz-torch/seeds/gpt2_pretrained/` for cargo-fuzz,
/// replayed as they are by the corpus replay): the valid folder, and configs with
/// sizes far beyond what the weights file holds.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let (config, weights) = template();
    let mut both = vec![2u8];
    both.extend(config);
    both.push(0xFF);
    both.extend(weights);
    let mut out = vec![
        ("valid_config".to_string(), [&[0u8][..], config].concat()),
        ("valid_weights".to_string(), [&[1u8][..], weights].concat()),
        ("valid_both".to_string(), both),
        (
            "weights_truncated".to_string(),
            [&[1u8][..], &weights[..weights.len() / 2]].concat(),
        ),
    ];
    for (name, field, value) in [
        (
            "vocab_huge",
            "vocab_size",
            serde_json::json!(1_000_000_000_000i64),
        ),
        ("n_embd_overflow", "n_embd", serde_json::json!(i64::MAX / 2)),
        (
            "n_positions_huge",
            "n_positions",
            serde_json::json!(1i64 << 40),
        ),
        ("n_layer_huge", "n_layer", serde_json::json!(1_000_000)),
        ("n_inner_max", "n_inner", serde_json::json!(i64::MAX)),
        ("n_head_zero", "n_head", serde_json::json!(0)),
    ] {
        out.push((name.to_string(), with_config(0, |v| v[field] = value)));
    }
    out.push((
        "untied".to_string(),
        with_config(0, |v| v["tie_word_embeddings"] = false.into()),
    ));
    out
}
