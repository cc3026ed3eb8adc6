//! Fuzz target `toml_configs`: the TOML configs of every command. Arbitrary bytes give a typed error or a valid object,
//! never a panic. The invariants are `configs::toml_configs` (also replayed over the seed corpus
//! by `cargo test -p mome-pipeline --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks/configs.rs"]
mod configs;

// A config naming a tokenizer may reach mome_data's catch of the tokenizers
// library's panics (mome_data::error::catch_library_panic): the hook libfuzzer-sys
// installs would abort before that catch, so it is replaced by a silent one. A
// panic that reaches this target still aborts (libfuzzer-sys's catch_unwind).
fuzz_target!(
    init: {
        // MOME_FUZZ_SEEDS=DIR: write the seed corpus into DIR first.
        if let Some(dir) = std::env::var_os("MOME_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).expect("seed folder");
            for (name, data) in configs::seeds(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))) {
                std::fs::write(std::path::Path::new(&dir).join(name), data).expect("seed");
            }
        }
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| configs::toml_configs(data)
);
