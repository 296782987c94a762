//! Task kinds: what a task's targets are, its loss, its outputs and its metrics. The trainer,
//! evaluation and `st predict` go through [`TaskKind`] only; a new kind of task is one `impl`
//! in a file of this folder plus its line in [`task_kind`].
//!
//! Every batch runs the shared encoder once over all its texts (a pair's two texts, a retrieval
//! record's anchor, positive and negative are rows of the same [`Features`]); each kind reads
//! the rows it labels through [`TaskRow::texts`].

mod pair;
mod retrieval;
mod sentence;
pub(crate) mod similarity;
pub(crate) mod token;

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use st_heads::{HeadKind, HeadSpec, SentenceInput, TaskHead};

pub use pair::PairClassification;
pub use retrieval::Retrieval;
pub use sentence::SentenceClassification;
pub use similarity::{Similarity, SimilarityLoss};
pub use token::TokenClassification;

use crate::data::Label;

/// The encoder's output for every text of a batch.
///
/// # Shapes
/// - `tokens`: `[texts, seq, hidden]`
/// - `pooled`: `[texts, dim]` (pooling and Dense modules, before any normalization)
pub struct Features<B: Backend> {
    pub tokens: Tensor<B, 3>,
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> Features<B> {
    /// The pooled embeddings of the texts in slot `slot` (0: first text, 1: second, …) of `rows`.
    pub fn pooled_at(&self, rows: &[TaskRow], slot: usize) -> Tensor<B, 2> {
        rows_at(self.pooled.clone(), rows, slot)
    }

    /// What sentence head `head` reads ([`SentenceInput`]) for the first text of `rows`.
    pub fn sentence_at(&self, head: &TaskHead<B>, rows: &[TaskRow]) -> Tensor<B, 2> {
        rows_at(head.spec.input.select(&self.tokens, &self.pooled), rows, 0)
    }
}

/// The rows of `per_text` (`[texts, d]`) for the texts in slot `slot` of `rows`.
fn rows_at<B: Backend>(per_text: Tensor<B, 2>, rows: &[TaskRow], slot: usize) -> Tensor<B, 2> {
    let idx: Vec<usize> = rows.iter().map(|r| r.texts[slot]).collect();
    let device = per_text.device();
    per_text.select(0, indices(&idx, &device))
}

/// A task's target on one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A class id (sentence or pair classification).
    Class(i64),
    /// Per token of the first text: the tag id of the word it starts, else [`st_heads::IGNORE`].
    Tokens(Vec<i64>),
    /// A similarity score.
    Score(f64),
    /// The row's second text is its first text's match (retrieval).
    Ranked,
    /// No gold label: the row is only predicted on (`st predict`).
    Unlabelled,
}

/// One labelled row of a batch, as a task sees it.
#[derive(Debug, Clone, Copy)]
pub struct TaskRow<'a> {
    /// The row's texts as indices into [`Features`]: the text, then its paired texts.
    pub texts: &'a [usize],
    pub target: &'a Target,
    /// Per token of the first text, the word it starts (token tasks).
    pub word_starts: &'a [Option<usize>],
    pub n_words: usize,
}

/// A task's answer on one row, for evaluation and `st predict`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Output {
    /// Class id and its probability.
    Class { class: usize, probability: f64 },
    /// One tag id per word of the first text.
    Tags(Vec<usize>),
    /// The embeddings of the row's texts (first text first): similarity and retrieval compare
    /// them, at full width or truncated.
    Embeddings(Vec<Vec<f32>>),
}

/// What a kind of task does with the rows it labels.
pub trait TaskKind<B: Backend> {
    /// The training target of `label`; an error message when the label does not fit the kind.
    /// Default: a class id (the classification kinds).
    fn target(
        &self,
        spec: &HeadSpec,
        label: &Label,
        _word_starts: &[Option<usize>],
    ) -> Result<Target, String> {
        class_target(spec, label)
    }

    /// The mean loss over `rows` (never empty), `[1]`.
    fn loss(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Tensor<B, 1>;

    /// One output per row.
    fn outputs(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Vec<Output>;

    /// The task's metrics over every evaluated row: its output and gold label. Fractions (0–1)
    /// for accuracy, F1, correlations and ranking metrics; `n` counts the rows.
    /// Default: accuracy and macro-F1 (the classification kinds).
    fn metrics(&self, spec: &HeadSpec, rows: &[(Output, &Label)]) -> BTreeMap<String, f64> {
        class_metrics(spec, rows)
    }
}

/// One task's options (`[tasks.NAME]` in the config). Each kind reads its own; setting an
/// option a task's kind does not read is an error naming it ([`TaskOptions::check`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOptions {
    /// The task's kind; inferred from the data when absent (then the data must agree).
    #[serde(default)]
    pub kind: Option<HeadKind>,
    /// Classifiers: width of a hidden layer (an MLP head); none by default.
    #[serde(default)]
    pub hidden: Option<usize>,
    /// Sentence classification: what the head reads, `pooled` (the sentence embedding, default)
    /// or `cls` (the first token's final state).
    #[serde(default)]
    pub input: Option<SentenceInput>,
    /// Classifiers: dropout before the head's layers (default 0.1; 0 for pair classification,
    /// as sentence-transformers' `SoftmaxLoss`).
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Similarity: `cosent` (default) or `cosine_mse`.
    #[serde(default)]
    pub loss: Option<SimilarityLoss>,
    /// Similarity (CoSENT) and retrieval: the cosines' scale (sentence-transformers: 20).
    #[serde(default)]
    pub scale: Option<f64>,
    /// Retrieval: add the positives-to-anchors direction (sentence-transformers'
    /// `MultipleNegativesSymmetricRankingLoss`).
    #[serde(default)]
    pub symmetric: bool,
    /// Similarity and retrieval, Matryoshka: the loss summed over these embedding prefixes
    /// (`[384, 256, 128, 64]`), so truncated embeddings stay good.
    #[serde(default)]
    pub matryoshka: Option<Vec<usize>>,
}

impl TaskOptions {
    /// Checks the options against the task's kind and embedding width; the error names the key.
    pub fn check(&self, task: &str, kind: HeadKind, dim: usize) -> Result<(), String> {
        let embedding = matches!(kind, HeadKind::Similarity | HeadKind::Retrieval);
        let set = [
            ("hidden", self.hidden.is_some(), kind.classifies()),
            ("dropout", self.dropout.is_some(), kind.classifies()),
            ("input", self.input.is_some(), kind == HeadKind::Sentence),
            ("loss", self.loss.is_some(), kind == HeadKind::Similarity),
            ("scale", self.scale.is_some(), embedding),
            ("symmetric", self.symmetric, kind == HeadKind::Retrieval),
            ("matryoshka", self.matryoshka.is_some(), embedding),
        ];
        if let Some((key, ..)) = set.iter().find(|(_, given, applies)| *given && !applies) {
            return Err(format!(
                "`tasks.{task}.{key}` does not apply to a {} task",
                kind.name()
            ));
        }
        if let Some(scale) = self.scale
            && !(scale.is_finite() && scale > 0.0)
        {
            return Err(format!("`tasks.{task}.scale` is {scale}: it must be > 0"));
        }
        if let Some(dims) = &self.matryoshka
            && (dims.is_empty() || dims.iter().any(|&d| d == 0 || d > dim))
        {
            return Err(format!(
                "`tasks.{task}.matryoshka` is {dims:?}: each size must be in 1..={dim}, the \
                 embedding's width"
            ));
        }
        Ok(())
    }
}

/// sentence-transformers' default scale for CoSENT and multiple-negatives ranking.
pub const DEFAULT_SCALE: f64 = 20.0;

/// The implementation of `spec`'s kind.
pub fn task_kind<B: Backend>(spec: &HeadSpec, options: &TaskOptions) -> Box<dyn TaskKind<B>> {
    let scale = options.scale.unwrap_or(DEFAULT_SCALE);
    let dims = options.matryoshka.clone().unwrap_or_default();
    match spec.kind {
        HeadKind::Sentence => Box::new(SentenceClassification),
        HeadKind::Token => Box::new(TokenClassification),
        HeadKind::PairClassification => Box::new(PairClassification),
        HeadKind::Similarity => Box::new(Similarity {
            loss: options.loss.unwrap_or_default(),
            scale,
            matryoshka: dims,
        }),
        HeadKind::Retrieval => Box::new(Retrieval {
            scale,
            symmetric: options.symmetric,
            matryoshka: dims,
        }),
    }
}

/// `values` as an index tensor.
pub(crate) fn indices<B: Backend>(values: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = values.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [values.len()]), device)
}

/// Rows scaled to unit length (sentence-transformers' `F.normalize`, eps 1e-12).
///
/// # Shapes
/// `[n, d]` → `[n, d]`
pub(crate) fn unit_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// The first `dim` dimensions of the embeddings (all of them for `None`).
pub(crate) fn prefix<B: Backend>(x: Tensor<B, 2>, dim: Option<usize>) -> Tensor<B, 2> {
    match dim {
        Some(d) if d < x.dims()[1] => x.narrow(1, 0, d),
        _ => x,
    }
}

/// The prefixes an embedding loss is summed over: the full embedding, or each Matryoshka size.
pub(crate) fn loss_dims(matryoshka: &[usize]) -> Vec<Option<usize>> {
    if matryoshka.is_empty() {
        vec![None]
    } else {
        matryoshka.iter().map(|&d| Some(d)).collect()
    }
}

/// Per-row class ids and their softmax probabilities from `[rows, classes]` logits.
pub(crate) fn classes<B: Backend>(logits: Tensor<B, 2>) -> Vec<Output> {
    let probs = burn::tensor::activation::softmax(logits, 1);
    let [rows, n] = probs.dims();
    let p: Vec<f32> = probs
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    (0..rows)
        .map(|r| {
            let row = &p[r * n..(r + 1) * n];
            let (class, &best) = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap_or((0, &0.0));
            Output::Class {
                class,
                probability: best as f64,
            }
        })
        .collect()
}

/// Accuracy and macro-F1 of class outputs against gold class labels.
pub(crate) fn class_metrics(spec: &HeadSpec, rows: &[(Output, &Label)]) -> BTreeMap<String, f64> {
    let (mut predicted, mut gold) = (Vec::new(), Vec::new());
    for (out, label) in rows {
        if let (Output::Class { class, .. }, Label::Class(g)) = (out, label)
            && let Some(g) = spec.label_id(g)
        {
            predicted.push(*class);
            gold.push(g);
        }
    }
    BTreeMap::from([
        (
            "accuracy".into(),
            crate::metrics::accuracy(&predicted, &gold),
        ),
        (
            "macro_f1".into(),
            crate::metrics::macro_f1(&predicted, &gold),
        ),
        ("n".into(), gold.len() as f64),
    ])
}

/// The class id of a class label, or the message saying it is unknown.
pub(crate) fn class_target(spec: &HeadSpec, label: &Label) -> Result<Target, String> {
    match label {
        Label::Class(c) => spec
            .label_id(c)
            .map(|i| Target::Class(i as i64))
            .ok_or_else(|| unknown(spec, c)),
        other => Err(wrong_label(spec, other)),
    }
}

pub(crate) fn unknown(spec: &HeadSpec, label: &str) -> String {
    format!(
        "task `{}`: label `{label}` never appears in the training data",
        spec.name
    )
}

pub(crate) fn wrong_label(spec: &HeadSpec, label: &Label) -> String {
    let what = match label {
        Label::Class(_) => "a class",
        Label::Tags(_) => "word tags",
        Label::Score(_) => "a score",
        Label::Ranked => "a retrieval record",
    };
    format!(
        "task `{}` is a {} task but this record gives it {what}",
        spec.name,
        spec.kind.name()
    )
}
