//! Offline teacher cache: the teacher's top-K next-token distribution for every
//! position of the training shards, computed once and memory-mapped.
//!
//! Layout of a cache folder (written atomically with `mome_data::fsutil::AtomicDir`,
//! `manifest.json` last):
//!
//! ```text
//! manifest.json                      CacheManifest (format "mome-teacher-cache")
//! <split>/<domain>.ids.bin           [sequences, seq_len, K] token ids, u16 LE (V <= 65536) or u32 LE
//! <split>/<domain>.logp.bin          [sequences, seq_len, K] log-probs, f16 or bf16 LE
//! ```
//!
//! Row `i` of `<split>/<domain>` is sequence `i` of that split and domain of the
//! shards, so a sampler's `(domain, index)` items address cache rows directly. The
//! log-probabilities are `log_softmax(z_t / T)` of the full vocabulary at the
//! temperature given when building (distillation must use the same temperature),
//! sorted descending per position. How the missing tail mass is used: see
//! [`crate::losses`] (explicit rest bucket).
//!
//! The manifest ties the cache to its teacher (sha256 of `model.safetensors` and
//! the config) and to the shards ([`shards_fingerprint`]: the manifest plus sampled
//! shard contents): opening
//! it for other shards or another teacher is an [`Error::CacheMismatch`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::Mmap;
use mome_data::fsutil::{write_json_atomic, AtomicDir};
use mome_data::shards::ShardSet;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::losses::SparseTeacher;
use crate::teacher::load_teacher;
use crate::{Error, Result};

/// The `format` of a cache manifest.
pub const CACHE_FORMAT: &str = "mome-teacher-cache";
/// The supported `format_version`.
pub const CACHE_VERSION: u32 = 1;
/// The manifest file name.
pub const CACHE_MANIFEST: &str = "manifest.json";

/// Stored token-id width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdDtype {
    /// 2 bytes (vocabularies up to 65536).
    U16,
    /// 4 bytes.
    U32,
}

impl IdDtype {
    /// The narrowest width for `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            IdDtype::U16
        } else {
            IdDtype::U32
        }
    }
    /// Bytes per id.
    pub fn size(&self) -> usize {
        match self {
            IdDtype::U16 => 2,
            IdDtype::U32 => 4,
        }
    }
}

/// Stored log-probability format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValueDtype {
    /// IEEE half: 10-bit mantissa (log-prob error <= 2^-11 relative).
    #[default]
    F16,
    /// bfloat16: 7-bit mantissa, fp32 range.
    Bf16,
}

impl std::str::FromStr for ValueDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" | "fp16" => Ok(ValueDtype::F16),
            "bf16" => Ok(ValueDtype::Bf16),
            _ => Err(Error::Config(format!(
                "value dtype {s:?}: expected f16 or bf16"
            ))),
        }
    }
}

/// One split/domain of a cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDomain {
    /// Id file, relative to the cache folder.
    pub ids_file: String,
    /// Log-prob file, relative to the cache folder.
    pub values_file: String,
    /// Sequences (rows).
    pub sequences: u64,
}

/// `manifest.json` of a teacher cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheManifest {
    /// Always [`CACHE_FORMAT`].
    pub format: String,
    /// [`CACHE_VERSION`].
    pub format_version: u32,
    /// Entries per position.
    pub top_k: usize,
    /// The teacher's vocabulary size.
    pub vocab_size: usize,
    /// Positions per sequence (the shards' `seq_len`).
    pub seq_len: usize,
    /// Softmax temperature of the stored log-probs.
    pub temperature: f64,
    /// Id width.
    pub id_dtype: IdDtype,
    /// Value format.
    pub value_dtype: ValueDtype,
    /// sha256 of the teacher's `model.safetensors`.
    pub teacher_sha256: String,
    /// The teacher's `config.json`.
    pub teacher_config: serde_json::Value,
    /// [`shards_fingerprint`] of the shards (manifest + sampled shard contents).
    pub shards_fingerprint: String,
    /// The shards' tokenizer hash.
    pub shards_tokenizer_sha256: String,
    /// split -> domain -> files.
    pub splits: BTreeMap<String, BTreeMap<String, CacheDomain>>,
    /// Wall time of the build, seconds.
    pub build_seconds: f64,
}

impl CacheManifest {
    /// Bytes stored per token position (`K * (id + value)`).
    pub fn bytes_per_token(&self) -> usize {
        self.top_k * (self.id_dtype.size() + 2)
    }

    /// Token positions stored, over every split and domain.
    pub fn tokens(&self) -> u64 {
        self.splits
            .values()
            .flat_map(|d| d.values())
            .map(|d| d.sequences * self.seq_len as u64)
            .sum()
    }
}

/// Settings of [`build_cache`].
#[derive(Debug, Clone, PartialEq)]
pub struct CacheBuildOptions {
    /// Entries kept per position (1..=vocab).
    pub top_k: usize,
    /// Softmax temperature (must equal the distillation temperature).
    pub temperature: f64,
    /// Value format.
    pub value_dtype: ValueDtype,
    /// Splits to cache (distillation reads `train`).
    pub splits: Vec<String>,
    /// Sequences per teacher forward pass.
    pub batch_size: usize,
    /// Run the teacher in bf16 (CUDA).
    pub bf16_teacher: bool,
    /// No progress lines on stderr.
    pub quiet: bool,
}

impl Default for CacheBuildOptions {
    fn default() -> Self {
        Self {
            top_k: 64,
            temperature: 1.0,
            value_dtype: ValueDtype::F16,
            splits: vec!["train".into()],
            batch_size: 8,
            bf16_teacher: false,
            quiet: true,
        }
    }
}

/// A fingerprint of the shards: sha256 over `manifest.json` and, per shard file in
/// manifest order, its name, length and sampled content (the first and last 64 KiB
/// and 16 evenly spaced 4 KiB blocks; small files are hashed whole). Shards with the
/// same counts but other tokens (the manifest alone cannot tell) differ here.
pub fn shards_fingerprint(shards: &ShardSet) -> Result<String> {
    use sha2::{Digest, Sha256};
    let root = shards.root();
    let mpath = root.join("manifest.json");
    let mut h = Sha256::new();
    h.update(std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?);
    for domains in shards.manifest().splits.values() {
        for d in domains.values() {
            for f in &d.files {
                let path = root.join(f);
                let map = map_file(&path)?;
                let b: &[u8] = &map;
                h.update(f.as_bytes());
                h.update((b.len() as u64).to_le_bytes());
                const EDGE: usize = 64 << 10;
                const BLOCK: usize = 4 << 10;
                if b.len() <= 2 * EDGE + 16 * BLOCK {
                    h.update(b);
                } else {
                    h.update(&b[..EDGE]);
                    h.update(&b[b.len() - EDGE..]);
                    for i in 0..16 {
                        let at = EDGE + (b.len() - 2 * EDGE - BLOCK) * i / 15;
                        h.update(&b[at..at + BLOCK]);
                    }
                }
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Runs the teacher in `teacher_dir` once over `splits` of the shards in
/// `shards_dir` and writes the cache to `out` (replacing it atomically).
pub fn build_cache(
    teacher_dir: &Path,
    shards_dir: &Path,
    out: &Path,
    opts: &CacheBuildOptions,
    device: Device,
) -> Result<CacheManifest> {
    let started = Instant::now();
    if !(opts.temperature.is_finite() && opts.temperature > 0.0) {
        return Err(Error::Config(format!(
            "temperature = {}: must be finite and > 0",
            opts.temperature
        )));
    }
    if opts.batch_size == 0 {
        return Err(Error::Config("batch_size must be > 0".into()));
    }
    let (_vs, teacher, teacher_sha) = load_teacher(teacher_dir, device, opts.bf16_teacher)?;
    let shards = ShardSet::open(shards_dir)?;
    let vocab = teacher.config().vocab_size as usize;
    shards.check_vocab(vocab)?;
    if vocab != shards.vocab_size() {
        return Err(Error::VocabMismatch {
            what: format!("the shards {}", shards_dir.display()),
            found: shards.vocab_size(),
            student: vocab,
        });
    }
    if opts.top_k == 0 || opts.top_k > vocab {
        return Err(Error::Config(format!(
            "top_k = {}: must be in 1..={vocab}",
            opts.top_k
        )));
    }
    let seq_len = shards.seq_len();
    if seq_len as i64 > teacher.config().n_positions {
        return Err(Error::Config(format!(
            "the shards hold {seq_len}-token sequences but the teacher has {} positions",
            teacher.config().n_positions
        )));
    }
    let id_dtype = IdDtype::for_vocab(vocab);
    let dir = AtomicDir::new(out)?;
    let mut splits = BTreeMap::new();
    let k = opts.top_k as i64;
    let _guard = tch::no_grad_guard();
    for split in &opts.splits {
        let mut domains = BTreeMap::new();
        for domain in shards.domains(split)? {
            let reader = shards.reader(split, &domain)?;
            let n = reader.len();
            let sub = dir.path().join(split);
            std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
            let ids_rel = format!("{split}/{domain}.ids.bin");
            let val_rel = format!("{split}/{domain}.logp.bin");
            let ids_path = dir.path().join(&ids_rel);
            let val_path = dir.path().join(&val_rel);
            let mut ids_w =
                BufWriter::new(File::create(&ids_path).map_err(|e| Error::io(&ids_path, e))?);
            let mut val_w =
                BufWriter::new(File::create(&val_path).map_err(|e| Error::io(&val_path, e))?);
            let mut buf = vec![0i64; opts.batch_size * seq_len];
            let mut start = 0;
            while start < n {
                let b = opts.batch_size.min(n - start);
                for i in 0..b {
                    reader.read_into_i64(start + i, &mut buf[i * seq_len..(i + 1) * seq_len])?;
                }
                let ids = Tensor::from_slice(&buf[..b * seq_len])
                    .view([b as i64, seq_len as i64])
                    .f_to_device(device)?;
                let logits = teacher.forward(mome_experts::Gpt2Input::ids(&ids))?.logits;
                let logp = logits
                    .f_to_kind(Kind::Float)?
                    .f_div_scalar(opts.temperature)?
                    .f_log_softmax(-1, Kind::Float)?;
                let (vals, idx) = logp.f_topk(k, -1, true, true)?;
                let vals = Vec::<f32>::try_from(&vals.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
                let idx = Vec::<i64>::try_from(&idx.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
                for &i in &idx {
                    match id_dtype {
                        IdDtype::U16 => ids_w.write_all(&(i as u16).to_le_bytes()),
                        IdDtype::U32 => ids_w.write_all(&(i as u32).to_le_bytes()),
                    }
                    .map_err(|e| Error::io(&ids_path, e))?;
                }
                for &v in &vals {
                    let bits = match opts.value_dtype {
                        ValueDtype::F16 => half::f16::from_f32(v).to_bits(),
                        ValueDtype::Bf16 => half::bf16::from_f32(v).to_bits(),
                    };
                    val_w
                        .write_all(&bits.to_le_bytes())
                        .map_err(|e| Error::io(&val_path, e))?;
                }
                start += b;
            }
            for (w, p) in [(ids_w, &ids_path), (val_w, &val_path)] {
                let f = w.into_inner().map_err(|e| Error::io(p, e.into_error()))?;
                f.sync_all().map_err(|e| Error::io(p, e))?;
            }
            if !opts.quiet {
                eprintln!("teacher cache: {split}/{domain}: {n} sequences");
            }
            domains.insert(
                domain.clone(),
                CacheDomain {
                    ids_file: ids_rel,
                    values_file: val_rel,
                    sequences: n as u64,
                },
            );
        }
        splits.insert(split.clone(), domains);
    }
    let teacher_config: serde_json::Value = serde_json::from_str(&teacher.config().to_hf_json()?)?;
    let manifest = CacheManifest {
        format: CACHE_FORMAT.into(),
        format_version: CACHE_VERSION,
        top_k: opts.top_k,
        vocab_size: vocab,
        seq_len,
        temperature: opts.temperature,
        id_dtype,
        value_dtype: opts.value_dtype,
        teacher_sha256: teacher_sha,
        teacher_config,
        shards_fingerprint: shards_fingerprint(&shards)?,
        shards_tokenizer_sha256: shards.manifest().tokenizer_sha256.clone(),
        splits,
        build_seconds: started.elapsed().as_secs_f64(),
    };
    write_json_atomic(&dir.path().join(CACHE_MANIFEST), &manifest)?;
    dir.commit()?;
    Ok(manifest)
}

/// Memory-maps `path` read-only.
#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: cache folders are immutable once committed (a rebuild writes a new
    // folder and renames it into place), so the mapped bytes do not change while
    // the map is alive.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

struct DomainMaps {
    ids: Mmap,
    values: Mmap,
    sequences: usize,
}

/// An opened, validated teacher cache.
pub struct TeacherCache {
    root: PathBuf,
    manifest: CacheManifest,
    maps: BTreeMap<(String, String), DomainMaps>,
}

impl std::fmt::Debug for TeacherCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeacherCache")
            .field("root", &self.root)
            .field("manifest", &self.manifest)
            .finish()
    }
}

impl TeacherCache {
    /// Opens a cache folder and checks every file size against the manifest.
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join(CACHE_MANIFEST);
        let bad = |reason: String| Error::Cache {
            path: dir.to_path_buf(),
            reason,
        };
        if !mpath.is_file() {
            return Err(bad(format!(
                "no {CACHE_MANIFEST}: not a teacher cache (build one with `mome teacher-cache build`)"
            )));
        }
        let text = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
        let loose: serde_json::Value = serde_json::from_slice(&text)?;
        if loose.get("format").and_then(|v| v.as_str()) != Some(CACHE_FORMAT) {
            return Err(bad(format!("manifest format is not {CACHE_FORMAT:?}")));
        }
        if loose.get("format_version").and_then(|v| v.as_u64()) != Some(CACHE_VERSION as u64) {
            return Err(bad(format!(
                "format_version {:?} is not supported (expected {CACHE_VERSION})",
                loose.get("format_version")
            )));
        }
        let manifest: CacheManifest = serde_json::from_value(loose)?;
        let m = &manifest;
        if m.seq_len == 0 || m.top_k == 0 || m.top_k > m.vocab_size {
            return Err(bad(format!(
                "seq_len {} and top_k {} must be > 0, top_k at most vocab_size {}",
                m.seq_len, m.top_k, m.vocab_size
            )));
        }
        let too_big = || bad("the manifest's sizes overflow".to_string());
        let per_seq = m.seq_len.checked_mul(m.top_k).ok_or_else(too_big)?;
        let mut maps = BTreeMap::new();
        for (split, domains) in &manifest.splits {
            for (domain, d) in domains {
                let ids = map_file(&dir.join(&d.ids_file))?;
                let values = map_file(&dir.join(&d.values_file))?;
                let n = usize::try_from(d.sequences).map_err(|_| too_big())?;
                let want = |w: usize| n.checked_mul(per_seq)?.checked_mul(w);
                let (Some(want_ids), Some(want_vals)) = (want(manifest.id_dtype.size()), want(2))
                else {
                    return Err(too_big());
                };
                if ids.len() != want_ids || values.len() != want_vals {
                    return Err(bad(format!(
                        "{split}/{domain}: files hold {} / {} bytes, the manifest needs {want_ids} / {want_vals}",
                        ids.len(),
                        values.len()
                    )));
                }
                maps.insert(
                    (split.clone(), domain.clone()),
                    DomainMaps {
                        ids,
                        values,
                        sequences: n,
                    },
                );
            }
        }
        Ok(Self {
            root: dir.to_path_buf(),
            manifest,
            maps,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &CacheManifest {
        &self.manifest
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mismatch(&self, what: &str, cached: String, given: String) -> Error {
        Error::CacheMismatch {
            path: self.root.clone(),
            what: what.into(),
            cached,
            given,
        }
    }

    /// Fails unless the cache was built from these shards ([`shards_fingerprint`]),
    /// and holds every sequence of `split`.
    pub fn check_shards(&self, shards: &ShardSet, split: &str) -> Result<()> {
        let sha = shards_fingerprint(shards)?;
        if sha != self.manifest.shards_fingerprint {
            return Err(self.mismatch(
                "shards fingerprint",
                self.manifest.shards_fingerprint.clone(),
                format!("{sha} ({})", shards.root().display()),
            ));
        }
        for domain in shards.domains(split)? {
            let have = self
                .maps
                .get(&(split.to_string(), domain.clone()))
                .map(|m| m.sequences);
            let want = shards.num_sequences(split, &domain)?;
            if have != Some(want) {
                return Err(self.mismatch(
                    &format!("sequences of {split}/{domain}"),
                    format!("{have:?}"),
                    want.to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Fails unless the cache was built by the teacher in `teacher_dir`.
    pub fn check_teacher(&self, teacher_dir: &Path) -> Result<()> {
        let sha = crate::teacher::teacher_sha256(teacher_dir)?;
        if sha != self.manifest.teacher_sha256 {
            return Err(self.mismatch(
                "teacher model.safetensors sha256",
                self.manifest.teacher_sha256.clone(),
                format!("{sha} ({})", teacher_dir.display()),
            ));
        }
        Ok(())
    }

    /// Fails unless the cache's temperature is `temperature`.
    pub fn check_temperature(&self, temperature: f64) -> Result<()> {
        if (self.manifest.temperature - temperature).abs() > 1e-9 {
            return Err(self.mismatch(
                "temperature",
                self.manifest.temperature.to_string(),
                temperature.to_string(),
            ));
        }
        Ok(())
    }

    /// The sparse teacher of the rows `items` (`(domain, sequence index)`) of
    /// `split`, as `[B, seq_len, K]` tensors on `device`.
    pub fn rows(
        &self,
        split: &str,
        items: &[(&str, usize)],
        device: Device,
    ) -> Result<SparseTeacher> {
        let m = &self.manifest;
        let per_seq = m.seq_len * m.top_k;
        let mut ids = Vec::with_capacity(items.len() * per_seq);
        let mut vals = Vec::with_capacity(items.len() * per_seq);
        for &(domain, index) in items {
            let maps = self
                .maps
                .get(&(split.to_string(), domain.to_string()))
                .ok_or_else(|| Error::Cache {
                    path: self.root.clone(),
                    reason: format!("holds no {split}/{domain}"),
                })?;
            if index >= maps.sequences {
                return Err(Error::Cache {
                    path: self.root.clone(),
                    reason: format!(
                        "{split}/{domain} has {} rows, row {index} requested",
                        maps.sequences
                    ),
                });
            }
            let w = m.id_dtype.size();
            let id_bytes = &maps.ids[index * per_seq * w..(index + 1) * per_seq * w];
            match m.id_dtype {
                IdDtype::U16 => ids.extend(
                    id_bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64),
                ),
                IdDtype::U32 => ids.extend(
                    id_bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
                ),
            }
            let v_bytes = &maps.values[index * per_seq * 2..(index + 1) * per_seq * 2];
            let conv: fn(u16) -> f32 = match m.value_dtype {
                ValueDtype::F16 => |b| half::f16::from_bits(b).to_f32(),
                ValueDtype::Bf16 => |b| half::bf16::from_bits(b).to_f32(),
            };
            vals.extend(
                v_bytes
                    .chunks_exact(2)
                    .map(|c| conv(u16::from_le_bytes([c[0], c[1]]))),
            );
            if let Some(bad) = ids[ids.len() - per_seq..]
                .iter()
                .find(|&&id| id as usize >= m.vocab_size)
            {
                return Err(Error::Cache {
                    path: self.root.clone(),
                    reason: format!(
                        "{split}/{domain} row {index} holds token id {bad}, outside the \
                         vocabulary of {}",
                        m.vocab_size
                    ),
                });
            }
        }
        let shape = [items.len() as i64, m.seq_len as i64, m.top_k as i64];
        Ok(SparseTeacher {
            ids: Tensor::from_slice(&ids).view(shape).f_to_device(device)?,
            logprobs: Tensor::from_slice(&vals).view(shape).f_to_device(device)?,
            vocab_size: m.vocab_size as i64,
        })
    }
}

/// The domain name of a [`synthetic_cache`].
pub const SYNTHETIC_DOMAIN: &str = "bench";

/// Writes a synthetic teacher cache into `dir` (replacing it) and opens it: `rows`
/// sequences of domain [`SYNTHETIC_DOMAIN`] in split `train`, `seq_len` positions of
/// `top_k` entries each, in this crate's on-disk format (`f16` values), as
/// `mome bench train --mode kd-cache` reads it. The ids are random, the
/// log-probabilities sorted descending and leave a rest mass of about 0.1.
pub fn synthetic_cache(
    dir: &Path,
    rows: usize,
    seq_len: usize,
    top_k: usize,
    vocab: usize,
    temperature: f64,
) -> Result<TeacherCache> {
    if rows == 0 || seq_len == 0 || top_k == 0 || top_k > vocab {
        return Err(Error::Config(format!(
            "synthetic cache: rows {rows}, seq_len {seq_len}, top_k {top_k} (<= vocab {vocab}) must be > 0"
        )));
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let train = dir.join("train");
    std::fs::create_dir_all(&train).map_err(|e| Error::io(&train, e))?;
    let _guard = tch::no_grad_guard();
    let n = (rows * seq_len) as i64;
    let k = top_k as i64;
    let id_dtype = IdDtype::for_vocab(vocab);
    let ids = Tensor::f_randint(vocab as i64, [n * k], (Kind::Int64, Device::Cpu))?;
    let ids: Vec<i64> = Vec::try_from(&ids)?;
    let mut id_bytes = Vec::with_capacity(ids.len() * id_dtype.size());
    for i in ids {
        match id_dtype {
            IdDtype::U16 => id_bytes.extend_from_slice(&(i as u16).to_le_bytes()),
            IdDtype::U32 => id_bytes.extend_from_slice(&(i as u32).to_le_bytes()),
        }
    }
    let u = Tensor::f_rand([n, k], (Kind::Float, Device::Cpu))?.f_add_scalar(1e-3)?;
    let (u, _) = u.f_sort(-1, true)?;
    let p = u
        .f_div(&u.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?)?
        .f_mul_scalar(0.9)?;
    let logp = p.f_log()?.f_to_kind(Kind::Half)?.f_contiguous()?;
    let mut val_bytes = vec![0u8; (n * k) as usize * 2];
    logp.f_copy_data_u8(&mut val_bytes, (n * k) as usize)?;
    let files = [
        ("train/bench.ids.bin", id_bytes),
        ("train/bench.logp.bin", val_bytes),
    ];
    for (name, bytes) in &files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    let mut domains = BTreeMap::new();
    domains.insert(
        SYNTHETIC_DOMAIN.to_string(),
        CacheDomain {
            ids_file: files[0].0.into(),
            values_file: files[1].0.into(),
            sequences: rows as u64,
        },
    );
    let mut splits = BTreeMap::new();
    splits.insert("train".to_string(), domains);
    let manifest = CacheManifest {
        format: CACHE_FORMAT.into(),
        format_version: CACHE_VERSION,
        top_k,
        vocab_size: vocab,
        seq_len,
        temperature,
        id_dtype,
        value_dtype: ValueDtype::F16,
        teacher_sha256: "synthetic".into(),
        teacher_config: serde_json::json!({}),
        shards_fingerprint: "synthetic".into(),
        shards_tokenizer_sha256: "synthetic".into(),
        splits,
        build_seconds: 0.0,
    };
    write_json_atomic(&dir.join(CACHE_MANIFEST), &manifest)?;
    TeacherCache::open(dir)
}
