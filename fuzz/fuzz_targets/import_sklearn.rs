//! `mome router import-sklearn` parameter files: arbitrary bytes give a typed error
//! or a router that routes and whose samples check, never a panic. The invariants
//! are `checks::import_sklearn` (also replayed over the seed corpus by `cargo test
//! -p mome-router --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::import_sklearn(data));
