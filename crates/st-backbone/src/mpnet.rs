//! What MPNet (all-mpnet-base-v2) adds to the BERT encoder in `model.rs`, and its key names.
//!
//! MPNet's layers are BERT's post-LN layers with other names. Three things differ:
//! - positions are RoBERTa's, with `padding_idx` 1: real tokens count from 2, padding tokens
//!   take 1 (`roberta::position_ids`;
//!   [`BertConfig::position_padding_idx`](crate::BertConfig::position_padding_idx)), and there
//!   are no token types ([`BertConfig::has_token_types`](crate::BertConfig::has_token_types));
//! - one learned table, `encoder.relative_attention_bias` `[buckets, heads]`, gives every
//!   (query, key) pair a per-head bias from the bucket of their distance; it is added to the
//!   scaled scores of every layer ([`position_bias`]);
//! - the checkpoint names attention `attention.attn.{q,k,v,o}` and its LayerNorm
//!   `attention.LayerNorm` ([`LOAD_REMAPPING`], [`SAVE_REMAPPING`]).
//!
//! Reference: `transformers/models/mpnet/modeling_mpnet.py` (`MPNetEncoder.compute_position_bias`
//! and `relative_position_bucket`).

use burn::nn::Embedding;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Largest distance with its own bucket range; farther pairs share the last bucket.
const MAX_DISTANCE: f64 = 128.0;

/// The bucket of a key at `key − query = relative` positions from its query, as
/// `MPNetEncoder.relative_position_bucket` computes it: half the buckets for keys at or left of
/// the query, half for keys to its right; in each half, exact distances up to a quarter of the
/// buckets, then logarithmically wider ranges up to [`MAX_DISTANCE`].
pub fn relative_position_bucket(relative: i64, num_buckets: usize) -> usize {
    let half = num_buckets / 2;
    let right = usize::from(relative > 0) * half;
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if distance < max_exact {
        return right + distance;
    }
    // Truncation toward zero of a positive value, as torch's `.to(torch.long)`.
    let log_ratio =
        (distance as f64 / max_exact as f64).ln() / (MAX_DISTANCE / max_exact as f64).ln();
    let large = max_exact + (log_ratio * (half - max_exact) as f64) as usize;
    right + large.min(half - 1)
}

/// `[1, heads, seq, seq]`: the bias MPNet adds to the scaled attention scores of every layer,
/// gathered from `table` (`[buckets, heads]`) by the bucket of each (query, key) distance.
/// Positions are 0..seq whatever the padding, as in Hugging Face (padded keys are masked anyway).
pub fn position_bias<B: Backend>(table: &Embedding<B>, seq: usize) -> Tensor<B, 4> {
    let num_buckets = table.weight.dims()[0];
    let buckets: Vec<i64> = (0..seq as i64)
        .flat_map(|query| {
            (0..seq as i64)
                .map(move |key| relative_position_bucket(key - query, num_buckets) as i64)
        })
        .collect();
    let device = table.weight.device();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [seq, seq]), &device);
    // [seq, seq, heads] → [heads, seq, seq] → [1, heads, seq, seq]
    table.forward(ids).permute([2, 0, 1]).unsqueeze::<4>()
}

/// Hugging Face MPNet key → our module path, applied in order after the optional `mpnet.`
/// prefix (masked-LM checkpoints) is dropped and `LayerNorm` renamed (`weights.rs`).
pub const LOAD_REMAPPING: &[(&str, &str)] = &[
    (r"^mpnet\.", ""),
    (r"\.attention\.attn\.q\.", ".attention.self_attn.query."),
    (r"\.attention\.attn\.k\.", ".attention.self_attn.key."),
    (r"\.attention\.attn\.v\.", ".attention.self_attn.value."),
    (r"\.attention\.attn\.o\.", ".attention.output.dense."),
    (
        r"\.attention\.layer_norm\.",
        ".attention.output.layer_norm.",
    ),
];

/// Our module path → Hugging Face MPNet key: the inverse of [`LOAD_REMAPPING`], applied before
/// the generic `layer_norm` → `LayerNorm` rename.
pub const SAVE_REMAPPING: &[(&str, &str)] = &[
    (r"\.attention\.self_attn\.query\.", ".attention.attn.q."),
    (r"\.attention\.self_attn\.key\.", ".attention.attn.k."),
    (r"\.attention\.self_attn\.value\.", ".attention.attn.v."),
    (r"\.attention\.output\.dense\.", ".attention.attn.o."),
    (
        r"\.attention\.output\.layer_norm\.",
        ".attention.layer_norm.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The buckets of `relative_position_bucket` in transformers, for 32 buckets: keys at or
    /// left of the query in 0..16, keys to its right in 16..32, exact up to distance 7.
    #[test]
    fn buckets_match_hugging_face() {
        // (distance, bucket for a key at or left of the query)
        let table = [
            (0, 0),
            (1, 1),
            (7, 7),
            (8, 8),
            (11, 8),
            (12, 9),
            (15, 9),
            (16, 10),
            (22, 10),
            (23, 11),
            (31, 11),
            (32, 12),
            (45, 12),
            (46, 13),
            (63, 13),
            (64, 14),
            (90, 14),
            (91, 15),
            (500, 15),
        ];
        for (distance, bucket) in table {
            assert_eq!(
                relative_position_bucket(-distance, 32),
                bucket,
                "left {distance}"
            );
            if distance > 0 {
                assert_eq!(
                    relative_position_bucket(distance, 32),
                    16 + bucket,
                    "right {distance}"
                );
            }
        }
    }

    #[test]
    fn renames_round_trip() {
        let key = "encoder.layer.3.attention.attn.o.weight";
        let mut path = key.to_string();
        for (from, to) in LOAD_REMAPPING {
            path = regex_replace(&path, from, to);
        }
        assert_eq!(path, "encoder.layer.3.attention.output.dense.weight");
        for (from, to) in SAVE_REMAPPING {
            path = regex_replace(&path, from, to);
        }
        assert_eq!(path, key);
    }

    /// The patterns are plain dotted names with `\.` and an optional `^`: enough to apply them
    /// here without a regex engine.
    fn regex_replace(text: &str, pattern: &str, with: &str) -> String {
        let literal = pattern.replace(r"\.", ".");
        match literal.strip_prefix('^') {
            Some(prefix) => text
                .strip_prefix(prefix)
                .map_or(text.to_string(), |rest| format!("{with}{rest}")),
            None => text.replace(&literal, with),
        }
    }
}
