//! Data-parallel MoE-CE training on the CPU: two ranks on threads (mome-core's
//! in-process `LocalGroup`) against one process on the same global batch, with KD
//! from a top-K teacher cache read for each rank's rows and adaptive weights. The
//! frozen domain experts have no gradient and are skipped by the all-reduce.

mod common;

use std::path::Path;
use std::sync::Mutex;

use approx::assert_abs_diff_eq;
use mome_core::data::ShardBatches;
use mome_core::dist::{GroupHandle, LocalGroup};
use mome_core::trainer::TrainConfig;
use mome_data::sampler::{SamplerConfig, SamplerKind};
use mome_data::shards::ShardSet;
use mome_distill::{
    build_cache, CacheBuildOptions, DistillSettings, KdLoss, StrategyConfig, TeacherSection,
    ValueDtype, DISTILL_METRICS,
};
use mome_experts::{Gpt2Config, Gpt2LmHeadModel};
use mome_moe::{train_moe, Arch, DistillLoss, MoeConfig, MoeModel, RunOptions};
use tch::{nn, Device, Tensor};

const VOCAB: i64 = 37;
const SEQ: usize = 12;

/// Model initialisation draws from libtorch's process-global generator.
static INIT: Mutex<()> = Mutex::new(());

fn shape() -> Gpt2Config {
    common::expert(VOCAB, 16, 1)
}

fn make_shards(dir: &Path) {
    common::shards(dir, VOCAB, SEQ, 12, 5, "ab");
}

/// Trains MoE-CE in `run_dir` as one rank of `group` (`None`: one process); returns
/// the final variables, sorted by name.
fn train(
    root: &Path,
    run_dir: &Path,
    group: Option<GroupHandle>,
    resume: bool,
) -> Vec<(String, Tensor)> {
    let cfg = MoeConfig {
        arch: Arch::MoeCe,
        domains: vec!["en".into(), "fr".into(), "py".into()],
        expert: shape(),
        common_expert: true,
        low_confidence_to_common: true,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = {
        let _g = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        MoeModel::new(&vs.root(), &cfg).unwrap()
    };
    let source = ShardBatches::new(
        ShardSet::open(&root.join("shards")).unwrap(),
        "train",
        SamplerConfig {
            kind: SamplerKind::Blocks,
            batch_size: 4,
            seed: 5,
            domains: vec![],
        },
    )
    .unwrap();
    let settings = DistillSettings {
        kd_chunk: None,
        loss: KdLoss::ForwardKl,
        temperature: 2.0,
        strategy: StrategyConfig::Adaptive {
            alpha: 0.5,
            history: Some(3),
        },
    };
    let teacher = TeacherSection {
        cache: Some(root.join("cache")),
        ..Default::default()
    };
    let mut loss = DistillLoss::new(
        &teacher,
        &settings,
        &cfg.expert,
        Device::Cpu,
        mome_core::Precision::Fp32,
    )
    .unwrap();
    let mut t = TrainConfig::new(9, 3e-3);
    t.quiet = true;
    t.log_every = 1;
    t.checkpoint_every = 3;
    t.clip_grad_norm = Some(1.0);
    train_moe(
        &model,
        &vs,
        source,
        t,
        &RunOptions {
            run_dir,
            resume,
            group: group.as_ref(),
            prefetch: true,
        },
        &mut loss,
        None,
    )
    .unwrap();
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn train_ranks(root: &Path, run_dir: &Path, resume: bool) -> Vec<(String, Tensor)> {
    let handles: Vec<_> = LocalGroup::new(2)
        .into_iter()
        .map(|g| {
            let (root, run_dir) = (root.to_path_buf(), run_dir.to_path_buf());
            std::thread::spawn(move || {
                train(&root, &run_dir, Some(GroupHandle::new(Box::new(g))), resume)
            })
        })
        .collect();
    let mut out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let w1 = out.pop().unwrap();
    let w0 = out.pop().unwrap();
    // The ranks stay identical.
    assert!(max_diff(&w0, &w1) == 0.0);
    w0
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    mome_core::tensor_io::max_abs_diff(a, b).unwrap()
}

fn lines(run_dir: &Path) -> Vec<serde_json::Value> {
    mome_core::metrics::read_metrics(&run_dir.join(DISTILL_METRICS)).unwrap()
}

#[test]
fn two_ranks_train_moe_ce_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    make_shards(&root.join("shards"));
    tch::manual_seed(9);
    let tvs = nn::VarStore::new(Device::Cpu);
    let t = Gpt2LmHeadModel::new(&tvs.root(), &shape()).unwrap();
    t.save_pretrained(root.join("teacher")).unwrap();
    build_cache(
        &root.join("teacher"),
        &root.join("shards"),
        &root.join("cache"),
        &CacheBuildOptions {
            top_k: 6,
            temperature: 2.0,
            value_dtype: ValueDtype::F16,
            splits: vec!["train".into()],
            batch_size: 8,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap();

    let single = train(root, &root.join("single"), None, false);
    let dp = train_ranks(root, &root.join("dp"), false);
    let d = max_diff(&single, &dp);
    assert!(d < 2e-4, "final weights differ by {d}");
    let (a, b) = (lines(&root.join("single")), lines(&root.join("dp")));
    assert_eq!(a.len(), 9);
    assert_eq!(b.len(), 9, "rank 0 alone writes the lines");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["domain"], y["domain"]);
        for k in ["alpha", "ce", "kd"] {
            assert_abs_diff_eq!(
                x[k].as_f64().unwrap(),
                y[k].as_f64().unwrap(),
                epsilon = 2e-5
            );
        }
    }
    // Resume from step 6: the same final weights and lines.
    std::fs::remove_dir_all(root.join("dp/checkpoints/step-00000009")).unwrap();
    let again = train_ranks(root, &root.join("dp"), true);
    assert!(max_diff(&dp, &again) < 1e-6);
    let c = lines(&root.join("dp"));
    assert_eq!(c.len(), 9);
    for (x, y) in b.iter().zip(&c) {
        assert_abs_diff_eq!(
            x["alpha"].as_f64().unwrap(),
            y["alpha"].as_f64().unwrap(),
            epsilon = 1e-9
        );
    }
}
