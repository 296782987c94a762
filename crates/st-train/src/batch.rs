//! From examples to batches: tokenized rows with a target per head, the heads the data
//! implies, padded batches of every text of some rows, and the sources batches are drawn from.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use st_backbone::{BertInput, Encoded, EncoderBackend, TokenBatch};
use st_heads::{HeadKind, HeadSpec};
use st_pooling::SentenceEncoder;

use crate::TrainError;
use crate::data::{Example, task_shapes};
use crate::kinds::{Target, TaskKind, TaskOptions, TaskRow};
use crate::multitask::Rng;

/// One tokenized example with a target per head.
#[derive(Debug, Clone)]
pub struct Row {
    /// The example's texts, tokenized: its text (as words, for token tasks), then its paired
    /// texts.
    pub texts: Vec<Encoded>,
    /// Per head: the target, or `None` when the example does not label that task.
    pub targets: Vec<Option<Target>>,
    /// Per token of the first text, the word it starts (token tasks' first sub-words).
    pub word_starts: Vec<Option<usize>>,
    pub n_words: usize,
}

fn data_err(ex: &Example, message: String) -> TrainError {
    TrainError::Data {
        path: (*ex.file).clone(),
        line: ex.line,
        message,
    }
}

/// Tokenizes examples and maps their labels to targets. A label that does not fit its task
/// (an unknown class, a score for a classification task) is an error naming file:line.
pub fn prepare<B: EncoderBackend>(
    encoder: &SentenceEncoder<B>,
    specs: &[HeadSpec],
    kinds: &[Box<dyn TaskKind<B>>],
    examples: &[Example],
) -> Result<Vec<Row>, TrainError> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let firsts = encoder.tokenize(&texts)?;
    let paired: Vec<&str> = examples
        .iter()
        .flat_map(|e| e.paired.iter().map(String::as_str))
        .collect();
    let mut paired = encoder.tokenize(&paired)?.into_iter();
    let mut rows = Vec::with_capacity(examples.len());
    for (ex, first) in examples.iter().zip(firsts) {
        let (first, word_starts) = match &ex.words {
            None => {
                let n = first.ids.len();
                (first, vec![None; n])
            }
            Some(words) => encoder
                .tokenize_words(words)
                .map_err(|e| data_err(ex, e.to_string()))?,
        };
        let mut row_texts = vec![first];
        row_texts.extend(paired.by_ref().take(ex.paired.len()));
        let targets = specs
            .iter()
            .zip(kinds)
            .map(|(spec, kind)| target(ex, spec, kind.as_ref(), &word_starts))
            .collect::<Result<_, _>>()?;
        rows.push(Row {
            texts: row_texts,
            targets,
            word_starts,
            n_words: ex.words.as_ref().map_or(0, Vec::len),
        });
    }
    Ok(rows)
}

fn target<B: EncoderBackend>(
    ex: &Example,
    spec: &HeadSpec,
    kind: &dyn TaskKind<B>,
    word_starts: &[Option<usize>],
) -> Result<Option<Target>, TrainError> {
    let Some(label) = ex.labels.get(&spec.name) else {
        return Ok(None);
    };
    let labelled_as = ex.kind_of(label);
    if labelled_as != spec.kind {
        return Err(data_err(
            ex,
            format!(
                "task `{}` is a {} task but this record labels it as a {} task",
                spec.name,
                spec.kind.name(),
                labelled_as.name()
            ),
        ));
    }
    kind.target(spec, label, word_starts)
        .map(Some)
        .map_err(|m| data_err(ex, m))
}

/// Head specs from the training data: one head per task, its kind from the labels (and the
/// config's `kind`, which must agree), its options checked against that kind.
pub fn head_specs(
    examples: &[Example],
    options: &BTreeMap<String, TaskOptions>,
    sentence_dim: usize,
) -> Result<Vec<HeadSpec>, TrainError> {
    let shapes = task_shapes(examples)?;
    if let Some(name) = options.keys().find(|n| !shapes.contains_key(*n)) {
        return Err(TrainError::Config(format!(
            "task `{name}` is configured but no training record has a label for it; tasks in the data: {}",
            shapes.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut specs = Vec::new();
    for (name, shape) in shapes {
        let o = options.get(&name).cloned().unwrap_or_default();
        if let Some(kind) = o.kind
            && kind != shape.kind
        {
            return Err(TrainError::Config(format!(
                "`tasks.{name}.kind` is {} but the training data labels it as a {} task",
                kind.name(),
                shape.kind.name()
            )));
        }
        o.check(&name, shape.kind, sentence_dim)
            .map_err(TrainError::Config)?;
        let mut spec = HeadSpec::new(name.clone(), shape.kind, shape.labels.into_iter().collect());
        spec.hidden = o.hidden;
        spec.input = o.input.unwrap_or_default();
        spec.dropout = match (o.dropout, shape.kind) {
            (Some(d), _) => d,
            // sentence-transformers' SoftmaxLoss has no dropout.
            (None, HeadKind::PairClassification) => 0.0,
            (None, _) => spec.dropout,
        };
        if shape.kind.classifies() && spec.labels.len() < 2 {
            return Err(TrainError::Config(format!(
                "task `{name}` has a single class (`{}`) in the training data: nothing to learn",
                spec.labels.join(", ")
            )));
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(TrainError::Config("the training data has no labels".into()));
    }
    Ok(specs)
}

/// Every text of some rows, padded into one encoder input.
pub struct Batch<'a, B: Backend> {
    pub input: BertInput<B>,
    rows: Vec<&'a Row>,
    /// Per row, the indices of its texts in the input.
    texts: Vec<Vec<usize>>,
}

impl<'a, B: Backend> Batch<'a, B> {
    /// The texts are laid out slot by slot (every row's first text, then every second text, …),
    /// so a pair batch is two runs of whole sentences.
    pub fn new(rows: Vec<&'a Row>, pad_id: u32, device: &B::Device) -> Self {
        let slots = rows.iter().map(|r| r.texts.len()).max().unwrap_or(0);
        let mut encoded: Vec<&Encoded> = Vec::new();
        let mut texts = vec![Vec::new(); rows.len()];
        for slot in 0..slots {
            for (i, row) in rows.iter().enumerate() {
                if let Some(text) = row.texts.get(slot) {
                    texts[i].push(encoded.len());
                    encoded.push(text);
                }
            }
        }
        let input = TokenBatch::pad(&encoded, pad_id).to_input::<B>(device);
        Self { input, rows, texts }
    }

    /// The rows that label head `head`, as its task sees them, with their positions in the batch.
    pub fn task_rows(&self, head: usize) -> (Vec<usize>, Vec<TaskRow<'_>>) {
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                let target = row.targets[head].as_ref()?;
                Some((
                    i,
                    TaskRow {
                        texts: &self.texts[i],
                        target,
                        word_starts: &row.word_starts,
                        n_words: row.n_words,
                    },
                ))
            })
            .unzip()
    }
}

/// A source of batches: examples from one dataset, reshuffled every pass.
pub(crate) struct Source {
    pub rows: Vec<Row>,
    order: Vec<usize>,
    pub cursor: usize,
    pub pass: u64,
}

impl Source {
    pub fn new(rows: Vec<Row>) -> Self {
        Self {
            rows,
            order: Vec::new(),
            cursor: 0,
            pass: 0,
        }
    }

    /// Puts the source back at `cursor` in pass `pass` (as `next_batch` left it): the pass's
    /// order is a function of (seed, stream, pass).
    pub fn restore(&mut self, cursor: usize, pass: u64, seed: u64, stream: u64) {
        self.cursor = cursor;
        self.pass = pass;
        if pass > 0 {
            self.order = (0..self.rows.len()).collect();
            Rng::for_step(seed, stream + 1000, pass - 1).shuffle(&mut self.order);
        }
    }

    /// The indices of the next `size` rows (fewer when the source is smaller).
    pub fn next_batch(&mut self, size: usize, seed: u64, stream: u64) -> Vec<usize> {
        let mut picked = Vec::with_capacity(size);
        while picked.len() < size.min(self.rows.len()) {
            if self.cursor == 0 {
                self.order = (0..self.rows.len()).collect();
                Rng::for_step(seed, stream + 1000, self.pass).shuffle(&mut self.order);
                self.pass += 1;
            }
            picked.push(self.order[self.cursor]);
            self.cursor = (self.cursor + 1) % self.rows.len();
        }
        picked
    }
}
