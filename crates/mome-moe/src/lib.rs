//! Mixture of modular experts for mome (method.md §6–§8): PLE, JEET and MoE-CE
//! behind the router. Its contents are built by the MoE issue; the crate exists
//! now so the workspace layout is final.
