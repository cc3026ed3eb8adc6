//! KD losses against straightforward f64 reference computations.

use approx::assert_relative_eq;
use mome_distill::losses::{kd_loss, KdLoss, SparseTeacher, Teacher};
use tch::{Device, Kind, Tensor};

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn log_softmax(z: &[f64], temp: f64) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = z.iter().map(|x| ((x - m) / temp).exp()).sum::<f64>().ln();
    z.iter().map(|x| (x - m) / temp - lse).collect()
}

/// Reference per-position divergence over log-probs (natural formulas, 0 log 0 = 0).
fn reference(kind: KdLoss, s: &[f64], t: &[f64]) -> f64 {
    let kl = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(la, lb)| {
                if la.exp() > 0.0 {
                    la.exp() * (la - lb)
                } else {
                    0.0
                }
            })
            .sum()
    };
    match kind {
        KdLoss::ForwardKl => kl(t, s),
        KdLoss::TeacherWeightedCe => -t.iter().zip(s).map(|(lt, ls)| lt.exp() * ls).sum::<f64>(),
        KdLoss::ReverseKl => kl(s, t),
        KdLoss::JensenShannon => {
            let m: Vec<f64> = s
                .iter()
                .zip(t)
                .map(|(a, b)| ((a.exp() + b.exp()) / 2.0).ln())
                .collect();
            0.5 * kl(t, &m) + 0.5 * kl(s, &m)
        }
    }
}

fn reference_loss(
    kind: KdLoss,
    zs: &Tensor,
    zt: &Tensor,
    mask: &[f64],
    temp: f64,
) -> (f64, Vec<f64>) {
    let v = zs.size()[2] as usize;
    let (zs, zt) = (to_vec(zs), to_vec(zt));
    let mut per = Vec::new();
    for (i, &m) in mask.iter().enumerate() {
        let s = log_softmax(&zs[i * v..(i + 1) * v], temp);
        let t = log_softmax(&zt[i * v..(i + 1) * v], temp);
        per.push(if m > 0.0 {
            temp * temp * reference(kind, &s, &t)
        } else {
            0.0
        });
    }
    let n: f64 = mask.iter().sum();
    (per.iter().sum::<f64>() / n, per)
}

#[test]
fn losses_match_reference_with_mask_and_temperature() {
    tch::manual_seed(1);
    let opts = (Kind::Float, Device::Cpu);
    let zs = Tensor::randn([2, 3, 7], opts) * 2.0;
    let zt = Tensor::randn([2, 3, 7], opts) * 3.0;
    let mask_v = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0];
    let mask = Tensor::from_slice(&mask_v).view([2, 3]);
    for kind in KdLoss::ALL {
        for temp in [1.0, 2.0, 0.5] {
            let out = kd_loss(kind, &zs, Teacher::Logits(&zt), Some(&mask), temp).unwrap();
            let (want, want_per) = reference_loss(kind, &zs, &zt, &mask_v, temp);
            assert_relative_eq!(out.loss.double_value(&[]), want, max_relative = 1e-4);
            for (a, b) in to_vec(&out.per_token).iter().zip(&want_per) {
                assert_relative_eq!(*a, *b, max_relative = 1e-4, epsilon = 1e-6);
            }
            assert_eq!(out.tokens.double_value(&[]), 4.0);
            assert_eq!(out.per_token.size(), [2, 3]);
        }
    }
    // No mask = every position.
    let out = kd_loss(KdLoss::ForwardKl, &zs, Teacher::Logits(&zt), None, 2.0).unwrap();
    let (want, _) = reference_loss(KdLoss::ForwardKl, &zs, &zt, &[1.0; 6], 2.0);
    assert_relative_eq!(out.loss.double_value(&[]), want, max_relative = 1e-4);
}

#[test]
fn teacher_weighted_ce_is_forward_kl_plus_teacher_entropy() {
    tch::manual_seed(2);
    let opts = (Kind::Float, Device::Cpu);
    let zs = Tensor::randn([1, 4, 11], opts);
    let zt = Tensor::randn([1, 4, 11], opts) * 4.0;
    let temp = 2.0;
    let fkl = kd_loss(KdLoss::ForwardKl, &zs, Teacher::Logits(&zt), None, temp).unwrap();
    let twce = kd_loss(
        KdLoss::TeacherWeightedCe,
        &zs,
        Teacher::Logits(&zt),
        None,
        temp,
    )
    .unwrap();
    let lt = (&zt / temp).log_softmax(-1, Kind::Float);
    let h = -(lt.exp() * &lt).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
    let h_mean = h.mean(Kind::Float).double_value(&[]) * temp * temp;
    assert_relative_eq!(
        twce.loss.double_value(&[]),
        fkl.loss.double_value(&[]) + h_mean,
        max_relative = 1e-5
    );
    // and it is not reverse KL
    let rkl = kd_loss(KdLoss::ReverseKl, &zs, Teacher::Logits(&zt), None, temp).unwrap();
    assert!((rkl.loss.double_value(&[]) - twce.loss.double_value(&[])).abs() > 1e-2);
}

#[test]
fn bf16_inputs_use_fp32_softmax() {
    tch::manual_seed(3);
    let opts = (Kind::Float, Device::Cpu);
    let zs = (Tensor::randn([2, 2, 9], opts) * 3.0).to_kind(Kind::BFloat16);
    let zt = (Tensor::randn([2, 2, 9], opts) * 3.0).to_kind(Kind::BFloat16);
    for kind in KdLoss::ALL {
        let out = kd_loss(kind, &zs, Teacher::Logits(&zt), None, 2.0).unwrap();
        assert_eq!(out.loss.kind(), Kind::Float);
        let (want, _) = reference_loss(kind, &zs, &zt, &[1.0; 4], 2.0);
        assert_relative_eq!(out.loss.double_value(&[]), want, max_relative = 1e-4);
    }
}

#[test]
fn gradients_match_finite_differences() {
    tch::manual_seed(4);
    let opts = (Kind::Float, Device::Cpu);
    let base = Tensor::randn([1, 2, 4], opts);
    let zt = Tensor::randn([1, 2, 4], opts) * 2.0;
    let mask = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]);
    for kind in KdLoss::ALL {
        let zs = base.copy().set_requires_grad(true);
        let out = kd_loss(kind, &zs, Teacher::Logits(&zt), Some(&mask), 2.0).unwrap();
        out.loss.backward();
        let grad = to_vec(&zs.grad());
        let flat = to_vec(&base);
        let eps = 1e-2;
        for i in 0..flat.len() {
            let eval_at = |d: f64| {
                let mut v = flat.clone();
                v[i] += d;
                let z = Tensor::from_slice(&v).view([1, 2, 4]).to_kind(Kind::Float);
                // f64 reference of the loss at the perturbed point
                let m = [1.0, 1.0];
                reference_loss(kind, &z, &zt, &m, 2.0).0
            };
            let fd = (eval_at(eps) - eval_at(-eps)) / (2.0 * eps);
            assert!(
                (grad[i] - fd).abs() < 2e-3 + 1e-2 * fd.abs(),
                "{kind}: d/dz[{i}] autograd {} vs finite difference {fd}",
                grad[i]
            );
        }
    }
}

#[test]
fn stable_with_neg_inf_logits_and_confident_32k_teacher() {
    tch::manual_seed(5);
    let v = 32_000i64;
    let opts = (Kind::Float, Device::Cpu);
    // Very confident teacher: one logit 1e4 above the rest, a block of -inf.
    let zt = Tensor::zeros([2, 3, v], opts);
    let _ = zt.narrow(2, 7, 1).fill_(1e4);
    let _ = zt.narrow(2, 100, 50).fill_(f64::NEG_INFINITY);
    let base = Tensor::randn([2, 3, v], opts) * 5.0;
    // The student also has -inf logits on the same block (masked vocabulary).
    let _ = base.narrow(2, 100, 50).fill_(f64::NEG_INFINITY);
    let mask = Tensor::from_slice(&[1i64, 1, 0, 1, 1, 1]).view([2, 3]);
    for kind in KdLoss::ALL {
        for temp in [1.0, 2.0] {
            let zs = base.copy().set_requires_grad(true);
            let out = kd_loss(kind, &zs, Teacher::Logits(&zt), Some(&mask), temp).unwrap();
            let l = out.loss.double_value(&[]);
            assert!(l.is_finite() && l >= 0.0, "{kind} T={temp}: loss {l}");
            out.loss.backward();
            let g = zs.grad();
            let finite = g.isfinite().all().int64_value(&[]);
            assert_eq!(finite, 1, "{kind} T={temp}: non-finite gradient");
            // No gradient flows into the -inf entries or the masked position.
            let gi = g
                .narrow(2, 100, 50)
                .abs()
                .sum(Kind::Double)
                .double_value(&[]);
            assert_eq!(gi, 0.0);
            let gm = g
                .narrow(0, 0, 1)
                .narrow(1, 2, 1)
                .abs()
                .sum(Kind::Double)
                .double_value(&[]);
            assert_eq!(gm, 0.0);
        }
    }
    // Identical confident distributions: every divergence is 0.
    for kind in [KdLoss::ForwardKl, KdLoss::ReverseKl, KdLoss::JensenShannon] {
        let out = kd_loss(kind, &zt, Teacher::Logits(&zt), None, 1.0).unwrap();
        assert!(out.loss.double_value(&[]).abs() < 1e-6, "{kind}");
    }
}

#[test]
fn sparse_teacher_full_k_equals_dense_and_rest_bucket_matches_reference() {
    tch::manual_seed(6);
    let opts = (Kind::Float, Device::Cpu);
    let v = 10i64;
    let zs = Tensor::randn([2, 3, v], opts) * 2.0;
    let zt = Tensor::randn([2, 3, v], opts) * 3.0;
    let temp = 2.0;
    let lt = (&zt / temp).log_softmax(-1, Kind::Float);
    // K = V: identical to the dense loss.
    let (vals, idx) = lt.topk(v, -1, true, true);
    let sp = SparseTeacher {
        ids: idx,
        logprobs: vals,
        vocab_size: v,
    };
    for kind in KdLoss::ALL {
        let dense = kd_loss(kind, &zs, Teacher::Logits(&zt), None, temp).unwrap();
        let sparse = kd_loss(kind, &zs, Teacher::TopK(&sp), None, temp).unwrap();
        assert_relative_eq!(
            dense.loss.double_value(&[]),
            sparse.loss.double_value(&[]),
            max_relative = 1e-5
        );
    }
    // K = 3: K+1 buckets (top-3 + rest) for both distributions.
    let k = 3;
    let (vals, idx) = lt.topk(k, -1, true, true);
    let sp = SparseTeacher {
        ids: idx.copy(),
        logprobs: vals,
        vocab_size: v,
    };
    let ls = (&zs / temp).log_softmax(-1, Kind::Float);
    let (ls_v, lt_v, idx_v) = (to_vec(&ls), to_vec(&lt), to_vec(&idx));
    for kind in KdLoss::ALL {
        let out = kd_loss(kind, &zs, Teacher::TopK(&sp), None, temp).unwrap();
        let mut total = 0.0;
        for pos in 0..6 {
            let ids: Vec<usize> = (0..k as usize)
                .map(|j| idx_v[pos * k as usize + j] as usize)
                .collect();
            let mut s: Vec<f64> = ids.iter().map(|&i| ls_v[pos * v as usize + i]).collect();
            let mut t: Vec<f64> = ids.iter().map(|&i| lt_v[pos * v as usize + i]).collect();
            s.push((1.0 - s.iter().map(|x| x.exp()).sum::<f64>()).ln());
            t.push((1.0 - t.iter().map(|x| x.exp()).sum::<f64>()).ln());
            total += temp * temp * reference(kind, &s, &t);
        }
        assert_relative_eq!(out.loss.double_value(&[]), total / 6.0, max_relative = 1e-4);
        if kind == KdLoss::ForwardKl {
            let dense = kd_loss(kind, &zs, Teacher::Logits(&zt), None, temp).unwrap();
            assert!(out.loss.double_value(&[]) <= dense.loss.double_value(&[]) + 1e-6);
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let opts = (Kind::Float, Device::Cpu);
    let zs = Tensor::zeros([1, 2, 5], opts);
    let zt = Tensor::zeros([1, 2, 6], opts);
    assert!(kd_loss(KdLoss::ForwardKl, &zs, Teacher::Logits(&zt), None, 1.0).is_err());
    assert!(kd_loss(KdLoss::ForwardKl, &zs, Teacher::Logits(&zs), None, 0.0).is_err());
    let m = Tensor::ones([2, 2], opts);
    assert!(kd_loss(KdLoss::ForwardKl, &zs, Teacher::Logits(&zs), Some(&m), 1.0).is_err());
}
