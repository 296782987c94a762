//! The same checks on every backend compiled into this build: flex always, tch and wgpu with
//! their cargo features (`cargo xtask test` turns both on).
//!
//! Per backend: embeddings and every pooling mode match Python sentence-transformers on the real
//! all-MiniLM-L6-v2 (the st-pooling fixtures); a few training steps lower the loss, leave frozen
//! parameters bit-identical, move each layer-wise LR group at its own rate, and agree with the
//! same steps on flex (an optimizer step gone wrong on one backend shows up here); and the `st`
//! binary's `--backend` flag encodes like flex.
//!
//! The other families (MPNet, RoBERTa, XLM-R, DistilBERT) are checked against PyTorch on every
//! compiled-in backend by `crates/st-backbone/tests/families.rs`, which the same features enable.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use burn_flex::Flex;
use burn_store::ModuleSnapshot;
use st_backbone::{AutodiffEncoderBackend, BertConfig, BertTokenizer, EncoderBackend, TokenBatch};
use st_heads::MultiTaskModel;
use st_pooling::{EncodeOptions, Pooling, PoolingMode, SentenceEncoder};
use st_train::{
    DataSpec, Decay, Event, Freeze, FreezePlan, LayerwiseLrDecay, TaskOptions, TrainConfig,
    load_trained, train,
};

use common::{manifest_dir, model_dir};

const MIN_COSINE: f64 = 0.9999;

/// The Python reference written by `cargo xtask reference` (st-pooling's parity fixtures).
struct Reference {
    sentences: Vec<String>,
    modes: Vec<String>,
    tensors: Vec<u8>,
}

impl Reference {
    fn get() -> &'static Reference {
        static REF: OnceLock<Reference> = OnceLock::new();
        REF.get_or_init(|| {
            let fixtures = manifest_dir().join("../st-pooling/tests/fixtures");
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
                sentences: strings("sentences"),
                modes: strings("modes"),
                tensors: std::fs::read(fixtures.join("reference.safetensors")).unwrap(),
            }
        })
    }

    fn tensor(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        st.tensor(name)
            .unwrap_or_else(|_| panic!("fixture has no tensor {name}"))
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// The largest element-wise difference, relative to the larger of 1 and the vector's largest
/// magnitude (unit-length embeddings are compared absolutely; raw pooled states by scale).
fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let scale = b.iter().fold(1f64, |m, x| m.max((*x as f64).abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0f64, f64::max)
        / scale
}

/// Per-row agreement with Python: same row count, cosine ≥ [`MIN_COSINE`] and max |diff| ≤ 1e-4.
fn assert_rows_match(what: &str, got: &[Vec<f32>], want: &[f32]) {
    assert_eq!(got.len() * 384, want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(want.chunks(384)).enumerate() {
        let c = cosine(g, w);
        assert!(c >= MIN_COSINE, "{what}, sentence {i}: cosine {c:.7}");
        let d = max_diff(g, w);
        assert!(d <= 1e-4, "{what}, sentence {i}: max |diff| {d:e}");
    }
}

fn embeddings_match_python<B: EncoderBackend>(device: &B::Device) {
    let reference = Reference::get();
    let encoder = SentenceEncoder::<B>::from_dir(model_dir(), device).unwrap();
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();

    // Batches of 4 (length-sorted), so the one 256-token sentence pads 3 others, not 19:
    // software Vulkan (CI's wgpu) spends minutes on padding otherwise.
    let options = EncodeOptions {
        batch_size: 4,
        ..EncodeOptions::default()
    };
    let got = encoder.encode_with(&texts, &options).unwrap().embeddings;
    assert_rows_match("embeddings", &got, &reference.tensor("embeddings"));

    // Every pooling mode over padded batches: the long sentence alone, the others together.
    let (long, short): (Vec<usize>, Vec<usize>) =
        (0..texts.len()).partition(|&i| texts[i].len() > 1000);
    assert_eq!(
        long.len(),
        1,
        "the reference has one sentence past 256 tokens"
    );
    for rows in [&short, &long] {
        let batch: Vec<&str> = rows.iter().map(|&i| texts[i]).collect();
        let encoded = encoder.tokenize(&batch).unwrap();
        let encoded: Vec<_> = encoded.iter().collect();
        let input = TokenBatch::pad(&encoded, encoder.tokenizer.pad_id()).to_input::<B>(device);
        let mask = input.attention_mask.clone();
        let hidden = encoder.bert.forward(input);
        for name in &reference.modes {
            let mode: PoolingMode = name.parse().unwrap();
            let got = mode
                .pool(hidden.clone(), mask.clone())
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap();
            let got: Vec<Vec<f32>> = got.chunks(384).map(<[f32]>::to_vec).collect();
            let want = reference.tensor(&format!("pool.{name}"));
            let want: Vec<f32> = rows
                .iter()
                .flat_map(|&i| want[i * 384..(i + 1) * 384].iter().copied())
                .collect();
            assert_rows_match(&format!("{name} pooling"), &got, &want);
        }
    }
}

/// Reduced precision (bf16 weights and activations in the BERT): final embeddings stay within
/// cosine 0.999 of Python's fp32 ones, and really are computed differently from fp32.
fn bf16_embeddings_stay_close<B: EncoderBackend>(device: &B::Device) {
    let reference = Reference::get();
    let full = SentenceEncoder::<B>::from_dir(model_dir(), device).unwrap();
    let half = full.clone().with_bert_dtype(burn::tensor::FloatDType::BF16);
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let (got, exact) = (half.encode(&texts).unwrap(), full.encode(&texts).unwrap());
    let want = reference.tensor("embeddings");
    let mut moved = 0;
    for (i, (g, w)) in got.iter().zip(want.chunks(384)).enumerate() {
        let c = cosine(g, w);
        assert!(c >= 0.999, "embedding {i}: cosine {c:.5} in bf16");
        moved += usize::from(g != &exact[i]);
    }
    assert!(
        moved > texts.len() / 2,
        "bf16 gave fp32's numbers: not computed in bf16"
    );
}

fn dataset(name: &str) -> PathBuf {
    manifest_dir()
        .join("../../datasets/topic_sentiment")
        .join(name)
}

/// A 2-layer random BERT with two fresh heads (topic, sentiment), saved the way `st train`
/// saves, so every backend starts from the same weights.
fn tiny_trained_model(dir: &Path) {
    let text = std::fs::read_to_string(dataset("train.jsonl")).unwrap();
    let mut words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    words.sort();
    words.dedup();
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", ",", "'", "\""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(words);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n")).unwrap();
    let config = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..BertConfig::tiny(vocab.len())
    };
    let device = Default::default();
    // A fixed initialization, so every run of this test trains the same model.
    <Flex as Backend>::seed(&device, 7);
    let bert = config.init::<Flex>(false, &device);
    let tokenizer = BertTokenizer::from_dir(dir, 64).unwrap();
    let pooling = Pooling::new([PoolingMode::Mean], config.hidden_size).unwrap();
    let encoder = SentenceEncoder::new(bert, config, tokenizer, pooling, true).unwrap();
    let examples = st_train::data::load(&DataSpec::new(dataset("train.jsonl"))).unwrap();
    let dim = encoder.embedding_dim();
    let specs = st_train::batch::head_specs(&examples, &BTreeMap::new(), dim).unwrap();
    let model = MultiTaskModel::new(encoder, specs, &device).unwrap();
    model.encoder.save_pretrained(dir).unwrap();
    model.save_heads(dir).unwrap();
}

/// Every float tensor of a module, by path.
fn snapshot<B: Backend, M: Module<B>>(m: &M) -> BTreeMap<String, Vec<f32>> {
    m.collect(None, None, false)
        .into_iter()
        .map(|s| {
            let data = s.to_data().unwrap().convert::<f32>();
            (s.full_path(), data.to_vec::<f32>().unwrap())
        })
        .collect()
}

/// Full-batch steps (the whole 200-example set each step, so losses are comparable), no
/// dropout, bottom layer and embeddings frozen, layer-wise rates: layer.1 at 5e-4, heads 4e-3.
fn config(model: &Path, out: &Path, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new(
        model.to_string_lossy(),
        vec![DataSpec::new(dataset("train.jsonl"))],
        out,
    );
    c.batch_size = 200;
    c.epochs = steps;
    c.max_steps = Some(steps);
    c.warmup_ratio = 0.0;
    c.schedule = Decay::Constant;
    c.weight_decay = 0.0;
    c.max_grad_norm = None;
    c.lr = LayerwiseLrDecay {
        base: 1e-3,
        decay: 0.5,
        head_lr: Some(4e-3),
        overrides: vec![],
    };
    c.freeze = FreezePlan {
        rules: vec![Freeze::Bottom(1)],
        gradual: None,
    };
    let no_dropout = TaskOptions {
        dropout: Some(0.0),
        ..Default::default()
    };
    c.tasks = ["topic", "sentiment"]
        .into_iter()
        .map(|t| (t.to_string(), no_dropout.clone()))
        .collect();
    c
}

/// Runs `steps` training steps on `B`; returns the summed task loss of each step and the
/// trained parameters.
fn run<B: AutodiffEncoderBackend>(
    model: &Path,
    out: &Path,
    steps: usize,
    device: &B::Device,
) -> (Vec<f64>, BTreeMap<String, Vec<f32>>) {
    let mut losses = Vec::new();
    let mut reused = false;
    train::<B>(
        &config(model, out, steps),
        model,
        device,
        &mut |e| match e {
            Event::Step { losses: l, .. } => losses.push(l.iter().map(|(_, loss, _)| loss).sum()),
            Event::Note(n) => reused |= n.contains("topic") && n.contains("sentiment"),
            _ => {}
        },
    )
    .unwrap();
    assert!(reused, "the saved heads were not taken over");
    let trained = load_trained::<Flex>(out, &Default::default()).unwrap();
    let mut params = snapshot(&trained.encoder);
    for (k, v) in snapshot(&trained.heads) {
        params.insert(format!("heads.{k}"), v);
    }
    (losses, params)
}

fn median_step(
    before: &BTreeMap<String, Vec<f32>>,
    after: &BTreeMap<String, Vec<f32>>,
    prefix: &str,
) -> f64 {
    let mut deltas: Vec<f64> = Vec::new();
    for (path, b) in before {
        if path.contains(prefix) && path.ends_with("weight") {
            for (x, y) in b.iter().zip(&after[path]) {
                let d = (x - y).abs() as f64;
                if d > 1e-9 {
                    deltas.push(d);
                }
            }
        }
    }
    assert!(!deltas.is_empty(), "nothing under {prefix} moved");
    deltas.sort_by(f64::total_cmp);
    deltas[deltas.len() / 2]
}

/// Burn's CPU random generator is process-wide: training runs hold this lock.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn training_steps<B: AutodiffEncoderBackend>(device: &B::Device) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    tiny_trained_model(&model);
    let start = {
        let m = load_trained::<Flex>(&model, &Default::default()).unwrap();
        let mut p = snapshot(&m.encoder);
        for (k, v) in snapshot(&m.heads) {
            p.insert(format!("heads.{k}"), v);
        }
        p
    };

    // One step: each group moves by ≈ its rate (Adam's first step is ≈ lr·sign(g)), frozen
    // tensors not at all, and the result agrees with flex.
    let (_, one) = run::<B>(&model, &dir.path().join("one"), 1, device);
    for (path, values) in &start {
        if path.contains("embeddings.") || path.contains("encoder.layer.0.") {
            assert_eq!(&one[path], values, "{path} is frozen but changed");
        }
    }
    for (prefix, lr) in [("encoder.layer.1.", 5e-4), ("heads.", 4e-3)] {
        let got = median_step(&start, &one, prefix);
        assert!(
            (got / lr - 1.0).abs() < 0.1,
            "{prefix}: median step {got:e}, lr {lr:e}"
        );
    }
    let (_, flex) = run::<Autodiff<Flex>>(&model, &dir.path().join("flex"), 1, &Default::default());
    let (mut total, mut close, mut worst) = (0usize, 0usize, 0f32);
    for (path, want) in &flex {
        for (g, w) in one[path].iter().zip(want) {
            let d = (g - w).abs();
            total += 1;
            close += usize::from(d <= 1e-5);
            worst = worst.max(d);
        }
    }
    // A parameter whose gradient is ~0 may step either way (±lr) on two backends; anything
    // beyond 2·lr, or many disagreements, is a wrong update.
    assert!(
        worst <= 2.0 * 4e-3 + 1e-5 && close as f64 >= 0.99 * total as f64,
        "one step differs from flex: {} of {total} values off by > 1e-5, worst {worst:e}",
        total - close
    );

    // Five full-batch steps with a constant rate: the loss goes down at every step.
    let (losses, _) = run::<B>(&model, &dir.path().join("five"), 5, device);
    assert_eq!(losses.len(), 5);
    let falls = losses.windows(2).all(|w| w[1] < w[0] + 1e-4);
    assert!(
        falls && losses[4] < losses[0] * 0.995,
        "loss did not decrease: {losses:?}"
    );
}

/// `st --backend NAME encode` gives flex's embeddings.
#[cfg(any(feature = "tch", feature = "wgpu"))]
fn cli_backend_flag(backend: &str) {
    let texts = ["A man is eating food.", "Le chat dort sur le canapé."];
    let encode = |backend: &str| -> Vec<Vec<f32>> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_st"))
            .args(["--backend", backend, "encode", "--model"])
            .arg(model_dir())
            .args(texts)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "st --backend {backend} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    let (flex, other) = (encode("flex"), encode(backend));
    assert_eq!(other.len(), texts.len());
    for (a, b) in flex.iter().zip(&other) {
        let c = cosine(a, b);
        assert!(
            c >= MIN_COSINE,
            "--backend {backend}: cosine {c:.7} to flex"
        );
        let d = max_diff(b, a);
        assert!(d <= 1e-4, "--backend {backend}: max |diff| {d:e} to flex");
    }
}

mod flex {
    use super::*;

    #[test]
    fn embeddings_match_python() {
        super::embeddings_match_python::<Flex>(&Default::default());
    }

    #[test]
    fn training_steps() {
        super::training_steps::<Autodiff<Flex>>(&Default::default());
    }

    #[test]
    fn bf16_embeddings_stay_close() {
        super::bf16_embeddings_stay_close::<Flex>(&Default::default());
    }

    #[test]
    fn backends_left_out_are_named() {
        for (backend, compiled) in [
            ("tch", cfg!(feature = "tch")),
            ("wgpu", cfg!(feature = "wgpu")),
        ] {
            if compiled {
                continue;
            }
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_st"))
                .args(["--backend", backend, "encode", "x"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(
                err.contains(&format!("--features {backend}")),
                "{backend}: {err}"
            );
        }
    }
}

#[cfg(feature = "tch")]
mod tch {
    use super::*;
    use burn_tch::{LibTorch, LibTorchDevice};

    #[test]
    fn embeddings_match_python() {
        super::embeddings_match_python::<LibTorch>(&LibTorchDevice::Cpu);
    }

    #[test]
    fn training_steps() {
        super::training_steps::<Autodiff<LibTorch>>(&LibTorchDevice::Cpu);
    }

    #[test]
    fn cli_backend_flag() {
        super::cli_backend_flag("tch");
    }

    #[test]
    fn bf16_embeddings_stay_close() {
        super::bf16_embeddings_stay_close::<LibTorch>(&LibTorchDevice::Cpu);
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn_wgpu::{Wgpu, WgpuDevice};

    #[test]
    fn embeddings_match_python() {
        super::embeddings_match_python::<Wgpu>(&WgpuDevice::DefaultDevice);
    }

    #[test]
    fn training_steps() {
        super::training_steps::<Autodiff<Wgpu>>(&WgpuDevice::DefaultDevice);
    }

    #[test]
    fn cli_backend_flag() {
        super::cli_backend_flag("wgpu");
    }
}
