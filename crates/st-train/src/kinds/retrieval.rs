//! Retrieval: anchors matched to their positives among in-batch candidates, with
//! sentence-transformers' `MultipleNegativesRankingLoss` (and its symmetric variant).

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use st_heads::{HeadSpec, TaskHead, masked_cross_entropy};

use super::{
    Features, Output, Target, TaskKind, TaskRow, indices, loss_dims, prefix, unit_rows, wrong_label,
};
use crate::data::Label;
use crate::metrics::{mrr_at_k, recall_at_k};

/// Multiple-negatives ranking: each anchor's positive against every other row's positive and
/// every hard negative of the batch, by scaled cosine; MRR@10 and recall@1/@10 on held-out
/// records, each anchor ranked against every positive and negative of the evaluation set.
pub struct Retrieval {
    pub scale: f64,
    pub symmetric: bool,
    pub matryoshka: Vec<usize>,
}

/// Cross-entropy of `scores` (`[rows, candidates]`) with row i's answer at column i.
fn diagonal_cross_entropy<B: Backend>(scores: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = scores.dims()[0];
    let targets = indices((0..n).collect::<Vec<_>>().as_slice(), &scores.device());
    masked_cross_entropy(scores, targets).0
}

impl Retrieval {
    fn loss_at<B: Backend>(
        &self,
        features: &Features<B>,
        rows: &[TaskRow],
        dim: Option<usize>,
    ) -> Tensor<B, 1> {
        let embed = |x: Tensor<B, 2>| unit_rows(prefix(x, dim));
        let anchors = embed(features.pooled_at(rows, 0));
        let positives = embed(features.pooled_at(rows, 1));
        let with_negative: Vec<TaskRow> =
            rows.iter().copied().filter(|r| r.texts.len() > 2).collect();
        let mut candidates = vec![positives.clone()];
        if !with_negative.is_empty() {
            candidates.push(embed(features.pooled_at(&with_negative, 2)));
        }
        let candidates = Tensor::cat(candidates, 0);
        let forward = anchors.clone().matmul(candidates.transpose()) * self.scale;
        let loss = diagonal_cross_entropy(forward);
        if !self.symmetric {
            return loss;
        }
        let backward = positives.matmul(anchors.transpose()) * self.scale;
        (loss + diagonal_cross_entropy(backward)) / 2.0
    }
}

impl<B: Backend> TaskKind<B> for Retrieval {
    fn target(
        &self,
        spec: &HeadSpec,
        label: &Label,
        _: &[Option<usize>],
    ) -> Result<Target, String> {
        match label {
            Label::Ranked => Ok(Target::Ranked),
            other => Err(wrong_label(spec, other)),
        }
    }

    fn loss(&self, _: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Tensor<B, 1> {
        loss_dims(&self.matryoshka)
            .into_iter()
            .map(|dim| self.loss_at(features, rows, dim))
            .reduce(|a, b| a + b)
            .expect("at least one prefix")
    }

    fn outputs(&self, _: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Vec<Output> {
        let unit = unit_rows(features.pooled.clone());
        let dim = unit.dims()[1];
        let all: Vec<f32> = unit
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let row = |i: usize| all[i * dim..(i + 1) * dim].to_vec();
        rows.iter()
            .map(|r| Output::Embeddings(r.texts.iter().map(|&i| row(i)).collect()))
            .collect()
    }

    fn metrics(&self, _: &HeadSpec, rows: &[(Output, &Label)]) -> BTreeMap<String, f64> {
        let records: Vec<&Vec<Vec<f32>>> = rows
            .iter()
            .filter_map(|(out, _)| match out {
                Output::Embeddings(e) if e.len() >= 2 => Some(e),
                _ => None,
            })
            .collect();
        let ranks = positive_ranks(&records);
        BTreeMap::from([
            ("mrr_at_10".into(), mrr_at_k(&ranks, 10)),
            ("recall_at_1".into(), recall_at_k(&ranks, 1)),
            ("recall_at_10".into(), recall_at_k(&ranks, 10)),
            ("n".into(), ranks.len() as f64),
        ])
    }
}

/// For each record (anchor, positive, optional negative; unit vectors), the 1-based rank of its
/// positive among every record's positive and negative, by dot product. Ties rank the positive
/// last, so a collapsed embedding cannot score well.
fn positive_ranks(records: &[&Vec<Vec<f32>>]) -> Vec<usize> {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let candidates: Vec<&[f32]> = records
        .iter()
        .flat_map(|r| r[1..].iter().map(Vec::as_slice))
        .collect();
    records
        .iter()
        .map(|r| {
            let answer = dot(&r[0], &r[1]);
            let better = candidates
                .iter()
                .filter(|c| !std::ptr::eq(**c, r[1].as_slice()) && dot(&r[0], c) >= answer)
                .count();
            better + 1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_every_candidate_at_least_as_close() {
        let rec = |a: [f32; 2], p: [f32; 2]| vec![a.to_vec(), p.to_vec()];
        let r0 = rec([1.0, 0.0], [1.0, 0.0]);
        let r1 = rec([0.0, 1.0], [0.6, 0.8]);
        let r2 = vec![vec![0.0, 1.0], vec![1.0, 0.0], vec![0.0, 1.0]];
        // r0's positive ties with r2's positive (a tie ranks it behind: 2); r1's anchor is
        // closer to r2's negative (1.0) than to its positive (0.8): 2; r2's positive (0) is
        // behind r2's negative, r1's positive and (tied) r0's positive: 4.
        assert_eq!(positive_ranks(&[&r0, &r1, &r2]), vec![2, 2, 4]);
    }
}
