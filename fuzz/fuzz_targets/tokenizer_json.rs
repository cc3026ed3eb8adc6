//! mome-data reader `tokenizer_json`: arbitrary bytes give a typed error or a valid object,
//! never a panic. The invariants are `data_checks::tokenizer_json` (also replayed over the seed
//! corpus by `cargo test -p mome-data --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../data_checks.rs"]
mod data_checks;

fuzz_target!(|data: &[u8]| data_checks::tokenizer_json(data));
