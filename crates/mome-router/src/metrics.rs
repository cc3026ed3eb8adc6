//! Classification metrics (the JSON printed by `mome router eval`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Precision, recall, F1 and support of one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// TP / (TP + FP), 0 when nothing was predicted as the label.
    pub precision: f64,
    /// TP / (TP + FN), 0 when the label has no true example.
    pub recall: f64,
    /// Harmonic mean, 0 when both are 0.
    pub f1: f64,
    /// Number of true examples.
    pub support: usize,
}

/// Evaluation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Number of evaluated inputs.
    pub n: usize,
    /// Fraction correct.
    pub accuracy: f64,
    /// Mean precision over the labels that occur as truth or prediction.
    pub macro_precision: f64,
    /// Mean recall over the same labels.
    pub macro_recall: f64,
    /// Mean F1 over the same labels.
    pub macro_f1: f64,
    /// Per label.
    pub per_class: BTreeMap<String, ClassMetrics>,
    /// `confusion[true][pred] = count`.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    /// Routing throughput of the evaluated inputs.
    pub sequences_per_second: f64,
    /// True labels the router does not know (all their inputs are errors).
    pub unknown_labels: Vec<String>,
}

impl EvalReport {
    /// The confusion matrix as `matrix[true][predicted]` counts, rows and columns
    /// in the order of `classes` (labels outside `classes` are left out).
    pub fn confusion_matrix(&self, classes: &[String]) -> Vec<Vec<usize>> {
        classes
            .iter()
            .map(|t| {
                classes
                    .iter()
                    .map(|p| {
                        self.confusion
                            .get(t)
                            .and_then(|row| row.get(p))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect()
            })
            .collect()
    }
}

/// Computes the report from `(true, predicted)` pairs.
pub fn evaluate(
    pairs: &[(String, String)],
    known: &[String],
    sequences_per_second: f64,
) -> EvalReport {
    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut labels: Vec<String> = Vec::new();
    for (t, p) in pairs {
        *confusion
            .entry(t.clone())
            .or_default()
            .entry(p.clone())
            .or_default() += 1;
        labels.push(t.clone());
        labels.push(p.clone());
    }
    labels.sort();
    labels.dedup();
    let mut per_class = BTreeMap::new();
    for l in &labels {
        let tp = pairs.iter().filter(|(t, p)| t == l && p == l).count() as f64;
        let pred = pairs.iter().filter(|(_, p)| p == l).count() as f64;
        let support = pairs.iter().filter(|(t, _)| t == l).count();
        let precision = if pred > 0.0 { tp / pred } else { 0.0 };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        per_class.insert(
            l.clone(),
            ClassMetrics {
                precision,
                recall,
                f1,
                support,
            },
        );
    }
    let m = per_class.len().max(1) as f64;
    let mean = |f: fn(&ClassMetrics) -> f64| per_class.values().map(f).sum::<f64>() / m;
    let correct = pairs.iter().filter(|(t, p)| t == p).count();
    let mut unknown: Vec<String> = pairs
        .iter()
        .map(|(t, _)| t.clone())
        .filter(|t| !known.contains(t))
        .collect();
    unknown.sort();
    unknown.dedup();
    EvalReport {
        n: pairs.len(),
        accuracy: if pairs.is_empty() {
            0.0
        } else {
            correct as f64 / pairs.len() as f64
        },
        macro_precision: mean(|c| c.precision),
        macro_recall: mean(|c| c.recall),
        macro_f1: mean(|c| c.f1),
        per_class,
        confusion,
        sequences_per_second,
        unknown_labels: unknown,
    }
}

/// Routes labelled token sequences (in parallel) and evaluates the predictions.
pub fn evaluate_router(router: &crate::Router, docs: &[crate::data::TokenDoc]) -> EvalReport {
    let seqs: Vec<&[u32]> = docs.iter().map(|d| d.ids.as_slice()).collect();
    let t0 = std::time::Instant::now();
    let routed = router.route_batch(&seqs);
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let pairs: Vec<(String, String)> = docs
        .iter()
        .zip(routed)
        .map(|(d, r)| (d.label.clone(), r.label))
        .collect();
    evaluate(&pairs, router.classes(), docs.len() as f64 / secs)
}

/// Latency and throughput of a router (what `mome router bench` prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingBench {
    /// Sequences routed per repetition.
    pub sequences: usize,
    /// Repetitions.
    pub reps: usize,
    /// Mean sequence length in tokens.
    pub mean_tokens: f64,
    /// Throughput routing one sequence per call.
    pub per_call_seq_per_s: f64,
    /// Microseconds per call.
    pub per_call_us: f64,
    /// Throughput of whole-batch calls ([`crate::Router::route_batch`], parallel).
    pub batch_seq_per_s: f64,
    /// Threads of the batch calls (rayon).
    pub threads: usize,
    /// Sum of the routed indices and batch lengths (keeps the work observable).
    pub checksum: usize,
}

/// Routes `seqs` `reps` times one call per sequence, then `reps` times as one batch.
pub fn bench_routing(router: &crate::Router, seqs: &[Vec<u32>], reps: usize) -> RoutingBench {
    let n = seqs.len() * reps;
    let t0 = std::time::Instant::now();
    let mut sink = 0usize;
    for _ in 0..reps {
        for s in seqs {
            sink += router.route(s).index;
        }
    }
    let single = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    for _ in 0..reps {
        sink += router.route_batch(seqs).len();
    }
    let batch = t1.elapsed().as_secs_f64();
    RoutingBench {
        sequences: seqs.len(),
        reps,
        mean_tokens: seqs.iter().map(|s| s.len()).sum::<usize>() as f64 / seqs.len().max(1) as f64,
        per_call_seq_per_s: n as f64 / single,
        per_call_us: single * 1e6 / n as f64,
        batch_seq_per_s: n as f64 / batch,
        threads: rayon::current_num_threads(),
        checksum: sink,
    }
}
