//! Task metrics: accuracy and macro-F1 for classification, entity-level F1 for IOB2 tagging
//! (seqeval's default mode: a span counts only when type, start and end all match), Spearman
//! and Pearson correlation, and the ranking metrics of retrieval (MRR@k, recall@k).

use std::collections::BTreeSet;

/// The metric a task is judged by (checkpoint selection, `st plot`): one list, in st-runlog.
pub use st_runlog::{MAIN_METRICS, main_metric};

/// Fraction of equal pairs.
pub fn accuracy(predicted: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    predicted.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// Unweighted mean of per-class F1 over the classes present in gold or predictions.
pub fn macro_f1(predicted: &[usize], gold: &[usize]) -> f64 {
    let classes: BTreeSet<usize> = predicted.iter().chain(gold).copied().collect();
    if classes.is_empty() {
        return 0.0;
    }
    let f1s = classes.iter().map(|&c| {
        let tp = predicted
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g == c)
            .count() as f64;
        let fp = predicted
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g != c)
            .count() as f64;
        let fnn = predicted
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p != c && **g == c)
            .count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fnn)
        }
    });
    f1s.sum::<f64>() / classes.len() as f64
}

/// Entity spans `(type, start, end_exclusive)` of an IOB2 sequence. An `I-X` that does not
/// continue an `X` span starts a new one (as seqeval does).
pub fn spans(tags: &[&str]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(String, usize)> = None;
    for (i, tag) in tags.iter().enumerate() {
        let (prefix, kind) = match tag.split_once('-') {
            Some((p, k)) => (p, k),
            None => ("O", ""),
        };
        let continues = prefix == "I" && current.as_ref().is_some_and(|(k, _)| k == kind);
        if !continues {
            if let Some((k, s)) = current.take() {
                out.push((k, s, i));
            }
            if prefix == "B" || prefix == "I" {
                current = Some((kind.to_string(), i));
            }
        }
    }
    if let Some((k, s)) = current {
        out.push((k, s, tags.len()));
    }
    out
}

/// Entity-level precision, recall and F1 over sentences of (predicted, gold) tags.
pub fn entity_f1(sentences: &[(Vec<String>, Vec<String>)]) -> (f64, f64, f64) {
    let (mut tp, mut n_pred, mut n_gold) = (0usize, 0usize, 0usize);
    for (pred, gold) in sentences {
        let p: BTreeSet<_> = spans(&pred.iter().map(String::as_str).collect::<Vec<_>>())
            .into_iter()
            .collect();
        let g: BTreeSet<_> = spans(&gold.iter().map(String::as_str).collect::<Vec<_>>())
            .into_iter()
            .collect();
        tp += p.intersection(&g).count();
        n_pred += p.len();
        n_gold += g.len();
    }
    let precision = if n_pred == 0 {
        0.0
    } else {
        tp as f64 / n_pred as f64
    };
    let recall = if n_gold == 0 {
        0.0
    } else {
        tp as f64 / n_gold as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (precision, recall, f1)
}

/// Ranks starting at 1, ties sharing their average rank (as scipy's `rankdata`).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Spearman rank correlation.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Mean reciprocal rank over queries whose correct candidate ranked at `ranks[i]` (1-based),
/// counting only ranks ≤ `k` (sentence-transformers' `InformationRetrievalEvaluator`).
pub fn mrr_at_k(ranks: &[usize], k: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    let sum: f64 = ranks
        .iter()
        .filter(|&&r| r <= k)
        .map(|&r| 1.0 / r as f64)
        .sum();
    sum / ranks.len() as f64
}

/// Fraction of queries whose correct candidate ranked within the first `k`.
pub fn recall_at_k(ranks: &[usize], k: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    ranks.iter().filter(|&&r| r <= k).count() as f64 / ranks.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1() {
        let gold = [0, 0, 1, 1, 2];
        let pred = [0, 1, 1, 1, 0];
        assert!((accuracy(&pred, &gold) - 0.6).abs() < 1e-12);
        // class 0: tp1 fp1 fn1 → 0.5; class 1: tp2 fp1 fn0 → 0.8; class 2: 0 → mean 0.4333
        assert!((macro_f1(&pred, &gold) - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn spans_follow_seqeval() {
        let tags = [
            "B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "B-ORG", "I-PER",
        ];
        assert_eq!(
            spans(&tags),
            vec![
                ("PER".into(), 0, 2),
                ("LOC".into(), 3, 5),
                ("LOC".into(), 5, 6),
                ("ORG".into(), 6, 7),
                ("PER".into(), 7, 8),
            ]
        );
    }

    #[test]
    fn entity_f1_needs_exact_spans() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let data = vec![
            (s(&["B-PER", "I-PER", "O"]), s(&["B-PER", "I-PER", "O"])), // exact
            (s(&["B-LOC", "O", "O"]), s(&["B-LOC", "I-LOC", "O"])),     // boundary wrong
        ];
        let (p, r, f) = entity_f1(&data);
        assert!((p - 0.5).abs() < 1e-12 && (r - 0.5).abs() < 1e-12 && (f - 0.5).abs() < 1e-12);
    }

    #[test]
    fn ranking_metrics() {
        let ranks = [1, 2, 11, 4];
        assert!((mrr_at_k(&ranks, 10) - (1.0 + 0.5 + 0.0 + 0.25) / 4.0).abs() < 1e-12);
        assert!((recall_at_k(&ranks, 1) - 0.25).abs() < 1e-12);
        assert!((recall_at_k(&ranks, 10) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn spearman_matches_scipy() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
        // scipy.stats.spearmanr([1,2,3,4,5],[5,6,7,8,7]) = 0.8207826816681233
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
    }
}
