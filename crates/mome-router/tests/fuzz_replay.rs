//! Corpus replay of the router fuzz targets, without cargo-fuzz: every file of
//! `fuzz/seeds/<target>/` (the seeds, with the extreme numbers and bad lines of
//! issue 20) and of `fuzz/regressions/<target>/` (minimised crash inputs, if any)
//! goes through the target's own invariants (`fuzz/checks.rs`).

#[allow(dead_code)]
#[path = "../../../fuzz/checks.rs"]
mod checks;

#[allow(dead_code)]
#[path = "../../../fuzz/replay.rs"]
mod replay;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs every corpus file of `target` through `check`; names the files that fail.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let inputs = replay::corpus(&fuzz_dir(), target);
    let n = inputs.len();
    let failed = replay::replay(inputs, |d| {
        check(d);
        false
    })
    .failed;
    assert!(
        failed.is_empty(),
        "{target}: invariants broken by {failed:#?}"
    );
    n
}

#[test]
fn router_load_corpus() {
    let n = replay("router_load", checks::router_load);
    assert!(n >= 30, "{n} files");
}

#[test]
fn import_sklearn_corpus() {
    let n = replay("import_sklearn", checks::import_sklearn);
    assert!(n >= 7, "{n} files");
}

#[test]
fn route_corpus() {
    replay("route", checks::route);
}

#[test]
fn route_lines_corpus() {
    let n = replay("route_lines", checks::route_lines);
    assert!(n >= 10, "{n} files");
}

/// The seeds with overflowing or out-of-range numbers and inconsistent shapes must
/// be refused (the replay alone only asks for "an error or a usable router"), the
/// large but valid ones must load.
#[test]
fn extreme_router_seeds_are_refused_or_route_finitely() {
    let dir = fuzz_dir().join("seeds/router_load");
    let load = |name: &str| mome_router::Router::load(&dir.join(name));
    for name in [
        "coef_1e308.json",
        "coef_all_1e308.json",
        "intercept_neg_1e308.json",
        "coef_just_over_bound.json",
        "idf_negative.json",
        "idf_zero.json",
        "idf_negative_zero.json",
        "idf_1e308.json",
        "idf_short.json",
        "coef_short_row.json",
        "coef_extra_class.json",
        "intercept_missing.json",
        "n_features_mismatch.json",
        "n_classes_mismatch.json",
        "vocab_duplicate.json",
        "vocab_u32_max.json",
        "vocab_2_24.json",
        "threshold_1e308.json",
        "v2_temperature_tiny.json",
        "v2_temperature_huge.json",
        "v2_calibration_extreme.json",
        "tree_leaf_1e308.json",
        "coef_1e999.json",
        "idf_neg_1e400.json",
    ] {
        let e = load(name).expect_err(name);
        let msg = mome_router::error::chain(&e);
        assert!(
            msg.contains(name),
            "{name}: the error names the file: {msg}"
        );
    }
    for name in [
        "coef_at_bound_1e100.json",
        "coef_tiny.json",
        "idf_denormal.json",
        "v2_temperature_min_coef_max.json",
        "tree_split_threshold_neg_1e308.json",
    ] {
        let r = load(name).unwrap_or_else(|e| panic!("{name}: {}", mome_router::error::chain(&e)));
        for ids in [&[][..], &[10, 11, 12, 13, 14, 15], &[12, 12, 15]] {
            let p = r.route(ids).probabilities;
            assert!(
                p.iter().all(|x| x.is_finite() && *x >= 0.0),
                "{name}: {p:?}"
            );
            approx::assert_abs_diff_eq!(p.iter().sum::<f64>(), 1.0, epsilon = 1e-12);
        }
    }
}
