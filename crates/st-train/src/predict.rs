//! Predictions of a trained multi-task model.

use std::collections::BTreeMap;

use burn::tensor::activation::softmax;
use serde::Serialize;
use st_backbone::{Encoded, EncoderBackend, TokenBatch};
use st_heads::{HeadKind, HeadOutput, MultiTaskModel};

use crate::TrainError;

/// One task's answer for one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TaskPrediction {
    /// Sentence task: the label and its probability.
    Sentence { label: String, probability: f64 },
    /// Token task: one tag per whitespace-separated word.
    Token {
        words: Vec<String>,
        tags: Vec<String>,
    },
}

/// Runs every head on `texts` (batched, in input order). Token tasks tag whitespace-separated
/// words, reading each word's first sub-word; words past `max_seq_length` are tagged `O`.
pub fn predict<B: EncoderBackend>(
    model: &MultiTaskModel<B>,
    texts: &[&str],
    batch_size: usize,
) -> Result<Vec<BTreeMap<String, TaskPrediction>>, TrainError> {
    let device = burn::module::Module::devices(&model.encoder.bert)
        .into_iter()
        .next()
        .unwrap_or_default();
    let specs = model.specs();
    let has_token_task = specs.iter().any(|s| s.kind == HeadKind::Token);
    let mut rows: Vec<(Encoded, Vec<Option<usize>>, Vec<String>)> = Vec::with_capacity(texts.len());
    for text in texts {
        let words: Vec<String> = text.split_whitespace().map(String::from).collect();
        if has_token_task {
            let (encoded, starts) = model.encoder.tokenize_words(&words)?;
            rows.push((encoded, starts, words));
        } else {
            let encoded = model.encoder.tokenize(&[text])?.remove(0);
            let n = encoded.ids.len();
            rows.push((encoded, vec![None; n], words));
        }
    }
    let mut out = vec![BTreeMap::new(); texts.len()];
    let idx: Vec<usize> = (0..texts.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let encoded: Vec<&Encoded> = chunk.iter().map(|&i| &rows[i].0).collect();
        let batch = TokenBatch::pad(&encoded, model.encoder.tokenizer.pad_id());
        let outputs = model.forward(batch.to_input::<B>(&device), &[]);
        for (h, output) in outputs.into_iter().enumerate() {
            let Some(output) = output else { continue };
            let seq = match &output {
                HeadOutput::Token(t) => t.dims()[1],
                HeadOutput::Sentence(_) => 1,
            };
            let probs = softmax(output.flat_logits(), 1);
            let classes = specs[h].labels.len();
            let values: Vec<f32> = probs
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            let argmax = |row: usize| -> (usize, f32) {
                let p = &values[row * classes..(row + 1) * classes];
                p.iter().enumerate().fold(
                    (0, f32::MIN),
                    |best, (i, &v)| if v > best.1 { (i, v) } else { best },
                )
            };
            for (k, &i) in chunk.iter().enumerate() {
                let prediction = match specs[h].kind {
                    HeadKind::Sentence => {
                        let (c, p) = argmax(k);
                        TaskPrediction::Sentence {
                            label: specs[h].labels[c].clone(),
                            probability: p as f64,
                        }
                    }
                    HeadKind::Token => {
                        let (_, starts, words) = &rows[i];
                        let mut tags = vec!["O".to_string(); words.len()];
                        for (pos, w) in starts.iter().enumerate() {
                            if let Some(w) = w {
                                tags[*w] = specs[h].labels[argmax(k * seq + pos).0].clone();
                            }
                        }
                        TaskPrediction::Token {
                            words: words.clone(),
                            tags,
                        }
                    }
                };
                out[i].insert(specs[h].name.clone(), prediction);
            }
        }
    }
    Ok(out)
}
