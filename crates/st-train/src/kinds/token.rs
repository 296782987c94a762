//! Token classification: one label per word, read at the word's first sub-word token.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use st_heads::{HeadSpec, IGNORE, TaskHead, masked_cross_entropy};

use super::{Features, Output, Target, TaskKind, TaskRow, indices, unknown, wrong_label};
use crate::data::Label;
use crate::metrics::entity_f1;

/// Cross-entropy per first sub-word; entity-level precision, recall and F1 (seqeval).
pub struct TokenClassification;

/// `[rows, seq, classes]` logits of the rows' first texts.
fn logits<B: Backend>(
    head: &TaskHead<B>,
    features: &Features<B>,
    rows: &[TaskRow],
) -> Tensor<B, 3> {
    let idx: Vec<usize> = rows.iter().map(|r| r.texts[0]).collect();
    let tokens = features
        .tokens
        .clone()
        .select(0, indices(&idx, &features.tokens.device()));
    head.classifier().forward(tokens)
}

impl<B: Backend> TaskKind<B> for TokenClassification {
    fn target(
        &self,
        spec: &HeadSpec,
        label: &Label,
        word_starts: &[Option<usize>],
    ) -> Result<Target, String> {
        let Label::Tags(tags) = label else {
            return Err(wrong_label(spec, label));
        };
        word_starts
            .iter()
            .map(|w| match w {
                Some(w) => spec
                    .label_id(&tags[*w])
                    .map(|i| i as i64)
                    .ok_or_else(|| unknown(spec, &tags[*w])),
                None => Ok(IGNORE),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Target::Tokens)
    }

    fn loss(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Tensor<B, 1> {
        let logits = logits(head, features, rows);
        let [n, seq, classes] = logits.dims();
        let mut ids = vec![IGNORE; n * seq];
        for (i, row) in rows.iter().enumerate() {
            if let Target::Tokens(t) = row.target {
                ids[i * seq..i * seq + t.len()].copy_from_slice(t);
            }
        }
        let targets: Tensor<B, 1, Int> =
            Tensor::from_data(TensorData::new(ids, [n * seq]), &logits.device());
        masked_cross_entropy(logits.reshape([n * seq, classes]), targets).0
    }

    fn outputs(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Vec<Output> {
        let logits = logits(head, features, rows);
        let seq = logits.dims()[1];
        let predicted: Vec<i64> = logits
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        rows.iter()
            .enumerate()
            .map(|(i, row)| {
                // Words cut off by truncation get no tag id: `tag_names` reads them as "O".
                let mut tags = vec![usize::MAX; row.n_words];
                for (pos, w) in row.word_starts.iter().enumerate() {
                    if let Some(w) = w {
                        tags[*w] = predicted[i * seq + pos] as usize;
                    }
                }
                Output::Tags(tags)
            })
            .collect()
    }

    fn metrics(&self, spec: &HeadSpec, rows: &[(Output, &Label)]) -> BTreeMap<String, f64> {
        let sentences: Vec<(Vec<String>, Vec<String>)> = rows
            .iter()
            .filter_map(|(out, label)| match (out, label) {
                (Output::Tags(ids), Label::Tags(gold)) => {
                    Some((tag_names(spec, ids), gold.clone()))
                }
                _ => None,
            })
            .collect();
        let (p, r, f) = entity_f1(&sentences);
        BTreeMap::from([
            ("precision".into(), p),
            ("recall".into(), r),
            ("entity_f1".into(), f),
            ("n".into(), sentences.len() as f64),
        ])
    }
}

/// Tag names of predicted ids; words never predicted (cut off by truncation) are "O".
pub(crate) fn tag_names(spec: &HeadSpec, ids: &[usize]) -> Vec<String> {
    ids.iter()
        .map(|&i| spec.labels.get(i).cloned().unwrap_or_else(|| "O".into()))
        .collect()
}
