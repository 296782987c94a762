//! # st-heads
//!
//! Any number of **named** task heads on one shared [`SentenceEncoder`]:
//!
//! - [`HeadKind::Sentence`]: classification of the pooled sentence embedding, or of the first
//!   token's state ([`SentenceInput`]) (topic, intent, sentiment, …): dropout → linear, or
//!   dropout → linear → GELU → dropout → linear when [`HeadSpec::hidden`] is set;
//! - [`HeadKind::Token`]: classification of every token embedding (NER, slot filling). Word
//!   labels sit on each word's first sub-word; the other positions carry [`IGNORE`];
//! - [`HeadKind::PairClassification`]: one label per text pair from `(u, v, |u − v|)`, the two
//!   texts' embeddings (SBERT's softmax head: NLI, paraphrase);
//! - [`HeadKind::Similarity`] and [`HeadKind::Retrieval`]: objectives on the embedding itself
//!   (cosine of a pair; anchors ranked against candidates). They have no parameters: the task
//!   trains the encoder, and its spec records that the model was trained for it.
//!
//! [`MultiTaskModel::forward`] runs the encoder once and only the heads a batch asks for.
//! [`masked_cross_entropy`] is the loss both kinds use.
//!
//! ```
//! use burn_flex::Flex;
//! use st_heads::{HeadKind, HeadSpec, TaskHead};
//!
//! let spec = HeadSpec::new("sentiment", HeadKind::Sentence, vec!["negative".into(), "positive".into()]);
//! let head = TaskHead::<Flex>::new(spec, 384, &Default::default());
//! assert_eq!(head.spec.labels.len(), 2);
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, log_softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};
use burn_store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};
use st_backbone::{BertInput, EncoderBackend};
use st_pooling::SentenceEncoder;

/// Target value meaning "no label here": padding, non-first sub-words, records without a label.
pub const IGNORE: i64 = -100;

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("{}: {message}", path.display())]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What a head classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// One label per sentence, from the pooled embedding.
    #[serde(alias = "sentence_classification", alias = "classification")]
    Sentence,
    /// One label per word, from the token embeddings.
    #[serde(alias = "token_classification", alias = "ner")]
    Token,
    /// A similarity score per text pair: the cosine of their embeddings.
    #[serde(alias = "sts")]
    Similarity,
    /// One label per text pair, from `(u, v, |u − v|)`.
    #[serde(alias = "nli")]
    PairClassification,
    /// Anchors ranked against positives (and negatives) by the cosine of their embeddings.
    Retrieval,
}

impl HeadKind {
    /// Whether the task has labels and a classifier (the others train the embedding only).
    pub fn classifies(self) -> bool {
        matches!(
            self,
            HeadKind::Sentence | HeadKind::Token | HeadKind::PairClassification
        )
    }

    /// The name used in configs and `heads.json`.
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Sentence => "sentence",
            HeadKind::Token => "token",
            HeadKind::Similarity => "similarity",
            HeadKind::PairClassification => "pair_classification",
            HeadKind::Retrieval => "retrieval",
        }
    }
}

/// Everything needed to rebuild a head: saved beside its weights in `heads.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadSpec {
    /// The task name (`"topic"`, `"sentiment"`, `"slots"`): unique within a model.
    pub name: String,
    pub kind: HeadKind,
    /// Label names; a label's index is its class id.
    pub labels: Vec<String>,
    /// Width of an optional hidden layer (a small MLP head); `None` is a single linear layer.
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Sentence heads: what they read (the pooled embedding unless told otherwise).
    #[serde(default, skip_serializing_if = "SentenceInput::is_pooled")]
    pub input: SentenceInput,
}

/// What a sentence classification head reads from the encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentenceInput {
    /// The sentence embedding: the model's pooling and Dense modules (sentence-transformers'
    /// output, before any normalization).
    #[default]
    Pooled,
    /// The first token's final hidden state (`[CLS]` / `<s>`), as BERT's own classifiers read.
    Cls,
}

impl SentenceInput {
    fn is_pooled(&self) -> bool {
        *self == SentenceInput::Pooled
    }

    /// This input for every text of a batch.
    ///
    /// # Shapes
    /// - `tokens`: `[texts, seq, hidden]`, `pooled`: `[texts, dim]`
    /// - output: `[texts, dim]` (`Pooled`) or `[texts, hidden]` (`Cls`)
    pub fn select<B: Backend>(self, tokens: &Tensor<B, 3>, pooled: &Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            SentenceInput::Pooled => pooled.clone(),
            SentenceInput::Cls => tokens.clone().narrow(1, 0, 1).squeeze_dim(1),
        }
    }
}

fn default_dropout() -> f64 {
    0.1
}

impl HeadSpec {
    pub fn new(name: impl Into<String>, kind: HeadKind, labels: Vec<String>) -> Self {
        Self {
            name: name.into(),
            kind,
            labels,
            hidden: None,
            dropout: default_dropout(),
            input: SentenceInput::Pooled,
        }
    }

    /// The id of a label, if the head knows it.
    pub fn label_id(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }
}

/// dropout → [linear → GELU → dropout] → linear, over the last dimension of any tensor.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    pub dropout: Dropout,
    pub hidden: Option<Linear<B>>,
    pub out: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut x = self.dropout.forward(x);
        if let Some(hidden) = &self.hidden {
            x = self.dropout.forward(gelu(hidden.forward(x)));
        }
        self.out.forward(x)
    }
}

/// One named head.
#[derive(Module, Debug)]
pub struct TaskHead<B: Backend> {
    /// `None` for the kinds that do not classify ([`HeadKind::classifies`]).
    pub classifier: Option<Classifier<B>>,
    #[module(skip)]
    pub spec: HeadSpec,
}

impl<B: Backend> TaskHead<B> {
    /// A freshly initialized head reading `input_dim`-wide features.
    pub fn new(spec: HeadSpec, input_dim: usize, device: &B::Device) -> Self {
        let classes = spec.labels.len();
        let (hidden, out_in) = match spec.hidden {
            Some(h) => (Some(LinearConfig::new(input_dim, h).init(device)), h),
            None => (None, input_dim),
        };
        let classifier = spec.kind.classifies().then(|| Classifier {
            dropout: DropoutConfig::new(spec.dropout).init(),
            hidden,
            out: LinearConfig::new(out_in, classes).init(device),
        });
        Self { classifier, spec }
    }

    /// The classifier of a classifying head.
    ///
    /// # Panics
    /// On a head of a kind that does not classify: a caller bug, as the kind is known up front.
    pub fn classifier(&self) -> &Classifier<B> {
        self.classifier
            .as_ref()
            .unwrap_or_else(|| panic!("task `{}` has no classifier", self.spec.name))
    }
}

/// A head's logits for one batch.
#[derive(Debug, Clone)]
pub enum HeadOutput<B: Backend> {
    /// `[batch, classes]`.
    Sentence(Tensor<B, 2>),
    /// `[batch, seq, classes]`.
    Token(Tensor<B, 3>),
}

impl<B: Backend> HeadOutput<B> {
    /// Logits flattened to `[rows, classes]` (tokens become rows).
    pub fn flat_logits(&self) -> Tensor<B, 2> {
        match self {
            HeadOutput::Sentence(t) => t.clone(),
            HeadOutput::Token(t) => {
                let [b, s, c] = t.dims();
                t.clone().reshape([b * s, c])
            }
        }
    }
}

/// A shared sentence encoder with named task heads.
#[derive(Module, Debug)]
pub struct MultiTaskModel<B: Backend> {
    pub encoder: SentenceEncoder<B>,
    pub heads: Vec<TaskHead<B>>,
}

impl<B: EncoderBackend> MultiTaskModel<B> {
    /// Adds fresh heads to an encoder. Head names must be unique and each head needs two labels
    /// or more.
    pub fn new(
        encoder: SentenceEncoder<B>,
        specs: Vec<HeadSpec>,
        device: &B::Device,
    ) -> Result<Self, HeadError> {
        check_specs(&specs)?;
        let sentence_dim = encoder.pooling.output_dim();
        let sentence_dim = encoder
            .dense
            .last()
            .map(|d| d.out_features())
            .unwrap_or(sentence_dim);
        let token_dim = encoder.bert_config.hidden_size;
        let heads = specs
            .into_iter()
            .map(|spec| {
                let dim = match spec.kind {
                    HeadKind::Token => token_dim,
                    HeadKind::Sentence if spec.input == SentenceInput::Cls => token_dim,
                    // SBERT's softmax head reads the concatenation (u, v, |u − v|).
                    HeadKind::PairClassification => 3 * sentence_dim,
                    _ => sentence_dim,
                };
                TaskHead::new(spec, dim, device)
            })
            .collect();
        Ok(Self { encoder, heads })
    }

    /// Index of the head called `name`.
    pub fn head_index(&self, name: &str) -> Option<usize> {
        self.heads.iter().position(|h| h.spec.name == name)
    }

    /// The heads' specs, in order.
    pub fn specs(&self) -> Vec<HeadSpec> {
        self.heads.iter().map(|h| h.spec.clone()).collect()
    }

    /// Runs the encoder once and the single-text heads (sentence and token classification)
    /// whose flag in `wanted` is true (all when `wanted` is empty). Returns one entry per head,
    /// `None` for heads not run and for the pair kinds, which need two texts per row.
    pub fn forward(&self, input: BertInput<B>, wanted: &[bool]) -> Vec<Option<HeadOutput<B>>> {
        let (tokens, pooled) = self.encoder.features(input);
        self.heads
            .iter()
            .enumerate()
            .map(|(i, head)| {
                if !wanted.is_empty() && !wanted.get(i).copied().unwrap_or(false) {
                    return None;
                }
                match head.spec.kind {
                    HeadKind::Sentence => Some(HeadOutput::Sentence(
                        head.classifier()
                            .forward(head.spec.input.select(&tokens, &pooled)),
                    )),
                    HeadKind::Token => {
                        Some(HeadOutput::Token(head.classifier().forward(tokens.clone())))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Saves the heads: `heads.safetensors` (weights) and `heads.json` (specs), atomically.
    pub fn save_heads(&self, dir: &Path) -> Result<(), HeadError> {
        let fail = |path: &Path, message: String| HeadError::File {
            path: path.to_path_buf(),
            message,
        };
        let json_path = dir.join("heads.json");
        let text = serde_json::to_string_pretty(&self.specs()).expect("specs serialize");
        st_backbone::write_atomic(&json_path, text.as_bytes())
            .map_err(|e| fail(&json_path, e.to_string()))?;
        let weights = dir.join("heads.safetensors");
        let tmp = dir.join(".heads.safetensors.tmp");
        let mut store = SafetensorsStore::from_file(&tmp);
        self.heads
            .save_into(&mut store)
            .map_err(|e| fail(&weights, e.to_string()))?;
        std::fs::rename(&tmp, &weights).map_err(|e| fail(&weights, e.to_string()))
    }

    /// Loads heads saved by [`save_heads`](Self::save_heads) onto an encoder.
    pub fn load(
        encoder: SentenceEncoder<B>,
        dir: &Path,
        device: &B::Device,
    ) -> Result<Self, HeadError> {
        let json_path = dir.join("heads.json");
        let text = std::fs::read_to_string(&json_path).map_err(|e| HeadError::File {
            path: json_path.clone(),
            message: e.to_string(),
        })?;
        let specs: Vec<HeadSpec> = serde_json::from_str(&text).map_err(|e| HeadError::File {
            path: json_path.clone(),
            message: e.to_string(),
        })?;
        let mut model = Self::new(encoder, specs, device)?;
        let weights = dir.join("heads.safetensors");
        let mut store = SafetensorsStore::from_file(&weights)
            .allow_partial(true)
            .validate(false);
        let result = model
            .heads
            .load_from(&mut store)
            .map_err(|e| HeadError::File {
                path: weights.clone(),
                message: e.to_string(),
            })?;
        let problems = st_backbone::load_problems(&result, |_| false);
        if !problems.is_empty() {
            return Err(HeadError::File {
                path: weights,
                message: problems.join("; "),
            });
        }
        Ok(model)
    }
}

impl<B: EncoderBackend> MultiTaskModel<B> {
    /// Transfer learning: replaces each head that has a trained counterpart in `dir` (a folder
    /// saved by [`save_heads`](Self::save_heads)) with those trained weights. A counterpart has
    /// the same name, kind, labels (in order) and hidden width; dropout stays this model's.
    /// Returns the names of the heads taken over; a folder without `heads.json` gives none.
    pub fn reuse_heads(
        &mut self,
        dir: &Path,
        device: &B::Device,
    ) -> Result<Vec<String>, HeadError> {
        if !dir.join("heads.json").is_file() {
            return Ok(Vec::new());
        }
        let saved = Self::load(self.encoder.clone(), dir, device)?;
        let mut reused = Vec::new();
        for head in &mut self.heads {
            let twin = saved.heads.iter().find(|s| {
                s.spec.name == head.spec.name
                    && s.spec.kind == head.spec.kind
                    && s.spec.labels == head.spec.labels
                    && s.spec.hidden == head.spec.hidden
            });
            if let Some(twin) = twin
                && let (Some(mine), Some(trained)) = (&mut head.classifier, &twin.classifier)
            {
                let dropout = mine.dropout.clone();
                *mine = trained.clone();
                mine.dropout = dropout;
                reused.push(head.spec.name.clone());
            }
        }
        Ok(reused)
    }
}

fn check_specs(specs: &[HeadSpec]) -> Result<(), HeadError> {
    for (i, spec) in specs.iter().enumerate() {
        if spec.name.trim().is_empty() {
            return Err(HeadError::Invalid(format!("head {i} has an empty name")));
        }
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(HeadError::Invalid(format!(
                "two heads are named `{}`",
                spec.name
            )));
        }
        if !spec.kind.classifies() {
            if !spec.labels.is_empty() {
                return Err(HeadError::Invalid(format!(
                    "task `{}` is a {} task: it has no labels, found {}",
                    spec.name,
                    spec.kind.name(),
                    spec.labels.join(", ")
                )));
            }
        } else if spec.labels.len() < 2 {
            return Err(HeadError::Invalid(format!(
                "task `{}` has {} label(s) ({}); classification needs at least two",
                spec.name,
                spec.labels.len(),
                spec.labels.join(", ")
            )));
        }
        if !(0.0..1.0).contains(&spec.dropout) {
            return Err(HeadError::Invalid(format!(
                "task `{}`: dropout {} is not in [0, 1)",
                spec.name, spec.dropout
            )));
        }
    }
    Ok(())
}

/// Mean cross-entropy of `logits` (`[rows, classes]`) against `targets` (`[rows]`), skipping rows
/// whose target is [`IGNORE`]. Returns the loss (`[1]`) and the number of rows counted; with no
/// row counted the loss is 0 and carries no gradient.
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, usize) {
    let [rows, _] = logits.dims();
    let keep = targets.clone().not_equal_elem(IGNORE);
    let count = keep.clone().int().sum().into_scalar().elem::<i64>() as usize;
    if count == 0 {
        return (Tensor::zeros([1], &logits.device()), 0);
    }
    let safe = targets
        .mask_fill(keep.clone().bool_not(), 0)
        .reshape([rows, 1]);
    let picked = log_softmax(logits, 1).gather(1, safe).reshape([rows]);
    let nll = -(picked * keep.float()).sum() / count as f64;
    (nll, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    type B = Flex;

    #[test]
    fn cross_entropy_ignores_masked_rows() {
        let device = Default::default();
        let logits = Tensor::<B, 2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, 0.0, 3.0, 50.0, -50.0], [3, 2]),
            &device,
        );
        let targets =
            Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 1, IGNORE], [3]), &device);
        let (loss, n) = masked_cross_entropy(logits, targets);
        assert_eq!(n, 2);
        let want = ((1.0 + (-2f64).exp()).ln() + (1.0 + (-3f64).exp()).ln()) / 2.0;
        let got = loss.into_scalar() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn all_ignored_gives_zero() {
        let device = Default::default();
        let logits = Tensor::<B, 2>::ones([2, 3], &device);
        let targets = Tensor::<B, 1, Int>::full([2], IGNORE, &device);
        let (loss, n) = masked_cross_entropy(logits, targets);
        assert_eq!(n, 0);
        assert_eq!(loss.into_scalar(), 0.0);
    }

    #[test]
    fn specs_are_checked() {
        let one = HeadSpec::new("x", HeadKind::Sentence, vec!["a".into()]);
        let err = check_specs(&[one]).unwrap_err().to_string();
        assert!(err.contains("`x`") && err.contains("at least two"), "{err}");
        let a = HeadSpec::new("t", HeadKind::Sentence, vec!["a".into(), "b".into()]);
        let err = check_specs(&[a.clone(), a]).unwrap_err().to_string();
        assert!(err.contains("two heads are named `t`"), "{err}");
    }

    #[test]
    fn heads_json_kind_names() {
        let spec: HeadSpec = serde_json::from_str(
            r#"{"name":"ner","kind":"token_classification","labels":["O","B-PER"]}"#,
        )
        .unwrap();
        assert_eq!(spec.kind, HeadKind::Token);
        assert_eq!(spec.dropout, 0.1);
        assert_eq!(spec.input, SentenceInput::Pooled);
        assert_eq!(spec.label_id("B-PER"), Some(1));
        // The input is written only when it is not the default, and read back.
        let mut spec = HeadSpec::new("t", HeadKind::Sentence, vec!["a".into(), "b".into()]);
        assert!(!serde_json::to_string(&spec).unwrap().contains("input"));
        spec.input = SentenceInput::Cls;
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains(r#""input":"cls""#), "{text}");
        assert_eq!(serde_json::from_str::<HeadSpec>(&text).unwrap(), spec);
    }

    #[test]
    fn sentence_input_selects_the_pooled_rows_or_the_first_tokens() {
        let device = Default::default();
        let tokens = Tensor::<B, 3>::from_data(
            TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), [2, 3, 2]),
            &device,
        );
        let pooled = Tensor::<B, 2>::from_data(TensorData::new(vec![-1.0f32; 4], [2, 2]), &device);
        let values = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().unwrap();
        assert_eq!(
            values(SentenceInput::Cls.select(&tokens, &pooled)),
            [0.0, 1.0, 6.0, 7.0]
        );
        assert_eq!(
            values(SentenceInput::Pooled.select(&tokens, &pooled)),
            [-1.0; 4]
        );
    }
}
