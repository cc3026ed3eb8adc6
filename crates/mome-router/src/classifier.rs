//! Classifiers of the router behind one interface, in linfa's style: hyperparameters
//! are validated by [`linfa::ParamGuard`] ([`ClassifierParams`] ->
//! [`ValidClassifierParams`]) and fitted with [`linfa::traits::Fit`] on a dense
//! `DatasetBase<Array2<f64>, Array1<usize>>` (targets are class indices `0..k`).
//!
//! Fitted models are stored in a form that needs no linfa at inference and works
//! on sparse vectors:
//! * multinomial logistic regression (linfa-logistic): `softmax(W x + b)`;
//! * multinomial Naive Bayes (linfa-bayes): its joint log-likelihood is linear in
//!   `x`, extracted exactly as `W x + b`, probabilities are its softmax (the NB posterior);
//! * linear SVM (linfa-svm, one binary SVM per class, one-vs-rest): the margins
//!   `w_k x - rho_k`, probabilities are the softmax of the margins (not calibrated);
//! * decision tree (linfa-trees): the tree, leaf probabilities are the class
//!   frequencies of the training rows that reach the leaf (split: `x[f] <= t` goes left).

use linfa::prelude::*;
use linfa::ParamGuard;
use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RouterError};
use crate::features::SparseVec;

/// The classifier families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierKind {
    /// Multinomial logistic regression (the method's choice).
    Logreg,
    /// Multinomial Naive Bayes.
    Nb,
    /// Linear SVM, one-vs-rest.
    Svm,
    /// Decision tree.
    Tree,
}

impl ClassifierKind {
    /// Every kind, in table order.
    pub const ALL: [ClassifierKind; 4] = [Self::Logreg, Self::Nb, Self::Svm, Self::Tree];

    /// Short name (`logreg`, `nb`, `svm`, `tree`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Logreg => "logreg",
            Self::Nb => "nb",
            Self::Svm => "svm",
            Self::Tree => "tree",
        }
    }
}

impl std::str::FromStr for ClassifierKind {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                RouterError::Params(format!("unknown classifier {s:?} (logreg|nb|svm|tree)"))
            })
    }
}

/// Validated hyperparameters of one classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ValidClassifierParams {
    /// Logistic regression: minimises `sum(logloss) + alpha/2 |W|^2` (linfa-logistic,
    /// which also regularises the intercept) with `alpha = 1/C`, i.e. scikit-learn's
    /// `C * sum(logloss) + 1/2 |W|^2`.
    Logreg {
        /// Inverse regularisation strength (scikit-learn's `C`).
        c: f64,
        /// L-BFGS iterations.
        max_iter: u64,
        /// Gradient tolerance.
        tol: f64,
    },
    /// Multinomial Naive Bayes with additive smoothing `alpha`.
    Nb {
        /// Laplace/Lidstone smoothing.
        alpha: f64,
    },
    /// Linear SVM (one-vs-rest) with cost `c`.
    Svm {
        /// Cost of both classes.
        c: f64,
        /// SMO stopping tolerance.
        eps: f64,
        /// The SMO solver builds a dense n x n kernel matrix: training rows are
        /// subsampled (stratified, deterministic) to at most this many.
        max_train_rows: usize,
    },
    /// Decision tree (Gini).
    Tree {
        /// Maximum depth (None: unlimited).
        max_depth: Option<usize>,
        /// Minimum total sample weight of a leaf.
        min_weight_leaf: f32,
    },
}

impl ValidClassifierParams {
    /// The family.
    pub fn kind(&self) -> ClassifierKind {
        match self {
            Self::Logreg { .. } => ClassifierKind::Logreg,
            Self::Nb { .. } => ClassifierKind::Nb,
            Self::Svm { .. } => ClassifierKind::Svm,
            Self::Tree { .. } => ClassifierKind::Tree,
        }
    }
}

/// Unchecked hyperparameters; [`ParamGuard::check`] turns them into [`ValidClassifierParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierParams(pub ValidClassifierParams);

impl ClassifierParams {
    /// Default hyperparameters of a family (logreg: C = 1, 1000 iterations as the method).
    pub fn new(kind: ClassifierKind) -> Self {
        Self(match kind {
            ClassifierKind::Logreg => ValidClassifierParams::Logreg {
                c: 1.0,
                max_iter: 1000,
                tol: 1e-4,
            },
            ClassifierKind::Nb => ValidClassifierParams::Nb { alpha: 0.1 },
            ClassifierKind::Svm => ValidClassifierParams::Svm {
                c: 1.0,
                eps: 1e-3,
                max_train_rows: 400,
            },
            ClassifierKind::Tree => ValidClassifierParams::Tree {
                max_depth: Some(20),
                min_weight_leaf: 1.0,
            },
        })
    }
}

fn positive(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(RouterError::Params(format!(
            "{name} must be finite and > 0, got {v}"
        )))
    }
}

impl ParamGuard for ClassifierParams {
    type Checked = ValidClassifierParams;
    type Error = RouterError;

    fn check_ref(&self) -> Result<&ValidClassifierParams> {
        match &self.0 {
            ValidClassifierParams::Logreg { c, max_iter, tol } => {
                positive("C", *c)?;
                positive("tol", *tol)?;
                if *max_iter == 0 {
                    return Err(RouterError::Params("max_iter must be > 0".into()));
                }
            }
            ValidClassifierParams::Nb { alpha } => positive("alpha", *alpha)?,
            ValidClassifierParams::Svm {
                c,
                eps,
                max_train_rows,
            } => {
                positive("C", *c)?;
                positive("eps", *eps)?;
                if *max_train_rows < 2 {
                    return Err(RouterError::Params("max_train_rows must be >= 2".into()));
                }
            }
            ValidClassifierParams::Tree {
                max_depth,
                min_weight_leaf,
            } => {
                if *max_depth == Some(0) {
                    return Err(RouterError::Params("max_depth must be > 0".into()));
                }
                if !(min_weight_leaf.is_finite() && *min_weight_leaf >= 0.0) {
                    return Err(RouterError::Params("min_weight_leaf must be >= 0".into()));
                }
            }
        }
        Ok(&self.0)
    }

    fn check(self) -> Result<ValidClassifierParams> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// Largest magnitude of a coefficient or intercept of a linear model. No trained
/// model comes near it (logistic regression is regularised, Naive Bayes weights are
/// logs of smoothed frequencies, SVM margins are bounded by C); with it every
/// intermediate of a score stays far from f64's range: the features are
/// l2-normalised (`|x|_1 <= sqrt(nnz) <= 2^12`), so `|W x + b| <= 4097e100`, and
/// divided by the smallest temperature (`1e-3`) it is still below `1e107`.
pub const MAX_ABS_WEIGHT: f64 = 1e100;

/// Checks one coefficient / intercept (`field` names it for the error).
pub(crate) fn check_weight(v: f64, field: impl FnOnce() -> String) -> Result<()> {
    if v.is_finite() && v.abs() <= MAX_ABS_WEIGHT {
        Ok(())
    } else {
        Err(RouterError::Value {
            field: field(),
            value: v,
            expected: format!("a finite number within ±{MAX_ABS_WEIGHT:e}"),
        })
    }
}

/// A linear scorer `scores = W x + b` followed by a softmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LinearRepr", into = "LinearRepr")]
pub struct LinearModel {
    n_classes: usize,
    n_features: usize,
    /// Feature-major: `weights[j * n_classes + k]`.
    weights: Vec<f64>,
    bias: Vec<f64>,
}

/// Serialised form: `coef` is `n_classes x n_features` as scikit-learn's `coef_`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LinearRepr {
    coef: Vec<Vec<f64>>,
    intercept: Vec<f64>,
}

impl TryFrom<LinearRepr> for LinearModel {
    type Error = RouterError;
    /// Shapes only: the values are checked by [`Classifier::validate`], which names
    /// them by their place in the router file.
    fn try_from(r: LinearRepr) -> Result<Self> {
        LinearModel::from_coef_shape(&r.coef, &r.intercept)
    }
}

impl From<LinearModel> for LinearRepr {
    fn from(m: LinearModel) -> Self {
        LinearRepr {
            coef: m.coef(),
            intercept: m.bias.clone(),
        }
    }
}

impl LinearModel {
    /// From `coef` (`n_classes x n_features`) and `intercept` (`n_classes`): every
    /// value finite and within [`MAX_ABS_WEIGHT`].
    pub fn from_coef(coef: &[Vec<f64>], intercept: &[f64]) -> Result<Self> {
        let m = Self::from_coef_shape(coef, intercept)?;
        m.check_values("")?;
        Ok(m)
    }

    /// Checks every coefficient and intercept (finite, within [`MAX_ABS_WEIGHT`]);
    /// errors name them `{prefix}coef[class][feature]` / `{prefix}intercept[class]`.
    pub fn check_values(&self, prefix: &str) -> Result<()> {
        let k = self.n_classes;
        for c in 0..k {
            for j in 0..self.n_features {
                check_weight(self.weights[j * k + c], || {
                    format!("{prefix}coef[{c}][{j}]")
                })?;
            }
        }
        for (c, &b) in self.bias.iter().enumerate() {
            check_weight(b, || format!("{prefix}intercept[{c}]"))?;
        }
        Ok(())
    }

    fn from_coef_shape(coef: &[Vec<f64>], intercept: &[f64]) -> Result<Self> {
        let k = coef.len();
        if k < 2 || intercept.len() != k {
            return Err(RouterError::Invalid(format!(
                "linear model needs >= 2 classes and one intercept per class (coef has {} rows, intercept {} values)",
                k,
                intercept.len()
            )));
        }
        let f = coef[0].len();
        if let Some(i) = coef.iter().position(|r| r.len() != f) {
            return Err(RouterError::Invalid(format!(
                "coef[{i}] has {} columns, coef[0] has {f}",
                coef[i].len()
            )));
        }
        let mut weights = vec![0.0; f * k];
        for (c, row) in coef.iter().enumerate() {
            for (j, &w) in row.iter().enumerate() {
                weights[j * k + c] = w;
            }
        }
        Ok(Self {
            n_classes: k,
            n_features: f,
            weights,
            bias: intercept.to_vec(),
        })
    }

    /// `coef` as `n_classes x n_features`.
    pub fn coef(&self) -> Vec<Vec<f64>> {
        (0..self.n_classes)
            .map(|c| {
                (0..self.n_features)
                    .map(|j| self.weights[j * self.n_classes + c])
                    .collect()
            })
            .collect()
    }

    /// Intercepts.
    pub fn intercept(&self) -> &[f64] {
        &self.bias
    }

    fn scores(&self, x: &SparseVec, out: &mut [f64]) {
        out.copy_from_slice(&self.bias);
        let k = self.n_classes;
        for (&j, &v) in x.indices.iter().zip(&x.values) {
            let j = j as usize;
            if j < self.n_features {
                let w = &self.weights[j * k..(j + 1) * k];
                for (o, &wk) in out.iter_mut().zip(w) {
                    *o += v * wk;
                }
            }
        }
    }
}

/// A node of a [`TreeModel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeNode {
    /// `x[feature] <= threshold` goes to `left`, otherwise `right` (node indices).
    Split {
        /// Feature column.
        feature: usize,
        /// Threshold.
        threshold: f64,
        /// Left child index.
        left: usize,
        /// Right child index.
        right: usize,
    },
    /// Class probabilities of the leaf.
    Leaf {
        /// One per class, sums to 1.
        probabilities: Vec<f64>,
    },
}

/// A decision tree, nodes in an array (root = 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeModel {
    /// The nodes.
    pub nodes: Vec<TreeNode>,
}

impl TreeModel {
    /// Checks the tree (errors name `{prefix}nodes[i]...`): children after their
    /// parent (no cycle, traversal always ends), features in range, thresholds
    /// finite, one leaf probability per class, each in `[0, 1]`.
    fn validate(&self, n_classes: usize, n_features: usize, prefix: &str) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(RouterError::Invalid(format!("{prefix}nodes is empty")));
        }
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            match node {
                TreeNode::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    if *feature >= n_features {
                        return Err(RouterError::Invalid(format!(
                            "{prefix}nodes[{i}].split.feature = {feature} is not below n_features = {n_features}"
                        )));
                    }
                    if !threshold.is_finite() {
                        return Err(RouterError::Value {
                            field: format!("{prefix}nodes[{i}].split.threshold"),
                            value: *threshold,
                            expected: "a finite number".into(),
                        });
                    }
                    for (side, child) in [("left", left), ("right", right)] {
                        if *child <= i || *child >= n {
                            return Err(RouterError::Invalid(format!(
                                "{prefix}nodes[{i}].split.{side} = {child} is not a later node (in {}..{n})",
                                i + 1
                            )));
                        }
                    }
                }
                TreeNode::Leaf { probabilities } => {
                    if probabilities.len() != n_classes {
                        return Err(RouterError::Invalid(format!(
                            "{prefix}nodes[{i}].leaf.probabilities has {} values for {n_classes} classes",
                            probabilities.len()
                        )));
                    }
                    if let Some((c, &p)) = probabilities
                        .iter()
                        .enumerate()
                        .find(|(_, p)| !(0.0..=1.0).contains(*p))
                    {
                        return Err(RouterError::Value {
                            field: format!("{prefix}nodes[{i}].leaf.probabilities[{c}]"),
                            value: p,
                            expected: "a probability in [0, 1]".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn leaf_of(&self, value: impl Fn(usize) -> f64) -> usize {
        let mut i = 0;
        loop {
            match &self.nodes[i] {
                TreeNode::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if value(*feature) <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
                TreeNode::Leaf { .. } => return i,
            }
        }
    }
}

/// The fitted model of a classifier, ready for sparse inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelBody {
    /// softmax(W x + b).
    Linear(LinearModel),
    /// A tree.
    Tree(TreeModel),
}

/// A fitted classifier: hyperparameters (for the record) and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    /// Hyperparameters it was fitted with (or imported from).
    pub params: ValidClassifierParams,
    /// Number of classes.
    pub n_classes: usize,
    /// Number of feature columns.
    pub n_features: usize,
    /// The model.
    pub model: ModelBody,
}

/// Anything that gives class probabilities for a sparse feature vector.
pub trait ProbabilisticClassifier: Send + Sync {
    /// Number of classes.
    fn n_classes(&self) -> usize;
    /// Writes one probability per class into `out` (`out.len() == n_classes`).
    fn predict_proba_sparse(&self, x: &SparseVec, out: &mut [f64]);
}

/// `softmax(v)` in place, by log-sum-exp: the largest value is subtracted before
/// `exp`, so no finite input overflows, and the result is always a finite
/// distribution: NaN counts as `-inf` (impossible); if some values are `+inf` they
/// share the mass; if all are `-inf` (or `v` holds nothing else) it is uniform.
pub fn softmax_inplace(v: &mut [f64]) {
    if v.is_empty() {
        return;
    }
    for x in v.iter_mut() {
        if x.is_nan() {
            *x = f64::NEG_INFINITY;
        }
    }
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::INFINITY {
        let n = v.iter().filter(|x| **x == f64::INFINITY).count() as f64;
        v.iter_mut()
            .for_each(|x| *x = if *x == f64::INFINITY { 1.0 / n } else { 0.0 });
        return;
    }
    if m == f64::NEG_INFINITY {
        let u = 1.0 / v.len() as f64;
        v.iter_mut().for_each(|x| *x = u);
        return;
    }
    // Every term is in [0, 1] and the largest is 1: 1 <= s <= len.
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}

/// `softmax(v / t)` in place (log-sum-exp, see [`softmax_inplace`]): the
/// probabilities at temperature `t` of log-scores `v` (`t == 1`: no division).
pub fn softmax_with_temperature(v: &mut [f64], t: f64) {
    if t != 1.0 {
        let inv = 1.0 / t;
        v.iter_mut().for_each(|x| *x *= inv);
    }
    softmax_inplace(v);
}

impl ProbabilisticClassifier for Classifier {
    fn n_classes(&self) -> usize {
        self.n_classes
    }

    fn predict_proba_sparse(&self, x: &SparseVec, out: &mut [f64]) {
        self.log_scores_sparse(x, out);
        softmax_inplace(out);
    }
}

impl Classifier {
    /// Log-scores of one input, whose softmax is the class distribution: the logits
    /// `W x + b` of the linear models, `ln p` of the tree leaf (`-inf` for a class
    /// the leaf never saw; all 0, i.e. uniform, for an empty leaf). The
    /// probabilities at temperature `t` are `softmax(scores / t)`
    /// ([`softmax_with_temperature`]), computed without overflow.
    pub fn log_scores_sparse(&self, x: &SparseVec, out: &mut [f64]) {
        match &self.model {
            ModelBody::Linear(m) => m.scores(x, out),
            ModelBody::Tree(t) => {
                let leaf = t.leaf_of(|f| match x.indices.binary_search(&(f as u32)) {
                    Ok(p) => x.values[p],
                    Err(_) => 0.0,
                });
                out.iter_mut().for_each(|o| *o = 0.0);
                if let TreeNode::Leaf { probabilities } = &t.nodes[leaf] {
                    // Leaf values are in [0, 1] (validated): the sum is finite.
                    let s: f64 = probabilities.iter().sum();
                    if s > 0.0 {
                        for (o, p) in out.iter_mut().zip(probabilities) {
                            *o = (p / s).ln();
                        }
                    }
                }
            }
        }
    }

    /// Checks dimensions and values (used when loading a file): errors name the
    /// field as in the router file (`classifier.model.linear.coef[1][0]`, ...).
    pub fn validate(&self) -> Result<()> {
        if self.n_classes < 2 {
            return Err(RouterError::Invalid(format!(
                "classifier.n_classes = {}: a classifier needs >= 2 classes",
                self.n_classes
            )));
        }
        match &self.model {
            ModelBody::Linear(m) => {
                if m.n_classes != self.n_classes || m.n_features != self.n_features {
                    return Err(RouterError::Invalid(format!(
                        "classifier.model.linear.coef is {}x{} (classes x features), \
                         classifier.n_classes x n_features is {}x{}",
                        m.n_classes, m.n_features, self.n_classes, self.n_features
                    )));
                }
                m.check_values("classifier.model.linear.")?;
            }
            ModelBody::Tree(t) => {
                t.validate(self.n_classes, self.n_features, "classifier.model.tree.")?
            }
        }
        Ok(())
    }

    /// Probabilities of one dense row.
    pub fn predict_proba_dense(&self, row: ArrayView1<f64>) -> Vec<f64> {
        let mut sv = SparseVec::default();
        for (j, &v) in row.iter().enumerate() {
            if v != 0.0 {
                sv.indices.push(j as u32);
                sv.values.push(v);
            }
        }
        let mut out = vec![0.0; self.n_classes];
        self.predict_proba_sparse(&sv, &mut out);
        out
    }
}

/// Predicted class index per row (linfa's `Predict`).
impl PredictInplace<Array2<f64>, Array1<usize>> for Classifier {
    fn predict_inplace(&self, x: &Array2<f64>, y: &mut Array1<usize>) {
        for (row, t) in x.rows().into_iter().zip(y.iter_mut()) {
            *t = argmax(&self.predict_proba_dense(row));
        }
    }
    fn default_target(&self, x: &Array2<f64>) -> Array1<usize> {
        Array1::zeros(x.nrows())
    }
}

pub(crate) fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &p) in v.iter().enumerate() {
        if p > v[best] {
            best = i;
        }
    }
    best
}

fn n_classes_of(y: &Array1<usize>) -> Result<usize> {
    let k = y.iter().copied().max().map(|m| m + 1).unwrap_or(0);
    if k < 2 {
        return Err(RouterError::Train("need at least two classes".into()));
    }
    let mut seen = vec![false; k];
    y.iter().for_each(|&c| seen[c] = true);
    if let Some(c) = seen.iter().position(|s| !s) {
        return Err(RouterError::Train(format!(
            "class index {c} has no training row"
        )));
    }
    Ok(k)
}

impl Fit<Array2<f64>, Array1<usize>, RouterError> for ValidClassifierParams {
    type Object = Classifier;

    fn fit(&self, ds: &DatasetBase<Array2<f64>, Array1<usize>>) -> Result<Classifier> {
        let x = ds.records();
        let y = ds.targets();
        if x.nrows() != y.len() || x.nrows() == 0 || x.ncols() == 0 {
            return Err(RouterError::Train(format!(
                "bad training matrix {}x{} for {} targets",
                x.nrows(),
                x.ncols(),
                y.len()
            )));
        }
        let k = n_classes_of(y)?;
        let f = x.ncols();
        let model = match self {
            Self::Logreg { c, max_iter, tol } => fit_logreg(x, y, k, *c, *max_iter, *tol)?,
            Self::Nb { alpha } => fit_nb(x, y, k, *alpha)?,
            Self::Svm {
                c,
                eps,
                max_train_rows,
            } => fit_svm(x, y, k, *c, *eps, *max_train_rows)?,
            Self::Tree {
                max_depth,
                min_weight_leaf,
            } => fit_tree(x, y, k, *max_depth, *min_weight_leaf)?,
        };
        Ok(Classifier {
            params: self.clone(),
            n_classes: k,
            n_features: f,
            model,
        })
    }
}

fn fit_logreg(
    x: &Array2<f64>,
    y: &Array1<usize>,
    k: usize,
    c: f64,
    it: u64,
    tol: f64,
) -> Result<ModelBody> {
    let ds = DatasetBase::new(x.view(), y.view());
    let fitted = linfa_logistic::MultiLogisticRegression::default()
        .alpha(1.0 / c)
        .max_iterations(it)
        .gradient_tolerance(tol)
        .fit(&ds)
        .map_err(|e| RouterError::Train(format!("logistic regression: {e}")))?;
    let params = fitted.params(); // n_features x n_classes(sorted)
    let classes = fitted.classes();
    let mut coef = vec![vec![0.0; x.ncols()]; k];
    let mut intercept = vec![0.0; k];
    for (col, &cls) in classes.iter().enumerate() {
        for j in 0..x.ncols() {
            coef[cls][j] = params[[j, col]];
        }
        intercept[cls] = fitted.intercept()[col];
    }
    Ok(ModelBody::Linear(LinearModel::from_coef(
        &coef, &intercept,
    )?))
}

fn fit_nb(x: &Array2<f64>, y: &Array1<usize>, k: usize, alpha: f64) -> Result<ModelBody> {
    use linfa_bayes::NaiveBayes;
    let ds = DatasetBase::new(x.view(), y.view());
    let nb = linfa_bayes::MultinomialNb::params()
        .alpha(alpha)
        .fit(&ds)
        .map_err(|e| RouterError::Train(format!("naive bayes: {e}")))?;
    let f = x.ncols();
    // The joint log-likelihood is exactly linear in x: evaluate it at 0 and at the
    // unit vectors, a chunk of rows at a time.
    let jll_rows = |m: &Array2<f64>| -> Result<Array2<f64>> {
        let h = nb.joint_log_likelihood(m.view());
        let mut out = Array2::zeros((m.nrows(), k));
        for (cls, v) in h {
            if *cls >= k {
                return Err(RouterError::Train(
                    "naive bayes returned an unknown class".into(),
                ));
            }
            out.column_mut(*cls).assign(&v);
        }
        Ok(out)
    };
    let bias = jll_rows(&Array2::zeros((1, f)))?.row(0).to_vec();
    let mut coef = vec![vec![0.0; f]; k];
    let chunk = 512;
    for start in (0..f).step_by(chunk) {
        let n = chunk.min(f - start);
        let mut m = Array2::zeros((n, f));
        for r in 0..n {
            m[[r, start + r]] = 1.0;
        }
        let s = jll_rows(&m)?;
        for r in 0..n {
            for c in 0..k {
                coef[c][start + r] = s[[r, c]] - bias[c];
            }
        }
    }
    Ok(ModelBody::Linear(LinearModel::from_coef(&coef, &bias)?))
}

/// Stratified deterministic subsample of row indices (every `step`-th row per class).
fn subsample(y: &Array1<usize>, k: usize, max_rows: usize) -> Vec<usize> {
    if y.len() <= max_rows {
        return (0..y.len()).collect();
    }
    let per = (max_rows / k).max(1);
    let mut out = Vec::new();
    for c in 0..k {
        let rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        let step = rows.len().div_ceil(per).max(1);
        out.extend(rows.iter().step_by(step));
    }
    out.sort_unstable();
    out
}

fn fit_svm(
    x: &Array2<f64>,
    y: &Array1<usize>,
    k: usize,
    c: f64,
    eps: f64,
    max_rows: usize,
) -> Result<ModelBody> {
    let rows = subsample(y, k, max_rows);
    let xs = x.select(ndarray::Axis(0), &rows);
    let f = x.ncols();
    let mut coef = vec![vec![0.0; f]; k];
    let mut intercept = vec![0.0; k];
    for cls in 0..k {
        let yb: Array1<bool> = rows.iter().map(|&i| y[i] == cls).collect();
        let ds = DatasetBase::new(xs.clone(), yb);
        let svm = linfa_svm::Svm::<f64, bool>::params()
            .linear_kernel()
            .pos_neg_weights(c, c)
            .eps(eps)
            .fit(&ds)
            .map_err(|e| RouterError::Train(format!("svm class {cls}: {e}")))?;
        // Linear kernel: weighted_sum(x) = w.x, so w_j = weighted_sum(e_j).
        let mut e = Array1::<f64>::zeros(f);
        for j in 0..f {
            e[j] = 1.0;
            coef[cls][j] = svm.weighted_sum(&e);
            e[j] = 0.0;
        }
        intercept[cls] = -svm.rho;
    }
    Ok(ModelBody::Linear(LinearModel::from_coef(
        &coef, &intercept,
    )?))
}

fn fit_tree(
    x: &Array2<f64>,
    y: &Array1<usize>,
    k: usize,
    max_depth: Option<usize>,
    mwl: f32,
) -> Result<ModelBody> {
    let ds = DatasetBase::new(x.view(), y.view());
    let tree = linfa_trees::DecisionTree::params()
        .max_depth(max_depth)
        .min_weight_leaf(mwl)
        .fit(&ds)
        .map_err(|e| RouterError::Train(format!("decision tree: {e}")))?;
    let mut nodes = Vec::new();
    flatten(tree.root_node(), &mut nodes, k);
    let mut model = TreeModel { nodes };
    // Leaf probabilities = class frequencies of the training rows reaching the leaf.
    let mut counts = vec![vec![0.0f64; k]; model.nodes.len()];
    for (r, row) in x.rows().into_iter().enumerate() {
        let leaf = model.leaf_of(|f| row[f]);
        counts[leaf][y[r]] += 1.0;
    }
    for (node, cnt) in model.nodes.iter_mut().zip(counts) {
        if let TreeNode::Leaf { probabilities } = node {
            let s: f64 = cnt.iter().sum();
            if s > 0.0 {
                *probabilities = cnt.iter().map(|c| c / s).collect();
            }
        }
    }
    Ok(ModelBody::Tree(model))
}

fn flatten(node: &linfa_trees::TreeNode<f64, usize>, out: &mut Vec<TreeNode>, k: usize) -> usize {
    let me = out.len();
    let leaf = |out: &mut Vec<TreeNode>| {
        let mut p = vec![0.0; k];
        if let Some(c) = node.prediction() {
            if c < k {
                p[c] = 1.0;
            }
        }
        out.push(TreeNode::Leaf { probabilities: p });
    };
    let children = node.children();
    match (
        node.is_leaf(),
        children.first().and_then(|c| c.as_ref()),
        children.get(1).and_then(|c| c.as_ref()),
    ) {
        (false, Some(l), Some(r)) => {
            let (feature, threshold, _) = node.split();
            out.push(TreeNode::Leaf {
                probabilities: vec![],
            }); // placeholder, replaced below
            let left = flatten(l, out, k);
            let right = flatten(r, out, k);
            out[me] = TreeNode::Split {
                feature,
                threshold,
                left,
                right,
            };
        }
        _ => leaf(out),
    }
    me
}
