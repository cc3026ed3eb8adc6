//! The gradient all-reduce overlapped with backward, as PyTorch DDP does it: a hook
//! on each parameter's gradient accumulation ([`super::hooks`]) marks it ready; a
//! bucket whose parameters are all ready is flattened and its sum over the ranks
//! started at once ([`Collective::start_all_reduce_sum`]: NCCL runs it on its own
//! stream while backward goes on), buckets in a fixed order on every rank. After
//! backward the remaining buckets are started, the compute stream waits for the
//! collectives ([`Collective::wait_started`]), and the sums are divided by the
//! world size and copied back.
//!
//! The buckets follow the order in which backward produces the gradients, learned
//! the first time a set of trainable parameters is seen (that step reduces after
//! backward) and taken from rank 0 so that all ranks agree. The set changes when
//! parameters are frozen (JEET trains one domain expert per step), so there is one
//! order per set.
//!
//! The arithmetic is that of [`super::GradBuckets::all_reduce_mean_as`]: the same
//! per-element sum over the ranks, the same division, the same optional cast.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tch::{Kind, Tensor};

use super::hooks::{GradHooks, GradReady};
use super::{flatten_grads, required_grad, unflatten_mean, GroupHandle};
use crate::{Error, Result};

/// Default bucket size of the overlapped reduction: 25 MiB of fp32 (PyTorch DDP's
/// `bucket_cap_mb`), small enough that the first buckets start early in backward.
pub const OVERLAP_BUCKET_ELEMENTS: usize = 25 << 18;

/// Buckets in the order backward makes their gradients ready.
#[derive(Debug)]
struct Plan {
    buckets: Vec<Vec<usize>>,
    bucket_of: Vec<Option<usize>>,
}

impl Plan {
    /// Consecutive runs of `order` of at most `cap` elements and one kind.
    fn new(order: &[usize], params: &[Tensor], cap: usize) -> Result<Self> {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut bucket_of = vec![None; params.len()];
        let (mut size, mut kind) = (0usize, None::<Kind>);
        for &i in order {
            let p = &params[i];
            let (n, k) = (p.numel(), p.f_kind()?);
            let fits = buckets.last().is_some_and(|b| !b.is_empty())
                && size + n <= cap.max(1)
                && kind == Some(k);
            if !fits {
                buckets.push(Vec::new());
                size = 0;
                kind = Some(k);
            }
            buckets.last_mut().expect("a bucket").push(i);
            bucket_of[i] = Some(buckets.len() - 1);
            size += n;
        }
        Ok(Self { buckets, bucket_of })
    }
}

/// A bucket whose sum was started.
struct Started {
    flat: Tensor,
    grads: Vec<Tensor>,
}

/// The state of the step being reduced (between `arm` and `finish`).
struct StepState {
    key: Vec<bool>,
    plan: Option<Arc<Plan>>,
    fired: Vec<usize>,
    seen: Vec<bool>,
    pending: Vec<usize>,
    next: usize,
    started: Vec<Started>,
}

struct State {
    group: GroupHandle,
    params: Vec<Tensor>,
    names: Vec<String>,
    kind: Option<Kind>,
    cap: usize,
    plans: HashMap<Vec<bool>, Arc<Plan>>,
    step: Option<StepState>,
    error: Option<Error>,
}

impl State {
    /// Flattens bucket `b` of `plan` and starts its sum over the ranks.
    fn start(&mut self, plan: &Plan, b: usize) -> Result<()> {
        let st = self
            .step
            .as_mut()
            .ok_or_else(|| Error::Distributed("gradient reduction not armed".into()))?;
        let rank = self.group.rank();
        let grads = plan.buckets[b]
            .iter()
            .map(|&i| required_grad(&self.names[i], &self.params[i], rank))
            .collect::<Result<Vec<_>>>()?;
        let flat = tch::no_grad(|| flatten_grads(&grads, self.kind))?;
        self.group.with(|g| g.start_all_reduce_sum(&flat))?;
        st.started.push(Started { flat, grads });
        Ok(())
    }

    fn on_ready(&mut self, index: usize) -> Result<()> {
        let Some(st) = self.step.as_mut() else {
            return Ok(()); // not the step's last micro-batch
        };
        if index >= st.seen.len() || st.seen[index] || !st.key[index] {
            return Ok(());
        }
        st.seen[index] = true;
        st.fired.push(index);
        let Some(plan) = st.plan.clone() else {
            return Ok(()); // learning the order: reduce after backward
        };
        let Some(b) = plan.bucket_of[index] else {
            return Ok(());
        };
        st.pending[b] = st.pending[b].saturating_sub(1);
        loop {
            let st = self.step.as_mut().expect("armed");
            let next = st.next;
            if next >= plan.buckets.len() || st.pending[next] > 0 {
                return Ok(());
            }
            st.next += 1;
            self.start(&plan, next)?;
        }
    }
}

struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.0
            .lock()
            .map_err(|_| Error::Distributed("the gradient reducer's lock is poisoned".into()))
    }
}

impl GradReady for Shared {
    fn ready(&self, index: usize) {
        let Ok(mut s) = self.0.lock() else {
            return;
        };
        if s.error.is_some() {
            return;
        }
        if let Err(e) = s.on_ready(index) {
            s.error = Some(e);
        }
    }
}

/// Reduces the gradients of a set of parameters over a process group while
/// backward runs (see the module docs). Per step: [`OverlapReducer::arm`] before
/// the backward of the last micro-batch, [`OverlapReducer::finish`] after it; the
/// gradients are then the mean over the ranks.
///
/// ```
/// use mome_core::dist::{GroupHandle, LocalGroup, OverlapReducer};
/// use tch::{Device, Kind, Tensor};
///
/// # fn main() -> mome_core::Result<()> {
/// let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
/// // One rank here; every rank of a real group runs the same steps.
/// let group = GroupHandle::new(Box::new(LocalGroup::new(1).remove(0)));
/// let mut reducer = OverlapReducer::new(group, &[("w".into(), w.shallow_clone())], None, 1 << 20);
/// for _ in 0..2 {
///     let loss = (&w * 2.0).sum(Kind::Float);
///     reducer.arm()?;
///     loss.backward(); // buckets start here once backward's order is known
///     reducer.finish()?; // w.grad() is now the mean over the ranks
///     assert_eq!(w.grad().sum(Kind::Float).double_value(&[]), 6.0);
///     w.grad().zero_();
/// }
/// # Ok(())
/// # }
/// ```
pub struct OverlapReducer {
    shared: Arc<Shared>,
    hooks: GradHooks,
    hooked: Vec<bool>,
    params: Vec<Tensor>,
}

impl std::fmt::Debug for OverlapReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlapReducer")
            .field("params", &self.params.len())
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl OverlapReducer {
    /// A reducer of the gradients of `params` (leaves) over `group`, in buckets of at
    /// most `cap` elements, cast to `kind` for the collective when given.
    pub fn new(
        group: GroupHandle,
        params: &[(String, Tensor)],
        kind: Option<Kind>,
        cap: usize,
    ) -> Self {
        let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let shared = Arc::new(Shared(Mutex::new(State {
            group,
            params: tensors.iter().map(Tensor::shallow_clone).collect(),
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            kind,
            cap,
            plans: HashMap::new(),
            step: None,
            error: None,
        })));
        let hooks = GradHooks::new(shared.clone());
        Self {
            shared,
            hooks,
            hooked: vec![false; tensors.len()],
            params: tensors,
        }
    }

    /// Call before the backward of a step's last micro-batch (after its forward):
    /// from here on, ready gradients of the parameters that require grad start
    /// their reduction.
    pub fn arm(&mut self) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            if !self.hooked[i] && p.requires_grad() {
                self.hooks.register(p, i)?;
                self.hooked[i] = true;
            }
        }
        let key: Vec<bool> = self.params.iter().map(Tensor::requires_grad).collect();
        let mut s = self.shared.lock()?;
        let plan = s.plans.get(&key).cloned();
        let pending = plan
            .as_ref()
            .map(|p| p.buckets.iter().map(Vec::len).collect())
            .unwrap_or_default();
        let n = self.params.len();
        s.error = None;
        s.step = Some(StepState {
            key,
            plan,
            fired: Vec::new(),
            seen: vec![false; n],
            pending,
            next: 0,
            started: Vec::new(),
        });
        Ok(())
    }

    /// Call after the backward that followed [`OverlapReducer::arm`]: starts the
    /// buckets not started yet, waits for all of them, and leaves the mean over the
    /// ranks in the gradients.
    pub fn finish(&mut self) -> Result<()> {
        let mut s = self.shared.lock()?;
        let r = Self::finish_locked(&mut s);
        s.step = None;
        r
    }

    fn finish_locked(s: &mut State) -> Result<()> {
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        let st = s
            .step
            .as_ref()
            .ok_or_else(|| Error::Distributed("finish without arm".into()))?;
        let (plan, next) = match st.plan.clone() {
            Some(p) => (p, st.next),
            None => {
                let plan = Arc::new(Self::learn(s)?);
                let key = s.step.as_ref().expect("armed").key.clone();
                s.plans.insert(key, plan.clone());
                (plan, 0)
            }
        };
        for b in next..plan.buckets.len() {
            s.start(&plan, b)?;
        }
        s.group.with(|g| g.wait_started())?;
        let world = s.group.world_size();
        let st = s.step.as_mut().expect("armed");
        tch::no_grad(|| -> Result<()> {
            for Started { mut flat, grads } in st.started.drain(..) {
                unflatten_mean(&mut flat, &grads, world)?;
            }
            Ok(())
        })
    }

    /// The plan of this step's trainable set: the order its gradients became ready
    /// (then the parameters that produced none, in index order), rank 0's.
    fn learn(s: &State) -> Result<Plan> {
        let st = s.step.as_ref().expect("armed");
        let mut order: Vec<usize> = st.fired.clone();
        for (i, &k) in st.key.iter().enumerate() {
            if k && !st.seen[i] {
                order.push(i);
            }
        }
        if s.group.world_size() > 1 && !order.is_empty() {
            let device = s.params[order[0]].device();
            let v: Vec<i64> = order.iter().map(|&i| i as i64).collect();
            let t = Tensor::f_from_slice(&v)?.f_to_device(device)?;
            s.group.broadcast(std::slice::from_ref(&t), 0)?;
            let v = Vec::<i64>::try_from(&t.f_to_device(tch::Device::Cpu)?)?;
            let mut sorted = v.clone();
            sorted.sort_unstable();
            let mut mine: Vec<i64> = order.iter().map(|&i| i as i64).collect();
            mine.sort_unstable();
            if sorted != mine {
                return Err(Error::Distributed(format!(
                    "rank {} trains other parameters than rank 0: every rank must train \
                     the same parameters in a step",
                    s.group.rank()
                )));
            }
            order = v.into_iter().map(|i| i as usize).collect();
        }
        Plan::new(&order, &s.params, s.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{Collective, LocalGroup};
    use std::sync::atomic::{AtomicBool, Ordering};
    use tch::Device;

    /// A one-rank group that records, per started sum, its size and whether the
    /// test was inside backward at the time.
    #[derive(Debug)]
    struct Recording {
        inner: LocalGroup,
        in_backward: Arc<AtomicBool>,
        starts: Arc<Mutex<Vec<(i64, bool)>>>,
    }

    impl Collective for Recording {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            1
        }
        fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
            self.inner.all_reduce_sum(tensors)
        }
        fn broadcast(&mut self, tensors: &[Tensor], root: usize) -> Result<()> {
            self.inner.broadcast(tensors, root)
        }
        fn start_all_reduce_sum(&mut self, tensor: &Tensor) -> Result<()> {
            let during = self.in_backward.load(Ordering::SeqCst);
            self.starts
                .lock()
                .unwrap()
                .push((tensor.numel() as i64, during));
            self.inner.all_reduce_sum(std::slice::from_ref(tensor))
        }
    }

    #[test]
    fn buckets_start_during_backward_once_the_order_is_known() {
        let opts = (Kind::Float, Device::Cpu);
        // Sizes tell the parameters apart in the record.
        let a = Tensor::ones([2], opts).set_requires_grad(true);
        let b = Tensor::ones([3], opts).set_requires_grad(true);
        let c = Tensor::ones([4], opts).set_requires_grad(true);
        let in_backward = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let group = GroupHandle::new(Box::new(Recording {
            inner: LocalGroup::new(1).pop().unwrap(),
            in_backward: in_backward.clone(),
            starts: starts.clone(),
        }));
        let named: Vec<(String, Tensor)> = [("a", &a), ("b", &b), ("c", &c)]
            .iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect();
        // A cap of 4 elements: one bucket per parameter.
        let mut r = OverlapReducer::new(group, &named, None, 4);
        let mut grads = Vec::new();
        for step in 0..3 {
            for mut p in [a.shallow_clone(), b.shallow_clone(), c.shallow_clone()] {
                p.zero_grad();
            }
            // Backward makes c's gradient first, then b's, then a's.
            let h = (&a.sum(Kind::Float) * 2.0) * &b.sum(Kind::Float);
            let z = &h * &c.sum(Kind::Float) * (step + 1) as f64;
            r.arm().unwrap();
            in_backward.store(true, Ordering::SeqCst);
            z.backward();
            in_backward.store(false, Ordering::SeqCst);
            r.finish().unwrap();
            grads.push(c.grad().sum(Kind::Double).double_value(&[]));
        }
        let starts = starts.lock().unwrap().clone();
        // Step 1 learns the order (all after backward); steps 2 and 3 start each
        // bucket inside backward, in backward's order.
        let expect = |during| vec![(4, during), (3, during), (2, during)];
        assert_eq!(starts[..3], expect(false)[..], "{starts:?}");
        assert_eq!(starts[3..6], expect(true)[..], "{starts:?}");
        assert_eq!(starts[6..], expect(true)[..], "{starts:?}");
        // dz/dc = 2·sum(a)·sum(b)·k = 12k per element, 4 elements.
        assert_eq!(grads, vec![48.0, 96.0, 144.0]);

        // Freezing a parameter gives another set, learned once more.
        let _ = a.shallow_clone().set_requires_grad(false);
        let z = (&a.sum(Kind::Float) * &b.sum(Kind::Float)) * &c.sum(Kind::Float);
        r.arm().unwrap();
        z.backward();
        r.finish().unwrap();
        let n = r.shared.lock().unwrap().plans.len();
        assert_eq!(n, 2);
    }

    #[test]
    fn plan_splits_on_cap_and_kind_in_the_given_order() {
        let opts = (Kind::Float, Device::Cpu);
        let ps = vec![
            Tensor::zeros([4], opts),
            Tensor::zeros([4], opts),
            Tensor::zeros([2], (Kind::Double, Device::Cpu)),
            Tensor::zeros([10], opts),
            Tensor::zeros([3], opts),
        ];
        let p = Plan::new(&[4, 1, 0, 2, 3], &ps, 8).unwrap();
        assert_eq!(p.buckets, vec![vec![4, 1], vec![0], vec![2], vec![3]]);
        assert_eq!(
            p.bucket_of,
            vec![Some(1), Some(0), Some(2), Some(3), Some(0)]
        );
    }
}
