//! Pair classification: SBERT's softmax head (Reimers & Gurevych 2019) on `(u, v, |u − v|)`,
//! the two texts' embeddings, as sentence-transformers' `SoftmaxLoss` with its default
//! concatenation.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use st_heads::{TaskHead, masked_cross_entropy};

use super::sentence::class_ids;
use super::{Features, Output, TaskKind, TaskRow, classes};

/// Cross-entropy over the classes of `(u, v, |u − v|)`; accuracy and macro-F1.
pub struct PairClassification;

/// `[rows, 3 · dim]`: the concatenation SBERT's classifier reads.
fn pair_features<B: Backend>(features: &Features<B>, rows: &[TaskRow]) -> Tensor<B, 2> {
    let u = features.pooled_at(rows, 0);
    let v = features.pooled_at(rows, 1);
    let diff = (u.clone() - v.clone()).abs();
    Tensor::cat(vec![u, v, diff], 1)
}

impl<B: Backend> TaskKind<B> for PairClassification {
    fn loss(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Tensor<B, 1> {
        let logits = head.classifier().forward(pair_features(features, rows));
        let targets = class_ids(rows, &logits.device());
        masked_cross_entropy(logits, targets).0
    }

    fn outputs(&self, head: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Vec<Output> {
        classes(head.classifier().forward(pair_features(features, rows)))
    }
}
