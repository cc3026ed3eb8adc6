//! Integration tests of mome-moe: routing, freezing, grid, save/load, export, errors.

use std::path::Path;

use mome_core::data::ShardBatches;
use mome_core::trainer::TrainConfig;
use mome_data::sampler::{BatchSampler, SamplerConfig, SamplerKind};
use mome_data::shards::{ShardSet, ShardWriter};
use mome_experts::{Gpt2Config, Gpt2Input, Gpt2LmHeadModel};
use mome_moe::{
    build_ple, evaluate_settings, paper_grid, train_moe, Arch, CrossEntropy, EvalOptions,
    ExpertChoice, ExpertId, LabelRouter, MoeConfig, MoeModel, ResolvedSetting, RunOptions, Setting,
    UsedExperts,
};
use tch::{nn, Device, Kind, Tensor};

const VOCAB: i64 = 61;
const SEQ: usize = 12;

fn expert_cfg(tied: bool, dropout: f64) -> Gpt2Config {
    Gpt2Config {
        vocab_size: VOCAB,
        n_positions: 16,
        n_embd: 16,
        n_layer: 2,
        n_head: 2,
        resid_pdrop: dropout,
        embd_pdrop: dropout,
        attn_pdrop: dropout,
        tie_word_embeddings: tied,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        ..Gpt2Config::default()
    }
}

fn moe_cfg(arch: Arch, domains: &[&str], tied: bool) -> MoeConfig {
    MoeConfig {
        arch,
        domains: domains.iter().map(|s| s.to_string()).collect(),
        expert: expert_cfg(tied, 0.0),
        common_expert: arch == Arch::MoeCe,
        low_confidence_to_common: true,
    }
}

fn build(cfg: &MoeConfig, seed: i64) -> (nn::VarStore, MoeModel) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = MoeModel::new(&vs.root(), cfg).unwrap();
    (vs, m)
}

fn ids(rows: usize, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(VOCAB, [rows as i64, SEQ as i64], (Kind::Int64, Device::Cpu))
}

/// An independent reference: the expert's tensors in a plain `Gpt2LmHeadModel`.
fn reference(model: &MoeModel, id: ExpertId) -> (nn::VarStore, Gpt2LmHeadModel) {
    let (cfg, tensors) = model.expert_hf_tensors(id).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Gpt2LmHeadModel::new(&vs.root(), &cfg).unwrap();
    m.load_hf_tensors(&vs, tensors, Path::new("mem")).unwrap();
    (vs, m)
}

fn ref_logits(m: &Gpt2LmHeadModel, ids: &Tensor) -> Tensor {
    m.forward(Gpt2Input::ids(ids)).unwrap().logits
}

fn close(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.allclose(b, 1e-5, 1e-5, false)
}

fn snapshot(m: &MoeModel) -> Vec<(String, Tensor)> {
    m.named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

#[test]
fn mixed_batch_routes_each_sequence_to_its_expert() {
    let cfg = moe_cfg(Arch::MoeCe, &["en", "fr", "py"], false);
    let (_vs, model) = build(&cfg, 1);
    let x = ids(5, 7);
    let route = [2usize, 0, 1, 2, 0];
    let choices: Vec<ExpertChoice> = route.iter().map(|&e| ExpertChoice::label(e, 3)).collect();
    let refs: Vec<_> = (0..3)
        .map(|e| reference(&model, ExpertId::Domain(e)))
        .collect();
    let _g = tch::no_grad_guard();
    let out = model
        .forward(&x, &choices, &Setting::routed(false), false)
        .unwrap();
    assert_eq!(out.logits.size(), [5, SEQ as i64, VOCAB]);
    for (i, &e) in route.iter().enumerate() {
        assert_eq!(out.active[i], vec![ExpertId::Domain(e)]);
        let row = x.narrow(0, i as i64, 1);
        let got = out.logits.narrow(0, i as i64, 1);
        for (k, (_, r)) in refs.iter().enumerate() {
            let want = ref_logits(r, &row);
            // matches its own expert alone, and no other expert
            assert_eq!(close(&got, &want), k == e, "sequence {i}, expert {k}");
        }
    }
    // routed + common: the mean of the two experts' final hidden states, then the head
    let out = model
        .forward(&x, &choices, &Setting::routed(true), false)
        .unwrap();
    let emb = model.embeddings_of(ExpertId::Common).unwrap();
    for (i, &e) in route.iter().enumerate() {
        assert_eq!(out.active[i], vec![ExpertId::Domain(e), ExpertId::Common]);
        let row = x.narrow(0, i as i64, 1);
        let pos = Tensor::arange(SEQ as i64, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let h0 = Tensor::embedding(emb.wte(), &row, -1, false, false)
            + Tensor::embedding(emb.wpe(), &pos, -1, false, false);
        let h = |id| {
            model
                .stack(id)
                .unwrap()
                .forward(&h0, None, None, false, false)
                .unwrap()
                .last_hidden_state
        };
        let mean = (h(ExpertId::Domain(e)) + h(ExpertId::Common)) / 2.0;
        let want = mean.linear::<Tensor>(emb.head(), None);
        assert!(close(&out.logits.narrow(0, i as i64, 1), &want));
    }
}

/// A single-domain batch (every row to one expert, the bench's and the blocks
/// sampler's case) takes the expert's output whole; alone and with the common expert it
/// gives what the gathered path of a mixed batch gives for the same sequences.
#[test]
fn single_domain_batch_matches_the_gathered_path() {
    let cfg = moe_cfg(Arch::MoeCe, &["en", "fr"], false);
    let (_vs, model) = build(&cfg, 4);
    let x = ids(3, 9);
    let choices = vec![ExpertChoice::label(1, 2); 3];
    let _g = tch::no_grad_guard();
    for common in [false, true] {
        let whole = model
            .forward(&x, &choices, &Setting::routed(common), false)
            .unwrap();
        // Row 0 to the other expert: rows 1 and 2 go through the gathered path.
        let mut mixed_choices = choices.clone();
        mixed_choices[0] = ExpertChoice::label(0, 2);
        let mixed = model
            .forward(&x, &mixed_choices, &Setting::routed(common), false)
            .unwrap();
        assert!(
            close(&whole.logits.narrow(0, 1, 2), &mixed.logits.narrow(0, 1, 2)),
            "common={common}"
        );
        assert!(!close(
            &whole.logits.narrow(0, 0, 1),
            &mixed.logits.narrow(0, 0, 1)
        ));
    }
    let (_rvs, r) = reference(&model, ExpertId::Domain(1));
    let out = model
        .forward(&x, &choices, &Setting::routed(false), false)
        .unwrap();
    assert!(close(&out.logits, &ref_logits(&r, &x)));
}

/// `[train.kernels] add_layer_norm` reaches every expert, the common one included.
#[test]
fn kernels_reach_every_expert() {
    use mome_core::fusion::{FusionMode, KernelConfig};
    let cfg = moe_cfg(Arch::MoeCe, &["en", "fr"], false);
    let (_vs, mut model) = build(&cfg, 5);
    model.set_kernels(&KernelConfig {
        add_layer_norm: FusionMode::Fused,
        ..Default::default()
    });
    let ids = model.expert_ids();
    assert!(ids.contains(&ExpertId::Common));
    for id in ids {
        assert_eq!(
            model.stack(id).unwrap().add_layer_norm(),
            FusionMode::Fused,
            "{id:?}"
        );
    }
}

#[test]
fn low_confidence_goes_to_common_expert_alone() {
    let cfg = moe_cfg(Arch::MoeCe, &["en", "fr"], true);
    let (_vs, model) = build(&cfg, 2);
    let s = ResolvedSetting::new(&Setting::routed(true), &cfg).unwrap();
    let mut c = ExpertChoice::label(1, 2);
    assert_eq!(s.active(&c), vec![ExpertId::Domain(1), ExpertId::Common]);
    c.confident = false;
    assert_eq!(s.active(&c), vec![ExpertId::Common]);
    let x = ids(2, 3);
    let _g = tch::no_grad_guard();
    let out = model
        .forward(
            &x,
            &[c.clone(), ExpertChoice::label(0, 2)],
            &Setting::routed(true),
            false,
        )
        .unwrap();
    assert_eq!(out.active[0], vec![ExpertId::Common]);
    let (_rvs, r) = reference(&model, ExpertId::Common);
    assert!(close(
        &out.logits.narrow(0, 0, 1),
        &ref_logits(&r, &x.narrow(0, 0, 1))
    ));
}

#[test]
fn paper_grid_settings_produce_their_combinations() {
    use ExpertId::{Common as C, Domain as D};
    let cfg = moe_cfg(Arch::MoeCe, &["en", "fr", "de", "py"], false);
    let grid = paper_grid();
    assert_eq!(grid.len(), 21);
    // a sequence routed to fr (index 1) with a one-hot label routing
    let fr = ExpertChoice::label(1, 4);
    let expected: Vec<Vec<ExpertId>> = vec![
        vec![D(1)],                   // F, en fr de py, F: routed
        vec![D(0)],                   // F, en
        vec![D(0), C],                // T, en
        vec![D(1)],                   // F, fr
        vec![D(1), C],                // T, fr
        vec![D(2)],                   // F, de
        vec![D(2), C],                // T, de
        vec![D(3)],                   // F, py
        vec![D(3), C],                // T, py
        vec![D(1), C],                // T, all, routed + common
        vec![C],                      // T, none
        vec![D(0)],                   // F, en py: fr not used, tie -> first used
        vec![D(1)],                   // F, fr py: routed fr
        vec![D(2)],                   // F, de py: tie -> de
        vec![D(0), D(3)],             // F, en py, average
        vec![D(1), D(3)],             // F, fr py, average
        vec![D(2), D(3)],             // F, de py, average
        vec![D(0), C],                // T, en py
        vec![D(1), C],                // T, fr py
        vec![D(2), C],                // T, de py
        vec![D(0), D(1), D(2), D(3)], // F, all, average
    ];
    for (i, (s, want)) in grid.iter().zip(&expected).enumerate() {
        let r = ResolvedSetting::new(s, &cfg).unwrap();
        assert_eq!(&r.active(&fr), want, "setting {} ({s})", i + 1);
    }
    // a non-label routing picks the most probable used expert
    let soft = ExpertChoice {
        expert: 1,
        probabilities: vec![0.1, 0.5, 0.0, 0.4],
        confident: true,
    };
    let r = ResolvedSetting::new(&grid[11], &cfg).unwrap(); // F, en py, F
    assert_eq!(r.active(&soft), vec![D(3)]);
    // the forward pass does what the active lists say: averaged logits
    let (_vs, model) = build(&cfg, 4);
    let x = ids(3, 5);
    let _g = tch::no_grad_guard();
    let choices = vec![fr.clone(); 3];
    let avg = model
        .forward(&x, &choices, &grid[14], false)
        .unwrap()
        .logits;
    let en = model
        .forward_active(&x, &vec![vec![D(0)]; 3], false)
        .unwrap()
        .logits;
    let py = model
        .forward_active(&x, &vec![vec![D(3)]; 3], false)
        .unwrap()
        .logits;
    assert!(close(&avg, &((en.shallow_clone() + &py) / 2.0)));
    assert!(!close(&avg, &en));
    let all = model
        .forward(&x, &choices, &grid[20], false)
        .unwrap()
        .logits;
    let mut sum = Tensor::zeros_like(&all);
    for e in 0..4 {
        sum += model
            .forward_active(&x, &vec![vec![D(e)]; 3], false)
            .unwrap()
            .logits;
    }
    assert!(close(&all, &(sum / 4.0)));
    let common = model
        .forward(&x, &choices, &grid[10], false)
        .unwrap()
        .logits;
    let (_rvs, r) = reference(&model, C);
    assert!(close(&common, &ref_logits(&r, &x)));
    // parsing the CLI form
    let p: Setting = "common=true,used=en+py,average=false".parse().unwrap();
    assert_eq!(p, grid[17]);
    assert_eq!(p.used, UsedExperts::Some(vec!["en".into(), "py".into()]));
}

#[test]
fn unknown_domains_are_errors_before_any_work() {
    let cfg = moe_cfg(Arch::Jeet, &["en", "fr"], true);
    let (_vs, model) = build(&cfg, 6);
    let x = ids(2, 1);
    let router = LabelRouter::new(vec!["en".into(), "xx".into()], "en").unwrap();
    let e = model.route_batch(&router, &x).unwrap_err().to_string();
    assert!(e.contains("xx"), "{e}");
    let s: Setting = "used=en+de".parse().unwrap();
    let e = model
        .forward(
            &x,
            &[ExpertChoice::label(0, 2), ExpertChoice::label(0, 2)],
            &s,
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("de"), "{e}");
    let e = model
        .forward(
            &x,
            &[ExpertChoice::label(0, 2), ExpertChoice::label(0, 2)],
            &Setting::routed(true),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("common"), "{e}");
    assert!(model
        .forward(
            &x,
            &[ExpertChoice::label(5, 2), ExpertChoice::label(0, 2)],
            &Setting::routed(false),
            false
        )
        .is_err());
    assert!(model.expert_id("de").is_err());
}

fn write_shards(dir: &Path, domains: &[&str], per_domain: usize) -> ShardSet {
    let mut w = ShardWriter::new(dir, VOCAB as usize, SEQ, &"ab".repeat(32), 1, 2).unwrap();
    for (k, d) in domains.iter().enumerate() {
        for split in ["train", "validation"] {
            for i in 0..per_domain {
                // domain-specific token patterns
                let row: Vec<u32> = (0..SEQ)
                    .map(|j| ((k * 13 + i * 3 + j * (k + 1)) % (VOCAB as usize - 3) + 3) as u32)
                    .collect();
                w.push_sequence(split, d, &row).unwrap();
            }
        }
    }
    w.finish().unwrap();
    ShardSet::open(dir).unwrap()
}

#[test]
fn jeet_step_freezes_other_experts_and_trains_routed_shared_and_common() {
    let tmp = tempfile::tempdir().unwrap();
    let domains = ["en", "fr", "py"];
    let shard_dir = tmp.path().join("shards");
    let shards = write_shards(&shard_dir, &domains, 6);
    let mut cfg = moe_cfg(Arch::MoeCe, &domains, false);
    cfg.expert = expert_cfg(false, 0.1);
    let (vs, model) = build(&cfg, 9);
    let scfg = SamplerConfig {
        kind: SamplerKind::Blocks,
        batch_size: 2,
        seed: 3,
        domains: vec![],
    };
    // the domains of the first two batches, as the trainer will see them
    let mut sampler = BatchSampler::new(&shards, "train", scfg.clone()).unwrap();
    let names = shards.domains("train").unwrap();
    let routed: Vec<usize> = (0..2)
        .map(|_| {
            cfg.domain_index(&names[sampler.next_batch().domain.unwrap()])
                .unwrap()
        })
        .collect();
    assert_ne!(routed[0], routed[1]);
    let run = tmp.path().join("run");
    let mut states = vec![snapshot(&model)];
    for step in 1..=2u64 {
        let source =
            ShardBatches::new(ShardSet::open(&shard_dir).unwrap(), "train", scfg.clone()).unwrap();
        let mut tc = TrainConfig::new(step, 1e-2);
        tc.optimizer.weight_decay = 0.1;
        tc.schedule = mome_core::schedule::ScheduleKind::Constant; // lr > 0 at every step
        tc.quiet = true;
        train_moe(
            &model,
            &vs,
            source,
            tc,
            &RunOptions {
                run_dir: &run,
                resume: step > 1,
                group: None,
                prefetch: true,
            },
            &mut CrossEntropy::default(),
            None,
        )
        .unwrap();
        states.push(snapshot(&model));
        // everything is trainable again afterwards
        assert!(model
            .named_parameters()
            .iter()
            .all(|(_, t)| t.requires_grad()));
    }
    for step in 1..=2usize {
        let (before, after) = (&states[step - 1], &states[step]);
        let changed = |prefix: &str| -> (usize, usize) {
            let mut n = (0, 0);
            for ((name, a), (name2, b)) in before.iter().zip(after) {
                assert_eq!(name, name2);
                if name.starts_with(prefix) {
                    n.1 += 1;
                    if !a.equal(b) {
                        n.0 += 1;
                    }
                }
            }
            n
        };
        for (i, d) in domains.iter().enumerate() {
            let (c, total) = changed(&format!("experts.{d}."));
            assert!(total > 0);
            if i == routed[step - 1] {
                assert_eq!(
                    c, total,
                    "step {step}: routed expert {d}: every tensor moves"
                );
            } else {
                // in step 2 the expert of step 1 has momentum and a (zeroed) gradient:
                // only freezing keeps AdamW from moving it
                assert_eq!(c, 0, "step {step}: frozen expert {d} must be bit-identical");
            }
        }
        for p in ["shared.wte", "shared.wpe", "lm_head", "common."] {
            let (c, total) = changed(p);
            assert!(
                total > 0 && c == total,
                "step {step}: {p}: {c}/{total} changed"
            );
        }
    }
}

#[test]
fn save_load_round_trip_and_exported_expert_match() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, tied) in [(Arch::MoeCe, false), (Arch::Jeet, true)] {
        let cfg = moe_cfg(arch, &["en", "fr", "de"], tied);
        let (_vs, model) = build(&cfg, 11);
        let dir = tmp.path().join(format!("moe-{}", arch.name()));
        model.save(&dir).unwrap();
        let (_vs2, back) = MoeModel::load(&dir, Device::Cpu).unwrap();
        assert_eq!(back.config(), model.config());
        let x = ids(4, 12);
        let choices: Vec<_> = [0, 2, 1, 2]
            .iter()
            .map(|&e| ExpertChoice::label(e, 3))
            .collect();
        let _g = tch::no_grad_guard();
        let s = Setting::routed(cfg.common_expert);
        let a = model.forward(&x, &choices, &s, false).unwrap().logits;
        let b = back.forward(&x, &choices, &s, false).unwrap().logits;
        assert!(a.equal(&b), "{arch:?}: logits differ after reload");
        // an exported expert is a plain GPT2LMHeadModel giving the restricted MoE's logits
        let out = tmp.path().join(format!("fr-{}", arch.name()));
        model.export_expert("fr", &out).unwrap();
        let (_evs, fr) = Gpt2LmHeadModel::from_pretrained(&out, Device::Cpu).unwrap();
        let only_fr: Setting = "common=false,used=fr,average=false".parse().unwrap();
        let moe_fr = model.forward(&x, &choices, &only_fr, false).unwrap().logits;
        assert!(close(&moe_fr, &ref_logits(&fr, &x)));
        // the folder's expert copy is the same checkpoint
        let (_evs2, fr2) =
            Gpt2LmHeadModel::from_pretrained(dir.join("experts/fr"), Device::Cpu).unwrap();
        assert!(ref_logits(&fr2, &x).equal(&ref_logits(&fr, &x)));
    }
}

#[test]
fn load_lists_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = moe_cfg(Arch::Jeet, &["en", "fr"], false);
    let (_vs, model) = build(&cfg, 13);
    let dir = tmp.path().join("moe");
    model.save(&dir).unwrap();
    // replace fr's checkpoint by one of another shape and another embedding
    let mut other = expert_cfg(false, 0.0);
    other.n_layer = 1;
    let ovs = nn::VarStore::new(Device::Cpu);
    let om = Gpt2LmHeadModel::new(&ovs.root(), &other).unwrap();
    std::fs::remove_dir_all(dir.join("experts/fr")).unwrap();
    om.save_pretrained(dir.join("experts/fr")).unwrap();
    let e = MoeModel::load(&dir, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("n_layer"), "{e}");
    assert!(e.contains("experts/fr: transformer.wte.weight"), "{e}");
    assert!(e.contains("experts.fr.h.1.attn.c_attn.weight"), "{e}");
}

#[test]
fn ple_keeps_each_students_embeddings_and_is_frozen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    let mut students = Vec::new();
    for (i, d) in ["en", "py"].iter().enumerate() {
        tch::manual_seed(100 + i as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt2LmHeadModel::new(&vs.root(), &expert_cfg(true, 0.0)).unwrap();
        let p = tmp.path().join(d);
        m.save_pretrained(&p).unwrap();
        dirs.push((d.to_string(), p));
        students.push((vs, m));
    }
    let (_vs, ple) = build_ple(&dirs, None, Device::Cpu).unwrap();
    assert_eq!(ple.arch(), Arch::Ple);
    assert!(ple
        .named_parameters()
        .iter()
        .all(|(_, t)| !t.requires_grad()));
    let x = ids(3, 21);
    let choices: Vec<_> = [1, 0, 1]
        .iter()
        .map(|&e| ExpertChoice::label(e, 2))
        .collect();
    let _g = tch::no_grad_guard();
    let out = ple
        .forward(&x, &choices, &Setting::routed(false), false)
        .unwrap();
    for (i, &e) in [1usize, 0, 1].iter().enumerate() {
        let row = x.narrow(0, i as i64, 1);
        assert!(close(
            &out.logits.narrow(0, i as i64, 1),
            &ref_logits(&students[e].1, &row)
        ));
    }
    // averaging PLE experts averages their logits
    let avg: Setting = "used=en+py,average=true".parse().unwrap();
    let a = ple.forward(&x, &choices, &avg, false).unwrap().logits;
    let want = (ref_logits(&students[0].1, &x) + ref_logits(&students[1].1, &x)) / 2.0;
    assert!(close(&a, &want));
    let dir = tmp.path().join("ple");
    ple.save(&dir).unwrap();
    let (_vs2, back) = MoeModel::load(&dir, Device::Cpu).unwrap();
    let b = back.forward(&x, &choices, &avg, false).unwrap().logits;
    assert!(a.equal(&b));
    // a student of another shape is refused
    let mut other = expert_cfg(true, 0.0);
    other.n_embd = 8;
    let ovs = nn::VarStore::new(Device::Cpu);
    Gpt2LmHeadModel::new(&ovs.root(), &other)
        .unwrap()
        .save_pretrained(tmp.path().join("bad"))
        .unwrap();
    dirs.push(("de".into(), tmp.path().join("bad")));
    let e = build_ple(&dirs, None, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("n_embd"), "{e}");
}

#[test]
fn grid_evaluation_matches_single_expert_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let domains = ["de", "en", "fr", "py"];
    let shards = write_shards(&tmp.path().join("shards"), &domains, 5);
    let cfg = moe_cfg(Arch::Jeet, &["en", "fr", "de", "py"], false);
    let (_vs, model) = build(&cfg, 17);
    let opts = EvalOptions {
        split: "validation".into(),
        max_sequences: 0,
        batch_size: 2,
        skip_unavailable: true,
    };
    let report = evaluate_settings(&model, &shards, &paper_grid(), &opts, None).unwrap();
    assert_eq!(report.settings.len(), 21);
    assert_eq!(
        report
            .settings
            .iter()
            .filter(|s| s.skipped.is_some())
            .count(),
        9
    );
    let routed = &report.settings[0];
    assert!(routed.skipped.is_none());
    for d in domains {
        // routed setting on domain d = expert d alone, evaluated as a plain model
        let out = tmp.path().join(format!("exp-{d}"));
        model.export_expert(d, &out).unwrap();
        let (_evs, m) = Gpt2LmHeadModel::from_pretrained(&out, Device::Cpu).unwrap();
        let r = mome_experts::eval::evaluate(&m, &shards, "validation", 0, 2).unwrap();
        approx::assert_relative_eq!(
            routed.domains[d].loss,
            r.domains[d].loss,
            max_relative = 1e-5
        );
        assert_eq!(routed.expert_sequences[d], 5);
    }
    // setting 2 (F, en, F) sends every domain to en
    assert_eq!(report.settings[1].expert_sequences.len(), 1);
    assert_eq!(report.settings[1].expert_sequences["en"], 20);
    let md = report.to_markdown();
    assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 22);
    assert!(md.contains("skipped"));
    // without skipping, a common setting on a model without one is an error
    let strict = EvalOptions {
        skip_unavailable: false,
        ..opts.clone()
    };
    assert!(evaluate_settings(&model, &shards, &paper_grid(), &strict, None).is_err());
    // shards with a domain the model lacks: error before any work
    let small = moe_cfg(Arch::Jeet, &["en", "fr"], false);
    let (_vs2, m2) = build(&small, 1);
    let e = evaluate_settings(&m2, &shards, &[Setting::routed(false)], &opts, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("de") && e.contains("py"), "{e}");
}

/// The paper's router, imported from scikit-learn by mome-router, routes sequences of
/// an MoE whose domains are in another order: each choice names the router's class.
#[test]
fn imported_seed_router_routes_by_class_name() {
    let params = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/seed/reference_router_params.json");
    let (router, samples) = mome_router::import_sklearn(&params).unwrap();
    let domains = ["py", "en", "fr", "de"];
    let mut cfg = moe_cfg(Arch::Jeet, &domains, true);
    cfg.expert.vocab_size = 32000;
    cfg.expert.n_positions = 2048;
    let (_vs, model) = build(&cfg, 3);
    let mut checked = 0;
    for s in samples.iter().filter(|s| !s.token_ids.is_empty()) {
        let row: Vec<i64> = s.token_ids.iter().map(|&i| i as i64).collect();
        let ids = Tensor::from_slice(&row).view([1, row.len() as i64]);
        let choice = &model.route_batch(&router, &ids).unwrap()[0];
        assert_eq!(domains[choice.expert], s.predicted, "sample {:?}", s.kind);
        let p_router = s.probabilities.iter().cloned().fold(f64::MIN, f64::max);
        assert!((choice.probabilities[choice.expert] as f64 - p_router).abs() < 1e-6);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} samples");
}

/// A grid report with skipped settings (NaN losses, `null` in JSON) reads back.
#[test]
fn an_eval_report_with_skipped_settings_round_trips_through_json() {
    let s = mome_moe::SettingEval {
        index: 2,
        setting: Setting::routed(true),
        skipped: Some("the model has no common expert".into()),
        domains: Default::default(),
        mean_loss: f64::NAN,
        active_parameters: 0,
        expert_sequences: Default::default(),
        routing_accuracy: None,
        tokens_per_second: 0.0,
        seconds: 0.0,
    };
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains("\"mean_loss\":null"), "{text}");
    let back: mome_moe::SettingEval = serde_json::from_str(&text).unwrap();
    assert!(back.mean_loss.is_nan());
    assert_eq!(back.setting, s.setting);
    assert_eq!(back.skipped, s.skipped);
}
