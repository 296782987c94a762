//! MPNet, RoBERTa, XLM-RoBERTa and DistilBERT against PyTorch: tiny random models that
//! `xtask/py/tiny_families.py` built with `transformers` (each with a tokenizer of its real kind:
//! WordPiece with `<s>`/`</s>`, byte-level BPE, Unigram, WordPiece), saved as
//! sentence-transformers folders together with the ids and hidden states PyTorch computed
//! (`tests/fixtures/<family>/`).
//!
//! The parity checks run on every backend compiled in: flex always; libtorch and wgpu with this
//! crate's `tch` / `wgpu` features (`cargo xtask test --backends tch,wgpu` turns them on), where
//! RoBERTa-style positions (a cumulative sum over the non-padding mask, MPNet's too) and MPNet's
//! relative-position bias run as those backends' own tensor operations.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Tensor;
use burn_flex::Flex;
use burn_store::{ModuleStore, SafetensorsStore};
use serde_json::Value;
use st_backbone::{Architecture, BertModel, BertTokenizer, Encoded, EncoderBackend, TokenBatch};

type B = Flex;

/// PyTorch and burn-flex (or libtorch, or wgpu) sum in different orders; on 2 layers of width
/// 32 that stays far below.
const TOLERANCE: f32 = 1e-5;

/// Every family, its fixture folder and the architecture st must read from its config.
#[cfg(any(feature = "tch", feature = "wgpu"))]
const FAMILIES: [(&str, Architecture); 4] = [
    ("mpnet", Architecture::MPNet),
    ("roberta", Architecture::Roberta),
    ("xlm-roberta", Architecture::XlmRoberta),
    ("distilbert", Architecture::DistilBert),
];

fn fixture(family: &str) -> (PathBuf, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(family);
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    (dir.join("model"), serde_json::from_str(&text).unwrap())
}

/// Every number in a nested JSON array, flattened in row-major order.
fn flat(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        v => vec![v.as_f64().unwrap()],
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Tokenizes the fixture's sentences as st does and checks the ids, unpadded and padded.
fn tokenize(dir: &Path, expected: &Value) -> TokenBatch {
    let max_len = expected["max_seq_length"].as_u64().unwrap() as usize;
    let tokenizer = BertTokenizer::from_dir(dir, max_len).unwrap();
    let sentences: Vec<&str> = expected["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let encoded = tokenizer.encode(&sentences).unwrap();
    for (i, enc) in encoded.iter().enumerate() {
        let want: Vec<u32> = flat(&expected["ids"][i])
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(enc.ids, want, "token ids of {:?}", sentences[i]);
    }
    let rows: Vec<&Encoded> = encoded.iter().collect();
    let batch = TokenBatch::pad(&rows, tokenizer.pad_id());
    let want_ids: Vec<i64> = flat(&expected["input_ids"])
        .iter()
        .map(|&v| v as i64)
        .collect();
    assert_eq!(
        batch.input_ids,
        want_ids,
        "padded ids (pad id {})",
        tokenizer.pad_id()
    );
    let want_mask: Vec<i64> = flat(&expected["attention_mask"])
        .iter()
        .map(|&v| v as i64)
        .collect();
    assert_eq!(batch.attention_mask, want_mask);
    batch
}

fn hidden<E: EncoderBackend>(model: &BertModel<E>, batch: &TokenBatch) -> Vec<f32> {
    let device = model.devices().into_iter().next().unwrap();
    let output: Tensor<E, 3> = model.forward(batch.to_input::<E>(&device));
    output.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Mean pooling over real tokens, as the fixture's `1_Pooling` does.
fn mean_pool(hidden: &[f32], batch: &TokenBatch, width: usize) -> Vec<f32> {
    let mut pooled = vec![0.0; batch.batch * width];
    for (row, len) in batch.lengths().into_iter().enumerate() {
        for token in 0..len {
            let at = (row * batch.seq_len + token) * width;
            for d in 0..width {
                pooled[row * width + d] += hidden[at + d] / len as f32;
            }
        }
    }
    pooled
}

/// Ids identical, every token embedding (padding positions included: their position ids are
/// the padding index) and the mean-pooled sentence embeddings within `tolerance` of PyTorch, on
/// backend `E`. Returns the model and batch for more.
fn check_parity<E: EncoderBackend>(
    family: &str,
    architecture: Architecture,
    device: &E::Device,
    tolerance: f32,
) -> (BertModel<E>, TokenBatch) {
    let (dir, expected) = fixture(family);
    let batch = tokenize(&dir, &expected);
    let (model, config) = BertModel::<E>::from_pretrained(&dir, device).unwrap();
    assert_eq!(model.architecture(), architecture);
    assert_eq!(
        architecture.hf_class(),
        expected["hf_class"].as_str().unwrap()
    );
    let got = hidden(&model, &batch);
    let want: Vec<f32> = flat(&expected["last_hidden_state"])
        .iter()
        .map(|&v| v as f32)
        .collect();
    let token_diff = max_diff(&got, &want);
    let pooled = mean_pool(&got, &batch, config.hidden_size);
    let want: Vec<f32> = flat(&expected["sentence_embeddings"])
        .iter()
        .map(|&v| v as f32)
        .collect();
    let sentence_diff = max_diff(&pooled, &want);
    let backend = E::name(device);
    eprintln!(
        "{family} on {backend}: max |diff| tokens {token_diff:.2e}, sentences {sentence_diff:.2e}"
    );
    assert!(
        token_diff <= tolerance,
        "{family} on {backend}: token embeddings differ by {token_diff}"
    );
    assert!(
        sentence_diff <= tolerance,
        "{family} on {backend}: sentence embeddings differ by {sentence_diff}"
    );
    (model, batch)
}

/// Saved again by st, the folder holds exactly the keys `transformers` wrote (so
/// `AutoModel.from_pretrained` loads it: the script checked the original folder loads with no
/// key missing or unexpected), names the right class, and reloads to the same numbers. With
/// `ST_FAMILIES_SAVED=DIR` the folders are also kept in `DIR/<family>` for Python to check.
fn check_round_trip(family: &str, model: &BertModel<B>, batch: &TokenBatch) -> Value {
    let (dir, expected) = fixture(family);
    let config = st_backbone::BertConfig::from_file(dir.join("config.json")).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(&config, out.path()).unwrap();
    if let Some(keep) = std::env::var_os("ST_FAMILIES_SAVED") {
        // `cargo xtask reference` then has Python load these (`tiny_families.py --check`).
        model
            .save_pretrained(&config, &Path::new(&keep).join(family))
            .unwrap();
    }
    let mut store = SafetensorsStore::from_file(out.path().join("model.safetensors"));
    let mut keys = store.keys().unwrap();
    keys.sort();
    let want: Vec<&str> = expected["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys, want, "{family}: saved key names");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["architectures"][0], expected["hf_class"]);
    let (reloaded, _) = BertModel::<B>::from_pretrained(out.path(), &Default::default()).unwrap();
    assert_eq!(
        hidden(&reloaded, batch),
        hidden(model, batch),
        "{family}: reload"
    );
    saved
}

fn check_flex(family: &str, architecture: Architecture) -> (BertModel<B>, TokenBatch) {
    check_parity::<B>(family, architecture, &Default::default(), TOLERANCE)
}

#[test]
fn mpnet_matches_pytorch_and_round_trips() {
    let (model, batch) = check_flex("mpnet", Architecture::MPNet);
    let saved = check_round_trip("mpnet", &model, &batch);
    assert_eq!(saved["model_type"], "mpnet");
    assert_eq!(saved["relative_attention_num_buckets"], 32);
}

#[test]
fn roberta_matches_pytorch_and_round_trips() {
    let (model, batch) = check_flex("roberta", Architecture::Roberta);
    let saved = check_round_trip("roberta", &model, &batch);
    assert_eq!(saved["model_type"], "roberta");
    assert_eq!(saved["type_vocab_size"], 1);
}

#[test]
fn xlm_roberta_matches_pytorch_and_round_trips() {
    let (model, batch) = check_flex("xlm-roberta", Architecture::XlmRoberta);
    let saved = check_round_trip("xlm-roberta", &model, &batch);
    assert_eq!(saved["model_type"], "xlm-roberta");
}

#[test]
fn distilbert_matches_pytorch_and_round_trips() {
    let (model, batch) = check_flex("distilbert", Architecture::DistilBert);
    let saved = check_round_trip("distilbert", &model, &batch);
    // DistilBertConfig reads only its own names: BERT's would load as defaults in Python.
    assert_eq!(
        (saved["dim"].as_u64(), saved["hidden_dim"].as_u64()),
        (Some(32), Some(37))
    );
    assert_eq!(
        (saved["n_layers"].as_u64(), saved["n_heads"].as_u64()),
        (Some(2), Some(4))
    );
    assert!(saved.get("hidden_size").is_none() && saved.get("intermediate_size").is_none());
}

/// Padding-aware positions (RoBERTa's, and MPNet's with padding index 1): a sentence alone
/// and inside a padded batch agree, and the tokenizer pads with `<pad>` (id 1), which those
/// positions key on.
fn padding_never_changes_a_sentence<E: EncoderBackend>(family: &str, device: &E::Device) {
    let (dir, expected) = fixture(family);
    let batch = tokenize(&dir, &expected);
    assert_eq!(
        batch.input_ids[batch.seq_len * 2 + 2],
        1,
        "{family}: row 2 is padded with <pad>"
    );
    let (model, _) = BertModel::<E>::from_pretrained(&dir, device).unwrap();
    let all = hidden(&model, &batch);
    let width = model.hidden_size();
    let first_len = batch.lengths()[0];
    let ids: Vec<u32> = batch.input_ids[..first_len]
        .iter()
        .map(|&v| v as u32)
        .collect();
    let alone = Encoded {
        type_ids: vec![0; ids.len()],
        ids,
        truncated: false,
    };
    let single = hidden(&model, &TokenBatch::pad(&[&alone], 1));
    let diff = max_diff(&single, &all[..first_len * width]);
    assert!(diff <= TOLERANCE, "{family}: alone vs batched: {diff}");
}

#[test]
fn padding_never_changes_a_roberta_or_mpnet_sentence() {
    for family in ["roberta", "mpnet"] {
        padding_never_changes_a_sentence::<B>(family, &Default::default());
    }
}

/// Every family on backend `E`, and padding-aware positions computed there.
#[cfg(any(feature = "tch", feature = "wgpu"))]
fn every_family_matches_pytorch<E: EncoderBackend>(device: &E::Device, tolerance: f32) {
    for (family, architecture) in FAMILIES {
        check_parity::<E>(family, architecture, device, tolerance);
    }
    for family in ["roberta", "mpnet"] {
        padding_never_changes_a_sentence::<E>(family, device);
    }
}

#[cfg(feature = "tch")]
#[test]
fn every_family_matches_pytorch_on_libtorch() {
    every_family_matches_pytorch::<burn_tch::LibTorch>(&burn_tch::LibTorchDevice::Cpu, TOLERANCE);
}

#[cfg(feature = "wgpu")]
#[test]
fn every_family_matches_pytorch_on_wgpu() {
    every_family_matches_pytorch::<burn_wgpu::Wgpu>(
        &burn_wgpu::WgpuDevice::DefaultDevice,
        TOLERANCE,
    );
}
