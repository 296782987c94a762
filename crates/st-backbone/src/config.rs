//! `BertConfig`: the architecture, read straight from a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::BackboneError;

/// The feed-forward activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU, `x·Φ(x)` (Hugging Face `"gelu"`).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation (Hugging Face `"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluApprox,
    /// `max(0, x)`.
    #[serde(rename = "relu")]
    Relu,
}

/// The encoder families st-backbone runs, named by `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `BertModel`: absolute positions from 0, token types (bert, MiniLM, bge, e5, gte).
    Bert,
    /// `MPNetModel` (all-mpnet-base-v2): positions offset past the padding index, no token
    /// types, and a relative-position bias added to every layer's attention scores
    /// (see `mpnet.rs`).
    MPNet,
    /// `RobertaModel`: BERT's layers; positions count from `padding_idx + 1` and padding tokens
    /// take `padding_idx` (see `roberta.rs`); one token type.
    Roberta,
    /// `XLMRobertaModel`: RoBERTa's architecture with a sentencepiece (Unigram) vocabulary.
    XlmRoberta,
    /// `DistilBertModel`: BERT's layers under other names, positions from 0, no token types,
    /// no pooler, its own `config.json` field names (see `distilbert.rs`).
    DistilBert,
}

impl Architecture {
    /// The `model_type` values st-backbone implements, as `config.json` spells them.
    pub const NAMES: &[&str] = &["bert", "mpnet", "roberta", "xlm-roberta", "distilbert"];

    fn from_model_type(name: &str) -> Option<Self> {
        match name {
            "bert" => Some(Self::Bert),
            "mpnet" => Some(Self::MPNet),
            "roberta" => Some(Self::Roberta),
            "xlm-roberta" => Some(Self::XlmRoberta),
            "distilbert" => Some(Self::DistilBert),
            _ => None,
        }
    }

    /// The Hugging Face class `transformers` loads a saved folder of this family with.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Bert => "BertModel",
            Self::MPNet => "MPNetModel",
            Self::Roberta => "RobertaModel",
            Self::XlmRoberta => "XLMRobertaModel",
            Self::DistilBert => "DistilBertModel",
        }
    }
}

/// A BERT-family architecture, field for field as Hugging Face writes it in `config.json`.
///
/// bert-base-uncased, all-MiniLM-L6-v2 and every other `BertModel` checkpoint share this shape;
/// only the numbers differ. MPNet adds one field (`relative_attention_num_buckets`) and drops
/// token types ([`Architecture`]). Fields absent from a `config.json` take BERT-base defaults,
/// as in `transformers.BertConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// One of [`Architecture::NAMES`]; other families are refused.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: HiddenAct,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Only `"absolute"` is supported.
    #[serde(default = "d_position_type", skip_serializing_if = "Option::is_none")]
    pub position_embedding_type: Option<String>,
    /// MPNet's relative-position buckets (32 in every published MPNet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_attention_num_buckets: Option<usize>,
}

fn default_model_type() -> String {
    "bert".into()
}
fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}
fn d_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn d_dropout() -> f64 {
    0.1
}
fn d_positions() -> usize {
    512
}
fn d_type_vocab() -> usize {
    2
}
fn d_eps() -> f64 {
    1e-12
}
fn d_position_type() -> Option<String> {
    Some("absolute".into())
}

impl Default for BertConfig {
    /// bert-base-uncased.
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl BertConfig {
    /// The family `model_type` names (checked by [`BertConfig::validate`]).
    pub fn architecture(&self) -> Architecture {
        Architecture::from_model_type(&self.model_type).unwrap_or(Architecture::Bert)
    }

    /// Whether the model adds token-type (segment) embeddings: BERT and RoBERTa (a table of one
    /// row, `type_vocab_size` 1) do; MPNet and DistilBERT have none.
    pub fn has_token_types(&self) -> bool {
        use Architecture::*;
        matches!(self.architecture(), Bert | Roberta | XlmRoberta)
    }

    /// The position id of the first token. MPNet numbers positions from `padding_idx + 1`, with
    /// Hugging Face's `padding_idx` fixed at 1: 2, 3, ...; RoBERTa and XLM-R from
    /// `pad_token_id + 1` (also 2 in every published checkpoint).
    pub fn position_offset(&self) -> usize {
        match self.architecture() {
            Architecture::Bert | Architecture::DistilBert => 0,
            Architecture::MPNet => 2,
            Architecture::Roberta | Architecture::XlmRoberta => self.pad_token_id + 1,
        }
    }

    /// The `padding_idx` of RoBERTa-style positions (`create_position_ids_from_input_ids`):
    /// tokens equal to it take that position id and the others count on from it. RoBERTa and
    /// XLM-R use `pad_token_id`; `MPNetEmbeddings` fixes it at 1 whatever the config says.
    /// `None`: positions are plain offsets from 0 (BERT, DistilBERT).
    pub fn position_padding_idx(&self) -> Option<usize> {
        match self.architecture() {
            Architecture::Bert | Architecture::DistilBert => None,
            Architecture::MPNet => Some(1),
            Architecture::Roberta | Architecture::XlmRoberta => Some(self.pad_token_id),
        }
    }

    /// The longest input the position table covers, special tokens included: the table's
    /// rows past [`position_offset`](Self::position_offset) (512 for roberta-base's 514).
    pub fn max_sequence_length(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Floating-point operations (multiply and add counted apart) of one forward pass over a
    /// sequence of `seq_len` tokens: per layer the Q/K/V/output projections `8·n·h²`, the
    /// feed-forward `4·n·h·i` and attention's two `n×n` products `4·n²·h`. Embedding lookups,
    /// LayerNorm, softmax and activations are left out (memory-bound, < 1% of the total).
    /// all-MiniLM-L6-v2 (h = 384, i = 1536, 6 layers) costs ~21 MFLOP per token.
    pub fn forward_flops(&self, seq_len: usize) -> f64 {
        let (n, h, i) = (
            seq_len as f64,
            self.hidden_size as f64,
            self.intermediate_size as f64,
        );
        self.num_hidden_layers as f64 * (8.0 * n * h * h + 4.0 * n * h * i + 4.0 * n * n * h)
    }

    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BackboneError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BackboneError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            BackboneError::Config { message, .. } => BackboneError::Config {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`. DistilBERT's own field names (`dim`,
    /// `n_layers`, ...) are translated to BERT's first (`distilbert.rs`).
    pub fn from_json(text: &str) -> Result<Self, BackboneError> {
        let fail = |e: serde_json::Error| BackboneError::Config {
            path: "config.json".into(),
            message: e.to_string(),
        };
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(fail)?;
        if value.get("model_type").and_then(|t| t.as_str()) == Some("distilbert") {
            crate::distilbert::to_bert_names(&mut value);
        }
        let config: Self = serde_json::from_value(value).map_err(fail)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: the family and the arithmetic between fields.
    pub fn validate(&self) -> Result<(), BackboneError> {
        let fail = |message: String| {
            Err(BackboneError::Config {
                path: "config.json".into(),
                message,
            })
        };
        let Some(architecture) = Architecture::from_model_type(&self.model_type) else {
            return fail(format!(
                "field `model_type` is \"{}\"; st-backbone implements {}",
                self.model_type,
                Architecture::NAMES
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if architecture == Architecture::MPNet {
            match self.relative_attention_num_buckets {
                Some(n) if n >= 2 && n % 2 == 0 => {}
                other => {
                    return fail(format!(
                        "field `relative_attention_num_buckets` is {other:?}; MPNet needs an even \
                         number of buckets (32 in published models)"
                    ));
                }
            }
        }
        if self.position_offset() > 0 && self.max_position_embeddings <= self.position_offset() {
            return fail(format!(
                "field `max_position_embeddings` ({}) leaves no position past {}'s offset {}",
                self.max_position_embeddings,
                architecture.hf_class(),
                self.position_offset()
            ));
        }
        if let Some(kind) = &self.position_embedding_type
            && kind != "absolute"
        {
            return fail(format!(
                "field `position_embedding_type` is \"{kind}\"; only \"absolute\" is supported"
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return fail(format!(
                "field `hidden_size` ({}) is not a multiple of `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value == 0 {
                return fail(format!("field `{name}` must be positive"));
            }
        }
        Ok(())
    }

    /// A small random-weight BERT for tests and examples: 2 layers, hidden 32.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 64,
            ..Self::default()
        }
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_config_parses() {
        let json = r#"{"architectures":["BertModel"],"attention_probs_dropout_prob":0.1,
            "gradient_checkpointing":false,"hidden_act":"gelu","hidden_dropout_prob":0.1,
            "hidden_size":384,"initializer_range":0.02,"intermediate_size":1536,
            "layer_norm_eps":1e-12,"max_position_embeddings":512,"model_type":"bert",
            "num_attention_heads":12,"num_hidden_layers":6,"pad_token_id":0,
            "position_embedding_type":"absolute","transformers_version":"4.8.2",
            "type_vocab_size":2,"use_cache":true,"vocab_size":30522}"#;
        let c = BertConfig::from_json(json).unwrap();
        assert_eq!(c.hidden_size, 384);
        assert_eq!(c.num_hidden_layers, 6);
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.hidden_act, HiddenAct::Gelu);
    }

    #[test]
    fn forward_flops_count_every_matmul() {
        let minilm = BertConfig {
            hidden_size: 384,
            num_hidden_layers: 6,
            intermediate_size: 1536,
            ..BertConfig::default()
        };
        // One token: Q, K, V, output (4 · 2·384²), FFN in and out (2 · 2·384·1536), and the
        // 1×1 attention products (2 · 2·384), over 6 layers.
        let one = 6.0 * (4.0 * 2.0 * 384.0 * 384.0 + 2.0 * 2.0 * 384.0 * 1536.0 + 4.0 * 384.0);
        assert_eq!(minilm.forward_flops(1), one);
        // Attention grows quadratically: doubling n more than doubles the count.
        assert!(minilm.forward_flops(128) > 2.0 * minilm.forward_flops(64));
        // bert-base at 128 tokens: the commonly quoted ~22.4 GFLOP (11.2 G multiply-adds).
        let base = BertConfig::default().forward_flops(128);
        assert!((base / 22.4e9 - 1.0).abs() < 0.01, "{base}");
    }

    #[test]
    fn defaults_are_bert_base() {
        let c = BertConfig::default();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.intermediate_size),
            (768, 12, 3072)
        );
    }

    #[test]
    fn other_families_are_refused_by_name() {
        let err = BertConfig::from_json(r#"{"model_type":"deberta-v2"}"#).unwrap_err();
        assert!(err.to_string().contains("model_type"), "{err}");
        assert!(err.to_string().contains("deberta-v2"), "{err}");
        // The refusal lists what is supported.
        for name in Architecture::NAMES {
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn roberta_positions_start_past_padding() {
        let c = BertConfig::from_json(
            r#"{"model_type":"roberta","pad_token_id":1,"max_position_embeddings":514,
                "type_vocab_size":1}"#,
        )
        .unwrap();
        assert_eq!(c.architecture(), Architecture::Roberta);
        assert_eq!(
            (c.position_offset(), c.position_padding_idx()),
            (2, Some(1))
        );
        assert_eq!(c.max_sequence_length(), 512);
        assert!(c.has_token_types());
    }

    /// `MPNetEmbeddings` numbers positions as RoBERTa with `padding_idx` fixed at 1, whatever
    /// `pad_token_id` says.
    #[test]
    fn mpnet_positions_skip_padding_at_index_1() {
        let c = BertConfig::from_json(
            r#"{"model_type":"mpnet","pad_token_id":0,"max_position_embeddings":514,
                "relative_attention_num_buckets":32}"#,
        )
        .unwrap();
        assert_eq!(
            (c.position_offset(), c.position_padding_idx()),
            (2, Some(1))
        );
        assert_eq!(c.max_sequence_length(), 512);
        assert!(!c.has_token_types());
    }

    #[test]
    fn distilbert_names_map_to_bert_fields() {
        let c = BertConfig::from_json(
            r#"{"model_type":"distilbert","dim":64,"n_layers":3,"n_heads":4,"hidden_dim":37,
                "activation":"relu","dropout":0.2,"attention_dropout":0.3,
                "max_position_embeddings":512,"vocab_size":100}"#,
        )
        .unwrap();
        assert_eq!(c.architecture(), Architecture::DistilBert);
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
            (64, 3, 4)
        );
        assert_eq!((c.intermediate_size, c.hidden_act), (37, HiddenAct::Relu));
        assert_eq!(
            (c.hidden_dropout_prob, c.attention_probs_dropout_prob),
            (0.2, 0.3)
        );
        assert!(!c.has_token_types());
        assert_eq!(c.position_offset(), 0);
    }

    #[test]
    fn heads_must_divide_hidden() {
        let err =
            BertConfig::from_json(r#"{"hidden_size":100,"num_attention_heads":12}"#).unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
    }

    #[test]
    fn gelu_new_is_the_tanh_form() {
        let c = BertConfig::from_json(r#"{"hidden_act":"gelu_new"}"#).unwrap();
        assert_eq!(c.hidden_act, HiddenAct::GeluApprox);
        let err = BertConfig::from_json(r#"{"hidden_act":"swish"}"#).unwrap_err();
        assert!(err.to_string().contains("swish"), "{err}");
    }
}
