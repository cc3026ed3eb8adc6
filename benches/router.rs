//! Criterion bench of the router: single-sequence latency (32 and 1024 tokens)
//! and parallel batch throughput, with the imported paper router.

use criterion::{criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};

const PARAMS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/seed/reference_router_params.json"
);

fn bench(c: &mut Criterion) {
    let (router, samples) =
        mome_router::import_sklearn(std::path::Path::new(PARAMS)).expect("seed params");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    // Real text samples give realistic ids; random ids fill up to the lengths.
    let pool: Vec<u32> = samples
        .iter()
        .flat_map(|s| s.token_ids.iter().copied())
        .collect();
    let make = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| -> Vec<u32> {
        (0..n).map(|_| pool[rng.gen_range(0..pool.len())]).collect()
    };
    for len in [32usize, 1024] {
        let seq = make(&mut rng, len);
        c.bench_function(&format!("route_{len}_tokens"), |b| {
            b.iter(|| router.route(std::hint::black_box(&seq)))
        });
    }
    let batch: Vec<Vec<u32>> = (0..1024).map(|_| make(&mut rng, 1024)).collect();
    let mut g = c.benchmark_group("route_batch");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("1024x1024_tokens", |b| {
        b.iter(|| router.route_batch(std::hint::black_box(&batch)))
    });
    g.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
