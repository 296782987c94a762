//! Matryoshka truncation in the library, as sentence-transformers 6.2.0 does it, on the real
//! all-MiniLM-L6-v2: `SentenceTransformer(..., truncate_dim=N)`, `encode(truncate_dim=N)`,
//! `normalize_embeddings=True` and `config_sentence_transformers.json`'s `truncate_dim`.
//!
//! Expected values: st-cli's `tests/fixtures/encode_features.json` (written by
//! `xtask/py/encode_features.py` with Python's `encode(truncate_dim=128)`, with and without
//! `normalize_embeddings`). sentence-transformers reads a saved `truncate_dim` into the model's
//! own, which `encode` uses when it is given none: the same numbers.

use std::path::{Path, PathBuf};

use burn_flex::Flex;
use serde_json::Value;
use st_pooling::{EncodeOptions, PoolingError, PoolingMode, SentenceEncoder};

type Encoder = SentenceEncoder<Flex>;

fn model_dir() -> PathBuf {
    match std::env::var("ST_TEST_MODEL") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => st_hub::resolve(st_hub::DEFAULT_MODEL, &mut |m| eprintln!("{m}"))
            .unwrap_or_else(|e| panic!("{e}\nfetch it with: cargo xtask download")),
    }
}

fn reference() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../st-cli/tests/fixtures/encode_features.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sentences(reference: &Value) -> Vec<&str> {
    reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn matrix(value: &Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Same shape as Python's and every value within 1e-4 (the parity bound); returns the largest
/// difference.
fn assert_close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}: width");
        for (x, y) in g.iter().zip(w) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("{what}: max |diff| to Python {worst:.2e}");
    assert!(worst <= 1e-4, "{what}: max |diff| {worst}");
    worst
}

fn encode(encoder: &Encoder, texts: &[&str], options: &EncodeOptions) -> Vec<Vec<f32>> {
    encoder.encode_with(texts, options).unwrap().embeddings
}

/// `encode(truncate_dim=128)`: cut after the model's Normalize module, not renormalized; with
/// `normalize_embeddings=True`, unit vectors again.
#[test]
fn encode_truncates_after_normalize_as_sentence_transformers() {
    let reference = reference();
    let texts = sentences(&reference);
    let dim = reference["truncate_dim"].as_u64().unwrap() as usize;
    let encoder = Encoder::from_dir(model_dir(), &Default::default()).unwrap();
    assert_eq!((encoder.truncate_dim, encoder.output_dim()), (None, 384));

    let options = EncodeOptions {
        truncate_dim: Some(dim),
        ..EncodeOptions::default()
    };
    let cut = encode(&encoder, &texts, &options);
    assert_close("truncate_dim=128", &cut, &matrix(&reference["truncated"]));
    for e in &cut {
        assert!(norm(e) < 0.99, "renormalized: {}", norm(e));
    }

    let options = EncodeOptions {
        normalize_embeddings: true,
        ..options
    };
    let unit = encode(&encoder, &texts, &options);
    let want = matrix(&reference["truncated_normalized"]);
    assert_close("+ normalize_embeddings", &unit, &want);
    for e in &unit {
        assert!((norm(e) - 1.0).abs() < 1e-5, "not unit length: {}", norm(e));
    }
}

/// `SentenceTransformer(..., truncate_dim=128)`: the model's own width, which `encode` uses
/// unless told another, and which `output_dim` reports (`get_embedding_dimension`); the
/// pipeline's width (`embedding_dim`, what heads read) stays.
#[test]
fn the_model_truncate_dim_is_the_default_and_encode_overrides_it() {
    let reference = reference();
    let texts = sentences(&reference);
    let full = Encoder::from_dir(model_dir(), &Default::default()).unwrap();
    let cut = full.clone().with_truncate_dim(Some(128)).unwrap();
    assert_eq!((cut.output_dim(), cut.embedding_dim()), (128, 384));
    let got = cut.encode(&texts).unwrap();
    assert_close("model truncate_dim", &got, &matrix(&reference["truncated"]));

    let wider = EncodeOptions {
        truncate_dim: Some(256),
        ..EncodeOptions::default()
    };
    let got = encode(&cut, &texts, &wider);
    let whole = full.encode(&texts).unwrap();
    for (g, w) in got.iter().zip(&whole) {
        assert_eq!(g.as_slice(), &w[..256], "encode's truncate_dim wins");
    }
}

/// 0 and more than the model's width are refused, on the model, per call and when a narrower
/// pooling replaces the model's.
#[test]
fn truncate_dim_out_of_range_is_refused() {
    let encoder = Encoder::from_dir(model_dir(), &Default::default()).unwrap();
    for (dim, words) in [(0, "at least 1"), (385, "embedding dimension (384)")] {
        let err = encoder.clone().with_truncate_dim(Some(dim)).unwrap_err();
        assert!(
            matches!(err, PoolingError::TruncateDim(_)) && err.to_string().contains(words),
            "{err}"
        );
        let options = EncodeOptions {
            truncate_dim: Some(dim),
            ..EncodeOptions::default()
        };
        let err = encoder.encode_with(&["x"], &options).unwrap_err();
        assert!(err.to_string().contains(words), "{err}");
    }
    // A pooling narrower than the model's truncate_dim is refused, not cut past its end.
    let wide = encoder
        .with_pooling(&[PoolingMode::Cls, PoolingMode::Mean])
        .unwrap()
        .with_truncate_dim(Some(500))
        .unwrap();
    assert_eq!(wide.encode(&["x"]).unwrap()[0].len(), 500);
    let err = wide.with_pooling(&[PoolingMode::Mean]).unwrap_err();
    assert!(err.to_string().contains("truncate_dim 500"), "{err}");
}

/// A copy of the model folder (links to its files) whose `config_sentence_transformers.json` is
/// `config`.
fn model_with_config(dir: &Path, config: &Value) -> PathBuf {
    let copy = dir.join("model");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "config_sentence_transformers.json" {
            std::os::unix::fs::symlink(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    let path = copy.join("config_sentence_transformers.json");
    std::fs::write(path, config.to_string()).unwrap();
    copy
}

/// A folder saved with `truncate_dim` (as `SentenceTransformer(..., truncate_dim=128).save()`
/// writes it) loads with it, encodes as `encode(truncate_dim=128)`, and is saved with it again;
/// a `truncate_dim` of 0 is refused naming the file.
#[test]
fn a_saved_truncate_dim_is_read_used_and_saved() {
    let reference = reference();
    let texts = sentences(&reference);
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "prompts": {"query": "query: "},
        "default_prompt_name": null,
        "truncate_dim": 128,
    });
    let folder = model_with_config(dir.path(), &config);
    let encoder = Encoder::from_dir(&folder, &Default::default()).unwrap();
    assert_eq!(encoder.truncate_dim, Some(128));
    let got = encoder.encode(&texts).unwrap();
    assert_close("saved truncate_dim", &got, &matrix(&reference["truncated"]));

    let saved = dir.path().join("saved");
    encoder.save_pretrained(&saved).unwrap();
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(saved.join("config_sentence_transformers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["truncate_dim"], 128);
    assert_eq!(written["prompts"]["query"], "query: ");
    let reloaded = Encoder::from_dir(&saved, &Default::default()).unwrap();
    assert_eq!(reloaded.output_dim(), 128);

    let zero = tempfile::tempdir().unwrap();
    let folder = model_with_config(zero.path(), &serde_json::json!({ "truncate_dim": 0 }));
    let err = Encoder::from_dir(&folder, &Default::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("config_sentence_transformers.json") && message.contains("at least 1"),
        "{message}"
    );
}
