//! Knowledge distillation for mome (method.md §4): KD losses, alpha strategies and
//! the distillation trainer, built over `mome-core`. Its contents are built by the
//! distillation issue; the crate exists now so the workspace layout is final.
