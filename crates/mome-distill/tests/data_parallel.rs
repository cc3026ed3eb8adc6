//! Data-parallel distillation on the CPU: two ranks on threads (mome-core's
//! in-process `LocalGroup`) against one process on the same global batch, with an
//! online teacher and with a top-K teacher cache read per rank, fixed and adaptive
//! weights. NCCL runs of the same code are in docs/gpu.md ("Several GPUs").

mod common;

use std::path::{Path, PathBuf};

use approx::assert_abs_diff_eq;
use common::*;
use mome_core::dist::{GroupHandle, LocalGroup};
use mome_core::metrics::read_metrics;
use mome_distill::{
    build_cache, run_distill_with_group, CacheBuildOptions, DistillParams, DistillSettings, KdLoss,
    StrategyConfig, TeacherSection, ValueDtype, DISTILL_METRICS,
};
use mome_experts::Gpt2LmHeadModel;
use tch::{Device, Tensor};

fn weights(model_dir: &Path) -> Vec<(String, Tensor)> {
    let (vs, _m) = Gpt2LmHeadModel::from_pretrained(model_dir, Device::Cpu).unwrap();
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    mome_core::tensor_io::max_abs_diff(a, b).unwrap()
}

/// Runs `job` as `world` ranks on threads; returns each rank's (rank, tokens seen).
fn run_ranks(job: &DistillParams, world: usize) -> Vec<(usize, u64)> {
    let handles: Vec<_> = LocalGroup::new(world)
        .into_iter()
        .map(|g| {
            let job = job.clone();
            std::thread::spawn(move || {
                let o = run_distill_with_group(
                    &job.check().unwrap(),
                    Some(GroupHandle::new(Box::new(g))),
                )
                .unwrap();
                (o.rank, o.summary.tokens_seen)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn distill_lines(dir: &Path) -> Vec<serde_json::Value> {
    read_metrics(&dir.join(DISTILL_METRICS)).unwrap()
}

fn compare(single: &Path, dp: &Path, steps: usize) {
    let (a, b) = (distill_lines(single), distill_lines(dp));
    assert_eq!(a.len(), steps, "{a:?}");
    assert_eq!(
        b.len(),
        steps,
        "rank 0 alone writes one line per step: {b:?}"
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        for k in ["alpha", "beta", "ce", "kd"] {
            assert_abs_diff_eq!(
                x[k].as_f64().unwrap(),
                y[k].as_f64().unwrap(),
                epsilon = 2e-5
            );
        }
    }
    let d = max_diff(&weights(&single.join("model")), &weights(&dp.join("model")));
    assert!(d < 2e-4, "final weights differ by {d}");
}

fn dp_job(
    root: &Path,
    name: &str,
    shards: &Path,
    teacher: TeacherSection,
    s: StrategyConfig,
) -> DistillParams {
    let mut t = train_cfg(10, 5e-3, 3);
    t.checkpoint_every = 5;
    job(
        &root.join(name),
        shards,
        model(1, 16, 2),
        teacher,
        t,
        DistillSettings {
            kd_chunk: None,
            loss: KdLoss::ForwardKl,
            temperature: 2.0,
            strategy: s,
        },
        8,
    )
}

#[test]
fn two_ranks_distil_like_one_process() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let shards = make_shards(&root.path().join("shards"), 21, 48);
    let teacher = train_teacher(root.path(), &shards, 10);
    let cache: PathBuf = root.path().join("cache");
    build_cache(
        &teacher,
        &shards,
        &cache,
        &CacheBuildOptions {
            top_k: 8,
            temperature: 2.0,
            value_dtype: ValueDtype::F16,
            splits: vec!["train".into()],
            batch_size: 16,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap();
    let adaptive = StrategyConfig::Adaptive {
        alpha: 0.5,
        history: Some(3),
    };
    let cases = [
        (
            "cache-adaptive",
            TeacherSection {
                cache: Some(cache.clone()),
                ..Default::default()
            },
            adaptive.clone(),
        ),
        (
            "online-fixed",
            TeacherSection {
                dir: Some(teacher.clone()),
                ..Default::default()
            },
            StrategyConfig::Fixed { alpha: 0.5 },
        ),
    ];
    for (name, teacher, strategy) in cases {
        let single = dp_job(
            root.path(),
            &format!("{name}-1"),
            &shards,
            teacher.clone(),
            strategy.clone(),
        );
        let tokens = run_distill_with_group(&single.check().unwrap(), None)
            .unwrap()
            .summary
            .tokens_seen;
        assert_eq!(tokens, 10 * 8 * SEQ as u64);
        let dp = dp_job(
            root.path(),
            &format!("{name}-2"),
            &shards,
            teacher,
            strategy,
        );
        // Each rank reads its 4 rows of the shards; the token counts are global.
        assert_eq!(run_ranks(&dp, 2), vec![(0, tokens), (1, tokens)]);
        compare(&single.out_dir, &dp.out_dir, 10);
        // Rank 0 alone wrote checkpoints and the model.
        assert_eq!(
            std::fs::read_dir(dp.out_dir.join("checkpoints"))
                .unwrap()
                .count(),
            2
        );
    }

    // Resume: the data-parallel adaptive run cut back to step 5 continues exactly.
    let dp = dp_job(
        root.path(),
        "cache-adaptive-2",
        &shards,
        TeacherSection {
            cache: Some(cache.clone()),
            ..Default::default()
        },
        adaptive,
    );
    let full = distill_lines(&dp.out_dir);
    std::fs::remove_dir_all(dp.out_dir.join("checkpoints").join("step-00000010")).unwrap();
    let mut resumed = dp.clone();
    resumed.resume = true;
    run_ranks(&resumed, 2);
    let again = distill_lines(&dp.out_dir);
    assert_eq!(again.len(), 10);
    for (x, y) in full.iter().zip(&again) {
        for k in ["alpha", "beta", "ce", "kd"] {
            assert_abs_diff_eq!(
                x[k].as_f64().unwrap(),
                y[k].as_f64().unwrap(),
                epsilon = 1e-6
            );
        }
    }

    // A global batch that does not split evenly is refused before any work.
    let mut odd = dp_job(
        root.path(),
        "odd",
        &shards,
        TeacherSection::default(),
        StrategyConfig::Fixed { alpha: 1.0 },
    );
    odd.data.batch_size = 7;
    let errs: Vec<String> = LocalGroup::new(2)
        .into_iter()
        .map(|g| {
            let job = odd.clone();
            std::thread::spawn(move || {
                run_distill_with_group(&job.check().unwrap(), Some(GroupHandle::new(Box::new(g))))
                    .unwrap_err()
                    .to_string()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for e in errs {
        assert!(e.contains("batch_size = 7") && e.contains("2 ranks"), "{e}");
    }
    assert!(!root.path().join("odd").exists());
}
