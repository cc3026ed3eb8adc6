//! Fuzz target `checkpoint`: the checkpoint resume path (trainer_state.json, model and optimizer safetensors). Arbitrary bytes give a typed error or a valid object,
//! never a panic. The invariants are `core::checkpoint` (also replayed over the seed corpus
//! by `cargo test -p mome-core --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks/core.rs"]
mod core;

fuzz_target!(
    init: {
        // MOME_FUZZ_SEEDS=DIR: write the seed corpus into DIR first.
        if let Some(dir) = std::env::var_os("MOME_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).expect("seed folder");
            for (name, data) in core::seeds() {
                std::fs::write(std::path::Path::new(&dir).join(name), data).expect("seed");
            }
        }
    },
    |data: &[u8]| {
        core::checkpoint(data);
    }
);
