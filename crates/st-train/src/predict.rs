//! Predictions of a trained multi-task model, through each head's [`TaskKind`]: a single text
//! gets its sentence and token tasks' answers, a pair its pair tasks' (a label for pair
//! classification, the cosine similarity for similarity and retrieval tasks).

use std::collections::BTreeMap;

use serde::Serialize;
use st_backbone::EncoderBackend;
use st_heads::{HeadKind, MultiTaskModel};

use crate::TrainError;
use crate::batch::Row;
use crate::evaluate::{kinds_of, outputs};
use crate::kinds::similarity::cosine;
use crate::kinds::token::tag_names;
use crate::kinds::{Output, Target};

/// One task's answer for one input.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TaskPrediction {
    /// Sentence or pair classification: the label and its probability.
    Sentence { label: String, probability: f64 },
    /// Token task: one tag per whitespace-separated word.
    Token {
        words: Vec<String>,
        tags: Vec<String>,
    },
    /// Similarity or retrieval task on a pair: the cosine of the two embeddings.
    Similarity { similarity: f64 },
}

/// What to predict on: a text, or a pair of texts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PredictInput<'a> {
    Text(&'a str),
    Pair(&'a str, &'a str),
}

/// Whether a task of `kind` answers on `input`.
fn answers(kind: HeadKind, input: &PredictInput) -> bool {
    matches!(input, PredictInput::Pair(..)) == !matches!(kind, HeadKind::Sentence | HeadKind::Token)
}

/// Runs every head that answers on each input (batched, in input order). Token tasks tag
/// whitespace-separated words, reading each word's first sub-word; words past
/// `max_seq_length` are tagged `O`.
pub fn predict<B: EncoderBackend>(
    model: &MultiTaskModel<B>,
    inputs: &[PredictInput],
    batch_size: usize,
) -> Result<Vec<BTreeMap<String, TaskPrediction>>, TrainError> {
    let specs = model.specs();
    let has_token_task = specs.iter().any(|s| s.kind == HeadKind::Token);
    let mut rows = Vec::with_capacity(inputs.len());
    let mut words = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (first, second) = match *input {
            PredictInput::Text(t) => (t, None),
            PredictInput::Pair(a, b) => (a, Some(b)),
        };
        let w: Vec<String> = first.split_whitespace().map(String::from).collect();
        let (encoded, word_starts) = if has_token_task && second.is_none() {
            model.encoder.tokenize_words(&w)?
        } else {
            let e = model.encoder.tokenize(&[first])?.remove(0);
            let n = e.ids.len();
            (e, vec![None; n])
        };
        let mut texts = vec![encoded];
        if let Some(b) = second {
            texts.extend(model.encoder.tokenize(&[b])?);
        }
        // No gold label: the target only marks which heads answer.
        let targets = specs
            .iter()
            .map(|s| answers(s.kind, input).then_some(Target::Unlabelled))
            .collect();
        rows.push(Row {
            texts,
            targets,
            word_starts,
            n_words: w.len(),
        });
        words.push(w);
    }
    let per_head = outputs(model, &kinds_of(model), &rows, batch_size);
    let mut out = vec![BTreeMap::new(); inputs.len()];
    for (spec, outs) in specs.iter().zip(per_head) {
        for (i, output) in outs {
            let prediction = match output {
                Output::Class { class, probability } => TaskPrediction::Sentence {
                    label: spec.labels[class].clone(),
                    probability,
                },
                Output::Tags(ids) => TaskPrediction::Token {
                    words: words[i].clone(),
                    tags: tag_names(spec, &ids),
                },
                Output::Embeddings(e) => TaskPrediction::Similarity {
                    similarity: cosine(&e[0], &e[1], usize::MAX),
                },
            };
            out[i].insert(spec.name.clone(), prediction);
        }
    }
    Ok(out)
}
