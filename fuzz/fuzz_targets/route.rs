//! Routing arbitrary token ids (any u32, any length) and arbitrary text with a
//! token-id router and a character n-gram router: probabilities must be a finite
//! distribution and routing deterministic, never a panic. The invariants are
//! `checks::route` (also replayed over the seed corpus by `cargo test -p mome-router
//! --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::route(data));
