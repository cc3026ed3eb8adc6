//! Exact token counting for balancing: `tok.encode(text, false).len()` without
//! building an encoding.
//!
//! [`TokenCounter`] gives exactly the number of ids `encode(text, false)` gives,
//! for every tokenizer and text. Where it can prove its own engine equivalent it
//! counts with it; everywhere else it calls the `tokenizers` crate
//! (`encode_fast`, no offsets).
//!
//! ## The engine (tokenizers of the method's kind)
//! It applies when the tokenizer has no pre-tokenizer (the whole normalised text is
//! one BPE word), no truncation or padding, and a BPE model without dropout,
//! `ignore_merges`, `continuing_subword_prefix` or `end_of_word_suffix`, with a
//! consistent vocabulary (unique ids, every merge's result in it, the unknown token
//! in it when set). Texts that contain an added token's content (`<s>`, `</s>`, …)
//! always take the full `encode` (added tokens split the text before
//! normalisation).
//!
//! - **Normalisation.** The seed's normaliser (`Prepend("▁")` then
//!   `Replace(" ", "▁")`) is applied on the fly while scanning the text (no
//!   normalised copy); any other normaliser runs through `tokenizers` first.
//! - **Initial symbols** follow `tokenizers`' `BPE::merge_word`: a character that is
//!   a vocabulary token becomes its id; otherwise, with `byte_fallback`, its UTF-8
//!   bytes become `<0xNN>` tokens when all of them exist; otherwise the unknown
//!   token, consecutive ones fused when `fuse_unk` (the pending unknown token is
//!   only flushed by a known character or the end, exactly as there).
//! - **Merges** repeatedly apply the adjacent pair of lowest rank, leftmost first
//!   — the order of `tokenizers`' `Word::merge_all` heap (`(rank, position)`);
//!   a popped entry is applied only if its pair is still the one at that
//!   position. The count is the number of symbols left. Ids live in `u32`s, pairs
//!   in an open-addressing table keyed by `(left << 32) | right`; buffers are
//!   reused per worker, nothing is allocated per token.
//! - **Safe cuts.** BPE never merges across a boundary between characters `x` and
//!   `y` when no merge `(a, b)` has `a` ending in `x` and `b` starting in `y`: the
//!   first merge that would put both into one symbol is such a merge. So BPE of the
//!   whole text equals the concatenation of BPE of the pieces cut at such
//!   boundaries, and the count is the sum over the pieces. Cuts are taken only
//!   between two characters of ASCII or `'▁'` that are vocabulary tokens
//!   themselves (so no unknown-token fusion or byte fallback crosses a cut), and
//!   only when no merge involves the unknown token or a byte-fallback token (whose
//!   strings are not text). On the seed tokenizer this cuts after every `'\n'` (no
//!   token has a `'\n'` before its end) and at ~2% of other boundaries (`▁k`,
//!   `c/`, `.2`, …): pieces of ~20–50 characters.
//! - **Cache.** Each worker keeps `piece → count` for pieces shorter than 256
//!   bytes (as `tokenizers` caches words), at most [`CACHE_ENTRIES`] entries
//!   (cleared when full), so memory stays bounded; it is dropped with the counter.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use rayon::prelude::*;
use tokenizers::models::ModelWrapper;
use tokenizers::{Model, NormalizedString, Normalizer, Tokenizer};

use crate::{Error, Result};

/// Most cached pieces per worker before its cache is cleared.
pub const CACHE_ENTRIES: usize = 1 << 18;
/// Pieces of this many bytes or more are not cached.
const CACHE_MAX_BYTES: usize = 256;
const NONE: u32 = u32::MAX;
/// Slot of `'▁'` in the cut table (ASCII takes 0..128).
const SPACE_SLOT: usize = 128;
const SLOTS: usize = 129;
/// Pieces of at most this many symbols merge by linear scans, longer ones by a heap.
const SMALL_PIECE: usize = 48;

/// FxHash (rustc's): fast, not DoS-resistant; keys here are the caller's own text.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    h: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, x: u64) {
        self.h = (self.h.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in chunks.by_ref() {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.add(x as u64);
    }
    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.add(x as u64);
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }
    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

/// `((left, right), (rank, merged id))`.
type MergeEntry = ((u32, u32), (u32, u32));

/// Open-addressing table `(left, right) -> (rank, merged id)`.
struct PairTable {
    shift: u32,
    mask: usize,
    /// `(key, rank, new id)`; key `u64::MAX` = empty.
    slots: Vec<(u64, u32, u32)>,
}

impl PairTable {
    fn new(entries: &[MergeEntry]) -> Self {
        let bits = (entries.len().max(1) * 2)
            .next_power_of_two()
            .trailing_zeros();
        let size = 1usize << bits;
        let mut t = Self {
            shift: 64 - bits,
            mask: size - 1,
            slots: vec![(u64::MAX, 0, 0); size],
        };
        for &((a, b), (rank, new)) in entries {
            let key = Self::key(a, b);
            let mut i = t.home(key);
            loop {
                if t.slots[i].0 == u64::MAX || t.slots[i].0 == key {
                    t.slots[i] = (key, rank, new);
                    break;
                }
                i = (i + 1) & t.mask;
            }
        }
        t
    }

    #[inline]
    fn key(a: u32, b: u32) -> u64 {
        ((a as u64) << 32) | b as u64
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// `(rank, new id)` of the merge of `a` then `b`.
    #[inline]
    fn get(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        let key = Self::key(a, b);
        let mut i = self.home(key);
        loop {
            let (k, r, n) = self.slots[i];
            if k == key {
                return Some((r, n));
            }
            if k == u64::MAX {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// How the text is normalised before BPE.
enum Norm {
    /// `Prepend("▁")` + `Replace(" ", "▁")`, applied while scanning.
    Metaspace,
    /// No normaliser.
    Identity,
    /// Any other normaliser, run by `tokenizers`.
    Generic,
}

/// The fields of a serialised BPE model the engine reads.
#[derive(serde::Deserialize)]
struct SerBpe<'a> {
    #[serde(borrow)]
    vocab: HashMap<Cow<'a, str>, u32>,
    #[serde(borrow)]
    merges: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// The counting engine (see the module doc).
struct Engine {
    norm: Norm,
    ascii: [u32; 128],
    chars: HashMap<char, u32, FxBuild>,
    /// `<0xNN>` ids (`NONE` where missing); used only with `byte_fallback`.
    bytes: [u32; 256],
    byte_fallback: bool,
    unk: Option<u32>,
    fuse_unk: bool,
    pairs: PairTable,
    /// `cut[x * SLOTS + y]`: a piece may end between slot `x` and slot `y`.
    cut: Vec<bool>,
}

/// Reusable per-worker buffers.
#[derive(Default)]
struct Scratch {
    syms: Vec<u32>,
    prev: Vec<u32>,
    next: Vec<u32>,
    heap: Vec<Reverse<u64>>,
    ranks: Vec<u64>,
    cache: HashMap<Box<[u8]>, u32, FxBuild>,
}

impl Engine {
    /// Builds the engine, or says why this tokenizer needs the full `encode`.
    fn build(tok: &Tokenizer) -> std::result::Result<Self, String> {
        if tok.get_pre_tokenizer().is_some() {
            return Err("the tokenizer has a pre-tokenizer".into());
        }
        if tok.get_truncation().is_some() || tok.get_padding().is_some() {
            return Err("the tokenizer truncates or pads".into());
        }
        let ModelWrapper::BPE(bpe) = tok.get_model() else {
            return Err("the model is not BPE".into());
        };
        if bpe.dropout.is_some_and(|d| d > 0.0) {
            return Err("BPE dropout is set".into());
        }
        if bpe.ignore_merges {
            return Err("BPE ignore_merges is set".into());
        }
        if bpe.continuing_subword_prefix.is_some() || bpe.end_of_word_suffix.is_some() {
            return Err("BPE has a continuing-subword prefix or end-of-word suffix".into());
        }
        // Vocabulary and merges (in rank order) as the model serialises them,
        // borrowed from one JSON string.
        let json =
            serde_json::to_string(bpe).map_err(|e| format!("model not serialisable: {e}"))?;
        let ser: SerBpe<'_> =
            serde_json::from_str(&json).map_err(|e| format!("unexpected model JSON: {e}"))?;
        let vocab = ser.vocab;
        if vocab.len() != bpe.get_vocab_size() || vocab.values().any(|&id| id == NONE) {
            return Err("the vocabulary has repeated ids".into());
        }
        let unk = match &bpe.unk_token {
            None => None,
            Some(u) => match vocab.get(u.as_str()) {
                Some(&id) => Some(id),
                None => return Err(format!("the unknown token {u:?} is not in the vocabulary")),
            },
        };
        let mut entries = Vec::with_capacity(ser.merges.len());
        let mut joined = String::new();
        for (rank, (a, b)) in ser.merges.iter().enumerate() {
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let (Some(&ia), Some(&ib), Some(&inew)) = (
                vocab.get(a.as_ref()),
                vocab.get(b.as_ref()),
                vocab.get(joined.as_str()),
            ) else {
                return Err(format!("merge {a:?} {b:?} is not in the vocabulary"));
            };
            let rank = u32::try_from(rank).map_err(|_| "too many merges".to_string())?;
            entries.push(((ia, ib), (rank, inew)));
        }
        let merge_strs = &ser.merges;
        let mut ascii = [NONE; 128];
        let mut chars = HashMap::default();
        let mut bytes = [NONE; 256];
        for (s, &id) in &vocab {
            let s: &str = s;
            let mut it = s.chars();
            if let (Some(c), None) = (it.next(), it.next()) {
                if (c as u32) < 128 {
                    ascii[c as usize] = id;
                } else {
                    chars.insert(c, id);
                }
            }
            if bpe.byte_fallback && s.len() == 6 && s.starts_with("<0x") && s.ends_with('>') {
                let hex = &s[3..5];
                if hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        bytes[b as usize] = id;
                    }
                }
            }
        }
        // Cuts: only when every merge is between text tokens.
        let byte_ids: std::collections::HashSet<u32> = if bpe.byte_fallback {
            bytes.iter().copied().filter(|&b| b != NONE).collect()
        } else {
            Default::default()
        };
        let special = |id: u32| Some(id) == unk || byte_ids.contains(&id);
        let cuts_ok = !entries
            .iter()
            .any(|&((a, b), (_, n))| special(a) || special(b) || special(n));
        let slot_of = |c: char| -> Option<usize> {
            if (c as u32) < 128 {
                Some(c as usize)
            } else if c == '▁' {
                Some(SPACE_SLOT)
            } else {
                None
            }
        };
        let mut cut = vec![false; SLOTS * SLOTS];
        if cuts_ok {
            let known = |slot: usize| {
                if slot == SPACE_SLOT {
                    chars.contains_key(&'▁')
                } else {
                    ascii[slot] != NONE
                }
            };
            for x in 0..SLOTS {
                for y in 0..SLOTS {
                    cut[x * SLOTS + y] = known(x) && known(y);
                }
            }
            for (a, b) in merge_strs {
                if let (Some(x), Some(y)) = (
                    a.chars().next_back().and_then(slot_of),
                    b.chars().next().and_then(slot_of),
                ) {
                    cut[x * SLOTS + y] = false;
                }
            }
        }
        let norm = match tok.get_normalizer() {
            None => Norm::Identity,
            Some(n) => {
                let want = serde_json::json!({
                    "type": "Sequence",
                    "normalizers": [
                        {"type": "Prepend", "prepend": "▁"},
                        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
                    ]
                });
                if serde_json::to_value(n).ok().as_ref() == Some(&want) {
                    Norm::Metaspace
                } else {
                    Norm::Generic
                }
            }
        };
        Ok(Self {
            norm,
            ascii,
            chars,
            bytes,
            byte_fallback: bpe.byte_fallback,
            unk,
            fuse_unk: bpe.fuse_unk,
            pairs: PairTable::new(&entries),
            cut,
        })
    }

    #[inline]
    fn char_id(&self, c: char) -> u32 {
        if (c as u32) < 128 {
            self.ascii[c as usize]
        } else {
            self.chars.get(&c).copied().unwrap_or(NONE)
        }
    }

    /// Adds the initial symbols of `c` (see `BPE::merge_word`).
    #[inline]
    fn push_char(&self, c: char, syms: &mut Vec<u32>, pending_unk: &mut bool) {
        let id = self.char_id(c);
        if id != NONE {
            if *pending_unk {
                if let Some(u) = self.unk {
                    syms.push(u);
                }
                *pending_unk = false;
            }
            syms.push(id);
            return;
        }
        if self.byte_fallback {
            let mut buf = [0u8; 4];
            let enc = c.encode_utf8(&mut buf).as_bytes();
            if enc.iter().all(|&b| self.bytes[b as usize] != NONE) {
                syms.extend(enc.iter().map(|&b| self.bytes[b as usize]));
                return;
            }
        }
        if let Some(u) = self.unk {
            if *pending_unk && !self.fuse_unk {
                syms.push(u);
            }
            *pending_unk = true;
        }
    }

    #[inline]
    fn slot(c: char) -> usize {
        if (c as u32) < 128 {
            c as usize
        } else if c == '▁' {
            SPACE_SLOT
        } else {
            usize::MAX
        }
    }

    /// `(rank << 32) | new id` of the pair, `u64::MAX` when no merge applies.
    #[inline]
    fn packed(&self, a: u32, b: u32) -> u64 {
        self.pairs
            .get(a, b)
            .map_or(u64::MAX, |(r, n)| ((r as u64) << 32) | n as u64)
    }

    /// BPE over `s.syms` (consumed); returns the number of symbols left.
    fn merge_count(&self, s: &mut Scratch) -> usize {
        let n = s.syms.len();
        if n < 2 {
            return n;
        }
        if n <= SMALL_PIECE {
            return self.merge_small(s);
        }
        let syms = &mut s.syms;
        let prev = &mut s.prev;
        let next = &mut s.next;
        prev.clear();
        next.clear();
        prev.extend((0..n as u32).map(|i| i.wrapping_sub(1)));
        next.extend(1..=n as u32);
        next[n - 1] = NONE;
        let mut buf = std::mem::take(&mut s.heap);
        buf.clear();
        for i in 0..n - 1 {
            if let Some((r, _)) = self.pairs.get(syms[i], syms[i + 1]) {
                buf.push(Reverse(((r as u64) << 32) | i as u64));
            }
        }
        let mut heap = BinaryHeap::from(buf);
        let mut count = n;
        while let Some(Reverse(k)) = heap.pop() {
            let rank = (k >> 32) as u32;
            let pos = (k & 0xFFFF_FFFF) as usize;
            let left = syms[pos];
            if left == NONE {
                continue;
            }
            let nx = next[pos];
            if nx == NONE {
                continue;
            }
            let nx = nx as usize;
            let new = match self.pairs.get(left, syms[nx]) {
                Some((r, new)) if r == rank => new,
                _ => continue, // an expired entry
            };
            syms[pos] = new;
            syms[nx] = NONE;
            count -= 1;
            let nn = next[nx];
            next[pos] = nn;
            if nn != NONE {
                prev[nn as usize] = pos as u32;
                if let Some((r, _)) = self.pairs.get(new, syms[nn as usize]) {
                    heap.push(Reverse(((r as u64) << 32) | pos as u64));
                }
            }
            let pv = prev[pos];
            if pv != NONE {
                if let Some((r, _)) = self.pairs.get(syms[pv as usize], new) {
                    heap.push(Reverse(((r as u64) << 32) | pv as u64));
                }
            }
        }
        s.heap = heap.into_vec();
        count
    }

    /// The same merges for short pieces: a linear scan for the leftmost pair of
    /// lowest rank (equal ranks are the same pair, so `(rank, new id)` packed in a
    /// `u64` orders like the heap's `(rank, position)`).
    fn merge_small(&self, s: &mut Scratch) -> usize {
        let syms = &mut s.syms;
        let ranks = &mut s.ranks;
        ranks.clear();
        ranks.extend(syms.windows(2).map(|w| self.packed(w[0], w[1])));
        loop {
            let mut best = u64::MAX;
            let mut at = 0;
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == u64::MAX {
                return syms.len();
            }
            syms[at] = (best & 0xFFFF_FFFF) as u32;
            syms.remove(at + 1);
            ranks.remove(at);
            if at > 0 {
                ranks[at - 1] = self.packed(syms[at - 1], syms[at]);
            }
            if at + 1 < syms.len() {
                ranks[at] = self.packed(syms[at], syms[at + 1]);
            }
        }
    }

    /// Count of one piece whose initial symbols are in `s.syms`, cached by its
    /// text `key` when given.
    fn piece(&self, s: &mut Scratch, key: Option<&[u8]>, pending_unk: &mut bool) -> u64 {
        if *pending_unk {
            if let Some(u) = self.unk {
                s.syms.push(u);
            }
            *pending_unk = false;
        }
        if let Some(k) = key.filter(|k| k.len() < CACHE_MAX_BYTES) {
            if let Some(&c) = s.cache.get(k) {
                s.syms.clear();
                return c as u64;
            }
            let c = self.merge_count(s);
            s.syms.clear();
            if s.cache.len() >= CACHE_ENTRIES {
                s.cache.clear();
            }
            s.cache.insert(k.into(), c as u32);
            return c as u64;
        }
        let c = self.merge_count(s);
        s.syms.clear();
        c as u64
    }

    /// Token count of an already normalised text (`prepend`: a virtual `'▁'`
    /// before it; `map_space`: `' '` reads as `'▁'`).
    fn count(&self, text: &str, prepend: bool, map_space: bool, s: &mut Scratch) -> u64 {
        if text.is_empty() {
            return 0;
        }
        s.syms.clear();
        let mut pending_unk = false;
        let mut total = 0u64;
        let mut prev_slot = usize::MAX;
        let mut start = 0usize;
        // The first piece holds the virtual '▁' and is not cached.
        let mut first = prepend;
        if prepend {
            self.push_char('▁', &mut s.syms, &mut pending_unk);
            prev_slot = SPACE_SLOT;
        }
        for (i, c) in text.char_indices() {
            let c = if map_space && c == ' ' { '▁' } else { c };
            let slot = Self::slot(c);
            if prev_slot != usize::MAX && slot != usize::MAX && self.cut[prev_slot * SLOTS + slot] {
                let key = (!first).then(|| &text.as_bytes()[start..i]);
                total += self.piece(s, key, &mut pending_unk);
                first = false;
                start = i;
            }
            prev_slot = slot;
            self.push_char(c, &mut s.syms, &mut pending_unk);
        }
        let key = (!first).then(|| &text.as_bytes()[start..]);
        total + self.piece(s, key, &mut pending_unk)
    }
}

/// Exact token counter: [`TokenCounter::count`] equals
/// `tok.encode(text, false).len()` for every text (see the module doc for how).
pub struct TokenCounter<'a> {
    tok: &'a Tokenizer,
    engine: std::result::Result<Engine, String>,
    /// Added tokens' contents: a text holding one takes the full `encode`.
    added: Vec<String>,
    pool: Mutex<Vec<Scratch>>,
}

impl<'a> TokenCounter<'a> {
    /// Prepares the counter for `tok` (builds the engine when it applies; a few
    /// milliseconds for a 32k vocabulary).
    pub fn new(tok: &'a Tokenizer) -> Self {
        let added: Vec<String> = tok
            .get_added_tokens_decoder()
            .into_values()
            .map(|a| a.content)
            .filter(|c| !c.is_empty())
            .collect();
        Self {
            tok,
            engine: Engine::build(tok),
            added,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Whether the fast engine is used (else every text takes the full `encode`).
    pub fn is_fast(&self) -> bool {
        self.engine.is_ok()
    }

    /// Why the fast engine does not apply to this tokenizer (`None` when it does).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.engine.as_ref().err().map(|s| s.as_str())
    }

    fn err(t: &str, e: tokenizers::Error) -> Error {
        Error::Tokenize {
            context: format!("text starting {:?}", t.chars().take(40).collect::<String>()),
            source: e,
        }
    }

    /// The count by the full `tokenizers` encode (`encode_fast(text, false)`).
    pub fn count_full(&self, text: &str) -> Result<u64> {
        self.tok
            .encode_fast(text, false)
            .map(|e| e.len() as u64)
            .map_err(|e| Self::err(text, e))
    }

    fn take(&self) -> Scratch {
        self.pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default()
    }

    fn give(&self, s: Scratch) {
        if let Ok(mut p) = self.pool.lock() {
            p.push(s);
        }
    }

    fn count_with(&self, text: &str, s: &mut Scratch) -> Result<u64> {
        let engine = match &self.engine {
            Ok(e) if !self.added.iter().any(|a| text.contains(a.as_str())) => e,
            _ => return self.count_full(text),
        };
        match engine.norm {
            Norm::Metaspace => Ok(engine.count(text, true, true, s)),
            Norm::Identity => Ok(engine.count(text, false, false, s)),
            Norm::Generic => {
                let mut ns = NormalizedString::from(text);
                if let Some(n) = self.tok.get_normalizer() {
                    n.normalize(&mut ns).map_err(|e| Self::err(text, e))?;
                }
                let norm = ns.get();
                if self.added.iter().any(|a| norm.contains(a.as_str())) {
                    return self.count_full(text);
                }
                Ok(engine.count(norm, false, false, s))
            }
        }
    }

    /// Exactly `tok.encode(text, false).len()`.
    pub fn count(&self, text: &str) -> Result<u64> {
        let mut s = self.take();
        let r = self.count_with(text, &mut s);
        self.give(s);
        r
    }

    /// The counts of `texts`, in parallel (rayon), in order.
    pub fn count_many(&self, texts: &[&str]) -> Result<Vec<u64>> {
        texts
            .par_iter()
            .map_init(
                || ScratchGuard {
                    counter: self,
                    s: Some(self.take()),
                },
                |g, t| match g.s.as_mut() {
                    Some(s) => self.count_with(t, s),
                    None => self.count_full(t),
                },
            )
            .collect()
    }
}

/// Returns a worker's scratch to the pool when rayon drops it.
struct ScratchGuard<'c, 'a> {
    counter: &'c TokenCounter<'a>,
    s: Option<Scratch>,
}

impl Drop for ScratchGuard<'_, '_> {
    fn drop(&mut self) {
        if let Some(s) = self.s.take() {
            self.counter.give(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{self, CorpusSpec};
    use rand::{Rng, SeedableRng};
    use std::path::Path;

    fn seed_tokenizer() -> Tokenizer {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        Tokenizer::from_file(root.join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json"))
            .expect("project tokenizer")
    }

    fn demo_texts() -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut texts = Vec::new();
        for d in ["en", "fr", "de", "py"] {
            let recs = corpus::read_all(&CorpusSpec::from_path(
                root.join(format!("data/demo/{d}.jsonl")),
            ))
            .expect("demo corpus");
            texts.extend(recs.into_iter().map(|r| r.text));
        }
        texts
    }

    fn want(tok: &Tokenizer, t: &str) -> u64 {
        tok.encode(t, false).expect("encode").len() as u64
    }

    /// Random strings over an alphabet rich in the characters that matter: cut
    /// characters, spaces, newlines, letters, accents, characters outside the
    /// vocabulary (byte fallback / unknown token), added tokens' pieces.
    fn random_texts(n: usize, seed: u64) -> Vec<String> {
        let alphabet: Vec<&str> = vec![
            " ",
            " ",
            " ",
            "\n",
            "\n\n",
            "\r\n",
            "\t",
            "a",
            "e",
            "t",
            "k",
            "c",
            "/",
            ".",
            "2",
            "(",
            ")",
            ":",
            "_",
            "-",
            ";",
            "|",
            "#",
            "'",
            "\"",
            "é",
            "ü",
            "ß",
            "ç",
            "▁",
            "<",
            ">",
            "s",
            "<s",
            "/s>",
            "</",
            "unk",
            "\u{1F600}",
            "\u{0416}",
            "\u{4E2D}",
            "\u{0}",
            "\u{7F}",
            "the ",
            "der ",
            "les ",
            "def ",
            "    ",
            "self.",
            "import ",
            "x = 1",
            "_START_PARAGRAPH_",
            "\u{2581}\u{2581}",
            "ab",
            "ing",
            "tion",
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let len = match rng.gen_range(0..10) {
                    0 => 0,
                    1..=6 => rng.gen_range(1..20),
                    7 | 8 => rng.gen_range(20..200),
                    _ => rng.gen_range(200..3000),
                };
                (0..len)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect()
            })
            .collect()
    }

    fn edge_texts() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            " ",
            "   ",
            "\n",
            "\n\n\n",
            "a\n",
            "\na",
            " \n ",
            "  x = 1\n\n    y\r\n",
            "<s>",
            "</s> in text\n<s>",
            "a<s>b",
            "<unk>",
            "<0x41>",
            "Ünïcödé\n\u{1F600}\n\t\n",
            "\u{1F600}\u{1F601}\u{1F602}",
            "a\u{1F600}b\u{1F600}\u{1F600}c",
            " leading space\n trailing \n",
            "▁▁▁ pre-spaced ▁",
            "\u{0}\u{1}\u{2}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("x".repeat(5000));
        v.push(" ".repeat(3000));
        v.push("\n".repeat(3000));
        v.push("ab ".repeat(2000));
        v.push("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(200));
        v.push("\u{1F600}".repeat(500));
        v
    }

    /// The counter equals `encode(text, false).len()` on every demo record, on
    /// edge cases and on thousands of random strings.
    #[test]
    fn counter_equals_full_encode() {
        let tok = seed_tokenizer();
        let counter = TokenCounter::new(&tok);
        assert!(counter.is_fast(), "{:?}", counter.fallback_reason());
        let mut texts = demo_texts();
        let n_demo = texts.len();
        assert!(n_demo > 400);
        texts.extend(edge_texts());
        texts.extend(random_texts(3000, 7));
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let par = counter.count_many(&refs).expect("count_many");
        for (t, got) in texts.iter().zip(par) {
            let w = want(&tok, t);
            assert_eq!(got, w, "{:?}", &t[..t.len().min(80)]);
            // Second pass: through the warm cache, one at a time.
            assert_eq!(counter.count(t).expect("count"), w);
        }
    }

    /// The engine also holds on tokenizers it handles through other paths:
    /// without normaliser, with a non-fused unknown token, with byte-fallback
    /// tokens in the vocabulary, and a tokenizer it must refuse (pre-tokenizer).
    #[test]
    fn variants_equal_full_encode() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                root.join("data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json"),
            )
            .expect("read"),
        )
        .expect("json");
        let mut variants: Vec<(serde_json::Value, bool)> = Vec::new();
        // No normaliser.
        let mut v = json.clone();
        v["normalizer"] = serde_json::Value::Null;
        variants.push((v, true));
        // A different normaliser (runs through tokenizers, then the engine).
        let mut v = json.clone();
        v["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "NFKC"},
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        variants.push((v, true));
        // Unknown tokens not fused.
        let mut v = json.clone();
        v["model"]["fuse_unk"] = false.into();
        variants.push((v, true));
        // Byte tokens for a few bytes (emoji bytes among them) and a merge of two.
        let mut v = json.clone();
        {
            let vocab = v["model"]["vocab"].as_object_mut().expect("vocab");
            let mut next = vocab.len() as u64;
            for b in [0xF0u8, 0x9F, 0x98, 0x80, 0x81, 0xD0, 0x96] {
                vocab.insert(format!("<0x{b:02X}>"), next.into());
                next += 1;
            }
            vocab.insert("<0xF0><0x9F>".into(), next.into());
            let merges = v["model"]["merges"].as_array_mut().expect("merges");
            let pair = if merges[0].is_string() {
                serde_json::json!("<0xF0> <0x9F>")
            } else {
                serde_json::json!(["<0xF0>", "<0x9F>"])
            };
            merges.insert(3, pair);
        }
        variants.push((v, true));
        // Byte tokens for every byte, no merge of them: cuts stay on.
        let mut v = json.clone();
        {
            let vocab = v["model"]["vocab"].as_object_mut().expect("vocab");
            let base = vocab.len() as u64;
            for b in 0..=255u8 {
                vocab.insert(format!("<0x{b:02X}>"), (base + b as u64).into());
            }
        }
        variants.push((v, true));
        // A pre-tokenizer: the engine must refuse.
        let mut v = json.clone();
        v["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
        variants.push((v, false));
        let mut texts = edge_texts();
        texts.extend(random_texts(600, 11));
        texts.extend(demo_texts().into_iter().step_by(7));
        for (i, (v, fast)) in variants.into_iter().enumerate() {
            let tok = Tokenizer::from_bytes(serde_json::to_vec(&v).expect("ser")).expect("load");
            let counter = TokenCounter::new(&tok);
            assert_eq!(
                counter.is_fast(),
                fast,
                "variant {i}: {:?}",
                counter.fallback_reason()
            );
            for t in &texts {
                assert_eq!(
                    counter.count(t).expect("count"),
                    want(&tok, t),
                    "variant {i}: {:?}",
                    &t[..t.len().min(80)]
                );
            }
        }
    }

    /// Single-thread throughput of the counter (cold cache each round) and of the
    /// full encode on the demo corpus:
    /// `cargo test -p mome-data --lib count_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn count_throughput() {
        let tok = seed_tokenizer();
        let texts = demo_texts();
        let bytes: usize = texts.iter().map(|t| t.len()).sum();
        // On-CPU seconds of this thread (first field of schedstat, ns), so that a
        // loaded machine does not distort the single-thread figures; wall
        // seconds where it is not readable.
        let cpu = || {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                .map(|ns| ns / 1e9)
        };
        let time = |f: &dyn Fn() -> u64| {
            let mut best = f64::INFINITY;
            let mut n = 0;
            for _ in 0..3 {
                let (c0, t) = (cpu(), std::time::Instant::now());
                n = f();
                let wall = t.elapsed().as_secs_f64();
                let secs = match (c0, cpu()) {
                    (Some(a), Some(b)) => b - a,
                    _ => wall,
                };
                best = best.min(secs);
            }
            (n, best)
        };
        let (n, s) = time(&|| {
            let c = TokenCounter::new(&tok);
            texts.iter().map(|t| c.count(t).expect("count")).sum()
        });
        println!(
            "counter, 1 thread: {n} tokens, {:.3} s, {:.1} MB/s, {:.2} M tokens/s",
            s,
            bytes as f64 / 1e6 / s,
            n as f64 / 1e6 / s
        );
        let (n2, s2) = time(&|| {
            let c = TokenCounter::new(&tok);
            let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
            c.count_many(&refs).expect("count").iter().sum()
        });
        println!(
            "counter, rayon (seconds are this thread's CPU: meaningless): {n2} tokens, {:.3} s, {:.1} MB/s",
            s2,
            bytes as f64 / 1e6 / s2
        );
        let t = std::time::Instant::now();
        let c = TokenCounter::new(&tok);
        println!("counter set-up: {:.4} s", t.elapsed().as_secs_f64());
        let (n3, s3) = time(&|| texts.iter().map(|t| c.count_full(t).expect("count")).sum());
        println!(
            "tokenizers encode_fast, 1 thread: {n3} tokens, {:.3} s, {:.1} MB/s",
            s3,
            bytes as f64 / 1e6 / s3
        );
        assert_eq!(n, n3);
    }
}
