//! Generation: cached vs uncached, seeds, EOS, validation.

mod common;

use common::{spread_model, tiny_config};
use mome_experts::{generate, Error, GenerationConfig, Gpt2Input, Gpt2LmHeadModel};
use tch::{Kind, Tensor};

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![5, 9, 33, 12, 60], vec![40, 41], vec![7, 8, 9]]
}

/// Greedy decoding without a cache: each step re-runs the whole left-padded batch.
fn greedy_uncached(
    model: &Gpt2LmHeadModel,
    prompts: &[Vec<i64>],
    steps: usize,
    pad: i64,
) -> Vec<Vec<i64>> {
    let mut seqs: Vec<Vec<i64>> = prompts.to_vec();
    let b = seqs.len() as i64;
    for _ in 0..steps {
        let len = seqs.iter().map(Vec::len).max().unwrap();
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for s in &seqs {
            ids.extend(std::iter::repeat_n(pad, len - s.len()).chain(s.iter().copied()));
            mask.extend(
                std::iter::repeat_n(0i64, len - s.len()).chain(std::iter::repeat_n(1, s.len())),
            );
        }
        let ids = Tensor::from_slice(&ids).view([b, len as i64]);
        let mask = Tensor::from_slice(&mask).view([b, len as i64]);
        let pos = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let logits = model
            .forward(
                Gpt2Input::ids(&ids)
                    .attention_mask(&mask)
                    .position_ids(&pos),
            )
            .unwrap()
            .logits;
        let next =
            Vec::<i64>::try_from(&logits.select(1, len as i64 - 1).argmax(-1, false)).unwrap();
        for (s, t) in seqs.iter_mut().zip(next) {
            s.push(t);
        }
    }
    seqs.iter()
        .zip(prompts)
        .map(|(s, p)| s[p.len()..].to_vec())
        .collect()
}

#[test]
fn cached_greedy_equals_uncached_recomputation() {
    let (_vs, model) = spread_model(&tiny_config(), 11);
    let cfg = GenerationConfig {
        max_new_tokens: 12,
        pad_token_id: 2,
        ..Default::default()
    };
    let got = generate(&model, &prompts(), &cfg).unwrap();
    let want = greedy_uncached(&model, &prompts(), 12, 2);
    assert_eq!(got, want);
    assert!(got.iter().all(|s| s.len() == 12));
    // each prompt alone (no padding) gives the same tokens as in the batch
    for (p, g) in prompts().iter().zip(&got) {
        assert_eq!(
            &generate(&model, std::slice::from_ref(p), &cfg).unwrap()[0],
            g
        );
    }
    // not degenerate: several distinct tokens
    let mut all: Vec<i64> = got.concat();
    all.sort();
    all.dedup();
    assert!(all.len() > 3, "{got:?}");
}

#[test]
fn each_sequence_stops_at_its_eos() {
    let (_vs, model) = spread_model(&tiny_config(), 12);
    let base = GenerationConfig {
        max_new_tokens: 10,
        ..Default::default()
    };
    let free = generate(&model, &prompts(), &base).unwrap();
    let eos = free[0][2];
    let cfg = GenerationConfig {
        eos_token_id: Some(eos),
        ..base
    };
    let got = generate(&model, &prompts(), &cfg).unwrap();
    for (g, f) in got.iter().zip(&free) {
        let cut = f.iter().position(|&t| t == eos).map_or(f.len(), |i| i + 1);
        assert_eq!(g, &f[..cut]);
    }
    assert!(got[0].len() <= 3 && got[0].last() == Some(&eos));
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let (_vs, model) = spread_model(&tiny_config(), 13);
    let cfg = GenerationConfig {
        max_new_tokens: 10,
        temperature: 1.0,
        seed: 42,
        ..Default::default()
    };
    let a = generate(&model, &prompts(), &cfg).unwrap();
    let b = generate(&model, &prompts(), &cfg).unwrap();
    assert_eq!(a, b);
    let c = generate(
        &model,
        &prompts(),
        &GenerationConfig {
            seed: 43,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a, c, "another seed should give other samples");
    // top_k = 1 and a tiny top_p are greedy
    let greedy = generate(
        &model,
        &prompts(),
        &GenerationConfig {
            temperature: 0.0,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_eq!(
        generate(
            &model,
            &prompts(),
            &GenerationConfig {
                top_k: 1,
                ..cfg.clone()
            }
        )
        .unwrap(),
        greedy
    );
    assert_eq!(
        generate(
            &model,
            &prompts(),
            &GenerationConfig {
                top_p: 1e-6,
                ..cfg.clone()
            }
        )
        .unwrap(),
        greedy
    );
    // top_k = 3: every sampled token is among the 3 most likely of its step
    let k3 = GenerationConfig {
        top_k: 3,
        max_new_tokens: 1,
        ..cfg
    };
    for seed in 0..20 {
        let t = generate(
            &model,
            &prompts()[..1],
            &GenerationConfig { seed, ..k3.clone() },
        )
        .unwrap()[0][0];
        let ids = Tensor::from_slice(&prompts()[0]).unsqueeze(0);
        let logits = model
            .forward(Gpt2Input::ids(&ids))
            .unwrap()
            .logits
            .select(1, 4)
            .squeeze();
        let top = Vec::<i64>::try_from(&logits.topk(3, -1, true, true).1).unwrap();
        assert!(top.contains(&t), "{t} not in {top:?}");
    }
}

#[test]
fn invalid_generation_requests_are_refused() {
    let (_vs, model) = spread_model(&tiny_config(), 14);
    let ok = GenerationConfig {
        max_new_tokens: 4,
        ..Default::default()
    };
    for cfg in [
        GenerationConfig {
            temperature: -1.0,
            ..ok.clone()
        },
        GenerationConfig {
            top_p: 0.0,
            ..ok.clone()
        },
        GenerationConfig {
            top_p: 1.5,
            ..ok.clone()
        },
        GenerationConfig {
            pad_token_id: 64,
            ..ok.clone()
        },
        GenerationConfig {
            eos_token_id: Some(-1),
            ..ok.clone()
        },
    ] {
        assert!(
            matches!(generate(&model, &prompts(), &cfg), Err(Error::Config(_))),
            "{cfg:?}"
        );
    }
    assert!(matches!(
        generate(&model, &[vec![]], &ok),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        generate(&model, &[vec![1, 99]], &ok),
        Err(Error::TokenOutOfRange {
            id: 99,
            vocab_size: 64
        })
    ));
    let long = GenerationConfig {
        max_new_tokens: 28,
        ..ok.clone()
    };
    assert!(
        matches!(generate(&model, &prompts(), &long), Err(Error::Input(m)) if m.contains("n_positions"))
    );
    // exactly at the limit works
    let exact = GenerationConfig {
        max_new_tokens: 27,
        ..ok.clone()
    };
    assert_eq!(generate(&model, &prompts(), &exact).unwrap()[0].len(), 27);
    assert!(generate(&model, &[], &ok).unwrap().is_empty());
    assert_eq!(
        generate(
            &model,
            &prompts(),
            &GenerationConfig {
                max_new_tokens: 0,
                ..ok
            }
        )
        .unwrap(),
        vec![Vec::<i64>::new(); 3]
    );
}
