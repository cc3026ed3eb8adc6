//! Distillation end to end on tiny synthetic data: KD vs CE alone, bad inputs.

mod common;

use common::*;
use mome_core::metrics::read_metrics;
use mome_distill::{
    final_validation, DistillSettings, Error, KdLoss, StrategyConfig, TeacherSection,
    DISTILL_METRICS,
};

#[test]
fn distilled_student_beats_ce_only_and_bad_inputs_are_typed_errors() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let shards = make_shards(&root.path().join("shards"), 11, 192);
    let teacher = train_teacher(root.path(), &shards, 150);
    let t_val = final_validation(&root.path().join("teacher")).unwrap()["all"];

    // The same student (init, data order, steps) with CE alone and with KD.
    let student = model(1, 16, 2);
    let steps = 40;
    let run = |name: &str, strategy: StrategyConfig, loss: KdLoss| {
        let j = job(
            &root.path().join(name),
            &shards,
            student.clone(),
            TeacherSection {
                dir: Some(teacher.clone()),
                ..Default::default()
            },
            train_cfg(steps, 1e-2, 3),
            DistillSettings {
                kd_chunk: None,
                loss,
                temperature: 1.0,
                strategy,
            },
            8,
        );
        common::run(&j).unwrap();
        final_validation(&root.path().join(name)).unwrap()["all"]
    };
    let ce = run(
        "ce",
        StrategyConfig::Fixed { alpha: 1.0 },
        KdLoss::ForwardKl,
    );
    let kd = run(
        "kd",
        StrategyConfig::Fixed { alpha: 0.5 },
        KdLoss::ForwardKl,
    );
    let ad = run(
        "adaptive",
        StrategyConfig::Adaptive {
            alpha: 0.5,
            history: Some(5),
        },
        KdLoss::TeacherWeightedCe,
    );
    eprintln!("teacher {t_val:.6}  ce-only {ce:.6}  kd fixed {kd:.6}  adaptive twce {ad:.6}");
    assert!(
        t_val < ce,
        "the teacher ({t_val}) must be better than the CE student ({ce})"
    );
    assert!(kd < ce, "distilled student {kd} should beat CE alone {ce}");

    // alpha, beta, CE and KD are logged for every step.
    let lines = read_metrics(&root.path().join("kd").join(DISTILL_METRICS)).unwrap();
    assert_eq!(lines.len(), steps as usize);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"].as_u64(), Some(i as u64 + 1));
        assert_eq!(l["alpha"].as_f64(), Some(0.5));
        assert!(l["ce"].as_f64().unwrap() > 0.0 && l["kd"].as_f64().unwrap() >= 0.0);
    }
    // CE-only never runs the teacher: kd is null.
    let lines = read_metrics(&root.path().join("ce").join(DISTILL_METRICS)).unwrap();
    assert!(lines.iter().all(|l| l["kd"].is_null() && l["alpha"] == 1.0));
    // Adaptive: the weights move once the history is full and always sum to 1.
    let lines = read_metrics(&root.path().join("adaptive").join(DISTILL_METRICS)).unwrap();
    assert!(lines
        .iter()
        .all(|l| (l["alpha"].as_f64().unwrap() + l["beta"].as_f64().unwrap() - 1.0).abs() < 1e-9));
    let moved = lines
        .iter()
        .filter(|l| l["alpha"].as_f64() != Some(0.5))
        .count();
    eprintln!("adaptive: alpha != 0.5 on {moved} of {} steps", lines.len());
    assert!(moved > 0);

    // Mismatched vocabulary: typed error, nothing written.
    let mut wide = student.clone();
    wide.vocab_size = VOCAB as i64 + 8;
    let bad = root.path().join("bad-vocab");
    let j = job(
        &bad,
        &shards,
        wide,
        TeacherSection {
            dir: Some(teacher.clone()),
            ..Default::default()
        },
        train_cfg(2, 1e-2, 0),
        DistillSettings::default(),
        8,
    );
    let e = common::run(&j).unwrap_err();
    assert!(matches!(e, Error::VocabMismatch { .. }), "{e}");
    assert!(!bad.exists(), "no step may run");

    // Missing teacher folder.
    let j = job(
        &root.path().join("bad-teacher"),
        &shards,
        student.clone(),
        TeacherSection {
            dir: Some(root.path().join("nope")),
            ..Default::default()
        },
        train_cfg(2, 1e-2, 0),
        DistillSettings::default(),
        8,
    );
    let e = common::run(&j).unwrap_err();
    assert!(matches!(e, Error::MissingTeacher { .. }), "{e}");
    // No teacher at all with a KD strategy.
    let mut j2 = j.clone();
    j2.teacher = TeacherSection::default();
    assert!(matches!(common::run(&j2).unwrap_err(), Error::Config(_)));
    // Tokenizer of another hash.
    let mut j3 = j.clone();
    j3.teacher.dir = Some(teacher.clone());
    j3.data.tokenizer = Some(common::other_tokenizer());
    let e = common::run(&j3).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Core(mome_core::Error::Data(
                mome_data::Error::TokenizerMismatch { .. }
            ))
        ),
        "{e}"
    );
}

/// A one-layer student distilled from the online `teacher` with the adaptive
/// strategy (alpha 0.5, history 3), divergence `loss`, temperature 2.
fn adaptive_job(
    dir: &std::path::Path,
    shards: &std::path::Path,
    teacher: &std::path::Path,
    train: mome_core::trainer::TrainConfig,
    loss: KdLoss,
) -> mome_distill::DistillParams {
    job(
        dir,
        shards,
        model(1, 16, 2),
        TeacherSection {
            dir: Some(teacher.to_path_buf()),
            ..Default::default()
        },
        train,
        DistillSettings {
            kd_chunk: None,
            loss,
            temperature: 2.0,
            strategy: StrategyConfig::Adaptive {
                alpha: 0.5,
                history: Some(3),
            },
        },
        4,
    )
}

#[test]
fn adaptive_run_resumes_exactly() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let shards = make_shards(&root.path().join("shards"), 5, 48);
    let teacher = train_teacher(root.path(), &shards, 10);
    let mk = |dir: &str, resume: bool| {
        let mut t = train_cfg(8, 5e-3, 1);
        t.checkpoint_every = 4;
        t.max_steps = 8;
        let mut j = adaptive_job(
            &root.path().join(dir),
            &shards,
            &teacher,
            t,
            KdLoss::ForwardKl,
        );
        j.resume = resume;
        j
    };
    // Uninterrupted run.
    common::run(&mk("full", false)).unwrap();
    // An interrupted run: the same run with its step-8 checkpoint removed, so that
    // resuming starts from step 4 with distill_metrics lines 5..8 to be cut back.
    let part = root.path().join("part");
    common::run(&mk("part", false)).unwrap();
    std::fs::remove_dir_all(part.join("checkpoints").join("step-00000008")).unwrap();
    common::run(&mk("part", true)).unwrap();
    let a = read_metrics(&root.path().join("full").join(DISTILL_METRICS)).unwrap();
    let b = read_metrics(&part.join(DISTILL_METRICS)).unwrap();
    assert_eq!(a.len(), 8);
    assert_eq!(
        a, b,
        "resumed adaptive run must log the same alpha/beta/CE/KD"
    );
}

/// A frozen online teacher follows the run's precision: bf16 under a bf16 run
/// (unless `bf16 = false` says otherwise), fp32 under an fp32 run.
/// A one-layer teacher saved under `dir/teacher` (its folder).
fn saved_teacher(dir: &std::path::Path) -> std::path::PathBuf {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let m = mome_experts::Gpt2LmHeadModel::new(&vs.root(), &model(1, 16, 2)).unwrap();
    let path = dir.join("teacher");
    m.save_pretrained(&path).unwrap();
    path
}

#[test]
fn the_frozen_teacher_follows_the_run_precision() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_teacher(tmp.path());
    let section = |bf16| TeacherSection {
        dir: Some(dir.clone()),
        cache: None,
        bf16,
    };
    use mome_core::Precision::{Bf16, Fp32};
    for (bf16, precision, want) in [
        (None, Bf16, true),
        (None, Fp32, false),
        (Some(false), Bf16, false),
        (Some(true), Fp32, true),
    ] {
        let t = section(bf16).load(tch::Device::Cpu, precision).unwrap();
        assert_eq!(t.is_bf16(), want, "bf16 = {bf16:?} under {precision:?}");
        assert_eq!(section(bf16).bf16_under(precision), want);
        let mome_distill::TeacherModel::Online { vs, .. } = &t else {
            panic!("an online teacher")
        };
        let kinds: Vec<tch::Kind> = vs.variables().values().map(|v| v.kind()).collect();
        let expect = if want {
            tch::Kind::BFloat16
        } else {
            tch::Kind::Float
        };
        assert!(kinds.iter().all(|k| *k == expect), "{kinds:?}");
        assert!(
            vs.variables().values().all(|v| !v.requires_grad()),
            "the teacher is frozen"
        );
    }
}

/// `[train.kernels]` reaches the frozen online teacher too: its blocks run the
/// run's `add_layer_norm` path.
#[test]
fn the_frozen_teacher_follows_the_run_kernels() {
    use mome_core::fusion::{FusionMode, KernelConfig};
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let section = TeacherSection {
        dir: Some(saved_teacher(tmp.path())),
        cache: None,
        bf16: Some(false),
    };
    for mode in [FusionMode::Fused, FusionMode::Reference] {
        let teacher = section
            .load(tch::Device::Cpu, mome_core::Precision::Fp32)
            .unwrap();
        let kernels = KernelConfig {
            add_layer_norm: mode,
            ..Default::default()
        };
        let kd = mome_distill::objective::KdTerm::new(
            teacher,
            &DistillSettings::default(),
            tch::Device::Cpu,
        )
        .with_kernels(&kernels, tch::Device::Cpu, tch::Kind::Float)
        .unwrap();
        let mome_distill::TeacherModel::Online { model, .. } = kd.teacher() else {
            panic!("an online teacher")
        };
        assert_eq!(model.transformer().stack().add_layer_norm(), mode);
    }
}

/// `[train.kernels] linear_kd = "chunked"` (the student's head, CE and KD in chunks,
/// the online teacher's head chunked too) trains like the reference path: the same
/// CE, KD and adaptive weights at every step, within float rounding.
#[test]
fn chunked_linear_kd_trains_like_the_reference() {
    use mome_core::fusion::LinearCeMode;
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let shards = make_shards(&root.path().join("shards"), 5, 48);
    let teacher = train_teacher(root.path(), &shards, 10);
    let run = |dir: &str, mode: LinearCeMode| {
        let mut t = train_cfg(6, 5e-3, 1);
        t.kernels.linear_kd = mode;
        t.kernels.ce_chunk = 20;
        let j = adaptive_job(
            &root.path().join(dir),
            &shards,
            &teacher,
            t,
            KdLoss::ReverseKl,
        );
        common::run(&j).unwrap();
        read_metrics(&root.path().join(dir).join(DISTILL_METRICS)).unwrap()
    };
    let a = run("reference", LinearCeMode::Reference);
    let b = run("chunked", LinearCeMode::Chunked);
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for key in ["ce", "kd", "alpha", "beta"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() <= 1e-4 * u.abs().max(1.0),
                "step {}: {key} {u} vs {v}",
                x["step"]
            );
        }
    }
}
