//! Non-finite weights, losses and logits are typed errors naming the tensor, the
//! domain or the row; `config.json` errors name the file.

mod common;

use std::path::Path;

use common::{spread_model, tiny_config};
use mome_data::error::chain;
use mome_data::shards::{ShardSet, ShardWriter};
use mome_experts::eval::{eval_shards, evaluate, EvalBatch};
use mome_experts::generate::next_tokens;
use mome_experts::{Error, GenerationConfig, Gpt2LmHeadModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Sets element `[0, ..]` of parameter `name` of `model` to `value`.
fn poison(model: &Gpt2LmHeadModel, name: &str, value: f64) {
    let (_, t) = model
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    tch::no_grad(|| {
        let _ = t.view([-1]).get(0).fill_(value);
    });
}

#[test]
fn a_saved_model_with_a_nan_weight_fails_to_load_naming_the_tensor() {
    let (_vs, model) = spread_model(&tiny_config(), 3);
    let dir = tempfile::tempdir().unwrap();
    poison(&model, "transformer.h.1.mlp.c_fc.weight", f64::NAN);
    model.save_pretrained(dir.path()).unwrap();
    let e = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap_err();
    match &e {
        Error::NonFiniteTensor { path, name } => {
            assert_eq!(name, "transformer.h.1.mlp.c_fc.weight");
            assert!(path.ends_with("model.safetensors"), "{e}");
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(
        e.to_string().contains("transformer.h.1.mlp.c_fc.weight"),
        "{e}"
    );
    // Infinity counts too; the first offending tensor in name order is named.
    poison(&model, "transformer.h.0.attn.c_proj.bias", f64::INFINITY);
    model.save_pretrained(dir.path()).unwrap();
    let e = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap_err();
    assert!(
        matches!(&e, Error::NonFiniteTensor { name, .. } if name == "transformer.h.0.attn.c_proj.bias"),
        "{e}"
    );
}

#[test]
fn config_json_errors_name_the_file_and_their_cause_once() {
    let (_vs, model) = spread_model(&tiny_config(), 3);
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, "{\"n_embd\": 32,\n \"n_head\": }").unwrap();
    let e = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::ConfigFile { .. }), "{e:?}");
    assert!(e.to_string().contains("config.json"), "{e}");
    let full = chain(&e);
    assert_eq!(full.matches("column").count(), 1, "{full}");
    // A value that does not validate names the file too.
    std::fs::write(&cfg, r#"{"n_embd": 30, "n_head": 4}"#).unwrap();
    let e = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("config.json") && msg.contains("n_head"),
        "{msg}"
    );
    // A missing file: the path, then the cause, once.
    std::fs::remove_file(&cfg).unwrap();
    let e = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap_err();
    let full = chain(&e);
    assert!(full.contains("config.json: "), "{full}");
    assert_eq!(full.matches("os error 2").count(), 1, "{full}");
}

/// Shards (vocab 64, 8 tokens) with domain `en` (ids < 40) and `fr` (id 40 in
/// every sequence), in the validation split.
fn shards(dir: &Path) -> ShardSet {
    let mut w = ShardWriter::new(dir, 64, 8, &"ab".repeat(32), 1, 2).unwrap();
    for i in 0..3u32 {
        w.push_sequence("validation", "en", &[1, 3 + i, 4, 5, 6, 7, 8, 2])
            .unwrap();
        w.push_sequence("validation", "fr", &[1, 9 + i, 40, 5, 6, 7, 8, 2])
            .unwrap();
    }
    w.finish().unwrap();
    ShardSet::open(dir).unwrap()
}

#[test]
fn a_non_finite_domain_loss_is_an_error_naming_the_domain() {
    let root = tempfile::tempdir().unwrap();
    let set = shards(&root.path().join("s"));
    // Untied head: a NaN input embedding of token 40 only spoils the sequences with it.
    let cfg = mome_experts::Gpt2Config {
        tie_word_embeddings: false,
        ..tiny_config()
    };
    let (_vs, model) = spread_model(&cfg, 5);
    let fine = evaluate(&model, &set, "validation", 0, 2).unwrap();
    assert!(fine.domains["fr"].loss.is_finite());
    let (_, wte) = model
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == "transformer.wte.weight")
        .unwrap();
    tch::no_grad(|| {
        let _ = wte.get(40).fill_(f64::NAN);
    });
    let e = evaluate(&model, &set, "validation", 0, 2).unwrap_err();
    match &e {
        Error::NonFiniteLoss {
            split,
            domain,
            loss,
        } => {
            assert_eq!((split.as_str(), domain.as_str()), ("validation", "fr"));
            assert!(loss.is_nan());
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(e.to_string().contains("`fr`"), "{e}");

    // The loop itself checks whatever the callback sums: +inf on `en`.
    let e = eval_shards(
        &set,
        "validation",
        0,
        3,
        Device::Cpu,
        &mut |b: &EvalBatch<'_>| -> mome_experts::Result<(Tensor, i64)> {
            let v = if b.domain == "en" { f64::INFINITY } else { 1.0 };
            Ok((Tensor::from(v), 7))
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::NonFiniteLoss { domain, loss, .. } if domain == "en" && *loss == f64::INFINITY),
        "{e}"
    );
}

#[test]
fn nan_logits_are_named_when_sampling_and_when_greedy() {
    let logits = Tensor::zeros([3, 16], (Kind::Float, Device::Cpu));
    let _ = logits.get(1).get(5).fill_(f64::NAN);
    let sample = GenerationConfig {
        temperature: 0.8,
        ..GenerationConfig::default()
    };
    let greedy = GenerationConfig {
        temperature: 0.0,
        ..GenerationConfig::default()
    };
    for cfg in [&sample, &greedy] {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let e = next_tokens(&logits, cfg, &mut rng).unwrap_err();
        assert!(matches!(e, Error::NonFiniteLogits { row: 1 }), "{e:?}");
        assert!(e.to_string().contains("not finite"), "{e}");
    }
    // +inf leaves no mass to sample from either.
    let _ = logits.get(1).get(5).fill_(0.0);
    let _ = logits.get(2).get(3).fill_(f64::INFINITY);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = next_tokens(&logits, &sample, &mut rng).unwrap_err();
    assert!(matches!(e, Error::NonFiniteLogits { row: 2 }), "{e:?}");
    // Finite logits sample fine.
    let _ = logits.get(2).get(3).fill_(0.0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(next_tokens(&logits, &sample, &mut rng).unwrap().len(), 3);
}
