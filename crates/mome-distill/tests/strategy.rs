//! Weighting strategies on hand-computed histories.

use approx::assert_relative_eq;
use mome_distill::strategy::{Adaptive, Alternating, Fixed, StrategyConfig, WeightStrategy};

#[test]
fn fixed_and_alternating() {
    let mut f = Fixed { alpha: 0.3 };
    assert_eq!(f.weights(1, f64::NAN, f64::NAN), (0.3, 0.7));
    assert!(!f.needs_losses());
    let mut a = Alternating;
    let w: Vec<(f64, f64)> = (1..=4).map(|s| a.weights(s, f64::NAN, f64::NAN)).collect();
    assert_eq!(w, [(1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, 1.0)]);
}

#[test]
fn adaptive_follows_the_research_rule() {
    let mut s = Adaptive::new(0.5, 3).unwrap();
    assert!(s.needs_losses());
    // Histories shorter than k: initial weights.
    assert_eq!(s.weights(1, 3.0, 1.0), (0.5, 0.5));
    assert_eq!(s.weights(2, 2.0, 1.0), (0.5, 0.5));
    // H_ce = [3, 2, 1]: d = -2 -> w = 1; H_kd = [1, 1, 1]: d = 0 -> w = 1.
    assert_eq!(s.weights(3, 1.0, 1.0), (0.5, 0.5));
    // H_ce = [2, 1, 4]: d = 2, avg = 7/3, d/avg = 6/7, w_ce = 1/7; w_kd = 1.
    let (a, b) = s.weights(4, 4.0, 1.0);
    assert_relative_eq!(a, 0.125, epsilon = 1e-12);
    assert_relative_eq!(b, 0.875, epsilon = 1e-12);
    // H_ce = [1, 4, 4]: d = 3, avg = 3 -> w_ce = 0; H_kd = [1, 1, 1.5]: d = .5,
    // avg = 7/6, w_kd = 1 - 3/7 = 4/7 -> alpha = 0, beta = 1.
    let (a, b) = s.weights(5, 4.0, 1.5);
    assert_relative_eq!(a, 0.0, epsilon = 1e-12);
    assert_relative_eq!(b, 1.0, epsilon = 1e-12);
}

#[test]
fn adaptive_guards() {
    // Both losses rise by more than their window mean: w_ce + w_kd = 0 -> initial.
    let mut s = Adaptive::new(0.7, 2).unwrap();
    s.weights(1, 1.0, 1.0);
    let (a, b) = s.weights(2, 5.0, 9.0);
    assert_relative_eq!(a, 0.7, epsilon = 1e-12);
    assert_relative_eq!(b, 0.3, epsilon = 1e-12);
    // A zero KD history (avg = 0): w_kd = 1 instead of 0/0.
    let mut s = Adaptive::new(0.5, 2).unwrap();
    s.weights(1, 2.0, 0.0);
    let (a, b) = s.weights(2, 3.0, 0.0);
    // w_ce = 1 - clamp(1 / 2.5) = 0.6, w_kd = 1.
    assert_relative_eq!(a, 0.6 / 1.6, epsilon = 1e-12);
    assert_relative_eq!(b, 1.0 / 1.6, epsilon = 1e-12);
    assert!(a.is_finite() && b.is_finite());
    assert!(Adaptive::new(0.5, 1).is_err());
}

#[test]
fn default_history_and_config() {
    assert_eq!(Adaptive::default_k(1000), 20);
    assert_eq!(Adaptive::default_k(5000), 50);
    let c: StrategyConfig = serde_json::from_str(r#"{"kind":"adaptive"}"#).unwrap();
    assert_eq!(
        c,
        StrategyConfig::Adaptive {
            alpha: 0.5,
            history: None
        }
    );
    assert_eq!(c.build(5000).unwrap().name(), "adaptive(alpha0=0.5, k=50)");
    let ce: StrategyConfig = serde_json::from_str(r#"{"kind":"fixed","alpha":1.0}"#).unwrap();
    assert!(ce.is_ce_only());
    assert_eq!(ce.label(), "ce_only");
    let bad: StrategyConfig = serde_json::from_str(r#"{"kind":"fixed","alpha":1.5}"#).unwrap();
    assert!(bad.validate().is_err());
}
