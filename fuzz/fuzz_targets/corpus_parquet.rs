//! mome-data reader `corpus_parquet`: arbitrary bytes give a typed error or a valid object,
//! never a panic. The invariants are `data_checks::corpus_parquet` (also replayed over the seed
//! corpus by `cargo test -p mome-data --test fuzz_replay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../data_checks.rs"]
mod data_checks;

// mome catches the panics of the parsing libraries (parquet, tokenizers) and
// returns them as typed errors (mome_data::error::catch_library_panic): the hook
// libfuzzer-sys installs would abort before that catch, so it is replaced by a
// silent one. A panic that reaches this target still aborts (libfuzzer-sys's own
// catch_unwind), so it is still a crash.
fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| data_checks::corpus_parquet(data)
);
