//! Held-out evaluation: texts of other sources than the training data (other books,
//! other stdlib files), scored in two regimes, short passages (8-64 words / 3-20 code
//! lines) and 1024-token passages. The texts are tokenised for each router anew, with
//! its own text normalisation.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::calibrate::{ood_report, OodReport};
use crate::data::{
    jsonl_files, read_texts, short_text_passages, token_passages, tokenize, TextDoc, TokenDoc,
};
use crate::error::{Result, RouterError};
use crate::metrics::{evaluate_router, EvalReport};
use crate::ood::LONG_PASSAGE;
use crate::router::{Router, TextNormalization};

/// Held-out texts of other sources: short passages and whole documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Heldout {
    /// Short passages (8-64 words, or 3-20 lines of the code labels).
    pub short: Vec<TextDoc>,
    /// Whole documents (cut into 1024-token passages once tokenised).
    pub long: Vec<TextDoc>,
}

impl Heldout {
    /// Short passages cut from `texts` (seeded), which also serve whole.
    pub fn from_texts(texts: Vec<TextDoc>, code_labels: &[&str], seed: u64) -> Self {
        let short = short_text_passages(&texts, code_labels, seed);
        Self { short, long: texts }
    }

    /// Every `*.jsonl` file of `dir` (label = file stem unless the record has one).
    pub fn load(dir: &Path, code_labels: &[&str], seed: u64) -> Result<Self> {
        Ok(Self::from_texts(
            read_texts(&jsonl_files(dir)?)?,
            code_labels,
            seed,
        ))
    }

    /// The two regimes as token passages: short passages whole, documents cut into
    /// full 1024-token passages.
    pub fn tokenized(
        &self,
        tok: &Tokenizer,
        norm: TextNormalization,
    ) -> Result<(Vec<TokenDoc>, Vec<TokenDoc>)> {
        let short = tokenize(tok, norm, &self.short)?;
        let long = token_passages(
            &tokenize(tok, norm, &self.long)?,
            LONG_PASSAGE,
            LONG_PASSAGE,
        );
        Ok((short, long))
    }

    /// Scores of `router` on (short, long) passages.
    pub fn evaluate(&self, router: &Router, tok: &Tokenizer) -> Result<(EvalReport, EvalReport)> {
        let (s, l) = self.tokenized(tok, router.text_normalization())?;
        Ok((evaluate_router(router, &s), evaluate_router(router, &l)))
    }

    /// Confidence of `router` on (short, long) passages, as [`OodReport`]s: the
    /// in-domain passages routed not confident are the cost of rejecting.
    pub fn confidence(&self, router: &Router, tok: &Tokenizer) -> Result<(OodReport, OodReport)> {
        let (s, l) = self.tokenized(tok, router.text_normalization())?;
        Ok((ood_report(router, &s), ood_report(router, &l)))
    }
}

/// Share of the errors of `e` that are a false `label` (e.g. the paper's router
/// calling short prose "py"); `None` without errors.
pub fn false_prediction_share(e: &EvalReport, label: &str) -> Option<f64> {
    let mut errors = 0usize;
    let mut false_label = 0usize;
    for (t, row) in &e.confusion {
        for (p, &n) in row {
            if t != p {
                errors += n;
                if p == label {
                    false_label += n;
                }
            }
        }
    }
    (errors > 0).then(|| false_label as f64 / errors as f64)
}

/// Token documents under another text normalisation: re-tokenised from the texts
/// when there are texts (same order as `docs`), otherwise decoded and re-encoded.
pub fn renormalised(
    docs: &[TokenDoc],
    texts: Option<&[TextDoc]>,
    tok: &Tokenizer,
    norm: TextNormalization,
) -> Result<Vec<TokenDoc>> {
    if let Some(t) = texts {
        return tokenize(tok, norm, t);
    }
    let decoded: Vec<TextDoc> = docs
        .iter()
        .map(|d| {
            Ok(TextDoc {
                text: tok
                    .decode(&d.ids, true)
                    .map_err(|e| RouterError::Tokenizer(format!("decoding: {e}")))?,
                label: d.label.clone(),
            })
        })
        .collect::<Result<_>>()?;
    tokenize(tok, norm, &decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn report(confusion: &[(&str, &str, usize)]) -> EvalReport {
        let mut c: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for &(t, p, n) in confusion {
            c.entry(t.into()).or_default().insert(p.into(), n);
        }
        let mut pairs = Vec::new();
        for &(t, p, n) in confusion {
            pairs.extend(std::iter::repeat_n((t.to_string(), p.to_string()), n));
        }
        let r = crate::metrics::evaluate(&pairs, &[], 1.0);
        assert_eq!(r.confusion, c);
        r
    }

    #[test]
    fn false_prediction_share_counts_errors_only() {
        let r = report(&[
            ("en", "en", 10),
            ("en", "py", 3),
            ("fr", "de", 1),
            ("py", "en", 4),
        ]);
        // 8 errors, 3 of them a false "py" (the 0 correct "py" are not errors).
        approx::assert_abs_diff_eq!(
            false_prediction_share(&r, "py").unwrap(),
            3.0 / 8.0,
            epsilon = 1e-15
        );
        approx::assert_abs_diff_eq!(
            false_prediction_share(&r, "en").unwrap(),
            0.5,
            epsilon = 1e-15
        );
        assert_eq!(false_prediction_share(&r, "xx"), Some(0.0));
        let perfect = report(&[("en", "en", 5), ("py", "py", 5)]);
        assert_eq!(false_prediction_share(&perfect, "py"), None);
    }

    #[test]
    fn heldout_short_passages_and_labels() {
        let prose = (0..100)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let code = (0..30)
            .map(|i| format!("x = {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let texts = vec![
            TextDoc {
                text: prose,
                label: "en".into(),
            },
            TextDoc {
                text: code,
                label: "py".into(),
            },
        ];
        let h = Heldout::from_texts(texts.clone(), &["py"], 7);
        assert_eq!(h.long, texts);
        let words = |l: &str| {
            h.short
                .iter()
                .filter(|t| t.label == l)
                .map(|t| t.text.split_whitespace().count())
                .collect::<Vec<_>>()
        };
        assert!(words("en").iter().all(|&n| (8..=64).contains(&n)));
        // Consecutive runs: at most the last 7 words are left over.
        let n_words: usize = words("en").iter().sum();
        assert!((93..=100).contains(&n_words), "{n_words}");
        let lines: Vec<usize> = h
            .short
            .iter()
            .filter(|t| t.label == "py")
            .map(|t| t.text.lines().count())
            .collect();
        assert!(lines.iter().all(|&n| (3..=20).contains(&n)), "{lines:?}");
        assert_eq!(h, Heldout::from_texts(texts, &["py"], 7), "seeded");
    }
}
