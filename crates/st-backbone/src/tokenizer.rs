//! Text → token ids, as sentence-transformers does it: truncate at `max_seq_length`, pad each batch
//! to its own longest input (never to a fixed length).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::{BackboneError, BertInput};

/// One tokenized input, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids including `[CLS]` and `[SEP]`.
    pub ids: Vec<u32>,
    /// Segment ids (zeros for a single sentence).
    pub type_ids: Vec<u32>,
    /// Whether the input was cut at `max_len`.
    pub truncated: bool,
}

/// A Hugging Face tokenizer with sentence-transformers' truncation and padding rules.
#[derive(Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    max_len: usize,
    pad_id: u32,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("max_len", &self.max_len)
            .field("pad_id", &self.pad_id)
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl BertTokenizer {
    /// Loads `tokenizer.json` from a model folder, or builds the standard BERT WordPiece pipeline
    /// from `vocab.txt` (lower-casing as `tokenizer_config.json`'s `do_lower_case` says; default
    /// true). Inputs are truncated to `max_len` tokens, special tokens included.
    pub fn from_dir(dir: impl AsRef<Path>, max_len: usize) -> Result<Self, BackboneError> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| BackboneError::Tokenizer {
                path: json.clone(),
                message: e.to_string(),
            })?
        } else if vocab.is_file() {
            wordpiece_from_vocab(&vocab, do_lower_case(dir)?)?
        } else {
            return Err(BackboneError::MissingFile {
                path: json,
                hint: "expected tokenizer.json or vocab.txt in the model folder".into(),
            });
        };
        Self::new(inner, max_len)
    }

    /// Wraps a tokenizer, replacing whatever truncation and padding it carries: some published
    /// `tokenizer.json` files pin both to a fixed length (all-MiniLM-L6-v2 pads every input to
    /// 128), which sentence-transformers overrides and so do we.
    pub fn new(mut inner: Tokenizer, max_len: usize) -> Result<Self, BackboneError> {
        if max_len < 2 {
            return Err(BackboneError::Encode(format!(
                "max_seq_length {max_len} leaves no room for [CLS] and [SEP]"
            )));
        }
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            // RoBERTa / XLM-R (id 1); their tokenizer.json seldom carries padding settings.
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| BackboneError::Encode(e.to_string()))?;
        Ok(Self {
            inner,
            max_len,
            pad_id,
        })
    }

    /// The truncation length, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The id written into padding positions.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Tokenizes every text (in parallel), without padding.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Encoded>, BackboneError> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| BackboneError::Encode(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded {
                truncated: !e.get_overflowing().is_empty(),
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }
}

impl BertTokenizer {
    /// Tokenizes pre-split words (token classification); returns the ids and, per token, the
    /// index of the word it starts (`None` for special tokens and non-first sub-words).
    ///
    /// The words are joined by spaces and tokenized as that sentence, so the ids are exactly
    /// those [`BertTokenizer::encode`] gives the sentence (what the encoder sees at inference);
    /// each token then belongs to the word its byte offsets fall in. Tokenizing the words one
    /// by one (`is_pretokenized`) would not: byte-level BPE without `add_prefix_space` (RoBERTa)
    /// drops the `Ġ` that marks a word after a space, so `old` became `o ld` rather than `Ġold`.
    pub fn encode_words(
        &self,
        words: &[String],
    ) -> Result<(Encoded, Vec<Option<usize>>), BackboneError> {
        let (text, word_ends) = join_words(words);
        let enc = self
            .inner
            .encode(text.as_str(), true)
            .map_err(|e| BackboneError::Encode(e.to_string()))?;
        let mut seen = None;
        let starts = enc
            .get_word_ids()
            .iter()
            .zip(enc.get_offsets())
            .map(|(pre_token, &(start, _))| {
                // Special tokens belong to no pre-token. A token made only of the space before
                // a word (a lone `Ġ` or `▁`) starts at that space: it opens the next word, as
                // Hugging Face's `word_ids` count it.
                let word = pre_token
                    .map(|_| word_ends.partition_point(|&end| end <= start))
                    .filter(|&w| w < words.len());
                let first = word.is_some() && word != seen;
                if word.is_some() {
                    seen = word;
                }
                word.filter(|_| first)
            })
            .collect();
        let encoded = Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        };
        Ok((encoded, starts))
    }
}

/// `words` joined by single spaces, and the byte offset where each word ends in that text.
fn join_words(words: &[String]) -> (String, Vec<usize>) {
    let mut text = String::new();
    let mut ends = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(word);
        ends.push(text.len());
    }
    (text, ends)
}

/// Row-major `[batch, seq]` arrays for one padded batch, backend-free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl TokenBatch {
    /// Pads `rows` on the right to the longest among them.
    pub fn pad(rows: &[&Encoded], pad_id: u32) -> Self {
        let batch = rows.len();
        let seq_len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let mut input_ids = vec![pad_id as i64; batch * seq_len];
        let mut attention_mask = vec![0; batch * seq_len];
        let mut token_type_ids = vec![0; batch * seq_len];
        for (row, enc) in rows.iter().enumerate() {
            let at = row * seq_len;
            for (j, (&id, &ty)) in enc.ids.iter().zip(&enc.type_ids).enumerate() {
                input_ids[at + j] = id as i64;
                attention_mask[at + j] = 1;
                token_type_ids[at + j] = ty as i64;
            }
        }
        Self {
            batch,
            seq_len,
            input_ids,
            attention_mask,
            token_type_ids,
        }
    }

    /// Real (non-padding) tokens in each row.
    pub fn lengths(&self) -> Vec<usize> {
        self.attention_mask
            .chunks(self.seq_len.max(1))
            .map(|row| row.iter().filter(|&&m| m != 0).count())
            .collect()
    }

    /// Moves the batch onto a device as model input.
    pub fn to_input<B: Backend>(&self, device: &B::Device) -> BertInput<B> {
        let shape = [self.batch, self.seq_len];
        let tensor = |v: &Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(v.clone(), shape), device)
        };
        BertInput {
            input_ids: tensor(&self.input_ids),
            attention_mask: tensor(&self.attention_mask),
            token_type_ids: tensor(&self.token_type_ids),
        }
    }
}

fn do_lower_case(dir: &Path) -> Result<bool, BackboneError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| BackboneError::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BackboneError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(value
        .get("do_lower_case")
        .and_then(|v| v.as_bool())
        .unwrap_or(true))
}

/// The standard BERT pipeline: BERT normalizer, BERT pre-tokenizer, WordPiece, `[CLS] … [SEP]`.
fn wordpiece_from_vocab(vocab: &Path, lowercase: bool) -> Result<Tokenizer, BackboneError> {
    let fail = |message: String| BackboneError::Tokenizer {
        path: vocab.to_path_buf(),
        message,
    };
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(model);
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| fail(format!("vocabulary has no {t} token")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
    Ok(tokenizer)
}
