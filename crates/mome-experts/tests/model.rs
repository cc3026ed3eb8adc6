//! Model behaviour: configs, inputs_embeds, hidden states, errors, parameter counts,
//! loss, cache, precision.

mod common;

use common::{max_diff_masked, spread_model, tiny_config};
use mome_experts::{
    causal_lm_loss, causal_lm_loss_sum, Activation, Error, Gpt2Config, Gpt2Input, Gpt2LmHeadModel,
    Gpt2Stack, KvCache,
};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

fn ids_2x8() -> Tensor {
    Tensor::from_slice(&[5i64, 9, 33, 12, 60, 7, 21, 3, 40, 41, 42, 43, 44, 1, 0, 63]).view([2, 8])
}

/// The config.json of Hugging Face's `openai-community/gpt2`.
const HF_GPT2_CONFIG: &str = r#"{
  "activation_function": "gelu_new",
  "architectures": ["GPT2LMHeadModel"],
  "attn_pdrop": 0.1,
  "bos_token_id": 50256,
  "embd_pdrop": 0.1,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2",
  "n_ctx": 1024,
  "n_embd": 768,
  "n_head": 12,
  "n_layer": 12,
  "n_positions": 1024,
  "resid_pdrop": 0.1,
  "summary_activation": null,
  "summary_first_dropout": 0.1,
  "summary_proj_to_labels": true,
  "summary_type": "cls_index",
  "summary_use_proj": true,
  "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
  "vocab_size": 50257
}"#;

#[test]
fn real_hf_config_parses_and_round_trips() {
    let cfg = Gpt2Config::from_json_str(HF_GPT2_CONFIG).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        (cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head),
        (50257, 12, 768, 12)
    );
    assert_eq!(cfg.n_inner, None);
    assert_eq!(cfg.inner_dim(), 3072);
    assert_eq!(cfg.activation_function, Activation::GeluNew);
    assert!(cfg.tie_word_embeddings, "default must be tied");
    assert_eq!(cfg.layer_norm_epsilon, 1e-5);
    let back = Gpt2Config::from_json_str(&cfg.to_hf_json().unwrap()).unwrap();
    assert_eq!(back, cfg);
    let v: serde_json::Value = serde_json::from_str(&cfg.to_hf_json().unwrap()).unwrap();
    assert_eq!(
        v["task_specific_params"]["text-generation"]["max_length"],
        50
    );
    assert_eq!(v["n_inner"], serde_json::Value::Null);
    assert_eq!(v["activation_function"], "gelu_new");
    assert_eq!(v["architectures"][0], "GPT2LMHeadModel");

    let relu =
        Gpt2Config::from_json_str(r#"{"activation_function": "relu", "n_inner": 100}"#).unwrap();
    assert_eq!(
        (relu.activation_function, relu.inner_dim()),
        (Activation::Relu, 100)
    );
    assert!(Gpt2Config::from_json_str(r#"{"activation_function": "swish"}"#).is_err());
}

#[test]
fn presets_have_the_paper_shapes() {
    let t = Gpt2Config::teacher_medium(32000);
    assert_eq!(
        (t.n_layer, t.n_embd, t.n_head, t.n_positions),
        (24, 1024, 16, 1024)
    );
    let s6 = Gpt2Config::student_6l(32000);
    assert_eq!((s6.n_layer, s6.n_embd, s6.n_head), (6, 768, 12));
    let s3 = Gpt2Config::student_3l(32000);
    assert_eq!((s3.n_layer, s3.n_embd, s3.n_head), (3, 768, 6));
    for c in [&t, &s6, &s3] {
        c.validate().unwrap();
        assert_eq!(
            (c.resid_pdrop, c.layer_norm_epsilon, c.vocab_size),
            (0.1, 1e-5, 32000)
        );
    }
}

#[test]
fn bad_configs_are_rejected_with_the_reason() {
    let cfg = Gpt2Config {
        n_embd: 30,
        ..tiny_config()
    };
    let err = cfg.validate().unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("n_embd (30)") && m.contains("n_head (4)")),
        "{err}"
    );
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(matches!(
        Gpt2LmHeadModel::new(&vs.root(), &cfg),
        Err(Error::Config(_))
    ));
    assert!(
        vs.variables().is_empty(),
        "nothing built for an invalid config"
    );
    for (cfg, word) in [
        (
            Gpt2Config {
                attn_pdrop: 1.0,
                ..tiny_config()
            },
            "attn_pdrop",
        ),
        (
            Gpt2Config {
                n_layer: 0,
                ..tiny_config()
            },
            "n_layer",
        ),
        (
            Gpt2Config {
                eos_token_id: Some(64),
                ..tiny_config()
            },
            "eos_token_id",
        ),
        (
            Gpt2Config {
                model_type: "llama".into(),
                ..tiny_config()
            },
            "model_type",
        ),
    ] {
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains(word), "{err}");
    }
}

#[test]
fn variable_names_are_the_hf_keys() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Gpt2LmHeadModel::new(&vs.root(), &tiny_config()).unwrap();
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    let mut want = vec![
        "transformer.wte.weight".to_string(),
        "transformer.wpe.weight".into(),
    ];
    for i in 0..2 {
        for m in [
            "ln_1",
            "attn.c_attn",
            "attn.c_proj",
            "ln_2",
            "mlp.c_fc",
            "mlp.c_proj",
        ] {
            for p in ["weight", "bias"] {
                want.push(format!("transformer.h.{i}.{m}.{p}"));
            }
        }
    }
    want.extend([
        "transformer.ln_f.weight".into(),
        "transformer.ln_f.bias".into(),
    ]);
    want.sort();
    assert_eq!(names, want);
    let v = vs.variables();
    assert_eq!(v["transformer.h.0.attn.c_attn.weight"].size(), [32, 96]); // Conv1D [in, out]
    assert_eq!(v["transformer.h.1.mlp.c_proj.weight"].size(), [128, 32]);

    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = Gpt2Config {
        tie_word_embeddings: false,
        ..tiny_config()
    };
    let m = Gpt2LmHeadModel::new(&vs.root(), &cfg).unwrap();
    assert_eq!(vs.variables()["lm_head.weight"].size(), [64, 32]);
    assert_eq!(m.named_parameters().len(), vs.variables().len());
}

#[test]
fn gpt2_initialisation() {
    tch::manual_seed(0);
    let cfg = Gpt2Config {
        n_embd: 256,
        n_head: 4,
        n_layer: 8,
        vocab_size: 512,
        ..tiny_config()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Gpt2LmHeadModel::new(&vs.root(), &cfg).unwrap();
    let v = vs.variables();
    let std = |n: &str| v[n].std(true).double_value(&[]);
    assert!((std("transformer.wte.weight") - 0.02).abs() < 1e-3);
    assert!((std("transformer.h.0.mlp.c_fc.weight") - 0.02).abs() < 1e-3);
    let proj = 0.02 / (2.0f64 * 8.0).sqrt();
    assert!((std("transformer.h.3.attn.c_proj.weight") - proj).abs() < 2e-4);
    assert!((std("transformer.h.3.mlp.c_proj.weight") - proj).abs() < 2e-4);
    assert_eq!(
        v["transformer.h.0.ln_1.weight"]
            .sum(Kind::Double)
            .double_value(&[]),
        256.0
    );
    assert_eq!(
        v["transformer.ln_f.bias"]
            .abs()
            .sum(Kind::Double)
            .double_value(&[]),
        0.0
    );
    assert_eq!(
        v["transformer.h.2.attn.c_attn.bias"]
            .abs()
            .sum(Kind::Double)
            .double_value(&[]),
        0.0
    );
}

#[test]
fn inputs_embeds_replace_the_token_lookup_positions_still_added() {
    let (_vs, model) = spread_model(&tiny_config(), 1);
    let ids = ids_2x8();
    let a = model
        .forward(Gpt2Input::ids(&ids).output_hidden_states(true))
        .unwrap();
    let embeds = Tensor::embedding(model.transformer().wte(), &ids, -1, false, false);
    let b = model.forward(Gpt2Input::embeds(&embeds)).unwrap();
    assert!(max_diff_masked(&a.logits, &b.logits, None) < 1e-6);
    // hidden_states[0] = wte[ids] + wpe[0..T] (eval: no dropout)
    let hs = a.hidden_states.unwrap();
    let wpe = model.transformer().wpe().narrow(0, 0, 8).unsqueeze(0);
    assert!(max_diff_masked(&hs[0], &(&embeds + wpe), None) < 1e-6);
}

#[test]
fn hidden_states_follow_the_hf_convention() {
    let cfg = Gpt2Config {
        n_layer: 3,
        ..tiny_config()
    };
    let (_vs, model) = spread_model(&cfg, 2);
    let out = model
        .forward(Gpt2Input::ids(&ids_2x8()).output_hidden_states(true))
        .unwrap();
    let hs = out.hidden_states.unwrap();
    assert_eq!(hs.len(), 4);
    assert!(hs.iter().all(|h| h.size() == [2, 8, 32]));
    assert!(hs[3].equal(&out.last_hidden_state), "last = after ln_f");
    assert!(model
        .forward(Gpt2Input::ids(&ids_2x8()))
        .unwrap()
        .hidden_states
        .is_none());
}

#[test]
fn stack_is_an_expert_at_any_path() {
    let cfg = tiny_config();
    let (_vs, model) = spread_model(&cfg, 3);
    let vs2 = nn::VarStore::new(Device::Cpu);
    let stack = Gpt2Stack::new(&(vs2.root() / "experts" / "en"), &cfg).unwrap();
    let mut names: Vec<String> = vs2.variables().into_keys().collect();
    names.sort();
    assert_eq!(names[0], "experts.en.h.0.attn.c_attn.bias");
    assert_eq!(names.len(), 2 * 12 + 2);
    // copy the model's blocks into the expert: same output from the same embeddings
    let src: Vec<(String, Tensor)> = model
        .transformer()
        .stack()
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (format!("experts.en.{n}"), t))
        .collect();
    mome_core::tensor_io::load_into(&vs2, &src, true).unwrap();
    let ids = ids_2x8();
    let h = model
        .transformer()
        .embed(Some(&ids), None, None, 0, false)
        .unwrap();
    let ours = stack.forward(&h, None, None, false, false).unwrap();
    let full = model.forward(Gpt2Input::ids(&ids)).unwrap();
    assert!(ours.last_hidden_state.equal(&full.last_hidden_state));
}

#[test]
fn out_of_range_tokens_are_typed_errors() {
    let (_vs, model) = spread_model(&tiny_config(), 4);
    let bad = Tensor::from_slice(&[1i64, 2, 64]).view([1, 3]);
    let err = model.forward(Gpt2Input::ids(&bad)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                id: 64,
                vocab_size: 64
            }
        ),
        "{err}"
    );
    let neg = Tensor::from_slice(&[-3i64, 2]).view([1, 2]);
    assert!(matches!(
        model.forward(Gpt2Input::ids(&neg)),
        Err(Error::TokenOutOfRange { id: -3, .. })
    ));
    let long = Tensor::zeros([1, 33], (Kind::Int64, Device::Cpu));
    assert!(
        matches!(model.forward(Gpt2Input::ids(&long)), Err(Error::Input(m)) if m.contains("n_positions"))
    );
    let float_ids = Tensor::zeros([1, 3], (Kind::Float, Device::Cpu));
    assert!(matches!(
        model.forward(Gpt2Input::ids(&float_ids)),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        model.forward(Gpt2Input::default()),
        Err(Error::Input(_))
    ));
    let ids = ids_2x8();
    let bad_mask = Tensor::ones([2, 7], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        model.forward(Gpt2Input::ids(&ids).attention_mask(&bad_mask)),
        Err(Error::Input(m)) if m.contains("attention_mask")
    ));
    let bad_pos = Tensor::from_slice(&[0i64, 1, 2, 32]).view([1, 4]);
    let ids4 = ids.narrow(1, 0, 4);
    assert!(model
        .forward(Gpt2Input::ids(&ids4).position_ids(&bad_pos))
        .is_err());
}

/// Closed-form GPT-2 parameter count (tied head counted once).
fn formula(v: i64, p: i64, c: i64, l: i64, tied: bool) -> (i64, i64) {
    let i = 4 * c;
    let per_layer = 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * i + i) + (i * c + c);
    let embedding = v * c + p * c + if tied { 0 } else { v * c };
    (embedding + l * per_layer + 2 * c, embedding)
}

#[test]
fn parameter_counts_of_the_paper_shapes() {
    for (cfg, paper_m) in [
        (Gpt2Config::student_6l(32000), 68.0),
        (Gpt2Config::student_3l(32000), 47.0),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt2LmHeadModel::new(&vs.root(), &cfg).unwrap();
        let c = m.param_count();
        let (total, emb) = formula(
            cfg.vocab_size,
            cfg.n_positions,
            cfg.n_embd,
            cfg.n_layer,
            true,
        );
        assert_eq!(
            (c.total, c.embedding, c.non_embedding, c.trainable),
            (total, emb, total - emb, total)
        );
        let vs_total: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(c.total, vs_total);
        assert!(
            (total as f64 / 1e6 - paper_m).abs() < 1.0,
            "{total} vs paper {paper_m}M"
        );
        println!("{}L/{}/{}h: {c:?}", cfg.n_layer, cfg.n_embd, cfg.n_head);
    }
    // exact values (reported in docs/experts.md)
    assert_eq!(formula(32000, 1024, 768, 6, true).0, 67_891_200);
    assert_eq!(formula(32000, 1024, 768, 3, true).0, 46_627_584);
    let (teacher, _) = formula(32000, 1024, 1024, 24, true);
    assert_eq!(teacher, 336_128_000);
    // untied: lm_head counted as embedding; frozen params are not trainable
    let cfg = Gpt2Config {
        tie_word_embeddings: false,
        ..tiny_config()
    };
    let mut vs = nn::VarStore::new(Device::Cpu);
    let m = Gpt2LmHeadModel::new(&vs.root(), &cfg).unwrap();
    let c = m.param_count();
    assert_eq!((c.total, c.embedding), formula(64, 32, 32, 2, false));
    vs.freeze();
    assert_eq!(m.param_count().trainable, 0);
}

#[test]
fn loss_matches_a_manual_computation() {
    let (_vs, model) = spread_model(&tiny_config(), 5);
    let ids = ids_2x8();
    let logits = model.forward(Gpt2Input::ids(&ids)).unwrap().logits;
    let lp = logits.log_softmax(-1, Kind::Double);
    let mut terms = Vec::new();
    for b in 0..2 {
        for t in 0..7 {
            let target = ids.int64_value(&[b, t + 1]);
            terms.push(-lp.double_value(&[b, t, target]));
        }
    }
    let mean: f64 = terms.iter().sum::<f64>() / terms.len() as f64;
    let loss = causal_lm_loss(&logits, &ids, None).unwrap();
    assert_eq!(loss.kind(), Kind::Float);
    assert!((loss.double_value(&[]) - mean).abs() < 1e-5);

    // right padding on row 1 after 5 real tokens: targets 1..4 of row 1 count (4), row 0: 7
    let mask =
        Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]).view([2, 8]);
    let (sum, count) = causal_lm_loss_sum(&logits, &ids, Some(&mask)).unwrap();
    assert_eq!(count, 11);
    let want: f64 = terms[..7].iter().sum::<f64>() + terms[7..11].iter().sum::<f64>();
    assert!((sum.double_value(&[]) - want).abs() < 1e-4);
    let mean_masked = causal_lm_loss(&logits, &ids, Some(&mask)).unwrap();
    assert!((mean_masked.double_value(&[]) - want / 11.0).abs() < 1e-5);
    assert!(causal_lm_loss(&logits, &ids.narrow(1, 0, 7), None).is_err());
}

#[test]
fn training_reduces_the_loss_and_dropout_only_in_train() {
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2LmHeadModel::new(&vs.root(), &tiny_config()).unwrap();
    let ids = ids_2x8();
    let eval1 = model.forward(Gpt2Input::ids(&ids)).unwrap().logits;
    let eval2 = model.forward(Gpt2Input::ids(&ids)).unwrap().logits;
    assert!(eval1.equal(&eval2));
    let tr = model
        .forward(Gpt2Input::ids(&ids).train(true))
        .unwrap()
        .logits;
    assert!(!tr.equal(&eval1), "dropout must act in train mode");

    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let first = causal_lm_loss(&eval1, &ids, None)
        .unwrap()
        .double_value(&[]);
    for _ in 0..30 {
        let logits = model
            .forward(Gpt2Input::ids(&ids).train(true))
            .unwrap()
            .logits;
        let loss = causal_lm_loss(&logits, &ids, None).unwrap();
        opt.backward_step(&loss);
    }
    let logits = model.forward(Gpt2Input::ids(&ids)).unwrap().logits;
    let last = causal_lm_loss(&logits, &ids, None)
        .unwrap()
        .double_value(&[]);
    assert!(last < first * 0.5, "loss {first} -> {last}");
}

#[test]
fn cached_forward_equals_full_forward() {
    let (_vs, model) = spread_model(&tiny_config(), 7);
    let ids = ids_2x8();
    let full = model.forward(Gpt2Input::ids(&ids)).unwrap().logits;
    let mut cache = KvCache::new(2);
    let a = model
        .forward(Gpt2Input::ids(&ids.narrow(1, 0, 5)).cache(&mut cache))
        .unwrap()
        .logits;
    assert_eq!(cache.seq_len(), 5);
    let b = model
        .forward(Gpt2Input::ids(&ids.narrow(1, 5, 3)).cache(&mut cache))
        .unwrap()
        .logits;
    assert_eq!(cache.seq_len(), 8);
    assert_eq!(cache.layer(1).unwrap().0.size(), [2, 4, 8, 8]);
    assert!(max_diff_masked(&Tensor::cat(&[a, b], 1), &full, None) < 1e-5);
    // a one-token step with the cache (no mask path)
    let mut cache = KvCache::new(2);
    model
        .forward(Gpt2Input::ids(&ids.narrow(1, 0, 7)).cache(&mut cache))
        .unwrap();
    let c = model
        .forward(Gpt2Input::ids(&ids.narrow(1, 7, 1)).cache(&mut cache))
        .unwrap()
        .logits;
    assert!(max_diff_masked(&c, &full.narrow(1, 7, 1), None) < 1e-5);
    // a cache of the wrong depth is refused
    let mut wrong = KvCache::new(3);
    assert!(model
        .forward(Gpt2Input::ids(&ids).cache(&mut wrong))
        .is_err());
}

#[test]
fn bf16_compute_on_cpu_is_close_to_fp32() {
    let (_vs, mut model) = spread_model(&tiny_config(), 8);
    let ids = ids_2x8();
    let f32_out = model.forward(Gpt2Input::ids(&ids)).unwrap();
    assert!(model.set_compute_kind(Kind::Int64).is_err());
    model.set_compute_kind(Kind::BFloat16).unwrap();
    let bf = model.forward(Gpt2Input::ids(&ids)).unwrap();
    assert_eq!(bf.logits.kind(), Kind::Float);
    assert_eq!(
        bf.last_hidden_state.kind(),
        Kind::Float,
        "residual stream stays fp32"
    );
    let scale = f32_out.logits.abs().max().double_value(&[]);
    let d = max_diff_masked(&bf.logits, &f32_out.logits, None);
    println!("bf16 vs fp32 on CPU: max |diff| {d:.4} (max |logit| {scale:.2})");
    assert!(d > 0.0, "bf16 must actually be used");
    assert!(d < 0.05 * scale, "bf16 logits too far: {d} (scale {scale})");
    // parameters untouched
    assert!(model
        .named_parameters()
        .iter()
        .all(|(_, t)| t.kind() == Kind::Float));
}

/// `[train.kernels] add_layer_norm = "fused"` runs every block's residual add + layer
/// norm through mome's autograd function (on the CPU, with its kernels' libtorch
/// references): the logits, hidden states, loss and every parameter's gradient equal
/// the reference path's, under fp32 and bf16 compute.
#[test]
fn fused_add_layer_norm_gives_the_reference_model() {
    use mome_core::fusion::{FusionMode, KernelConfig};
    let ids = ids_2x8();
    // One model for both paths (tests share libtorch's global generator).
    let (vs, mut model) = spread_model(&tiny_config(), 8);
    for kind in [Kind::Float, Kind::BFloat16] {
        model.set_compute_kind(kind).unwrap();
        let mut run = |mode: FusionMode| {
            model.set_kernels(&KernelConfig {
                add_layer_norm: mode,
                ..Default::default()
            });
            for (_, v) in vs.variables() {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let out = model
                .forward(Gpt2Input::ids(&ids).output_hidden_states(true))
                .unwrap();
            let loss = causal_lm_loss(&out.logits, &ids, None).unwrap();
            loss.backward();
            let mut grads: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .map(|(n, v)| (n, v.grad().copy()))
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            let hidden = out.hidden_states.unwrap();
            (out.logits, hidden, loss.double_value(&[]), grads)
        };
        let (fl, fh, floss, fg) = run(FusionMode::Fused);
        let (rl, rh, rloss, rg) = run(FusionMode::Reference);
        let tol = if kind == Kind::Float { 1e-5 } else { 2e-2 };
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let scale = b.abs().max().double_value(&[]).max(1.0);
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d <= tol * scale, "{kind:?} {what}: max diff {d}");
        };
        close(&fl, &rl, "logits");
        assert_eq!(fh.len(), rh.len());
        for (i, (a, b)) in fh.iter().zip(&rh).enumerate() {
            assert_eq!(a.kind(), b.kind(), "hidden state {i}");
            close(a, b, &format!("hidden state {i}"));
        }
        assert!((floss - rloss).abs() <= tol * rloss.abs().max(1.0));
        assert_eq!(fg.len(), rg.len());
        for ((n, a), (_, b)) in fg.iter().zip(&rg) {
            assert!(a.defined() && b.defined(), "{n} has no gradient");
            close(a, b, n);
        }
    }
}
