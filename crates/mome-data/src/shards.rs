//! Token shards, format version 1: fixed-length token sequences stored as flat
//! little-endian integer files, memory-mapped for training.
//!
//! Layout (see `docs/data-shards.md`):
//!
//! ```text
//! SHARDS/manifest.json
//! SHARDS/<split>/<domain>/shard-00000.bin
//! SHARDS/<split>/<domain>/shard-00001.bin
//! ```
//!
//! Each `.bin` file is a flat array of little-endian `u16` (vocab_size <= 65536) or
//! `u32` token ids whose length is a multiple of `seq_len`; a sequence never
//! straddles two files. The manifest records the tokenizer's sha256, the vocabulary
//! size, `seq_len`, the dtype, BOS/EOS ids and, per split and domain, the files,
//! sequence and token counts.
//!
//! ```
//! use mome_data::shards::{ShardSet, ShardWriter};
//! let root = tempfile::tempdir().unwrap();
//! let out = root.path().join("shards");
//! let mut w = ShardWriter::new(&out, 100, 4, &"0".repeat(64), 1, 2).unwrap();
//! w.push_sequence("train", "en", &[1, 5, 6, 2]).unwrap();
//! w.finish().unwrap();
//! let set = ShardSet::open(&out).unwrap();
//! assert_eq!(set.sequence("train", "en", 0).unwrap(), vec![1, 5, 6, 2]);
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{write_json_atomic, AtomicDir};
use crate::{Error, Result};

/// The shard format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "mome-shards";
/// Name of the manifest file inside a shard folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The split names a shard folder may contain.
pub const SPLITS: [&str; 2] = ["train", "validation"];
/// Default maximum size of one shard file (256 MiB), rounded down to whole sequences.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn shards_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Shards {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Integer type of the token ids stored in the shard files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// Little-endian `u16` (vocab_size <= 65536).
    U16,
    /// Little-endian `u32`.
    U32,
}

impl TokenDtype {
    /// The smallest dtype that holds every id of a vocabulary of `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Result<Self> {
        match vocab_size {
            0 => Err(Error::Config("vocab_size must be > 0".into())),
            1..=65536 => Ok(Self::U16),
            v if v as u64 <= u64::from(u32::MAX) + 1 => Ok(Self::U32),
            v => Err(Error::Config(format!(
                "vocab_size {v} does not fit in 32-bit token ids"
            ))),
        }
    }

    /// Bytes per token.
    pub fn size(&self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    /// Largest vocabulary this dtype can hold.
    pub fn max_vocab(&self) -> u64 {
        match self {
            Self::U16 => 1 << 16,
            Self::U32 => 1 << 32,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::U16 => "u16",
            Self::U32 => "u32",
        }
    }
}

/// The files and counts of one domain of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DomainShards {
    /// Shard files, relative to the shard folder, in reading order.
    pub files: Vec<String>,
    /// Number of sequences in all files together.
    pub sequences: u64,
    /// Number of tokens (`sequences * seq_len`).
    pub tokens: u64,
}

/// `manifest.json` of a shard folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"mome-shards"`.
    pub format: String,
    /// Format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Hex sha256 of the `tokenizer.json` bytes used to encode.
    pub tokenizer_sha256: String,
    /// Vocabulary size of that tokenizer (added tokens included).
    pub vocab_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Integer type of the stored ids.
    pub dtype: TokenDtype,
    /// Beginning-of-document id.
    pub bos_id: u32,
    /// End-of-document id.
    pub eos_id: u32,
    /// split -> domain -> files and counts.
    pub splits: BTreeMap<String, BTreeMap<String, DomainShards>>,
}

/// Whether `name` is a valid domain name (`[A-Za-z0-9_-]+`).
pub fn valid_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_split_domain(split: &str, domain: &str) -> Result<()> {
    if !SPLITS.contains(&split) {
        return Err(Error::Config(format!(
            "invalid split name {split:?}; valid splits: {SPLITS:?}"
        )));
    }
    if !valid_domain_name(domain) {
        return Err(Error::Config(format!(
            "invalid domain name {domain:?}; domain names use only [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hex sha256 of a file's bytes (streamed, so any size works).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

struct OpenShard {
    writer: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
}

/// Writes one shard folder atomically: everything goes into a temporary sibling
/// folder, `manifest.json` is written last and the folder is renamed into place by
/// [`ShardWriter::finish`]. Dropping the writer without finishing leaves nothing.
pub struct ShardWriter {
    dir: AtomicDir,
    dest: PathBuf,
    manifest: Manifest,
    max_file_bytes: u64,
    open: BTreeMap<(String, String), OpenShard>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("dest", &self.dest)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl ShardWriter {
    /// Starts a shard folder at `out_dir`. An existing `out_dir` is replaced on
    /// [`finish`](Self::finish) only if it is empty or is itself a shard folder
    /// (holds `manifest.json`); anything else is refused so no unrelated folder is lost.
    pub fn new(
        out_dir: &Path,
        vocab_size: usize,
        seq_len: usize,
        tokenizer_sha256: &str,
        bos_id: u32,
        eos_id: u32,
    ) -> Result<Self> {
        let dtype = TokenDtype::for_vocab(vocab_size)?;
        if seq_len == 0 {
            return Err(Error::Config("seq_len must be > 0".into()));
        }
        if !is_hex_sha256(tokenizer_sha256) {
            return Err(Error::Config(format!(
                "tokenizer_sha256 {tokenizer_sha256:?} is not a 64-character hex sha256"
            )));
        }
        for (name, id) in [("bos_id", bos_id), ("eos_id", eos_id)] {
            if id as usize >= vocab_size {
                return Err(Error::Config(format!(
                    "{name} {id} is >= vocab_size {vocab_size}"
                )));
            }
        }
        if out_dir.exists() {
            let is_dir = out_dir.is_dir();
            let empty = is_dir
                && fs::read_dir(out_dir)
                    .map_err(|e| io_err(out_dir, e))?
                    .next()
                    .is_none();
            if !is_dir || !(empty || out_dir.join(MANIFEST_FILE).is_file()) {
                return Err(Error::InvalidPath {
                    path: out_dir.to_path_buf(),
                    reason: "exists and is not an empty folder or a shard folder; \
                             choose another output path or remove it"
                        .into(),
                });
            }
        }
        let dir = AtomicDir::new(out_dir)?;
        Ok(Self {
            dir,
            dest: out_dir.to_path_buf(),
            manifest: Manifest {
                format: FORMAT_NAME.into(),
                format_version: FORMAT_VERSION,
                tokenizer_sha256: tokenizer_sha256.to_ascii_lowercase(),
                vocab_size,
                seq_len,
                dtype,
                bos_id,
                eos_id,
                splits: BTreeMap::new(),
            },
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            open: BTreeMap::new(),
            scratch: Vec::new(),
        })
    }

    /// Sets the maximum bytes per shard file (rounded down to whole sequences, at
    /// least one sequence). Takes effect for files opened afterwards.
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    fn seq_bytes(&self) -> u64 {
        (self.manifest.seq_len * self.manifest.dtype.size()) as u64
    }

    fn file_capacity(&self) -> u64 {
        let sb = self.seq_bytes();
        (self.max_file_bytes / sb).max(1) * sb
    }

    /// The manifest as built so far.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Appends one sequence of exactly `seq_len` ids to `split`/`domain`.
    pub fn push_sequence(&mut self, split: &str, domain: &str, ids: &[u32]) -> Result<()> {
        let seq_len = self.manifest.seq_len;
        if ids.len() != seq_len {
            return Err(Error::SequenceLength {
                expected: seq_len,
                found: ids.len(),
            });
        }
        let vocab = self.manifest.vocab_size;
        if let Some(position) = ids.iter().position(|&id| id as usize >= vocab) {
            return Err(Error::TokenOutOfRange {
                id: ids[position],
                position,
                split: split.into(),
                domain: domain.into(),
                vocab_size: vocab,
            });
        }
        let key = (split.to_string(), domain.to_string());
        if !self.open.contains_key(&key) {
            check_split_domain(split, domain)?;
        }
        let capacity = self.file_capacity();
        let seq_bytes = self.seq_bytes();
        let needs_new = match self.open.get(&key) {
            None => true,
            Some(s) => s.bytes + seq_bytes > capacity,
        };
        if needs_new {
            if let Some(old) = self.open.remove(&key) {
                close_shard(old)?;
            }
            let entry = self
                .manifest
                .splits
                .entry(split.to_string())
                .or_default()
                .entry(domain.to_string())
                .or_default();
            let rel = format!("{split}/{domain}/shard-{:05}.bin", entry.files.len());
            let path = self.dir.path().join(&rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            }
            let file = File::create(&path).map_err(|e| io_err(&path, e))?;
            entry.files.push(rel);
            self.open.insert(
                key.clone(),
                OpenShard {
                    writer: BufWriter::with_capacity(1 << 20, file),
                    path,
                    bytes: 0,
                },
            );
        }
        self.scratch.clear();
        match self.manifest.dtype {
            TokenDtype::U16 => {
                for &id in ids {
                    self.scratch.extend_from_slice(&(id as u16).to_le_bytes());
                }
            }
            TokenDtype::U32 => {
                for &id in ids {
                    self.scratch.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        let shard = self.open.get_mut(&key).expect("opened above");
        shard
            .writer
            .write_all(&self.scratch)
            .map_err(|e| io_err(&shard.path, e))?;
        shard.bytes += seq_bytes;
        let entry = self
            .manifest
            .splits
            .get_mut(split)
            .and_then(|d| d.get_mut(domain))
            .expect("entry created with the file");
        entry.sequences += 1;
        entry.tokens += seq_len as u64;
        Ok(())
    }

    /// Flushes every file, writes `manifest.json` last and moves the folder into
    /// place. Fails if no sequence was written.
    pub fn finish(mut self) -> Result<Manifest> {
        for (_, shard) in std::mem::take(&mut self.open) {
            close_shard(shard)?;
        }
        if self.manifest.splits.is_empty() {
            return Err(shards_err(
                &self.dest,
                "no sequences were written (are all inputs shorter than seq_len?)",
            ));
        }
        write_json_atomic(&self.dir.path().join(MANIFEST_FILE), &self.manifest)?;
        self.dir.commit()?;
        Ok(self.manifest)
    }
}

fn close_shard(shard: OpenShard) -> Result<()> {
    let path = shard.path;
    let file = shard
        .writer
        .into_inner()
        .map_err(|e| io_err(&path, e.into_error()))?;
    file.sync_all().map_err(|e| io_err(&path, e))
}

/// One resolved (split, domain): its memory-mapped files.
#[derive(Debug)]
struct DomainData {
    maps: Vec<Mmap>,
    /// Cumulative sequence counts: file `i` holds sequences `starts[i]..starts[i+1]`.
    starts: Vec<usize>,
}

impl DomainData {
    fn len(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }
}

/// Memory-maps `path` read-only.
#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the file is opened read-only and shard files are immutable once their
    // folder is committed (writers build a new folder and rename it into place),
    // so the mapped bytes are not modified while the map is alive.
    unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))
}

/// An opened, validated shard folder with every file memory-mapped.
#[derive(Debug)]
pub struct ShardSet {
    root: PathBuf,
    manifest: Manifest,
    data: BTreeMap<String, BTreeMap<String, DomainData>>,
}

/// A resolved handle on one split/domain for hot loops: no name lookups per read.
#[derive(Debug, Clone, Copy)]
pub struct DomainReader<'a> {
    data: &'a DomainData,
    split: &'a str,
    domain: &'a str,
    seq_len: usize,
    dtype: TokenDtype,
}

impl DomainReader<'_> {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the domain holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes(&self, index: usize) -> Result<&[u8]> {
        let len = self.len();
        if index >= len {
            return Err(Error::SequenceIndex {
                split: self.split.into(),
                domain: self.domain.into(),
                index,
                len,
            });
        }
        // `starts[0] == 0`, so the file is the last one whose start is <= index.
        let file = self.data.starts.partition_point(|&s| s <= index) - 1;
        let local = index - self.data.starts[file];
        let sb = self.seq_len * self.dtype.size();
        Ok(&self.data.maps[file][local * sb..(local + 1) * sb])
    }

    /// Reads sequence `index` into `out` (`out.len() == seq_len`).
    pub fn read_into_i64(&self, index: usize, out: &mut [i64]) -> Result<()> {
        self.read_into(index, out)
    }

    /// Reads sequence `index` into `out` (`out.len() == seq_len`).
    pub fn read_into_u32(&self, index: usize, out: &mut [u32]) -> Result<()> {
        self.read_into(index, out)
    }

    /// Decodes sequence `index` (little-endian u16 or u32 ids) into any integer type
    /// that holds both widths losslessly.
    fn read_into<T: From<u16> + From<u32>>(&self, index: usize, out: &mut [T]) -> Result<()> {
        if out.len() != self.seq_len {
            return Err(Error::SequenceLength {
                expected: self.seq_len,
                found: out.len(),
            });
        }
        let bytes = self.bytes(index)?;
        match self.dtype {
            TokenDtype::U16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = T::from(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            TokenDtype::U32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = T::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
        }
        Ok(())
    }
}

fn validate_rel_path(manifest_path: &Path, rel: &str) -> Result<()> {
    let p = Path::new(rel);
    let ok = !rel.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && rel.ends_with(".bin");
    if ok {
        Ok(())
    } else {
        Err(shards_err(
            manifest_path,
            format!(
                "shard file path {rel:?} must be a relative path inside the folder ending in .bin"
            ),
        ))
    }
}

impl ShardSet {
    /// Opens a shard folder: reads and validates `manifest.json`, memory-maps every
    /// file and checks every file size against `seq_len`, the dtype and the counts.
    pub fn open(dir: &Path) -> Result<Self> {
        let mpath = dir.join(MANIFEST_FILE);
        let bytes = fs::read(&mpath).map_err(|e| io_err(&mpath, e))?;
        // Check format and version before the strict parse, so a newer format with
        // new fields is reported as a version problem.
        let loose: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| shards_err(&mpath, format!("not valid JSON: {e}")))?;
        match loose.get("format").and_then(|v| v.as_str()) {
            Some(FORMAT_NAME) => {}
            other => {
                return Err(shards_err(
                    &mpath,
                    format!(
                        "format is {other:?}, expected {FORMAT_NAME:?}; not a mome shard folder"
                    ),
                ))
            }
        }
        let version = loose.get("format_version").and_then(|v| v.as_u64());
        match version {
            Some(v) if v > u64::from(FORMAT_VERSION) => {
                return Err(Error::ShardsVersion {
                    path: mpath,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                    supported: FORMAT_VERSION,
                })
            }
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            other => {
                return Err(shards_err(
                    &mpath,
                    format!("format_version {other:?} is invalid; expected {FORMAT_VERSION}"),
                ))
            }
        }
        let manifest: Manifest = serde_json::from_value(loose)
            .map_err(|e| shards_err(&mpath, format!("invalid manifest: {e}")))?;
        Self::validate_manifest(&mpath, &manifest)?;

        let seq_bytes = (manifest.seq_len * manifest.dtype.size()) as u64;
        let mut data = BTreeMap::new();
        for (split, domains) in &manifest.splits {
            let mut dd = BTreeMap::new();
            for (domain, shards) in domains {
                let mut maps = Vec::with_capacity(shards.files.len());
                let mut starts = vec![0usize];
                for rel in &shards.files {
                    validate_rel_path(&mpath, rel)?;
                    let path = dir.join(rel);
                    let size = fs::metadata(&path)
                        .map_err(|e| {
                            if e.kind() == io::ErrorKind::NotFound {
                                shards_err(
                                    &path,
                                    format!("shard file listed in {MANIFEST_FILE} is missing"),
                                )
                            } else {
                                io_err(&path, e)
                            }
                        })?
                        .len();
                    if size % seq_bytes != 0 {
                        return Err(shards_err(
                            &path,
                            format!(
                                "size {size} bytes is not a multiple of seq_len {} x {} bytes \
                                 ({seq_bytes}); the file is truncated or corrupt",
                                manifest.seq_len,
                                manifest.dtype.size()
                            ),
                        ));
                    }
                    if size == 0 {
                        continue;
                    }
                    let map = map_file(&path)?;
                    let n = (size / seq_bytes) as usize;
                    starts.push(starts.last().copied().unwrap_or(0) + n);
                    maps.push(map);
                }
                let data = DomainData { maps, starts };
                if data.len() as u64 != shards.sequences {
                    return Err(shards_err(
                        &mpath,
                        format!(
                            "{split}/{domain}: files hold {} sequences but the manifest says {}",
                            data.len(),
                            shards.sequences
                        ),
                    ));
                }
                dd.insert(domain.clone(), data);
            }
            data.insert(split.clone(), dd);
        }
        Ok(Self {
            root: dir.to_path_buf(),
            manifest,
            data,
        })
    }

    fn validate_manifest(mpath: &Path, m: &Manifest) -> Result<()> {
        let bad = |reason: String| Err(shards_err(mpath, reason));
        if m.seq_len == 0 {
            return bad("seq_len must be > 0".into());
        }
        // A sequence's bytes must be countable (the files are checked against it).
        if (m.seq_len as u64)
            .checked_mul(m.dtype.size() as u64)
            .is_none_or(|b| b > i64::MAX as u64)
        {
            return bad(format!("seq_len {} is too large", m.seq_len));
        }
        if m.vocab_size == 0 || m.vocab_size as u64 > m.dtype.max_vocab() {
            return bad(format!(
                "vocab_size {} does not fit dtype {}",
                m.vocab_size,
                m.dtype.name()
            ));
        }
        if !is_hex_sha256(&m.tokenizer_sha256) {
            return bad(format!(
                "tokenizer_sha256 {:?} is not a hex sha256",
                m.tokenizer_sha256
            ));
        }
        if m.bos_id as usize >= m.vocab_size || m.eos_id as usize >= m.vocab_size {
            return bad(format!(
                "bos_id {} / eos_id {} must be < vocab_size {}",
                m.bos_id, m.eos_id, m.vocab_size
            ));
        }
        for (split, domains) in &m.splits {
            for (domain, shards) in domains {
                if let Err(Error::Config(reason)) = check_split_domain(split, domain) {
                    return bad(reason);
                }
                if shards.sequences.checked_mul(m.seq_len as u64) != Some(shards.tokens) {
                    return bad(format!(
                        "{split}/{domain}: tokens {} != sequences {} x seq_len {}",
                        shards.tokens, shards.sequences, m.seq_len
                    ));
                }
            }
        }
        Ok(())
    }

    /// The folder this set was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> usize {
        self.manifest.seq_len
    }

    /// Vocabulary size of the tokenizer the shards were encoded with.
    pub fn vocab_size(&self) -> usize {
        self.manifest.vocab_size
    }

    /// Split names present, sorted.
    pub fn splits(&self) -> Vec<String> {
        self.data.keys().cloned().collect()
    }

    fn split_data(&self, split: &str) -> Result<&BTreeMap<String, DomainData>> {
        self.data.get(split).ok_or_else(|| Error::UnknownSplit {
            split: split.into(),
            known: self.splits(),
        })
    }

    /// Domain names of `split`, sorted.
    pub fn domains(&self, split: &str) -> Result<Vec<String>> {
        Ok(self.split_data(split)?.keys().cloned().collect())
    }

    /// A resolved reader for one split/domain (use it in hot loops).
    pub fn reader<'a>(&'a self, split: &str, domain: &str) -> Result<DomainReader<'a>> {
        let domains = self.split_data(split)?;
        let (split_name, _) = self.data.get_key_value(split).expect("checked above");
        let (domain_name, data) =
            domains
                .get_key_value(domain)
                .ok_or_else(|| Error::UnknownDomain {
                    split: split.into(),
                    domain: domain.into(),
                    known: domains.keys().cloned().collect(),
                })?;
        Ok(DomainReader {
            data,
            split: split_name,
            domain: domain_name,
            seq_len: self.manifest.seq_len,
            dtype: self.manifest.dtype,
        })
    }

    /// Number of sequences of `split`/`domain`.
    pub fn num_sequences(&self, split: &str, domain: &str) -> Result<usize> {
        Ok(self.reader(split, domain)?.len())
    }

    /// Reads sequence `index` of `split`/`domain` into `out` (`out.len() == seq_len`).
    pub fn read_sequence(
        &self,
        split: &str,
        domain: &str,
        index: usize,
        out: &mut [i64],
    ) -> Result<()> {
        self.reader(split, domain)?.read_into_i64(index, out)
    }

    /// Sequence `index` of `split`/`domain` as a new vector.
    pub fn sequence(&self, split: &str, domain: &str, index: usize) -> Result<Vec<u32>> {
        let mut out = vec![0u32; self.manifest.seq_len];
        self.reader(split, domain)?.read_into_u32(index, &mut out)?;
        Ok(out)
    }

    /// Fails unless the shards were encoded with the tokenizer of this sha256.
    pub fn check_tokenizer(&self, tokenizer_sha256: &str) -> Result<()> {
        if self
            .manifest
            .tokenizer_sha256
            .eq_ignore_ascii_case(tokenizer_sha256)
        {
            Ok(())
        } else {
            Err(Error::TokenizerMismatch {
                shards: self.manifest.tokenizer_sha256.clone(),
                given: tokenizer_sha256.into(),
            })
        }
    }

    /// Fails if a model with `vocab_size` embeddings cannot hold every shard id.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        if vocab_size < self.manifest.vocab_size {
            Err(Error::VocabMismatch {
                shards: self.manifest.vocab_size,
                model: vocab_size,
            })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01";

    #[test]
    fn dtype_for_vocab() {
        assert_eq!(TokenDtype::for_vocab(32000).unwrap(), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65536).unwrap(), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65537).unwrap(), TokenDtype::U32);
        assert!(TokenDtype::for_vocab(0).is_err());
        assert_eq!(serde_json::to_string(&TokenDtype::U32).unwrap(), "\"u32\"");
    }

    #[test]
    fn rotation_splits_files_on_sequence_boundaries() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("s");
        // 3 tokens x 2 bytes = 6 bytes per sequence; 13 bytes -> 2 sequences per file.
        let mut w = ShardWriter::new(&out, 1000, 3, SHA, 1, 2)
            .unwrap()
            .with_max_file_bytes(13);
        for i in 0..5u32 {
            w.push_sequence("train", "de", &[i, i + 1, i + 2]).unwrap();
        }
        let m = w.finish().unwrap();
        let d = &m.splits["train"]["de"];
        assert_eq!(d.files.len(), 3);
        assert_eq!(d.sequences, 5);
        assert_eq!(d.tokens, 15);
        for f in &d.files {
            assert!(fs::metadata(out.join(f)).unwrap().len() % 6 == 0);
        }
        let set = ShardSet::open(&out).unwrap();
        for i in 0..5u32 {
            assert_eq!(
                set.sequence("train", "de", i as usize).unwrap(),
                vec![i, i + 1, i + 2]
            );
        }
        assert!(matches!(
            set.sequence("train", "de", 5),
            Err(Error::SequenceIndex { len: 5, .. })
        ));
    }

    #[test]
    fn writer_rejects_bad_input() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("s");
        let mut w = ShardWriter::new(&out, 10, 2, SHA, 1, 2).unwrap();
        assert!(matches!(
            w.push_sequence("train", "en", &[1]),
            Err(Error::SequenceLength {
                expected: 2,
                found: 1
            })
        ));
        assert!(matches!(
            w.push_sequence("train", "en", &[1, 10]),
            Err(Error::TokenOutOfRange {
                id: 10,
                position: 1,
                ..
            })
        ));
        assert!(w.push_sequence("test", "en", &[1, 2]).is_err());
        assert!(w.push_sequence("train", "e n", &[1, 2]).is_err());
        assert!(w.finish().is_err(), "nothing written");
        assert!(!out.exists());
        assert!(ShardWriter::new(&out, 10, 2, "xyz", 1, 2).is_err());
        assert!(ShardWriter::new(&out, 10, 0, SHA, 1, 2).is_err());
        assert!(ShardWriter::new(&out, 10, 2, SHA, 10, 2).is_err());
        // An unrelated non-empty folder is never replaced.
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("precious.txt"), b"x").unwrap();
        assert!(matches!(
            ShardWriter::new(&out, 10, 2, SHA, 1, 2),
            Err(Error::InvalidPath { .. })
        ));
    }

    #[test]
    fn sha256_of_file() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("f");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
