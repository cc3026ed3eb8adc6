//! mome-data reader `corpus_parquet`: arbitrary bytes give a typed error or a valid object,
//! never a panic. The invariants are `data_checks::corpus_parquet` (also replayed over the seed
//! corpus by `cargo test -p mome-data --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../data_checks.rs"]
mod data_checks;

fuzz_target!(|data: &[u8]| data_checks::corpus_parquet(data));
