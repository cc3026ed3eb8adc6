//! Domain router of mome (method.md §5): TF-IDF over token ids feeding a linear
//! classifier that tells which domain a sequence is in.
//!
//! This crate never depends on libtorch, so an application can embed the router
//! with `tokenizers`, `ndarray` and `linfa` only. Its contents are built by the
//! router issue; the crate exists now so the workspace layout is final.
