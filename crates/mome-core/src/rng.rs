//! libtorch's default generator is one per process, and every random initialisation
//! (`nn::VarStore` variables built with a random `Init`) draws from it. Ranks that run
//! as threads of one process ([`crate::dist::LocalGroup`]) build their models at the
//! same time, so a seeded initialisation (`tch::manual_seed(seed)`, then the draws)
//! must not interleave with another thread's draws: rank 0's student would otherwise
//! get other weights than the same seed gives in one process (a loss 2e-3 off at the
//! first step, seen as a test that failed now and then under load).
//!
//! [`lock_default_generator`] serialises those sections. Every model construction
//! that draws from the generator holds it: the seeded initialisations (mome-experts'
//! `seeded_model`, mome-moe's model builders) and the constructions that are followed
//! by loading weights (`Gpt2LmHeadModel::from_pretrained`). The per-step reseed of
//! the trainer ([`crate::trainer`]) feeds dropout, which draws throughout a step and
//! cannot hold a lock across the step's collectives: in-process ranks with dropout
//! draw their masks in an order that depends on timing (separate processes, as
//! `mome launch` starts them, each have their own generator).

use std::sync::{Mutex, MutexGuard};

static DEFAULT_GENERATOR: Mutex<()> = Mutex::new(());

/// Holds libtorch's default generator for this thread while the guard lives (see the
/// module docs). Not reentrant: do not call it again before dropping the guard.
///
/// ```
/// let w = {
///     let _g = mome_core::rng::lock_default_generator();
///     tch::manual_seed(7);
///     tch::Tensor::randn([3], (tch::Kind::Float, tch::Device::Cpu))
/// };
/// let again = {
///     let _g = mome_core::rng::lock_default_generator();
///     tch::manual_seed(7);
///     tch::Tensor::randn([3], (tch::Kind::Float, tch::Device::Cpu))
/// };
/// assert!(w.equal(&again));
/// ```
pub fn lock_default_generator() -> MutexGuard<'static, ()> {
    // A panic while holding it leaves the generator in a valid state.
    DEFAULT_GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}
