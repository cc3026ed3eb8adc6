//! Token balancing across domains (method.md §1), with the fixes the method asks for.
//!
//! Every domain's train records are streamed once to count tokens (exactly `encode(text,
//! false).len()` by [`crate::count::TokenCounter`], in parallel chunks of
//! [`BalanceConfig::chunk_size`] records); only
//! `(id, token count)` per record stays in memory. Selection then works on those
//! counts, and a second stream writes the kept records. Nothing larger than one
//! chunk of texts is held, so corpora larger than memory work.
//!
//! Let `p = max_diff_percent / 100`. A result is *within the band* when
//! `max_k T_k <= (1 + p) * min_k T_k` over the kept train tokens `T_k`.
//!
//! ## Strategies
//! - [`Strategy::Reference`] — the research tool's rule, exactly: `limit =
//!   min_total * (100 + max_diff_percent) / 100`; walk the records in input order
//!   (with `common_articles`: the aligned articles in the first domain's order) and
//!   keep one (an aligned article = one record per domain) only if every domain
//!   stays `<= limit`. It only caps each domain, so with aligned articles whose
//!   French/German versions are ~30% longer the kept set can be ~30% apart. The
//!   spread actually reached is reported, not enforced.
//! - [`Strategy::Subset`] (aligned domains) — chooses which aligned articles to
//!   drop. With current totals, let `H` be the largest and `L` the smallest domain
//!   (or an external floor set by non-aligned domains). The violation is
//!   `V = T_H - (1+p) T_L`. Dropping article `i` changes `V` by
//!   `-(t_iH - (1+p) t_iL)`, at a cost of `sum_k t_ik` kept tokens. Greedy: drop the
//!   article with the best *efficiency* `(t_iH - (1+p) t_iL) / sum_k t_ik` for the
//!   current pair `(H, L)`, update the totals in O(d), repeat until within the band.
//!   Each pair's order is one sort, computed lazily (at most d(d-1)+d sorts), with a
//!   cursor that skips dropped articles. Then a re-add pass walks the dropped
//!   articles in reverse drop order and takes back every one that keeps the band.
//!   Complexity O(d² n log n) time worst case (d ≤ 4 in practice: O(n log n)),
//!   O(d n) memory. If the best remaining efficiency is ≤ 0 (dropping cannot help)
//!   it returns [`Error::BandUnreachable`].
//! - [`Strategy::Truncate`] (aligned domains) — keeps every aligned article and
//!   trims the over-long domains: each article of such a domain gets the budget
//!   `floor(t_i * r)` and is cut at the last paragraph (`"\n\n"`) or sentence
//!   (`". "`, `"! "`, `"? "`, `"\n"`) boundary whose prefix fits (from the end of the
//!   text; at least the first sentence is kept). The trimmed texts are re-counted
//!   with the tokenizer; `r` starts at `goal / T_k` (goal = middle of the band) and
//!   is corrected from the measured total for up to [`BalanceConfig::max_trim_passes`]
//!   passes.
//! - Without `common_articles`, and for domains outside `common_domains` (e.g. `py`,
//!   which has no aligned ids), each domain is walked on its own in input order,
//!   keeping every record that keeps the domain `<= limit` (skipping, not stopping).
//!   The smallest domain keeps everything. If a domain ends below the smallest total
//!   (huge records skipped), the limit is recomputed from the new minimum and the walk
//!   repeated; the result is checked to be within the band, else
//!   [`Error::BandUnreachable`]. Under `Reference` the same walk runs once, unchecked.
//!
//! The validation split is never balanced; with `common_articles` it keeps only the
//! ids present in every aligned domain's validation split, in the first domain's
//! order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::corpus::{self, CorpusSpec, Record, Split};
use crate::count::TokenCounter;
use crate::fsutil::{self, AtomicDir};
use crate::{Error, Result};

/// How to balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The research tool's rule (caps each domain; spread not guaranteed).
    Reference,
    /// Drop aligned articles to reach the band, keeping as many tokens as possible.
    Subset,
    /// Keep every aligned article, trim the longer language versions.
    Truncate,
}

/// One domain: a name (used for file names), its train input and an optional
/// separate validation input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainSpec {
    /// Domain name, e.g. `en`, `py`.
    pub name: String,
    /// Train input (split by [`BalanceConfig::valid_fraction`] when `validation` is `None`).
    pub train: CorpusSpec,
    /// Separate validation input.
    pub validation: Option<CorpusSpec>,
}

/// Settings of [`balance`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceConfig {
    /// At least two domains, unique names.
    pub domains: Vec<DomainSpec>,
    /// Allowed spread in percent, `>= 0` and finite. Default 5.0.
    pub max_diff_percent: f64,
    /// Fraction of train records moved to validation (by id hash) for domains
    /// without a validation input, in `[0, 1)`. Default 0.0.
    pub valid_fraction: f64,
    /// Seed of the id-hash split. Default 0.
    pub split_seed: u64,
    /// Keep only articles whose id is in every aligned domain (needs `id_field`).
    /// Default false.
    pub common_articles: bool,
    /// The aligned domains; empty = all. Default empty.
    pub common_domains: Vec<String>,
    /// `None`: `Subset` with `common_articles`, `Reference` without. Default `None`.
    pub strategy: Option<Strategy>,
    /// Records per parallel counting chunk. Default 512.
    pub chunk_size: usize,
    /// Maximum trimming passes of `Truncate`. Default 8.
    pub max_trim_passes: usize,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            max_diff_percent: 5.0,
            valid_fraction: 0.0,
            split_seed: 0,
            common_articles: false,
            common_domains: Vec::new(),
            strategy: None,
            chunk_size: 512,
            max_trim_passes: 8,
        }
    }
}

impl BalanceConfig {
    /// The strategy that runs (resolving the default).
    pub fn resolved_strategy(&self) -> Strategy {
        self.strategy.unwrap_or(if self.common_articles {
            Strategy::Subset
        } else {
            Strategy::Reference
        })
    }

    /// The aligned domains' indices (empty without `common_articles`).
    fn aligned(&self) -> Vec<usize> {
        if !self.common_articles {
            return Vec::new();
        }
        (0..self.domains.len())
            .filter(|&i| {
                self.common_domains.is_empty()
                    || self.common_domains.contains(&self.domains[i].name)
            })
            .collect()
    }

    /// Checks every setting before any work starts.
    pub fn validate(&self) -> Result<()> {
        if !self.max_diff_percent.is_finite() || self.max_diff_percent < 0.0 {
            return Err(Error::Config(format!(
                "max_diff_percent must be finite and >= 0, got {}",
                self.max_diff_percent
            )));
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            return Err(Error::Config(format!(
                "valid_fraction must be in [0, 1), got {}",
                self.valid_fraction
            )));
        }
        if self.domains.len() < 2 {
            return Err(Error::Config(format!(
                "balancing needs at least 2 domains, got {}",
                self.domains.len()
            )));
        }
        if self.chunk_size == 0 || self.max_trim_passes == 0 {
            return Err(Error::Config(
                "chunk_size and max_trim_passes must be >= 1".into(),
            ));
        }
        let mut names = HashSet::new();
        for d in &self.domains {
            if d.name.is_empty() || d.name.starts_with('.') || d.name.contains(['/', '\\', '\0']) {
                return Err(Error::Config(format!(
                    "domain name {:?} cannot be used as a file name",
                    d.name
                )));
            }
            if !names.insert(d.name.as_str()) {
                return Err(Error::Config(format!("duplicate domain `{}`", d.name)));
            }
        }
        for c in &self.common_domains {
            if !names.contains(c.as_str()) {
                return Err(Error::Config(format!(
                    "common domain `{c}` is not one of the domains {names:?}"
                )));
            }
        }
        if !self.common_articles && !self.common_domains.is_empty() {
            return Err(Error::Config(
                "common_domains is set but common_articles is off".into(),
            ));
        }
        let aligned = self.aligned();
        if self.common_articles {
            if aligned.len() < 2 {
                return Err(Error::Config(
                    "common_articles needs at least 2 aligned domains".into(),
                ));
            }
            for &i in &aligned {
                let d = &self.domains[i];
                if d.train.id_field.is_none()
                    || d.validation.as_ref().is_some_and(|v| v.id_field.is_none())
                {
                    return Err(Error::Config(format!(
                        "domain `{}` is aligned (common_articles) but its corpus has no id field; \
                         set id_field (e.g. wikidata_id)",
                        d.name
                    )));
                }
            }
        } else if matches!(self.strategy, Some(Strategy::Subset | Strategy::Truncate)) {
            return Err(Error::Config(
                "strategies subset and truncate need common_articles; without it every \
                 domain is balanced by the per-domain walk (use reference or leave it unset)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Per-domain figures of a [`BalanceReport`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainReport {
    /// Train tokens read.
    pub tokens_before: u64,
    /// Train records read.
    pub records_before: u64,
    /// Train tokens written.
    pub tokens_after: u64,
    /// Train records written.
    pub records_after: u64,
    /// Train records not written.
    pub records_dropped: u64,
    /// Train records written shortened (`Truncate`).
    pub records_trimmed: u64,
    /// Tokens removed by trimming.
    pub tokens_trimmed: u64,
    /// Validation records written.
    pub validation_records: u64,
    /// Records skipped for invalid UTF-8 (train and validation).
    pub skipped_invalid_utf8: u64,
    /// Why records were dropped: reason -> count.
    pub dropped_reasons: BTreeMap<String, u64>,
}

/// What [`balance`] did; written to `DIR/balance_report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceReport {
    /// The strategy that ran.
    pub strategy: Strategy,
    /// The allowed spread in percent.
    pub max_diff_percent: f64,
    /// The per-domain token cap used: the reference rule's limit, or the band's
    /// upper edge `min_kept * (100 + max_diff_percent) / 100`.
    pub limit: f64,
    /// Whether aligned articles were used.
    pub common_articles: bool,
    /// The aligned domains.
    pub common_domains: Vec<String>,
    /// Aligned articles (ids in every aligned domain) before selection.
    pub aligned_articles: u64,
    /// `(max_kept / min_kept - 1) * 100` over kept train tokens.
    pub spread_percent_reached: f64,
    /// Per domain.
    pub domains: BTreeMap<String, DomainReport>,
    /// Seconds spent counting tokens.
    pub count_seconds: f64,
    /// Tokens counted per second.
    pub count_tokens_per_second: f64,
    /// Seconds for the whole run.
    pub total_seconds: f64,
}

// ---------------------------------------------------------------------------
// Pure selection rules over token counts.

fn band_upper(min_total: u64, max_diff_percent: f64) -> f64 {
    min_total as f64 * (100.0 + max_diff_percent) / 100.0
}

/// Spread in percent of a set of totals: `(max / min - 1) * 100` (infinite when the
/// minimum is 0 and the maximum is not).
pub fn spread_percent(totals: &[u64]) -> f64 {
    let max = totals.iter().copied().max().unwrap_or(0);
    let min = totals.iter().copied().min().unwrap_or(0);
    if max == 0 {
        0.0
    } else if min == 0 {
        f64::INFINITY
    } else {
        (max as f64 / min as f64 - 1.0) * 100.0
    }
}

fn within_band(totals: &[u64], max_diff_percent: f64) -> bool {
    let max = totals.iter().copied().max().unwrap_or(0);
    let min = totals.iter().copied().min().unwrap_or(0);
    max as f64 <= band_upper(min, max_diff_percent)
}

/// The research tool's rule over aligned token counts: `counts[k][i]` is the
/// token count of record `i` in domain `k` (all domains the same length).
/// Returns the kept mask and the limit `min_total * (100 + max_diff_percent) / 100`.
/// Record `i` is kept iff every domain's running total stays `<= limit`.
///
/// ```
/// use mome_data::balance::reference_select;
///
/// // Three aligned articles in two languages (tokens per article).
/// let counts = vec![vec![100, 50, 60], vec![130, 80, 30]];
/// // Totals 210 and 240: limit = 210 * 1.05 = 220.5.
/// let (keep, limit) = reference_select(&counts, 5.0);
/// assert!((limit - 220.5).abs() < 1e-9);
/// // Article 1 would take language 2 to 210 (fine), article 2 then to 240 > limit.
/// assert_eq!(keep, vec![true, true, false]);
/// // The rule only caps: kept totals 150 vs 210 are 40% apart, not 5%.
/// ```
pub fn reference_select(counts: &[Vec<u64>], max_diff_percent: f64) -> (Vec<bool>, f64) {
    let min_total = counts
        .iter()
        .map(|c| c.iter().sum::<u64>())
        .min()
        .unwrap_or(0);
    let limit = band_upper(min_total, max_diff_percent);
    (reference_walk(counts, limit), limit)
}

fn reference_walk(counts: &[Vec<u64>], limit: f64) -> Vec<bool> {
    let n = counts.first().map_or(0, |c| c.len());
    let mut totals = vec![0u64; counts.len()];
    let mut keep = vec![false; n];
    for (i, k) in keep.iter_mut().enumerate() {
        if counts
            .iter()
            .zip(&totals)
            .all(|(c, t)| (t + c[i]) as f64 <= limit)
        {
            for (c, t) in counts.iter().zip(totals.iter_mut()) {
                *t += c[i];
            }
            *k = true;
        }
    }
    keep
}

/// Greedy walk of one domain: keeps each record (in order) that keeps the running
/// total `<= limit`, skipping the ones that would overflow.
pub fn walk_select(counts: &[u64], limit: f64) -> Vec<bool> {
    let mut total = 0u64;
    counts
        .iter()
        .map(|&c| {
            let ok = (total + c) as f64 <= limit;
            if ok {
                total += c;
            }
            ok
        })
        .collect()
}

/// The subset rule (see the module doc) over aligned counts `counts[k][i]`.
/// `floor` is an external smallest total (from non-aligned domains) that the
/// aligned totals must also be within the band of. Returns the kept mask, which is
/// guaranteed within the band, or [`Error::BandUnreachable`].
pub fn subset_select(
    counts: &[Vec<u64>],
    names: &[String],
    max_diff_percent: f64,
    floor: Option<u64>,
) -> Result<Vec<bool>> {
    let d = counts.len();
    let n = counts.first().map_or(0, |c| c.len());
    let q = 1.0 + max_diff_percent / 100.0;
    let mut totals: Vec<u64> = counts.iter().map(|c| c.iter().sum()).collect();
    let mut keep = vec![true; n];
    let sums: Vec<u64> = (0..n).map(|i| counts.iter().map(|c| c[i]).sum()).collect();
    // Sorted orders per (heavy, light-or-floor) pair, with cursors.
    let mut orders: HashMap<(usize, usize), (Vec<u32>, usize)> = HashMap::new();
    let mut dropped: Vec<usize> = Vec::new();
    let ok = |totals: &[u64]| -> bool {
        let max = *totals.iter().max().unwrap_or(&0);
        let mut min = *totals.iter().min().unwrap_or(&0);
        if let Some(f) = floor {
            min = min.min(f);
        }
        max as f64 <= band_upper(min, max_diff_percent)
    };
    let gain = |h: usize, l: usize, i: usize| -> f64 {
        let light = if l == d { 0.0 } else { counts[l][i] as f64 };
        (counts[h][i] as f64 - q * light) / sums[i].max(1) as f64
    };
    while !ok(&totals) {
        let h = (0..d).max_by_key(|&k| totals[k]).unwrap_or(0);
        let l_in = (0..d).min_by_key(|&k| totals[k]).unwrap_or(0);
        // d stands for the external floor when it is the smallest.
        let l = match floor {
            Some(f) if f < totals[l_in] => d,
            _ => l_in,
        };
        let entry = orders.entry((h, l)).or_insert_with(|| {
            let mut idx: Vec<u32> = (0..n as u32).collect();
            idx.sort_by(|&a, &b| {
                gain(h, l, b as usize)
                    .total_cmp(&gain(h, l, a as usize))
                    .then(a.cmp(&b))
            });
            (idx, 0)
        });
        let (idx, cursor) = entry;
        while *cursor < idx.len() && !keep[idx[*cursor] as usize] {
            *cursor += 1;
        }
        let i = match idx.get(*cursor) {
            Some(&i) if dropped.len() + 1 < n => i as usize,
            _ => {
                return Err(Error::BandUnreachable {
                    domain: names[h].clone(),
                    reason: "no subset of the aligned articles is within the band (the domain \
                             is longer on nearly every article); use strategy truncate or a \
                             larger max_diff_percent"
                        .into(),
                })
            }
        };
        if gain(h, l, i) <= 0.0 {
            return Err(Error::BandUnreachable {
                domain: names[h].clone(),
                reason: format!(
                    "dropping any remaining aligned article does not bring it closer to the \
                     smallest domain (totals {totals:?}); use strategy truncate or a larger \
                     max_diff_percent"
                ),
            });
        }
        keep[i] = false;
        dropped.push(i);
        for (t, c) in totals.iter_mut().zip(counts) {
            *t -= c[i];
        }
    }
    // Re-add pass: take back dropped articles that keep the band.
    for &i in dropped.iter().rev() {
        let trial: Vec<u64> = totals.iter().zip(counts).map(|(t, c)| t + c[i]).collect();
        if ok(&trial) {
            totals = trial;
            keep[i] = true;
        }
    }
    if !keep.iter().any(|&k| k) {
        return Err(Error::BandUnreachable {
            domain: names.first().cloned().unwrap_or_default(),
            reason: "no aligned article could be kept".into(),
        });
    }
    Ok(keep)
}

// ---------------------------------------------------------------------------
// Streaming passes.

#[derive(Clone, Copy)]
enum Which {
    All,
    SplitOf(Split, f64, u64),
}

impl Which {
    fn accepts(&self, id: &str) -> bool {
        match *self {
            Which::All => true,
            Which::SplitOf(s, frac, seed) => corpus::split_train_valid(id, frac, seed) == s,
        }
    }
}

/// Streams the records of `spec` selected by `which`, in chunks.
fn for_each_chunk(
    spec: &CorpusSpec,
    which: Which,
    chunk: usize,
    mut f: impl FnMut(Vec<Record>) -> Result<()>,
) -> Result<u64> {
    let mut reader = corpus::open(spec)?;
    let mut buf = Vec::with_capacity(chunk);
    for r in reader.by_ref() {
        let r = r?;
        if which.accepts(&r.id) {
            buf.push(r);
            if buf.len() == chunk {
                f(std::mem::take(&mut buf))?;
            }
        }
    }
    if !buf.is_empty() {
        f(buf)?;
    }
    Ok(reader.skipped_invalid_utf8())
}

struct Scan {
    tokens: Vec<u64>,
    ids: Vec<String>,
    valid_ids: Vec<String>,
    valid_records: u64,
    skipped: u64,
}

fn splits(cfg: &BalanceConfig, d: &DomainSpec) -> (Which, Option<(CorpusSpec, Which)>) {
    match &d.validation {
        Some(v) => (Which::All, Some((v.clone(), Which::All))),
        None if cfg.valid_fraction > 0.0 => (
            Which::SplitOf(Split::Train, cfg.valid_fraction, cfg.split_seed),
            Some((
                d.train.clone(),
                Which::SplitOf(Split::Valid, cfg.valid_fraction, cfg.split_seed),
            )),
        ),
        None => (Which::All, None),
    }
}

fn scan_domain(
    cfg: &BalanceConfig,
    d: &DomainSpec,
    counter: &TokenCounter<'_>,
    keep_ids: bool,
) -> Result<Scan> {
    let (train_which, valid) = splits(cfg, d);
    let mut s = Scan {
        tokens: Vec::new(),
        ids: Vec::new(),
        valid_ids: Vec::new(),
        valid_records: 0,
        skipped: 0,
    };
    s.skipped += for_each_chunk(&d.train, train_which, cfg.chunk_size, |chunk| {
        let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
        s.tokens.extend(counter.count_many(&texts)?);
        if keep_ids {
            s.ids.extend(chunk.into_iter().map(|r| r.id));
        }
        Ok(())
    })?;
    if let Some((vspec, vwhich)) = valid {
        s.skipped += for_each_chunk(&vspec, vwhich, cfg.chunk_size, |chunk| {
            s.valid_records += chunk.len() as u64;
            if keep_ids {
                s.valid_ids.extend(chunk.into_iter().map(|r| r.id));
            }
            Ok(())
        })?;
    }
    if s.tokens.is_empty() {
        return Err(Error::EmptyDomain {
            domain: d.name.clone(),
            reason: format!("no train record in {:?}", d.train.paths),
        });
    }
    Ok(s)
}

/// Ids present in every list, in the order of the first list (first occurrence),
/// with the position of that id in each list.
fn align(id_lists: &[&[String]]) -> Vec<Vec<u64>> {
    let maps: Vec<HashMap<&str, u64>> = id_lists
        .iter()
        .map(|ids| {
            let mut m = HashMap::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                m.entry(id.as_str()).or_insert(i as u64);
            }
            m
        })
        .collect();
    let mut out: Vec<Vec<u64>> = vec![Vec::new(); id_lists.len()];
    let Some(first) = id_lists.first() else {
        return out;
    };
    for (i, id) in first.iter().enumerate() {
        if maps[0].get(id.as_str()) != Some(&(i as u64)) {
            continue; // a repeated id: only its first occurrence counts
        }
        let pos: Option<Vec<u64>> = maps[1..]
            .iter()
            .map(|m| m.get(id.as_str()).copied())
            .collect();
        if let Some(pos) = pos {
            out[0].push(i as u64);
            for (k, p) in pos.into_iter().enumerate() {
                out[k + 1].push(p);
            }
        }
    }
    out
}

/// Writes the records of `spec`/`which` whose ordinals are listed in `order`, in
/// that order, cutting texts by `cuts` (ordinal -> byte length).
fn write_selected(
    spec: &CorpusSpec,
    which: Which,
    order: &[u64],
    cuts: &HashMap<u64, usize>,
    out: &Path,
    spool: &Path,
    chunk: usize,
) -> Result<()> {
    let sorted = order.windows(2).all(|w| w[0] < w[1]);
    let line = |r: &Record, ord: u64| -> Result<Vec<u8>> {
        let text = match cuts.get(&ord) {
            Some(&n) => &r.text[..n],
            None => r.text.as_str(),
        };
        let mut v = serde_json::to_vec(&serde_json::json!({"id": r.id, "text": text}))?;
        v.push(b'\n');
        Ok(v)
    };
    if sorted {
        let mut pos = 0usize;
        let mut ord = 0u64;
        let mut lines: Vec<u8> = Vec::new();
        let mut err = None;
        fsutil::write_atomic_with(out, |w| {
            let r = for_each_chunk(spec, which, chunk, |recs| {
                lines.clear();
                for r in recs {
                    if pos < order.len() && order[pos] == ord {
                        lines.extend(line(&r, ord)?);
                        pos += 1;
                    }
                    ord += 1;
                }
                w.write_all(&lines).map_err(|e| Error::Io {
                    path: out.to_path_buf(),
                    source: e,
                })
            });
            if let Err(e) = r {
                err = Some(e);
                return Err(std::io::Error::other("read failed"));
            }
            Ok(())
        })
        .map_err(|e| err.take().unwrap_or(e))?;
        return Ok(());
    }
    // Out of input order: spool the kept records, then copy them in order.
    let wanted: HashSet<u64> = order.iter().copied().collect();
    let mut at: HashMap<u64, (u64, usize)> = HashMap::with_capacity(order.len());
    {
        let f = fs::File::create(spool).map_err(|e| Error::Io {
            path: spool.to_path_buf(),
            source: e,
        })?;
        let mut w = std::io::BufWriter::new(f);
        let mut off = 0u64;
        let mut ord = 0u64;
        for_each_chunk(spec, which, chunk, |recs| {
            for r in recs {
                if wanted.contains(&ord) {
                    let l = line(&r, ord)?;
                    w.write_all(&l).map_err(|e| Error::Io {
                        path: spool.to_path_buf(),
                        source: e,
                    })?;
                    at.insert(ord, (off, l.len()));
                    off += l.len() as u64;
                }
                ord += 1;
            }
            Ok(())
        })?;
        w.flush().map_err(|e| Error::Io {
            path: spool.to_path_buf(),
            source: e,
        })?;
    }
    let mut f = fs::File::open(spool).map_err(|e| Error::Io {
        path: spool.to_path_buf(),
        source: e,
    })?;
    fsutil::write_atomic_with(out, |w| {
        let mut buf = Vec::new();
        for o in order {
            let Some(&(off, len)) = at.get(o) else {
                return Err(std::io::Error::other(format!(
                    "record {o} vanished from the input"
                )));
            };
            buf.resize(len, 0);
            f.seek(SeekFrom::Start(off))?;
            f.read_exact(&mut buf)?;
            w.write_all(&buf)?;
        }
        Ok(())
    })?;
    let _ = fs::remove_file(spool);
    Ok(())
}

/// Byte positions where a text may be cut: paragraph and sentence ends.
fn cut_points(text: &str) -> Vec<usize> {
    let mut pts = Vec::new();
    let b = text.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'\n' => pts.push(i),
            b'.' | b'!' | b'?' if b.get(i + 1) == Some(&b' ') => pts.push(i + 1),
            _ => {}
        }
    }
    pts.retain(|&p| p > 0 && p < b.len() && text.is_char_boundary(p));
    pts.dedup();
    pts
}

/// Cut candidates of a text: `(byte length, approximate tokens of the prefix)` at
/// every paragraph/sentence boundary, ascending. The approximation counts the
/// tokens of the whole text's encoding that end inside the prefix.
fn cut_candidates(tok: &Tokenizer, text: &str) -> Result<Vec<(usize, u64)>> {
    let pts = cut_points(text);
    if pts.is_empty() {
        return Ok(Vec::new());
    }
    let enc = tok.encode(text, false).map_err(|e| Error::Tokenize {
        context: "trimming".into(),
        source: e,
    })?;
    let ends: Vec<usize> = enc.get_offsets().iter().map(|o| o.1).collect();
    Ok(pts
        .into_iter()
        .map(|p| (p, ends.partition_point(|&e| e <= p) as u64))
        .collect())
}

/// One trimming pass over the aligned articles of a domain with keep ratio `r`.
/// Each article's budget is `t_i * r` plus the carried-over difference of the
/// previous articles (error diffusion), so the domain total tracks `r * T` even
/// though cuts are coarse; the cut is the last boundary whose prefix fits (at
/// least the first sentence). Returns per aligned article the optional cut and
/// its exact re-counted token count.
fn trim_pass(
    cfg: &BalanceConfig,
    d: &DomainSpec,
    tok: &Tokenizer,
    positions: &[u64],
    counts: &[u64],
    r: f64,
) -> Result<Cuts> {
    let (which, _) = splits(cfg, d);
    let slot: HashMap<u64, usize> = positions.iter().enumerate().map(|(a, &p)| (p, a)).collect();
    let mut out: Cuts = vec![None; positions.len()];
    let mut ord = 0u64;
    let mut carry = 0.0f64;
    // Articles are processed in input order of this domain (deterministic).
    for_each_chunk(&d.train, which, cfg.chunk_size, |recs| {
        let jobs: Vec<(usize, Record)> = recs
            .into_iter()
            .filter_map(|rec| {
                let s = slot.get(&ord).copied();
                ord += 1;
                s.map(|a| (a, rec))
            })
            .collect();
        let cands: Vec<Vec<(usize, u64)>> = jobs
            .par_iter()
            .map(|(a, rec)| {
                if r >= 1.0 || counts[*a] == 0 {
                    Ok(Vec::new())
                } else {
                    cut_candidates(tok, &rec.text)
                }
            })
            .collect::<Result<_>>()?;
        let mut chosen: Vec<Option<usize>> = Vec::with_capacity(jobs.len());
        for ((a, _), c) in jobs.iter().zip(&cands) {
            let t = counts[*a];
            let budget = t as f64 * r + carry;
            let pick = if t as f64 <= budget || c.is_empty() {
                None
            } else {
                Some(
                    c.iter()
                        .rev()
                        .find(|x| x.1 as f64 <= budget)
                        .unwrap_or(&c[0]),
                )
            };
            let got = pick.map_or(t, |x| x.1);
            carry = (budget - got as f64).clamp(-(t as f64), t as f64);
            chosen.push(pick.map(|x| x.0));
        }
        let exact: Cuts = jobs
            .par_iter()
            .zip(&chosen)
            .map(|((a, rec), cut)| match cut {
                None => Ok(None),
                Some(n) => {
                    let e = tok
                        .encode(&rec.text[..*n], false)
                        .map_err(|e| Error::Tokenize {
                            context: "trimming".into(),
                            source: e,
                        })?;
                    let k = e.len() as u64;
                    Ok((k < counts[*a]).then_some((*n, k)))
                }
            })
            .collect::<Result<_>>()?;
        for ((a, _), x) in jobs.iter().zip(exact) {
            out[*a] = x;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Per aligned article: the trimmed byte length and its exact token count.
type Cuts = Vec<Option<(usize, u64)>>;

struct Plan {
    /// Output order of train ordinals.
    order: Vec<u64>,
    cuts: HashMap<u64, usize>,
    tokens_after: u64,
    trimmed_tokens: u64,
    reasons: BTreeMap<String, u64>,
    valid_order: Option<Vec<u64>>,
}

/// Balances the domains of `cfg` and writes `out/train/<domain>.jsonl`,
/// `out/validation/<domain>.jsonl` and `out/balance_report.json` atomically (the
/// folder appears only when everything succeeded).
pub fn balance(cfg: &BalanceConfig, tokenizer: &Tokenizer, out: &Path) -> Result<BalanceReport> {
    cfg.validate()?;
    let start = Instant::now();
    let strategy = cfg.resolved_strategy();
    let aligned = cfg.aligned();
    let names: Vec<String> = cfg.domains.iter().map(|d| d.name.clone()).collect();
    let p = cfg.max_diff_percent;

    // Pass 1: count.
    let counter = TokenCounter::new(tokenizer);
    let mut scans = Vec::with_capacity(cfg.domains.len());
    for (i, d) in cfg.domains.iter().enumerate() {
        scans.push(scan_domain(cfg, d, &counter, aligned.contains(&i))?);
    }
    drop(counter);
    let count_seconds = start.elapsed().as_secs_f64();
    let counted: u64 = scans.iter().map(|s| s.tokens.iter().sum::<u64>()).sum();

    let mut plans: Vec<Plan> = scans
        .iter()
        .map(|_| Plan {
            order: Vec::new(),
            cuts: HashMap::new(),
            tokens_after: 0,
            trimmed_tokens: 0,
            reasons: BTreeMap::new(),
            valid_order: None,
        })
        .collect();

    // Aligned articles.
    let mut positions: Vec<Vec<u64>> = Vec::new();
    let mut acounts: Vec<Vec<u64>> = Vec::new();
    if !aligned.is_empty() {
        let lists: Vec<&[String]> = aligned.iter().map(|&k| scans[k].ids.as_slice()).collect();
        positions = align(&lists);
        if positions[0].is_empty() {
            return Err(Error::NoCommonIds {
                domains: aligned.iter().map(|&k| names[k].clone()).collect(),
            });
        }
        acounts = aligned
            .iter()
            .zip(&positions)
            .map(|(&k, pos)| pos.iter().map(|&o| scans[k].tokens[o as usize]).collect())
            .collect();
        // Validation: common ids, first domain's order.
        let vlists: Vec<&[String]> = aligned
            .iter()
            .map(|&k| scans[k].valid_ids.as_slice())
            .collect();
        if aligned
            .iter()
            .all(|&k| splits(cfg, &cfg.domains[k]).1.is_some())
        {
            let vpos = align(&vlists);
            for (a, &k) in aligned.iter().enumerate() {
                plans[k].valid_order = Some(vpos[a].clone());
            }
        }
    }
    let free: Vec<usize> = (0..names.len()).filter(|k| !aligned.contains(k)).collect();
    let free_totals: Vec<u64> = free.iter().map(|&k| scans[k].tokens.iter().sum()).collect();

    let mut limit;
    let mut a_keep: Vec<bool> = vec![true; positions.first().map_or(0, |p| p.len())];
    let mut a_totals: Vec<u64> = acounts.iter().map(|c| c.iter().sum()).collect();
    let mut trims: Vec<Cuts> = vec![Vec::new(); aligned.len()];
    let mut f_keep: Vec<Vec<bool>> = Vec::new();

    let walk_free = |limit: f64| -> (Vec<Vec<bool>>, Vec<u64>) {
        let keeps: Vec<Vec<bool>> = free
            .iter()
            .map(|&k| walk_select(&scans[k].tokens, limit))
            .collect();
        let totals = free
            .iter()
            .zip(&keeps)
            .map(|(&k, m)| {
                scans[k]
                    .tokens
                    .iter()
                    .zip(m)
                    .filter(|(_, &x)| x)
                    .map(|(t, _)| t)
                    .sum()
            })
            .collect();
        (keeps, totals)
    };

    if strategy == Strategy::Reference {
        let min_total = a_totals
            .iter()
            .chain(&free_totals)
            .copied()
            .min()
            .unwrap_or(0);
        limit = band_upper(min_total, p);
        if !acounts.is_empty() {
            a_keep = reference_walk(&acounts, limit);
        }
        (f_keep, _) = walk_free(limit);
    } else {
        let mut floor: Option<u64> = free_totals.iter().copied().min();
        let mut done = false;
        limit = 0.0;
        let mut f_totals = free_totals.clone();
        for _round in 0..8 {
            if !acounts.is_empty() {
                let anames: Vec<String> = aligned.iter().map(|&k| names[k].clone()).collect();
                match strategy {
                    Strategy::Subset => {
                        a_keep = subset_select(&acounts, &anames, p, floor)?;
                        a_totals = acounts
                            .iter()
                            .map(|c| {
                                c.iter()
                                    .zip(&a_keep)
                                    .filter(|(_, &x)| x)
                                    .map(|(t, _)| t)
                                    .sum()
                            })
                            .collect();
                    }
                    Strategy::Truncate => {
                        a_totals = truncate_aligned(
                            cfg, tokenizer, &aligned, &positions, &acounts, floor, &mut trims,
                        )?;
                    }
                    Strategy::Reference => {}
                }
            }
            let m = a_totals
                .iter()
                .chain(&free_totals)
                .copied()
                .min()
                .unwrap_or(0);
            if m == 0 {
                break;
            }
            limit = band_upper(m, p);
            (f_keep, f_totals) = walk_free(limit);
            let all: Vec<u64> = a_totals.iter().chain(&f_totals).copied().collect();
            if within_band(&all, p) {
                done = true;
                let mn = all.iter().copied().min().unwrap_or(0);
                limit = band_upper(mn, p);
                break;
            }
            floor = f_totals.iter().copied().min();
        }
        if !done {
            let all: Vec<u64> = a_totals.iter().chain(&f_totals).copied().collect();
            let worst = (0..all.len()).max_by_key(|&i| all[i]).unwrap_or(0);
            let who = aligned.iter().chain(&free).nth(worst).copied().unwrap_or(0);
            return Err(Error::BandUnreachable {
                domain: names[who].clone(),
                reason: format!(
                    "kept totals {all:?} stay more than {p}% apart: records too large to fit \
                     under the limit; split long records or raise max_diff_percent"
                ),
            });
        }
    }

    // Build the plans.
    let n_aligned = positions.first().map_or(0, |p| p.len()) as u64;
    for (a, &k) in aligned.iter().enumerate() {
        let plan = &mut plans[k];
        let records = scans[k].tokens.len() as u64;
        let not_common = records - n_aligned;
        if not_common > 0 {
            plan.reasons
                .insert("not in every domain".into(), not_common);
        }
        let mut dropped = 0u64;
        for (i, &o) in positions[a].iter().enumerate() {
            if a_keep[i] {
                plan.order.push(o);
                match trims[a].get(i).copied().flatten() {
                    Some((cut, t)) => {
                        plan.cuts.insert(o, cut);
                        plan.tokens_after += t;
                        plan.trimmed_tokens += acounts[a][i] - t;
                    }
                    None => plan.tokens_after += acounts[a][i],
                }
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            let reason = match strategy {
                Strategy::Subset => "selected out by subset",
                _ => "over limit",
            };
            plan.reasons.insert(reason.into(), dropped);
        }
    }
    for (j, &k) in free.iter().enumerate() {
        let plan = &mut plans[k];
        let mut dropped = 0;
        for (o, (&keep, &t)) in f_keep[j].iter().zip(&scans[k].tokens).enumerate() {
            if keep {
                plan.order.push(o as u64);
                plan.tokens_after += t;
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            plan.reasons.insert("over limit".into(), dropped);
        }
    }

    // Pass 2: write.
    let dir = AtomicDir::new(out)?;
    let mut report_domains = BTreeMap::new();
    for (k, d) in cfg.domains.iter().enumerate() {
        let plan = &plans[k];
        let (train_which, valid) = splits(cfg, d);
        let spool = dir.path().join(format!(".spool-{}", d.name));
        write_selected(
            &d.train,
            train_which,
            &plan.order,
            &plan.cuts,
            &dir.path().join("train").join(format!("{}.jsonl", d.name)),
            &spool,
            cfg.chunk_size,
        )?;
        let vpath = dir
            .path()
            .join("validation")
            .join(format!("{}.jsonl", d.name));
        let mut vrecords = 0;
        match valid {
            Some((vspec, vwhich)) => {
                let vorder: Vec<u64> = match &plan.valid_order {
                    Some(o) => o.clone(),
                    None => (0..scans[k].valid_records).collect(),
                };
                vrecords = vorder.len() as u64;
                write_selected(
                    &vspec,
                    vwhich,
                    &vorder,
                    &HashMap::new(),
                    &vpath,
                    &spool,
                    cfg.chunk_size,
                )?;
            }
            None => fsutil::write_atomic(&vpath, b"")?,
        }
        let records_before = scans[k].tokens.len() as u64;
        report_domains.insert(
            d.name.clone(),
            DomainReport {
                tokens_before: scans[k].tokens.iter().sum(),
                records_before,
                tokens_after: plan.tokens_after,
                records_after: plan.order.len() as u64,
                records_dropped: records_before - plan.order.len() as u64,
                records_trimmed: plan.cuts.len() as u64,
                tokens_trimmed: plan.trimmed_tokens,
                validation_records: vrecords,
                skipped_invalid_utf8: scans[k].skipped,
                dropped_reasons: plan.reasons.clone(),
            },
        );
    }
    let kept: Vec<u64> = report_domains.values().map(|r| r.tokens_after).collect();
    let report = BalanceReport {
        strategy,
        max_diff_percent: p,
        limit,
        common_articles: cfg.common_articles,
        common_domains: aligned.iter().map(|&k| names[k].clone()).collect(),
        aligned_articles: n_aligned,
        spread_percent_reached: spread_percent(&kept),
        domains: report_domains,
        count_seconds,
        count_tokens_per_second: counted as f64 / count_seconds.max(1e-9),
        total_seconds: start.elapsed().as_secs_f64(),
    };
    fsutil::write_json_atomic(&dir.path().join("balance_report.json"), &report)?;
    dir.commit()?;
    Ok(report)
}

/// Truncate strategy over the aligned domains; fills `trims` and returns the new
/// aligned totals.
fn truncate_aligned(
    cfg: &BalanceConfig,
    tok: &Tokenizer,
    aligned: &[usize],
    positions: &[Vec<u64>],
    acounts: &[Vec<u64>],
    floor: Option<u64>,
    trims: &mut [Cuts],
) -> Result<Vec<u64>> {
    let p = cfg.max_diff_percent;
    let orig: Vec<u64> = acounts.iter().map(|c| c.iter().sum()).collect();
    let mut m = orig.iter().copied().min().unwrap_or(0);
    if let Some(f) = floor {
        m = m.min(f);
    }
    let upper = band_upper(m, p);
    let goal = m as f64 * (1.0 + p / 200.0);
    let mut totals = orig.clone();
    for (a, &k) in aligned.iter().enumerate() {
        trims[a] = vec![None; acounts[a].len()];
        if orig[a] as f64 <= upper {
            continue;
        }
        let mut r = (goal / orig[a] as f64).min(1.0);
        let mut best: Option<(u64, Cuts)> = None;
        for _ in 0..cfg.max_trim_passes {
            let t = trim_pass(cfg, &cfg.domains[k], tok, &positions[a], &acounts[a], r)?;
            let total: u64 = t
                .iter()
                .zip(&acounts[a])
                .map(|(x, &c)| x.map_or(c, |(_, n)| n))
                .sum();
            let in_band = total as f64 <= upper && total >= m;
            let better = match &best {
                None => true,
                Some((bt, _)) => {
                    let score = |x: u64| {
                        if x as f64 <= upper {
                            (upper - x as f64).abs()
                        } else {
                            f64::MAX / 2.0 + x as f64
                        }
                    };
                    score(total) < score(*bt)
                }
            };
            if better {
                best = Some((total, t));
            }
            if in_band {
                break;
            }
            r = (r * goal / total.max(1) as f64).clamp(1e-6, 1.0);
        }
        let (total, t) = best.unwrap_or((orig[a], vec![None; acounts[a].len()]));
        if total as f64 > upper {
            return Err(Error::BandUnreachable {
                domain: cfg.domains[k].name.clone(),
                reason: format!(
                    "trimming at paragraph/sentence boundaries reached {total} tokens, above \
                     the limit {upper:.0}; texts without boundaries cannot be trimmed — use \
                     strategy subset or a larger max_diff_percent"
                ),
            });
        }
        trims[a] = t;
        totals[a] = total;
    }
    Ok(totals)
}

/// Reads the records of a balanced output file (`DIR/train/<domain>.jsonl`).
pub fn read_output(path: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for line in corpus::JsonlLines::open(path, corpus::Utf8Policy::Error)? {
        let (line_no, line) = line?;
        out.push(serde_json::from_str(&line).map_err(|e| Error::JsonLine {
            path: path.to_path_buf(),
            line: line_no as usize,
            reason: "malformed JSON".into(),
            source: Some(e),
        })?);
    }
    Ok(out)
}
