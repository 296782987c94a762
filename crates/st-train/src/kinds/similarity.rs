//! Similarity: a score per text pair, predicted by the cosine of the two embeddings.
//! The losses are sentence-transformers' `CoSENTLoss` and `CosineSimilarityLoss`.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use st_heads::{HeadSpec, TaskHead};

use super::{
    Features, Output, Target, TaskKind, TaskRow, loss_dims, prefix, unit_rows, wrong_label,
};
use crate::data::Label;
use crate::metrics::{pearson, spearman};

/// How a similarity task's loss compares predicted cosines with gold scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimilarityLoss {
    /// CoSENT (Su 2022): `log(1 + Σ exp(s·(cos_i − cos_j)))` over the pairs with
    /// `score_i < score_j`. Only the order of the scores matters, so any scale works.
    #[default]
    Cosent,
    /// Mean squared error between the cosine and the score (scores in [0, 1], or [−1, 1]).
    CosineMse,
}

/// A similarity task: CoSENT or cosine-MSE, optionally summed over Matryoshka prefixes;
/// Spearman and Pearson correlation of cosine and score.
pub struct Similarity {
    pub loss: SimilarityLoss,
    /// CoSENT's scale (sentence-transformers: 20).
    pub scale: f64,
    /// Matryoshka prefixes (none: the full embedding only).
    pub matryoshka: Vec<usize>,
}

/// Cosine of each row's two texts over the first `dim` dimensions, `[rows]`.
fn cosines<B: Backend>(
    features: &Features<B>,
    rows: &[TaskRow],
    dim: Option<usize>,
) -> Tensor<B, 1> {
    let u = unit_rows(prefix(features.pooled_at(rows, 0), dim));
    let v = unit_rows(prefix(features.pooled_at(rows, 1), dim));
    (u * v).sum_dim(1).squeeze_dim(1)
}

fn scores(rows: &[TaskRow]) -> Vec<f64> {
    rows.iter()
        .map(|r| match r.target {
            Target::Score(s) => *s,
            _ => f64::NAN,
        })
        .collect()
}

/// CoSENT: `logsumexp([0, s·(cos_i − cos_j) for score_i < score_j])`, `[1]`.
pub(crate) fn cosent<B: Backend>(cos: Tensor<B, 1>, gold: &[f64], scale: f64) -> Tensor<B, 1> {
    let n = gold.len();
    let device = cos.device();
    let s = cos * scale;
    let diff = s.clone().unsqueeze_dim::<2>(1) - s.unsqueeze_dim::<2>(0);
    let ordered: Vec<bool> = (0..n * n).map(|k| gold[k / n] < gold[k % n]).collect();
    let keep = Tensor::<B, 2, Bool>::from_data(TensorData::new(ordered, [n, n]), &device);
    // Pairs out of order drop out of the sum: exp(-1e12) is 0.
    let diff = diff.mask_fill(keep.bool_not(), -1e12).reshape([n * n]);
    let all = Tensor::cat(vec![Tensor::zeros([1], &device), diff], 0);
    // logsumexp, shifted by the (detached) maximum: the shift's gradient cancels exactly.
    let max = all.clone().max().detach();
    (all - max.clone()).exp().sum().log() + max
}

impl<B: Backend> TaskKind<B> for Similarity {
    fn target(
        &self,
        spec: &HeadSpec,
        label: &Label,
        _: &[Option<usize>],
    ) -> Result<Target, String> {
        match label {
            Label::Score(s) => Ok(Target::Score(*s)),
            other => Err(wrong_label(spec, other)),
        }
    }

    fn loss(&self, _: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Tensor<B, 1> {
        let gold = scores(rows);
        let device = features.pooled.device();
        let losses = loss_dims(&self.matryoshka).into_iter().map(|dim| {
            let cos = cosines(features, rows, dim);
            match self.loss {
                SimilarityLoss::Cosent => cosent(cos, &gold, self.scale),
                SimilarityLoss::CosineMse => {
                    let g: Vec<f32> = gold.iter().map(|&x| x as f32).collect();
                    let target =
                        Tensor::<B, 1>::from_data(TensorData::new(g, [rows.len()]), &device);
                    (cos - target).square().mean()
                }
            }
        });
        losses.reduce(|a, b| a + b).expect("at least one prefix")
    }

    fn outputs(&self, _: &TaskHead<B>, features: &Features<B>, rows: &[TaskRow]) -> Vec<Output> {
        embeddings(features, rows)
    }

    fn metrics(&self, _: &HeadSpec, rows: &[(Output, &Label)]) -> BTreeMap<String, f64> {
        let pairs: Vec<(&[Vec<f32>], f64)> = rows
            .iter()
            .filter_map(|(out, label)| match (out, label) {
                (Output::Embeddings(e), Label::Score(g)) if e.len() == 2 => {
                    Some((e.as_slice(), *g))
                }
                _ => None,
            })
            .collect();
        let gold: Vec<f64> = pairs.iter().map(|(_, g)| *g).collect();
        let at = |dim: usize| -> Vec<f64> {
            pairs
                .iter()
                .map(|(e, _)| cosine(&e[0], &e[1], dim))
                .collect()
        };
        let full = at(usize::MAX);
        let mut m = BTreeMap::from([
            ("spearman".into(), spearman(&full, &gold)),
            ("pearson".into(), pearson(&full, &gold)),
            ("n".into(), gold.len() as f64),
        ]);
        // Truncated embeddings (Matryoshka): every power of two from 64 below the full width.
        let width = pairs.first().map_or(0, |(e, _)| e[0].len());
        for dim in (6..16).map(|p| 1usize << p).filter(|&d| d < width) {
            m.insert(format!("spearman_at_{dim}"), spearman(&at(dim), &gold));
        }
        m
    }
}

/// Each row's two pooled embeddings, as `Output::Embeddings`.
fn embeddings<B: Backend>(features: &Features<B>, rows: &[TaskRow]) -> Vec<Output> {
    let rows_of = |slot: usize| -> Vec<Vec<f32>> {
        let x = features.pooled_at(rows, slot);
        let dim = x.dims()[1];
        let flat: Vec<f32> = x.into_data().convert::<f32>().to_vec().unwrap_or_default();
        flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect()
    };
    let (u, v) = (rows_of(0), rows_of(1));
    u.into_iter()
        .zip(v)
        .map(|(a, b)| Output::Embeddings(vec![a, b]))
        .collect()
}

/// Cosine of the first `dim` dimensions of `a` and `b` (all of them when `dim` is larger).
pub(crate) fn cosine(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let n = dim.min(a.len());
    let dot: f64 = a[..n]
        .iter()
        .zip(&b[..n])
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    let norm = |x: &[f32]| {
        x[..n]
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    dot / (norm(a) * norm(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_flex::Flex;

    type B = Flex;

    /// CoSENT written out in f64, as sentence-transformers' `CoSENTLoss.forward`.
    fn cosent_reference(cos: &[f64], gold: &[f64], scale: f64) -> f64 {
        let mut terms = vec![0.0];
        for i in 0..cos.len() {
            for j in 0..cos.len() {
                if gold[i] < gold[j] {
                    terms.push(scale * (cos[i] - cos[j]));
                }
            }
        }
        let max = terms.iter().copied().fold(f64::MIN, f64::max);
        max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
    }

    fn features(u: &[[f32; 3]], v: &[[f32; 3]]) -> Features<B> {
        let device = Default::default();
        let rows: Vec<f32> = u.iter().chain(v).flatten().copied().collect();
        let n = u.len() + v.len();
        let pooled = Tensor::<B, 2>::from_data(TensorData::new(rows, [n, 3]), &device);
        Features {
            tokens: Tensor::zeros([n, 1, 3], &device),
            pooled,
        }
    }

    #[test]
    fn cosent_matches_its_definition_and_only_reads_the_order_of_scores() {
        let device = Default::default();
        let cos = [0.9, 0.1, -0.3, 0.5];
        let gold = [0.8, 0.2, 0.0, 0.9];
        let tensor = Tensor::<B, 1>::from_data(
            TensorData::new(cos.map(|c| c as f32).to_vec(), [4]),
            &device,
        );
        let got = cosent(tensor.clone(), &gold, 20.0).into_scalar() as f64;
        let want = cosent_reference(&cos, &gold, 20.0);
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        // Rescaling the gold scores leaves the loss unchanged.
        let rescaled = gold.map(|g| 5.0 * g + 1.0);
        let again = cosent(tensor, &rescaled, 20.0).into_scalar() as f64;
        assert_eq!(got, again);
    }

    #[test]
    fn matryoshka_sums_the_loss_over_prefixes() {
        let f = features(
            &[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 0.5]],
            &[[1.0, 0.2, -2.0], [0.5, 1.0, 1.0], [0.9, 1.1, 3.0]],
        );
        let targets = [Target::Score(0.9), Target::Score(0.1), Target::Score(0.5)];
        let texts = [[0, 3], [1, 4], [2, 5]];
        let rows: Vec<TaskRow> = (0..3)
            .map(|i| TaskRow {
                texts: &texts[i],
                target: &targets[i],
                word_starts: &[],
                n_words: 0,
            })
            .collect();
        let head = TaskHead::<B>::new(
            HeadSpec::new("sts", st_heads::HeadKind::Similarity, vec![]),
            3,
            &Default::default(),
        );
        let loss = |dims: Vec<usize>, loss: SimilarityLoss| {
            let task = Similarity {
                loss,
                scale: 20.0,
                matryoshka: dims,
            };
            TaskKind::<B>::loss(&task, &head, &f, &rows).into_scalar() as f64
        };
        for kind in [SimilarityLoss::Cosent, SimilarityLoss::CosineMse] {
            let (full, two) = (loss(vec![], kind), loss(vec![2], kind));
            assert_ne!(full, two, "{kind:?}: the prefix must change the cosines");
            assert!((loss(vec![3], kind) - full).abs() < 1e-6);
            assert!((loss(vec![3, 2], kind) - (full + two)).abs() < 1e-5);
        }
    }

    #[test]
    fn metrics_read_cosines_at_every_power_of_two_prefix() {
        // Width 130: prefixes 64 and 128. The first 64 dimensions rank the pairs one way, the
        // rest the other way, so full-width and 64-wide Spearman disagree.
        let pair = |agree: f32, rest: f32| {
            let mut a = vec![0.0f32; 130];
            let mut b = vec![0.0f32; 130];
            a[0] = 1.0;
            b[0] = agree;
            b[1] = 1.0;
            a[64..].iter_mut().for_each(|x| *x = 1.0);
            b[64..].iter_mut().for_each(|x| *x = rest);
            Output::Embeddings(vec![a, b])
        };
        let gold = [Label::Score(0.0), Label::Score(0.5), Label::Score(1.0)];
        let outs = [pair(0.1, 1.0), pair(1.0, 0.5), pair(5.0, -1.0)];
        let rows: Vec<(Output, &Label)> = outs.iter().cloned().zip(gold.iter()).collect();
        let task = Similarity {
            loss: SimilarityLoss::Cosent,
            scale: 20.0,
            matryoshka: vec![],
        };
        let spec = HeadSpec::new("sts", st_heads::HeadKind::Similarity, vec![]);
        let m = TaskKind::<B>::metrics(&task, &spec, &rows);
        assert_eq!(m["n"], 3.0);
        assert!((m["spearman_at_64"] - 1.0).abs() < 1e-12, "{m:?}");
        assert!(
            m["spearman"] < 0.0 && m.contains_key("spearman_at_128"),
            "{m:?}"
        );
        assert!(!m.contains_key("spearman_at_256"));
        assert!((cosine(&[3.0, 4.0, 9.0], &[3.0, 4.0, -9.0], 2) - 1.0).abs() < 1e-12);
    }
}
