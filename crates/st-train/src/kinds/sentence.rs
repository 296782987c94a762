//! Sentence classification: one label per text, from its pooled embedding or first token.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use st_heads::{TaskHead, masked_cross_entropy};

use super::{Features, Output, Target, TaskKind, TaskRow, classes};

/// Cross-entropy over the classes of the head's input ([`st_heads::SentenceInput`]); accuracy
/// and macro-F1.
pub struct SentenceClassification;

/// The class ids of `rows` as a target tensor.
pub(crate) fn class_ids<B: Backend>(rows: &[TaskRow], device: &B::Device) -> Tensor<B, 1, Int> {
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| match r.target {
            Target::Class(c) => *c,
            _ => st_heads::IGNORE,
        })
        .collect();
    Tensor::from_data(TensorData::new(ids, [rows.len()]), device)
}

impl<B: Backend> TaskKind<B> for SentenceClassification {
    fn loss(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Tensor<B, 1> {
        let logits = head.classifier().forward(features.sentence_at(head, rows));
        let targets = class_ids(rows, &logits.device());
        masked_cross_entropy(logits, targets).0
    }

    fn outputs(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Vec<Output> {
        classes(head.classifier().forward(features.sentence_at(head, rows)))
    }
}
