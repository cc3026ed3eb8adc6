//! The mixture of modular experts: shared embeddings, N domain experts, an optional
//! common expert, a shared LM head, and the per-sequence grouped forward pass.

use std::collections::BTreeMap;

use mome_experts::{Gpt2Config, Gpt2Stack};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{Arch, ExpertId, MoeConfig, Setting, COMMON};
use crate::error::{Error, Result};
use crate::routing::{route_batch, ExpertChoice, ResolvedSetting, SequenceRouter};

/// A token embedding, a position embedding and an LM head (tied to the token
/// embedding when `lm_head` is `None`).
#[derive(Debug)]
pub struct Embeddings {
    wte: Tensor,
    wpe: Tensor,
    lm_head: Option<Tensor>,
    prefix: String,
    head_name: String,
}

impl Embeddings {
    fn new(
        p: &nn::Path,
        head: &nn::Path,
        cfg: &Gpt2Config,
        prefix: String,
        head_name: String,
    ) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        };
        Self {
            wte: p
                .sub("wte")
                .var("weight", &[cfg.vocab_size, cfg.n_embd], init),
            wpe: p
                .sub("wpe")
                .var("weight", &[cfg.n_positions, cfg.n_embd], init),
            lm_head: (!cfg.tie_word_embeddings).then(|| {
                head.sub("lm_head")
                    .var("weight", &[cfg.vocab_size, cfg.n_embd], init)
            }),
            prefix,
            head_name,
        }
    }

    /// The token embedding `[vocab, n_embd]`.
    pub fn wte(&self) -> &Tensor {
        &self.wte
    }

    /// The position embedding `[n_positions, n_embd]`.
    pub fn wpe(&self) -> &Tensor {
        &self.wpe
    }

    /// The LM head matrix `[vocab, n_embd]` (the token embedding when tied).
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }

    /// Parameters under their var-store names.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (
                format!("{}wte.weight", self.prefix),
                self.wte.shallow_clone(),
            ),
            (
                format!("{}wpe.weight", self.prefix),
                self.wpe.shallow_clone(),
            ),
        ];
        if let Some(h) = &self.lm_head {
            v.push((self.head_name.clone(), h.shallow_clone()));
        }
        v
    }

    fn numel(&self) -> i64 {
        self.named_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}

/// One expert: a GPT-2 stack and the index of the embeddings it reads.
#[derive(Debug)]
struct Expert {
    stack: Gpt2Stack,
    emb: usize,
    prefix: String,
}

/// Output of [`MoeModel::forward`].
#[derive(Debug)]
pub struct MoeOutput {
    /// Logits `[B, T, vocab]`, fp32.
    pub logits: Tensor,
    /// The experts each sequence used, sorted (domain experts, then common).
    pub active: Vec<Vec<ExpertId>>,
}

/// One set of embeddings' share of a forward pass: the mean over each sequence's
/// active experts of their last hidden states, and the set's LM head.
#[derive(Debug)]
struct HeadPart {
    /// `[B, T, n_embd]` fp32 (zero in rows the set does not serve).
    hidden: Tensor,
    /// The head `[vocab, n_embd]` (the parameter).
    head: Tensor,
    /// The rows the set serves, sorted.
    rows: Vec<i64>,
}

/// A MoE forward pass up to the LM heads ([`MoeModel::forward_heads`]): the logits are
/// the sum over sets of embeddings of `hidden_s · head_sᵀ` ([`MoeHeads::logits`]).
/// When every set serves every row (one shared set, as in JEET, or a batch of one
/// domain), that sum is one linear map of the concatenated hidden states
/// ([`MoeHeads::as_linear`]), which the chunked and fused cross-entropy take without
/// the logits.
#[derive(Debug)]
pub struct MoeHeads {
    parts: Vec<HeadPart>,
    batch: i64,
    seq_len: i64,
    vocab: i64,
    compute_kind: Kind,
    device: Device,
    active: Vec<Vec<ExpertId>>,
}

impl MoeHeads {
    /// The forward's output: the logits ([`MoeHeads::logits`]) and the active experts.
    pub fn into_output(self) -> Result<MoeOutput> {
        Ok(MoeOutput {
            logits: self.logits()?,
            active: self.active,
        })
    }

    /// The logits `[B, T, vocab]`, fp32: each set's head in the compute kind on its
    /// averaged hidden states, summed in fp32.
    pub fn logits(&self) -> Result<Tensor> {
        let (b, t, k) = (self.batch, self.seq_len, self.compute_kind);
        let mut logits: Option<Tensor> = None;
        for p in &self.parts {
            let head = p.head.to_kind(k);
            let part = if p.rows.len() as i64 == b {
                p.hidden
                    .to_kind(k)
                    .f_linear::<Tensor>(&head, None)?
                    .to_kind(Kind::Float)
            } else {
                let idx = Tensor::from_slice(&p.rows).to_device(self.device);
                let l = p
                    .hidden
                    .index_select(0, &idx)
                    .to_kind(k)
                    .f_linear::<Tensor>(&head, None)?
                    .to_kind(Kind::Float);
                Tensor::zeros([b, t, self.vocab], (Kind::Float, self.device)).index_add(0, &idx, &l)
            };
            logits = Some(match logits {
                None => part,
                Some(acc) => acc + part,
            });
        }
        Ok(logits.unwrap_or_else(|| Tensor::zeros([b, t, self.vocab], (Kind::Float, self.device))))
    }

    /// When every set serves every row: `(hidden [B·T, S·n_embd], weight [vocab,
    /// S·n_embd])` with `logits = hidden · weightᵀ` (the sets' hidden states and heads
    /// concatenated; differentiable). `None` otherwise.
    pub fn as_linear(&self) -> Option<(Tensor, Tensor)> {
        if self.parts.is_empty() || self.parts.iter().any(|p| p.rows.len() as i64 != self.batch) {
            return None;
        }
        let hidden: Vec<Tensor> = self
            .parts
            .iter()
            .map(|p| p.hidden.shallow_clone())
            .collect();
        let heads: Vec<Tensor> = self.parts.iter().map(|p| p.head.shallow_clone()).collect();
        let h = if hidden.len() == 1 {
            hidden[0].shallow_clone()
        } else {
            Tensor::cat(&hidden, -1)
        };
        let w = if heads.len() == 1 {
            heads[0].shallow_clone()
        } else {
            Tensor::cat(&heads, 1)
        };
        let d = h.size()[2];
        Some((h.reshape([-1, d]), w))
    }

    /// The kind of the heads' matmuls.
    pub fn compute_kind(&self) -> Kind {
        self.compute_kind
    }
}

/// The mixture of modular experts (method §6).
///
/// Variable names (JEET / MoE-CE): `shared.wte.weight`, `shared.wpe.weight`,
/// `lm_head.weight` (only when `tie_word_embeddings` is false), `experts.<domain>.h.<i>.…`
/// and `experts.<domain>.ln_f.…` (Hugging Face block names), `common.h.…`,
/// `common.ln_f.…`. PLE: each expert keeps its own embeddings and head, at
/// `experts.<domain>.wte.weight`, `experts.<domain>.wpe.weight`,
/// `experts.<domain>.lm_head.weight` (and `common.…` likewise).
///
/// Combination: the output hidden state of a sequence is the mean of the final
/// hidden states (after each expert's `ln_f`) of its active experts, then the LM
/// head. For PLE, whose experts have their own heads, the logits are the mean of the
/// active experts' logits (the same thing when the head is shared, since the head is
/// linear without bias).
#[derive(Debug)]
pub struct MoeModel {
    cfg: MoeConfig,
    embeddings: Vec<Embeddings>,
    experts: Vec<Expert>,
    common: Option<Expert>,
    compute_kind: Kind,
    device: Device,
    /// Experts whose blocks live on another device than the model's (expert
    /// parallelism, [`MoeModel::place_expert`]).
    placement: BTreeMap<ExpertId, Device>,
}

impl MoeModel {
    /// Builds the model at `p` (the var store root) with GPT-2 initialisation.
    pub fn new(p: &nn::Path, cfg: &MoeConfig) -> Result<Self> {
        cfg.validate()?;
        let e = &cfg.expert;
        let mut embeddings = Vec::new();
        let mut experts = Vec::new();
        let shared = cfg.arch.shared_embeddings();
        if shared {
            embeddings.push(Embeddings::new(
                &p.sub("shared"),
                p,
                e,
                "shared.".into(),
                "lm_head.weight".into(),
            ));
        }
        let mut make = |prefix: String, path: nn::Path| -> Result<Expert> {
            let emb = if shared {
                0
            } else {
                embeddings.push(Embeddings::new(
                    &path,
                    &path,
                    e,
                    format!("{prefix}."),
                    format!("{prefix}.lm_head.weight"),
                ));
                embeddings.len() - 1
            };
            Ok(Expert {
                stack: Gpt2Stack::new(&path, e)?,
                emb,
                prefix,
            })
        };
        for d in &cfg.domains {
            experts.push(make(format!("experts.{d}"), p.sub("experts").sub(d))?);
        }
        let common = if cfg.common_expert {
            Some(make(COMMON.to_string(), p.sub(COMMON))?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            embeddings,
            experts,
            common,
            compute_kind: Kind::Float,
            device: p.device(),
            placement: BTreeMap::new(),
        })
    }

    /// Expert parallelism: moves the blocks (the GPT-2 stack) of expert `id` to
    /// `device`. The embeddings and LM heads stay on the model's device
    /// ([`MoeModel::device`]); in the forward pass the expert's input hidden states
    /// go to its device and its output comes back (autograd carries the gradients
    /// across), so experts on different GPUs of one process run one after the
    /// other, each on its own GPU's memory. AdamW and gradient clipping of mome-core
    /// handle parameters on several devices. Checkpoints and saved models are
    /// device-independent; a loaded model is on one device until placed again.
    pub fn place_expert(&mut self, id: ExpertId, device: Device) -> Result<()> {
        let x = self.expert(id)?;
        tch::no_grad(|| -> Result<()> {
            for (_, t) in x.stack.named_parameters() {
                if t.device() != device {
                    let moved = t.f_to_device(device)?;
                    let mut t = t;
                    t.f_set_data(&moved)?;
                }
            }
            Ok(())
        })?;
        if device == self.device {
            self.placement.remove(&id);
        } else {
            self.placement.insert(id, device);
        }
        Ok(())
    }

    /// Places the experts over `devices` in turn: the domain experts in order, then
    /// the common expert (with `[cuda:0, cuda:1]` and domains en, fr, de, py: en and
    /// de on GPU 0, fr and py on GPU 1). See [`MoeModel::place_expert`].
    pub fn place_experts(&mut self, devices: &[Device]) -> Result<()> {
        if devices.is_empty() {
            return Err(Error::Config("place_experts: no devices given".into()));
        }
        for (k, id) in self.expert_ids().into_iter().enumerate() {
            self.place_expert(id, devices[k % devices.len()])?;
        }
        Ok(())
    }

    /// The device of expert `id`'s blocks.
    pub fn expert_device(&self, id: ExpertId) -> Device {
        self.placement.get(&id).copied().unwrap_or(self.device)
    }

    /// The configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.cfg
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.cfg.arch
    }

    /// Domain names, in expert order.
    pub fn domains(&self) -> &[String] {
        &self.cfg.domains
    }

    /// The device of the parameters.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The kind matmuls and attention run in.
    pub fn compute_kind(&self) -> Kind {
        self.compute_kind
    }

    /// Applies the `[train.kernels]` keys that concern the experts' blocks (every
    /// expert, trained or frozen; see `Gpt2Stack::set_kernels`).
    pub fn set_kernels(&mut self, kernels: &mome_core::fusion::KernelConfig) {
        for x in self.experts.iter_mut().chain(self.common.as_mut()) {
            x.stack.set_kernels(kernels);
        }
    }

    /// Sets the kind matmuls and attention run in (parameters stay fp32).
    pub fn set_compute_kind(&mut self, kind: Kind) -> Result<()> {
        for x in self.experts.iter_mut().chain(self.common.as_mut()) {
            x.stack.set_compute_kind(kind)?;
        }
        self.compute_kind = kind;
        Ok(())
    }

    /// Every expert id of the model (domains in order, then the common expert).
    pub fn expert_ids(&self) -> Vec<ExpertId> {
        let mut v: Vec<ExpertId> = (0..self.experts.len()).map(ExpertId::Domain).collect();
        if self.common.is_some() {
            v.push(ExpertId::Common);
        }
        v
    }

    /// The name of an expert (`en`, ..., `common`).
    pub fn expert_name(&self, id: ExpertId) -> &str {
        match id {
            ExpertId::Domain(i) => &self.cfg.domains[i],
            ExpertId::Common => COMMON,
        }
    }

    /// Resolves an expert name (`common` for the common expert).
    pub fn expert_id(&self, name: &str) -> Result<ExpertId> {
        if name == COMMON && self.common.is_some() {
            return Ok(ExpertId::Common);
        }
        self.cfg
            .domain_index(name)
            .map(ExpertId::Domain)
            .ok_or_else(|| {
                Error::Routing(format!(
                    "no expert named {name:?} (experts: {:?}{})",
                    self.cfg.domains,
                    if self.common.is_some() {
                        " and common"
                    } else {
                        ""
                    }
                ))
            })
    }

    fn expert(&self, id: ExpertId) -> Result<&Expert> {
        match id {
            ExpertId::Domain(i) => self.experts.get(i),
            ExpertId::Common => self.common.as_ref(),
        }
        .ok_or_else(|| Error::Routing(format!("the model has no expert {id:?}")))
    }

    /// The embeddings (and head) an expert reads.
    pub fn embeddings_of(&self, id: ExpertId) -> Result<&Embeddings> {
        Ok(&self.embeddings[self.expert(id)?.emb])
    }

    /// Index of the embedding set (and head) an expert reads: experts with the same
    /// index share them (every expert of JEET / MoE-CE; none for PLE).
    pub fn embedding_index(&self, id: ExpertId) -> Result<usize> {
        Ok(self.expert(id)?.emb)
    }

    /// An expert's stack.
    pub fn stack(&self, id: ExpertId) -> Result<&Gpt2Stack> {
        Ok(&self.expert(id)?.stack)
    }

    /// An expert's stack parameters under their var-store names
    /// (`experts.<d>.h.0.ln_1.weight`, ...; PLE: its own embeddings and head too).
    pub fn expert_parameters(&self, id: ExpertId) -> Result<Vec<(String, Tensor)>> {
        let x = self.expert(id)?;
        let mut v: Vec<(String, Tensor)> = x
            .stack
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (format!("{}.{n}", x.prefix), t))
            .collect();
        if !self.cfg.arch.shared_embeddings() {
            v.extend(self.embeddings[x.emb].named_parameters());
        }
        Ok(v)
    }

    /// The shared embeddings and head (empty for PLE).
    pub fn shared_parameters(&self) -> Vec<(String, Tensor)> {
        if self.cfg.arch.shared_embeddings() {
            self.embeddings[0].named_parameters()
        } else {
            vec![]
        }
    }

    /// Every parameter under its var-store name, sorted.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = self.shared_parameters();
        for id in self.expert_ids() {
            v.extend(self.expert_parameters(id).expect("own id"));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Sets `requires_grad` on an expert's parameters (freezing it for AdamW).
    pub fn set_expert_trainable(&self, id: ExpertId, trainable: bool) -> Result<()> {
        for (_, t) in self.expert_parameters(id)? {
            let _ = t.set_requires_grad(trainable);
        }
        Ok(())
    }

    /// Sets `requires_grad` on every parameter.
    pub fn set_all_trainable(&self, trainable: bool) {
        for (_, t) in self.named_parameters() {
            let _ = t.set_requires_grad(trainable);
        }
    }

    /// Distinct parameters of the whole model.
    pub fn total_parameters(&self) -> i64 {
        self.named_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// Parameters one sequence runs through with these active experts: the
    /// embeddings and head they read (once each) plus their stacks.
    pub fn active_parameters(&self, active: &[ExpertId]) -> Result<i64> {
        let mut embs = std::collections::BTreeSet::new();
        let mut n = 0i64;
        for &id in active {
            let x = self.expert(id)?;
            embs.insert(x.emb);
            n += x
                .stack
                .named_parameters()
                .iter()
                .map(|(_, t)| t.numel() as i64)
                .sum::<i64>();
        }
        Ok(n + embs
            .iter()
            .map(|&e| self.embeddings[e].numel())
            .sum::<i64>())
    }

    /// Token + position embeddings of `ids` `[G, T]` (Int64, on the device) with
    /// embedding dropout when `train` (as `Gpt2Model::embed`).
    fn embed(&self, e: usize, ids: &Tensor, train: bool) -> Result<Tensor> {
        let emb = &self.embeddings[e];
        let t = ids.size()[1];
        let tok = Tensor::f_embedding(&emb.wte, ids, -1, false, false)?;
        let pos = Tensor::arange(t, (Kind::Int64, self.device)).unsqueeze(0);
        let pe = Tensor::f_embedding(&emb.wpe, &pos, -1, false, false)?;
        Ok((tok + pe).dropout(self.cfg.expert.embd_pdrop, train))
    }

    /// Routes each row of `ids` with `router` (classes checked against the experts
    /// before any routing).
    pub fn route_batch(
        &self,
        router: &dyn SequenceRouter,
        ids: &Tensor,
    ) -> Result<Vec<ExpertChoice>> {
        route_batch(router, &self.cfg, ids)
    }

    /// Forward pass with per-sequence routing: `choices[i]` routes row `i` of `ids`
    /// `[B, T]`; `setting` decides the active experts of each sequence. Sequences are
    /// grouped by expert (`index_select`), each expert runs once on its group, and the
    /// outputs are added back per sequence (`index_add`) and averaged.
    pub fn forward(
        &self,
        ids: &Tensor,
        choices: &[ExpertChoice],
        setting: &Setting,
        train: bool,
    ) -> Result<MoeOutput> {
        let resolved = ResolvedSetting::new(setting, &self.cfg)?;
        self.forward_resolved(ids, choices, &resolved, train)
    }

    /// [`MoeModel::forward`] with a setting resolved beforehand.
    pub fn forward_resolved(
        &self,
        ids: &Tensor,
        choices: &[ExpertChoice],
        setting: &ResolvedSetting,
        train: bool,
    ) -> Result<MoeOutput> {
        self.forward_heads_resolved(ids, choices, setting, train)?
            .into_output()
    }

    /// Forward pass with explicit active experts per sequence (each non-empty).
    pub fn forward_active(
        &self,
        ids: &Tensor,
        active: &[Vec<ExpertId>],
        train: bool,
    ) -> Result<MoeOutput> {
        self.forward_heads(ids, active, train)?.into_output()
    }

    /// [`MoeModel::forward_resolved`] up to the LM heads: the averaged hidden states
    /// of each set of embeddings and its head ([`MoeHeads`]), no logits yet.
    pub fn forward_heads_resolved(
        &self,
        ids: &Tensor,
        choices: &[ExpertChoice],
        setting: &ResolvedSetting,
        train: bool,
    ) -> Result<MoeHeads> {
        let n = self.experts.len();
        for (i, c) in choices.iter().enumerate() {
            if c.expert >= n || c.probabilities.len() != n {
                return Err(Error::Routing(format!(
                    "sequence {i}: routed to expert {} with {} probabilities; the model has {n} domain experts",
                    c.expert,
                    c.probabilities.len()
                )));
            }
        }
        let active: Vec<Vec<ExpertId>> = choices.iter().map(|c| setting.active(c)).collect();
        self.forward_heads(ids, &active, train)
    }

    /// [`MoeModel::forward_active`] up to the LM heads.
    pub fn forward_heads(
        &self,
        ids: &Tensor,
        active: &[Vec<ExpertId>],
        train: bool,
    ) -> Result<MoeHeads> {
        let size = ids.size();
        if size.len() != 2 {
            return Err(Error::Input(format!(
                "input ids must be [batch, seq], got {size:?}"
            )));
        }
        if !matches!(
            ids.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Uint8 | Kind::Int8
        ) {
            return Err(Error::Input(format!(
                "input ids must be an integer tensor, got {:?}",
                ids.kind()
            )));
        }
        let (b, t) = (size[0], size[1]);
        if active.len() as i64 != b {
            return Err(Error::Routing(format!(
                "{} routings for a batch of {b} sequences",
                active.len()
            )));
        }
        let e = &self.cfg.expert;
        if t > e.n_positions {
            return Err(Error::Input(format!(
                "sequence length {t} exceeds n_positions {}",
                e.n_positions
            )));
        }
        let mut groups: BTreeMap<ExpertId, Vec<i64>> = BTreeMap::new();
        for (i, a) in active.iter().enumerate() {
            if a.is_empty() {
                return Err(Error::Routing(format!("sequence {i} has no active expert")));
            }
            for &id in a {
                self.expert(id)?;
                let g = groups.entry(id).or_default();
                if g.last() != Some(&(i as i64)) {
                    g.push(i as i64);
                }
            }
        }
        // The [0, vocab) check reads a min/max back to the host: done on the host
        // copy when the ids come from the host (training batches do), so a CUDA step
        // is not synchronised by it.
        let host_ids = (ids.device() == Device::Cpu).then(|| ids.to_kind(Kind::Int64));
        let ids = ids.to_device(self.device).to_kind(Kind::Int64);
        if b > 0 && t > 0 {
            let checked = host_ids.as_ref().unwrap_or(&ids);
            let (lo, hi) = (
                checked.min().int64_value(&[]),
                checked.max().int64_value(&[]),
            );
            if lo < 0 || hi >= e.vocab_size {
                return Err(Error::Input(format!(
                    "token id {} is outside the vocabulary [0, {})",
                    if lo < 0 { lo } else { hi },
                    e.vocab_size
                )));
            }
        }
        let counts: Vec<f32> = active
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.sort();
                a.dedup();
                a.len() as f32
            })
            .collect();
        let inv = Tensor::from_slice(&counts)
            .to_device(self.device)
            .reciprocal()
            .view([b, 1, 1]);
        let shared = self.cfg.arch.shared_embeddings();
        let shared_emb = if shared {
            Some(self.embed(0, &ids, train)?)
        } else {
            None
        };
        // Per embedding set: the sum of its experts' outputs and the rows touched. A
        // group of every row in order (a single-domain batch, the common expert) takes
        // the embeddings as they are and adds its output whole: no gather, no scatter.
        let mut sums: BTreeMap<usize, (Tensor, Vec<i64>)> = BTreeMap::new();
        for (id, rows) in &groups {
            let x = self.expert(*id)?;
            let whole = rows.len() as i64 == b && rows.iter().zip(0..).all(|(&r, i)| r == i);
            let idx = Tensor::from_slice(rows).to_device(self.device);
            let h_in = match (&shared_emb, whole) {
                (Some(h), true) => h.shallow_clone(),
                (Some(h), false) => h.index_select(0, &idx),
                (None, true) => self.embed(x.emb, &ids, train)?,
                (None, false) => self.embed(x.emb, &ids.index_select(0, &idx), train)?,
            };
            let dev = self.expert_device(*id);
            let h_in = if dev == self.device {
                h_in
            } else {
                h_in.f_to_device(dev)?
            };
            let out = x.stack.forward(&h_in, None, None, false, train)?;
            let mut h_out = out.last_hidden_state.f_to_kind(Kind::Float)?;
            if dev != self.device {
                h_out = h_out.f_to_device(self.device)?;
            }
            match sums.entry(x.emb) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    let sum = if whole {
                        h_out
                    } else {
                        Tensor::zeros([b, t, e.n_embd], (Kind::Float, self.device))
                            .index_add(0, &idx, &h_out)
                    };
                    v.insert((sum, rows.clone()));
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let entry = o.get_mut();
                    entry.0 = if whole {
                        &entry.0 + &h_out
                    } else {
                        entry.0.index_add(0, &idx, &h_out)
                    };
                    entry.1.extend(rows);
                }
            }
        }
        // One active expert per sequence: the average is the sum.
        let single = counts.iter().all(|&c| c == 1.0);
        let parts = sums
            .into_iter()
            .map(|(emb, (sum, mut rows))| {
                rows.sort_unstable();
                rows.dedup();
                HeadPart {
                    hidden: if single { sum } else { sum * &inv },
                    head: self.embeddings[emb].head().shallow_clone(),
                    rows,
                }
            })
            .collect();
        Ok(MoeHeads {
            parts,
            batch: b,
            seq_len: t,
            vocab: e.vocab_size,
            compute_kind: self.compute_kind,
            device: self.device,
            active: active.to_vec(),
        })
    }
}
