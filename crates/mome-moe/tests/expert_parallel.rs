//! Expert parallelism (feature `cuda`, run on the GPU machine): MoE-CE experts
//! placed on two devices of one process (`cuda:0` and `cuda:1` when there are two
//! GPUs, else `cuda:0` and the CPU) compute the same forward pass as the model on
//! one device, train the same (AdamW and clipping over parameters on two devices),
//! and save a model that loads back on one device.
#![cfg(feature = "cuda")]

mod common;

use std::path::Path;

use mome_core::data::ShardBatches;
use mome_core::trainer::TrainConfig;
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::ShardSet;
use mome_moe::routing::ExpertChoice;
use mome_moe::{train_moe, Arch, CrossEntropy, ExpertId, MoeConfig, MoeModel, RunOptions, Setting};
use tch::{nn, Device, Kind, Tensor};

const VOCAB: i64 = 53;
const SEQ: usize = 16;

fn cfg() -> MoeConfig {
    MoeConfig {
        arch: Arch::MoeCe,
        domains: vec!["en".into(), "fr".into(), "py".into()],
        expert: common::expert(VOCAB, 32, 2),
        common_expert: true,
        low_confidence_to_common: true,
    }
}

fn make_shards(dir: &Path) {
    common::shards(dir, VOCAB, SEQ, 16, 11, "ef");
}

fn other_device() -> Device {
    if tch::Cuda::device_count() > 1 {
        Device::Cuda(1)
    } else {
        Device::Cpu
    }
}

fn build(placed: bool) -> (nn::VarStore, MoeModel) {
    let vs = nn::VarStore::new(Device::Cuda(0));
    tch::manual_seed(0);
    let mut m = MoeModel::new(&vs.root(), &cfg()).unwrap();
    if placed {
        m.place_experts(&[Device::Cuda(0), other_device()]).unwrap();
    }
    (vs, m)
}

fn train(root: &Path, name: &str, model: &MoeModel, vs: &nn::VarStore) -> Vec<f64> {
    let source = ShardBatches::new(
        ShardSet::open(&root.join("shards")).unwrap(),
        "train",
        SamplerConfig {
            kind: SamplerKind::Blocks,
            batch_size: 4,
            seed: 1,
            domains: vec![],
        },
    )
    .unwrap();
    let mut t = TrainConfig::new(12, 2e-3);
    t.quiet = true;
    t.log_every = 1;
    t.clip_grad_norm = Some(0.5);
    let dir = root.join(name);
    train_moe(
        model,
        vs,
        source,
        t,
        &RunOptions {
            run_dir: &dir,
            resume: false,
            group: None,
            prefetch: true,
        },
        &mut CrossEntropy::default(),
        None,
    )
    .unwrap();
    mome_core::metrics::read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn experts_on_two_devices_match_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    make_shards(&tmp.path().join("shards"));
    let (vs1, one) = build(false);
    let (vs2, two) = build(true);
    let other = other_device();
    assert_eq!(two.expert_device(ExpertId::Domain(0)), Device::Cuda(0));
    assert_eq!(two.expert_device(ExpertId::Domain(1)), other);
    assert_eq!(two.expert_device(ExpertId::Common), other);
    let on_other = vs2
        .variables()
        .into_iter()
        .filter(|(n, _)| n.starts_with("experts.fr.") || n.starts_with("common."))
        .all(|(_, t)| t.device() == other);
    assert!(on_other, "fr and common blocks live on {other:?}");

    // Forward: every sequence through its expert and the common expert.
    let ids = Tensor::randint(VOCAB, [6, SEQ as i64], (Kind::Int64, Device::Cpu));
    let choices: Vec<ExpertChoice> = (0..6).map(|i| ExpertChoice::label(i % 3, 3)).collect();
    let s = Setting::routed(true);
    let a = one.forward(&ids, &choices, &s, false).unwrap().logits;
    let b = two.forward(&ids, &choices, &s, false).unwrap().logits;
    assert_eq!(b.device(), Device::Cuda(0));
    let d = (a - b).abs().max().double_value(&[]);
    assert!(d < 1e-4, "logits differ by {d}");

    // Training: the same loss curve.
    let la = train(tmp.path(), "one", &one, &vs1);
    let lb = train(tmp.path(), "two", &two, &vs2);
    assert_eq!(la.len(), 12);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
    assert!(la[11] < la[0]);

    // The saved model loads back on one device with the placed model's weights.
    let dir = two.save(&tmp.path().join("model")).unwrap();
    let (vs3, _m) = MoeModel::load(&dir, Device::Cpu).unwrap();
    let mut want: Vec<(String, Tensor)> = vs2.variables().into_iter().collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let got = vs3.variables();
    for (n, t) in want {
        let d = (t.to_device(Device::Cpu) - &got[&n])
            .abs()
            .max()
            .double_value(&[]);
        assert!(d == 0.0, "{n} differs by {d}");
    }
}
