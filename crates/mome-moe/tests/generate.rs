//! MoE generation: a routed prompt generates what its expert exported alone
//! generates; routed + common and averaged settings equal step-by-step full forward
//! passes of the MoE (no cache); routing and bad input.

use mome_experts::{GenerationConfig, Gpt2Config, Gpt2LmHeadModel};
use mome_moe::{
    generate, generate_routed, route_prompts, Arch, ExpertChoice, ExpertId, LabelRouter, MoeConfig,
    MoeModel, Routing, SequenceRouter, Setting,
};
use tch::{nn, Device, Tensor};

const VOCAB: i64 = 53;

fn cfg(arch: Arch, tied: bool) -> MoeConfig {
    MoeConfig {
        arch,
        domains: vec!["en".into(), "fr".into(), "py".into()],
        expert: Gpt2Config {
            vocab_size: VOCAB,
            n_positions: 32,
            n_embd: 16,
            n_layer: 2,
            n_head: 2,
            tie_word_embeddings: tied,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            ..Gpt2Config::default()
        },
        common_expert: arch == Arch::MoeCe,
        low_confidence_to_common: true,
    }
}

fn build(c: &MoeConfig, seed: i64) -> (nn::VarStore, MoeModel) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = MoeModel::new(&vs.root(), c).unwrap();
    // Larger weights than GPT-2's init give peaked, non-tied greedy choices.
    tch::no_grad(|| {
        for (_, mut t) in m.named_parameters() {
            let noise = t.randn_like() * 0.3;
            let _ = t.g_add_(&noise);
        }
    });
    (vs, m)
}

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: n,
        ..GenerationConfig::default()
    }
}

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![1, 5, 9, 11], vec![1, 40], vec![1, 7, 7, 30, 31, 32, 3]]
}

/// Greedy decoding by full forward passes of the whole sequence (no KV cache).
fn reference(model: &MoeModel, prompt: &[i64], active: &[ExpertId], n: usize) -> Vec<i64> {
    let _g = tch::no_grad_guard();
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let ids = Tensor::from_slice(&seq).view([1, seq.len() as i64]);
        let o = model
            .forward_active(&ids, &[active.to_vec()], false)
            .unwrap();
        let next = o.logits.select(1, seq.len() as i64 - 1).argmax(-1, false);
        let t = next.int64_value(&[0]);
        out.push(t);
        seq.push(t);
    }
    out
}

#[test]
fn routed_generation_equals_the_exported_expert_alone() {
    for (arch, tied) in [(Arch::Jeet, false), (Arch::MoeCe, true)] {
        let c = cfg(arch, tied);
        let (_vs, model) = build(&c, 3);
        let tmp = tempfile::tempdir().unwrap();
        for (e, name) in c.domains.iter().enumerate() {
            let dir = model.export_expert(name, &tmp.path().join(name)).unwrap();
            let (_evs, alone) = Gpt2LmHeadModel::from_pretrained(&dir, Device::Cpu).unwrap();
            let want = mome_experts::generate(&alone, &prompts(), &greedy(12)).unwrap();
            let router = LabelRouter::new(c.domains.clone(), name).unwrap();
            let got = generate_routed(
                &model,
                &router,
                &Setting::routed(false),
                &prompts(),
                &greedy(12),
            )
            .unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.active, vec![ExpertId::Domain(e)]);
                assert_eq!(&g.tokens, w, "{arch:?} expert {name}");
            }
            // The same with sampling: one group, one stream, same draws.
            let sampled = GenerationConfig {
                temperature: 0.9,
                top_k: 20,
                top_p: 0.9,
                seed: 7,
                ..greedy(10)
            };
            let want = mome_experts::generate(&alone, &prompts(), &sampled).unwrap();
            let got = generate_routed(
                &model,
                &router,
                &Setting::routed(false),
                &prompts(),
                &sampled,
            )
            .unwrap();
            let got: Vec<Vec<i64>> = got.into_iter().map(|g| g.tokens).collect();
            assert_eq!(got, want, "{arch:?} expert {name}, sampled");
        }
    }
}

#[test]
fn combined_settings_equal_full_forward_passes() {
    // MoE-CE: routed + common (mean of hidden states, shared head).
    let c = cfg(Arch::MoeCe, false);
    let (_vs, model) = build(&c, 5);
    let choices: Vec<ExpertChoice> = [2usize, 0, 1]
        .iter()
        .map(|&e| ExpertChoice::label(e, 3))
        .collect();
    let got = generate(
        &model,
        &prompts(),
        &choices,
        &Setting::routed(true),
        &greedy(10),
    )
    .unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let active = vec![ExpertId::Domain(choices[i].expert), ExpertId::Common];
        assert_eq!(got[i], reference(&model, p, &active, 10), "prompt {i}");
    }
    // Averaging en + py, whatever the routing.
    let s: Setting = "common=false,used=en+py,average=true".parse().unwrap();
    let got = generate(&model, &prompts(), &choices, &s, &greedy(8)).unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let active = vec![ExpertId::Domain(0), ExpertId::Domain(2)];
        assert_eq!(got[i], reference(&model, p, &active, 8), "prompt {i}");
    }
    // PLE-like: separate embeddings and heads per expert (mean of the logits).
    let mut pc = cfg(Arch::Ple, true);
    pc.common_expert = true;
    let (_vs2, ple) = build(&pc, 9);
    let got = generate(
        &ple,
        &prompts(),
        &choices,
        &Setting::routed(true),
        &greedy(9),
    )
    .unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let active = vec![ExpertId::Domain(choices[i].expert), ExpertId::Common];
        assert_eq!(got[i], reference(&ple, p, &active, 9), "PLE prompt {i}");
    }
}

/// Routes by the first token after BOS: < 20 en, < 40 fr, else py; low confidence
/// when the prompt has no such token.
struct FirstToken(Vec<String>);

impl SequenceRouter for FirstToken {
    fn classes(&self) -> &[String] {
        &self.0
    }
    fn route(&self, ids: &[u32]) -> mome_moe::Result<Routing> {
        let (label, confident) = match ids.get(1) {
            Some(&t) if t < 20 => (0, true),
            Some(&t) if t < 40 => (1, true),
            Some(_) => (2, true),
            None => (0, false),
        };
        let mut probabilities = vec![0.1; 3];
        probabilities[label] = 0.8;
        Ok(Routing {
            label,
            probabilities,
            confident,
        })
    }
}

#[test]
fn prompts_are_routed_one_by_one_and_bad_input_is_rejected() {
    let c = cfg(Arch::MoeCe, false);
    let (_vs, model) = build(&c, 11);
    // Router classes in another order than the experts: mapped by name.
    let router = FirstToken(vec!["fr".into(), "en".into(), "py".into()]);
    let mut ps = prompts();
    ps.push(vec![1]);
    let r = route_prompts(&model, &router, &ps).unwrap();
    let experts: Vec<usize> = r.iter().map(|(_, c)| c.expert).collect();
    assert_eq!(experts, vec![1, 2, 1, 1]);
    assert!(!r[3].1.confident);
    let g = generate_routed(&model, &router, &Setting::routed(true), &ps, &greedy(4)).unwrap();
    assert_eq!(g[0].active, vec![ExpertId::Domain(1), ExpertId::Common]);
    assert_eq!(g[1].active, vec![ExpertId::Domain(2), ExpertId::Common]);
    // not confident: the common expert alone
    assert_eq!(g[3].active, vec![ExpertId::Common]);
    for (i, x) in g.iter().enumerate() {
        assert_eq!(x.tokens.len(), 4);
        assert_eq!(
            x.tokens,
            reference(&model, &ps[i], &x.active, 4),
            "prompt {i}"
        );
    }

    // A router naming a domain the model lacks: error before any work.
    let bad = FirstToken(vec!["en".into(), "de".into(), "py".into()]);
    let e = generate_routed(&model, &bad, &Setting::routed(false), &ps, &greedy(4))
        .unwrap_err()
        .to_string();
    assert!(e.contains("de"), "{e}");
    let label = ExpertChoice::label(0, 3);
    let one = |p: Vec<i64>, n: usize| {
        generate(
            &model,
            &[p],
            std::slice::from_ref(&label),
            &Setting::routed(false),
            &greedy(n),
        )
    };
    assert!(one(vec![], 2).is_err());
    assert!(one(vec![1, VOCAB], 2).is_err());
    assert!(one(vec![1; 30], 3).is_err()); // 30 + 3 > 32 positions
    assert!(one(vec![1, 2], 0).unwrap()[0].is_empty());
    // setting naming an unknown expert, or a common expert on JEET
    let s: Setting = "used=de".parse().unwrap();
    assert!(generate(&model, &ps, &vec![label.clone(); 4], &s, &greedy(2)).is_err());
    let (_vs2, jeet) = build(&cfg(Arch::Jeet, false), 1);
    assert!(generate(
        &jeet,
        &ps,
        &vec![label.clone(); 4],
        &Setting::routed(true),
        &greedy(2)
    )
    .is_err());
    assert!(generate(&model, &ps, &[label], &Setting::routed(false), &greedy(2)).is_err());
}
