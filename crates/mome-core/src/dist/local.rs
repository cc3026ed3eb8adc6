//! An in-process process group: one thread per rank, tensors exchanged through
//! shared memory. It lets the data-parallel code paths run (and be tested) on the
//! CPU without NCCL: [`LocalGroup::new`]`(N)` returns the `N` members, each moved to
//! its own thread and handed to [`crate::Trainer::with_collective`] (or, wrapped in
//! a [`super::GroupHandle`], to mome-distill's `run_distill_with_group` and
//! mome-moe's `RunOptions::group`).
//!
//! Every member must call the collectives in the same order: a member that stops
//! early leaves the others waiting at the barrier, so this group is meant for tests
//! and single-host experiments, not for fault tolerance (that is the NCCL group's
//! watchdog, [`super::Session`]).

use std::sync::{Arc, Barrier, Mutex};

use tch::Tensor;

use super::Collective;
use crate::{Error, Result};

/// One member of an in-process group (see the module docs).
#[derive(Debug)]
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<Tensor>>>,
}

impl LocalGroup {
    /// The `world` members of a new group, rank order.
    ///
    /// ```
    /// use mome_core::dist::{Collective, LocalGroup};
    /// use tch::Tensor;
    ///
    /// let handles: Vec<_> = LocalGroup::new(2)
    ///     .into_iter()
    ///     .map(|mut g| {
    ///         std::thread::spawn(move || {
    ///             let t = Tensor::from_slice(&[g.rank() as f32 + 1.0]);
    ///             g.all_reduce_sum(&[t.shallow_clone()]).unwrap();
    ///             t.double_value(&[0])
    ///         })
    ///     })
    ///     .collect();
    /// for h in handles {
    ///     assert_eq!(h.join().unwrap(), 3.0);
    /// }
    /// ```
    pub fn new(world: usize) -> Vec<LocalGroup> {
        let world = world.max(1);
        let shared = Arc::new(Shared {
            world,
            barrier: Barrier::new(world),
            slots: Mutex::new((0..world).map(|_| Vec::new()).collect()),
        });
        (0..world)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn exchange(
        &mut self,
        tensors: &[Tensor],
        pick: impl Fn(&[Vec<Tensor>], usize) -> Result<Tensor>,
    ) -> Result<()> {
        let poisoned = || Error::Distributed("a rank of the local group panicked".into());
        let copies = tensors
            .iter()
            .map(|t| t.f_detach().map(|d| d.copy()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.shared.slots.lock().map_err(|_| poisoned())?[self.rank] = copies;
        self.shared.barrier.wait();
        let r = (|| -> Result<()> {
            let slots = self.shared.slots.lock().map_err(|_| poisoned())?;
            if slots.iter().any(|s| s.len() != tensors.len()) {
                return Err(Error::Distributed(
                    "the ranks of the local group passed different numbers of tensors".into(),
                ));
            }
            for (i, t) in tensors.iter().enumerate() {
                let v = pick(&slots, i)?;
                tch::no_grad(|| t.shallow_clone().f_copy_(&v))?;
            }
            Ok(())
        })();
        // Everyone has read the slots before anyone writes the next round.
        self.shared.barrier.wait();
        r
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.exchange(tensors, |slots, i| {
            let mut acc = slots[0][i].copy();
            for s in &slots[1..] {
                acc = acc.f_add(&s[i])?;
            }
            Ok(acc)
        })
    }

    fn broadcast(&mut self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.shared.world {
            return Err(Error::Distributed(format!(
                "broadcast from rank {root} in a group of {}",
                self.shared.world
            )));
        }
        self.exchange(tensors, |slots, i| Ok(slots[root][i].copy()))
    }
}
