//! Parity with Hugging Face transformers on the tiny fixture
//! (scripts/make_gpt2_fixture.py), and HF-compatible checkpoints.

mod common;

use common::{expected, fixture_dir, max_diff_masked};
use mome_experts::{Error, Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn load_fixture() -> Gpt2LmHeadModel {
    Gpt2LmHeadModel::from_pretrained(fixture_dir(), Device::Cpu)
        .unwrap()
        .1
}

#[test]
fn logits_and_hidden_states_match_transformers_without_mask() {
    let model = load_fixture();
    let ids = expected("input_ids");
    let out = model
        .forward(Gpt2Input::ids(&ids).output_hidden_states(true))
        .unwrap();
    assert_eq!(out.logits.kind(), Kind::Float);
    assert_eq!(out.logits.size(), [2, 8, 64]);
    let d = max_diff_masked(&out.logits, &expected("logits_nomask"), None);
    println!("no mask: max |logits diff| {d:.2e}");
    assert!(d < TOL, "logits differ by {d}");
    // the check is meaningful: logits are far from uniform
    assert!(expected("logits_nomask").std(true).double_value(&[]) > 0.5);
    let d = max_diff_masked(
        &out.last_hidden_state,
        &expected("last_hidden_nomask"),
        None,
    );
    assert!(d < TOL, "last hidden state differs by {d}");
    let hs = out.hidden_states.unwrap();
    assert_eq!(hs.len(), 3);
    let d = max_diff_masked(&hs[1], &expected("hidden_1_nomask"), None);
    assert!(d < TOL, "hidden state 1 differs by {d}");
}

#[test]
fn logits_match_transformers_with_left_padding_mask() {
    let model = load_fixture();
    let ids = expected("input_ids");
    let mask = expected("attention_mask");
    let out = model
        .forward(Gpt2Input::ids(&ids).attention_mask(&mask))
        .unwrap();
    let d = max_diff_masked(&out.logits, &expected("logits_mask"), Some(&mask));
    println!("left padding: max |logits diff| {d:.2e}");
    assert!(d < TOL, "masked logits differ by {d}");
    let d = max_diff_masked(
        &out.last_hidden_state,
        &expected("last_hidden_mask"),
        Some(&mask),
    );
    assert!(d < TOL, "masked hidden differs by {d}");
    // the mask matters: unmasked logits of the padded row differ
    let unmasked = expected("logits_nomask");
    let d = max_diff_masked(&unmasked, &expected("logits_mask"), Some(&mask));
    assert!(d > 1e-2, "fixture mask has no effect ({d})");
    assert!(!bool::try_from(out.logits.isnan().any()).unwrap());

    let pos = expected("position_ids");
    let out = model
        .forward(
            Gpt2Input::ids(&ids)
                .attention_mask(&mask)
                .position_ids(&pos),
        )
        .unwrap();
    let d = max_diff_masked(&out.logits, &expected("logits_mask_pos"), Some(&mask));
    assert!(d < TOL, "logits with position ids differ by {d}");
    let d = max_diff_masked(
        &out.last_hidden_state,
        &expected("last_hidden_mask_pos"),
        Some(&mask),
    );
    assert!(d < TOL, "hidden with position ids differs by {d}");
}

fn read(path: &std::path::Path) -> Vec<(String, Tensor)> {
    mome_core::tensor_io::read_safetensors(path, Device::Cpu).unwrap()
}

#[test]
fn rust_checkpoint_has_exactly_the_hf_names_and_shapes() {
    let model = load_fixture();
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let hf = read(&fixture_dir().join("model.safetensors"));
    let ours = read(&dir.path().join("model.safetensors"));
    let shapes = |v: &[(String, Tensor)]| -> Vec<(String, Vec<i64>, Kind)> {
        v.iter()
            .map(|(n, t)| (n.clone(), t.size(), t.kind()))
            .collect()
    };
    assert_eq!(shapes(&ours), shapes(&hf));
    // a freshly built (not loaded) Rust model saves the same names and shapes
    let cfg = Gpt2Config::from_file(fixture_dir().join("config.json")).unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let fresh = Gpt2LmHeadModel::new(&vs.root(), &cfg).unwrap();
    let fresh_dir = tempfile::tempdir().unwrap();
    fresh.save_pretrained(fresh_dir.path()).unwrap();
    assert_eq!(
        shapes(&read(&fresh_dir.path().join("model.safetensors"))),
        shapes(&hf)
    );
    assert!(!ours.iter().any(|(n, _)| n == "lm_head.weight"));
    for ((n, a), (_, b)) in ours.iter().zip(&hf) {
        assert!(a.equal(b), "{n} changed in the round trip");
    }
    // the config round-trips, keeping HF's extra fields
    let a = Gpt2Config::from_file(dir.path().join("config.json")).unwrap();
    let b = Gpt2Config::from_file(fixture_dir().join("config.json")).unwrap();
    assert_eq!(a.vocab_size, b.vocab_size);
    assert_eq!(a.n_inner, None);
    assert_eq!(a.extra.get("summary_type"), b.extra.get("summary_type"));
    // and the reloaded model gives the same logits
    let (_vs, again) = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap();
    let ids = expected("input_ids");
    let x = model.forward(Gpt2Input::ids(&ids)).unwrap().logits;
    let y = again.forward(Gpt2Input::ids(&ids)).unwrap().logits;
    assert!(x.equal(&y));
    // no temporary files left behind
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors"]);
}

/// Writes a copy of the fixture directory with `tensors` as its weights.
fn fixture_variant(tensors: &[(String, Tensor)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    mome_core::tensor_io::write_safetensors(&dir.path().join("model.safetensors"), tensors)
        .unwrap();
    dir
}

#[test]
fn hf_extras_are_accepted_tied_head_and_attention_buffers() {
    let mut t = read(&fixture_dir().join("model.safetensors"));
    let wte = t
        .iter()
        .find(|(n, _)| n == "transformer.wte.weight")
        .unwrap()
        .1
        .copy();
    t.push(("lm_head.weight".into(), wte.copy()));
    for i in 0..2 {
        t.push((
            format!("transformer.h.{i}.attn.bias"),
            Tensor::ones([1, 1, 32, 32], (Kind::Float, Device::Cpu)).tril(0),
        ));
        t.push((
            format!("transformer.h.{i}.attn.masked_bias"),
            Tensor::from(-1e4f32),
        ));
    }
    let dir = fixture_variant(&t);
    let (_vs, model) = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap();
    let ids = expected("input_ids");
    let out = model.forward(Gpt2Input::ids(&ids)).unwrap();
    assert!(max_diff_masked(&out.logits, &expected("logits_nomask"), None) < TOL);

    // an lm_head that differs from wte cannot be dropped silently
    let last = t.iter().position(|(n, _)| n == "lm_head.weight").unwrap();
    t[last].1 = &wte + 1.0;
    let dir = fixture_variant(&t);
    let err = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::Checkpoint { mismatched, .. } if mismatched[0].starts_with("lm_head.weight")),
        "{err}"
    );
}

#[test]
fn bare_gpt2model_keys_without_prefix_are_accepted() {
    let t: Vec<(String, Tensor)> = read(&fixture_dir().join("model.safetensors"))
        .into_iter()
        .map(|(n, t)| (n.strip_prefix("transformer.").unwrap().to_string(), t))
        .collect();
    let dir = fixture_variant(&t);
    let (_vs, model) = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap();
    let ids = expected("input_ids");
    let out = model.forward(Gpt2Input::ids(&ids)).unwrap();
    assert!(max_diff_masked(&out.logits, &expected("logits_nomask"), None) < TOL);
}

#[test]
fn mismatched_checkpoint_names_every_key() {
    let mut t = read(&fixture_dir().join("model.safetensors"));
    t.retain(|(n, _)| n != "transformer.h.1.mlp.c_fc.bias");
    for (n, x) in t.iter_mut() {
        if n == "transformer.h.0.attn.c_attn.weight" {
            *x = x.tr().contiguous(); // [96, 32] instead of [32, 96]
        }
    }
    t.push((
        "transformer.h.7.ln_1.weight".into(),
        Tensor::ones([32], (Kind::Float, Device::Cpu)),
    ));
    let dir = fixture_variant(&t);
    let err = Gpt2LmHeadModel::from_pretrained(dir.path(), Device::Cpu).unwrap_err();
    match &err {
        Error::Checkpoint {
            path,
            missing,
            unexpected,
            mismatched,
        } => {
            assert!(path.ends_with("model.safetensors"));
            assert_eq!(missing, &["transformer.h.1.mlp.c_fc.bias"]);
            assert_eq!(unexpected, &["transformer.h.7.ln_1.weight"]);
            assert_eq!(mismatched.len(), 1);
            assert!(mismatched[0].contains("transformer.h.0.attn.c_attn.weight"));
        }
        other => panic!("wrong error: {other}"),
    }
    let msg = err.to_string();
    for key in [
        "h.1.mlp.c_fc.bias",
        "h.7.ln_1.weight",
        "h.0.attn.c_attn.weight",
    ] {
        assert!(msg.contains(key), "{msg}");
    }
}
