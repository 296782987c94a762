//! What DistilBERT changes in the BERT encoder of `model.rs`: names only.
//!
//! DistilBERT's layers compute what BERT's post-LN layers compute (attention, residual,
//! LayerNorm, feed-forward, residual, LayerNorm); positions count from 0 and there are no token
//! types and no pooler. What differs is naming:
//! - `config.json` says `dim`, `n_layers`, `n_heads`, `hidden_dim` (the feed-forward width),
//!   `activation`, `dropout`, `attention_dropout` ([`to_bert_names`], [`to_distilbert_names`]);
//! - the checkpoint says `transformer.layer.N.attention.{q,k,v,out}_lin`, `sa_layer_norm`,
//!   `ffn.lin{1,2}`, `output_layer_norm` ([`LOAD_REMAPPING`], [`SAVE_REMAPPING`]).
//!
//! Reference: `transformers/models/distilbert/{configuration,modeling}_distilbert.py`.

use serde_json::Value;

/// DistilBERT `config.json` field → `BertConfig` field.
const CONFIG_NAMES: &[(&str, &str)] = &[
    ("dim", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("hidden_dim", "intermediate_size"),
    ("activation", "hidden_act"),
    ("dropout", "hidden_dropout_prob"),
    ("attention_dropout", "attention_probs_dropout_prob"),
];

/// Renames DistilBERT's config fields to BERT's in place (before `BertConfig` deserializes).
pub fn to_bert_names(config: &mut Value) {
    rename_fields(config, CONFIG_NAMES.iter().map(|&(d, b)| (d, b)));
}

/// Renames BERT's config fields to DistilBERT's in place, and drops the BERT-only ones
/// `DistilBertConfig` does not know: Python reads `hidden_dim`, never `intermediate_size`.
pub fn to_distilbert_names(config: &mut Value) {
    rename_fields(config, CONFIG_NAMES.iter().map(|&(d, b)| (b, d)));
    if let Some(map) = config.as_object_mut() {
        for bert_only in [
            "type_vocab_size",
            "position_embedding_type",
            "layer_norm_eps",
        ] {
            map.remove(bert_only);
        }
    }
}

fn rename_fields<'a>(config: &mut Value, names: impl Iterator<Item = (&'a str, &'a str)>) {
    let Some(map) = config.as_object_mut() else {
        return;
    };
    for (from, to) in names {
        if let Some(value) = map.remove(from) {
            map.insert(to.to_string(), value);
        }
    }
}

/// Hugging Face DistilBERT key → BERT's Hugging Face key, applied *before* the generic BERT
/// renames of `weights.rs` (which then turn `LayerNorm` and `attention.self` into our paths).
pub const LOAD_REMAPPING: &[(&str, &str)] = &[
    // DistilBertFor* checkpoints nest the encoder under `distilbert.`.
    (r"^distilbert\.", ""),
    (r"^transformer\.layer\.", "encoder.layer."),
    (r"\.attention\.q_lin\.", ".attention.self.query."),
    (r"\.attention\.k_lin\.", ".attention.self.key."),
    (r"\.attention\.v_lin\.", ".attention.self.value."),
    (r"\.attention\.out_lin\.", ".attention.output.dense."),
    (r"\.sa_layer_norm\.", ".attention.output.LayerNorm."),
    (r"\.ffn\.lin1\.", ".intermediate.dense."),
    (r"\.ffn\.lin2\.", ".output.dense."),
    (r"\.output_layer_norm\.", ".output.LayerNorm."),
];

/// BERT's Hugging Face key → DistilBERT's, applied *after* the generic save renames; the
/// inverse of [`LOAD_REMAPPING`]. Order matters: `attention.output.*` is renamed before the
/// feed-forward's `output.*` so the two never collide.
pub const SAVE_REMAPPING: &[(&str, &str)] = &[
    (r"^encoder\.layer\.", "transformer.layer."),
    (r"\.attention\.self\.query\.", ".attention.q_lin."),
    (r"\.attention\.self\.key\.", ".attention.k_lin."),
    (r"\.attention\.self\.value\.", ".attention.v_lin."),
    (r"\.attention\.output\.dense\.", ".attention.out_lin."),
    (r"\.attention\.output\.LayerNorm\.", ".sa_layer_norm."),
    (r"\.intermediate\.dense\.", ".ffn.lin1."),
    (r"\.output\.dense\.", ".ffn.lin2."),
    (r"\.output\.LayerNorm\.", ".output_layer_norm."),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked-LM checkpoint key (`distilbert.` prefix) reaches BERT's Hugging Face key, and
    /// BERT's key goes back to the base model's DistilBERT key.
    #[test]
    fn key_names_round_trip() {
        let cases = [
            (
                "transformer.layer.1.attention.q_lin.weight",
                "encoder.layer.1.attention.self.query.weight",
            ),
            (
                "transformer.layer.0.attention.out_lin.bias",
                "encoder.layer.0.attention.output.dense.bias",
            ),
            (
                "transformer.layer.0.sa_layer_norm.weight",
                "encoder.layer.0.attention.output.LayerNorm.weight",
            ),
            (
                "transformer.layer.1.ffn.lin2.weight",
                "encoder.layer.1.output.dense.weight",
            ),
            (
                "transformer.layer.1.output_layer_norm.bias",
                "encoder.layer.1.output.LayerNorm.bias",
            ),
        ];
        for (distil, bert) in cases {
            assert_eq!(apply(LOAD_REMAPPING, &format!("distilbert.{distil}")), bert);
            assert_eq!(apply(SAVE_REMAPPING, bert), distil);
        }
    }

    /// The patterns are dotted names with `\.` and an optional `^`: applied here without a
    /// regex engine, in order, as burn-store applies them.
    fn apply(rules: &[(&str, &str)], key: &str) -> String {
        rules.iter().fold(key.to_string(), |text, (pattern, with)| {
            let literal = pattern.replace(r"\.", ".");
            match literal.strip_prefix('^') {
                Some(prefix) => text
                    .strip_prefix(prefix)
                    .map_or(text.clone(), |rest| format!("{with}{rest}")),
                None => text.replace(&literal, with),
            }
        })
    }

    #[test]
    fn config_names_round_trip() {
        let original =
            serde_json::json!({"dim": 32, "n_layers": 2, "hidden_dim": 37, "vocab_size": 9});
        let mut value = original.clone();
        to_bert_names(&mut value);
        assert_eq!(value["hidden_size"], 32);
        assert_eq!(value["intermediate_size"], 37);
        value["type_vocab_size"] = 2.into();
        to_distilbert_names(&mut value);
        assert_eq!(value, original);
    }
}
