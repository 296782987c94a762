//! Behaviour of the encoder on a tiny random BERT: no download needed.

use burn::tensor::Tensor;
use burn_flex::Flex;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use st_backbone::{BertConfig, BertModel, BertTokenizer, Encoded, TokenBatch};

type B = Flex;

fn row(ids: &[u32]) -> Encoded {
    Encoded {
        ids: ids.to_vec(),
        type_ids: vec![0; ids.len()],
        truncated: false,
    }
}

fn run(model: &BertModel<B>, rows: &[Encoded]) -> Tensor<B, 3> {
    let refs: Vec<&Encoded> = rows.iter().collect();
    model.forward(TokenBatch::pad(&refs, 0).to_input::<B>(&Default::default()))
}

fn values(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tiny() -> (BertConfig, BertModel<B>) {
    let config = BertConfig::tiny(50);
    let model = config.init::<B>(true, &Default::default());
    (config, model)
}

#[test]
fn padding_never_changes_a_sentence() {
    let (_, model) = tiny();
    let short = row(&[2, 11, 12, 3]);
    let alone = values(run(&model, std::slice::from_ref(&short)));
    let batch = run(&model, &[row(&[2, 20, 21, 22, 23, 24, 25, 3]), short]);
    // Row 1, first 4 positions, against the sentence run alone.
    let padded = values(batch.narrow(0, 1, 1).narrow(1, 0, 4));
    assert!(
        max_diff(&alone, &padded) < 1e-5,
        "{}",
        max_diff(&alone, &padded)
    );
}

#[test]
fn batch_order_does_not_change_results() {
    let (_, model) = tiny();
    let a = row(&[2, 5, 6, 7, 3]);
    let b = row(&[2, 8, 9, 10, 11, 3]);
    let ab = run(&model, &[a.clone(), b.clone()]);
    let ba = run(&model, &[b, a]);
    let d = max_diff(
        &values(ab.clone().narrow(0, 0, 1)),
        &values(ba.clone().narrow(0, 1, 1)),
    );
    assert!(d < 1e-5, "{d}");
    let d = max_diff(&values(ab.narrow(0, 1, 1)), &values(ba.narrow(0, 0, 1)));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn forward_all_returns_every_layer() {
    let (config, model) = tiny();
    let refs = [row(&[2, 4, 3])];
    let out = model.forward_all(
        TokenBatch::pad(&refs.iter().collect::<Vec<_>>(), 0).to_input(&Default::default()),
    );
    let states = out.hidden_states.unwrap();
    assert_eq!(states.len(), config.num_hidden_layers + 1);
    let last = values(states.last().unwrap().clone());
    assert_eq!(last, values(out.last_hidden_state));
}

#[test]
fn save_and_load_round_trip_with_hugging_face_names() {
    let (config, model) = tiny();
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(&config, dir.path()).unwrap();

    // Hugging Face key names in the file.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    for key in [
        "embeddings.LayerNorm.weight",
        "encoder.layer.1.attention.self.query.weight",
        "encoder.layer.0.output.LayerNorm.bias",
        "pooler.dense.weight",
    ] {
        assert!(
            header.contains(&format!("\"{key}\"")),
            "{key} not in {header}"
        );
    }

    let (loaded, loaded_config) =
        BertModel::<B>::from_pretrained(dir.path(), &Default::default()).unwrap();
    assert_eq!(loaded_config, config);
    let input = [row(&[2, 7, 8, 9, 3])];
    assert_eq!(values(run(&model, &input)), values(run(&loaded, &input)));
}

#[test]
fn missing_tensors_are_listed() {
    let (config, model) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut store = SafetensorsStore::from_file(&path).with_regex("^embeddings");
    model.save_into(&mut store).unwrap();
    let err = BertModel::<B>::from_checkpoint(&config, &path, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        err.contains("missing: encoder.layer.0.attention.self_attn.query.weight"),
        "{err}"
    );
}

#[test]
fn shape_mismatches_are_listed() {
    let (config, model) = tiny();
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(&config, dir.path()).unwrap();
    let wider = BertConfig {
        intermediate_size: 48,
        ..config
    };
    let err = BertModel::<B>::from_checkpoint(
        &wider,
        &dir.path().join("model.safetensors"),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("mismatch") && err.contains("intermediate.dense.weight"),
        "{err}"
    );
}

#[test]
fn bert_prefixed_checkpoints_load() {
    let (config, model) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // Save the way BertForSequenceClassification does: everything under `bert.`.
    let mut store = SafetensorsStore::from_file(&path)
        .with_to_adapter(burn_store::BurnToPyTorchAdapter)
        .with_key_remapping(r"layer_norm\.", "LayerNorm.")
        .with_key_remapping(r"\.attention\.self_attn\.", ".attention.self.")
        .with_key_remapping(r"^", "bert.");
    model.save_into(&mut store).unwrap();
    let loaded = BertModel::<B>::from_checkpoint(&config, &path, &Default::default()).unwrap();
    let input = [row(&[2, 30, 31, 3])];
    assert_eq!(values(run(&model, &input)), values(run(&loaded, &input)));
}

#[test]
fn a_folder_without_config_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = BertModel::<B>::from_pretrained(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn corrupt_weights_are_an_error_naming_the_file() {
    let (config, _) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = BertModel::<B>::from_checkpoint(&config, &path, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn vocab_txt_builds_the_bert_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s", "!",
    ];
    std::fs::write(dir.path().join("vocab.txt"), vocab.join("\n")).unwrap();
    let tok = BertTokenizer::from_dir(dir.path(), 6).unwrap();
    let out = tok
        .encode(&["Hello Worlds!", "hello hello hello hello hello", ""])
        .unwrap();
    assert_eq!(out[0].ids, vec![2, 4, 5, 6, 7, 3]);
    assert!(!out[0].truncated);
    // Cut at 6 tokens, [SEP] kept.
    assert_eq!(out[1].ids, vec![2, 4, 4, 4, 4, 3]);
    assert!(out[1].truncated);
    assert_eq!(out[2].ids, vec![2, 3]);
    assert_eq!(tok.pad_id(), 0);
}

/// A `pytorch_model.bin` as bert-base-uncased ships it (keys under `bert.`, LayerNorm
/// gamma/beta, a `cls.` masked-LM head, gelu_new), written by `xtask/py/tiny_bin.py`, must load
/// and reproduce PyTorch's hidden states on a padded batch.
#[test]
fn pytorch_bin_checkpoints_match_pytorch() {
    use burn::tensor::{Int, TensorData};
    let dir = manifest_dir().join("tests/fixtures/tiny_bin");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let (model, config) = BertModel::<B>::from_pretrained(&dir, &Default::default()).unwrap();
    assert_eq!(config.hidden_act, st_backbone::HiddenAct::GeluApprox);
    let matrix = |key: &str| -> Vec<i64> {
        expected[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
            .collect()
    };
    let device = Default::default();
    let ids = matrix("input_ids");
    let mask = matrix("attention_mask");
    let shape = [2, ids.len() / 2];
    let input = st_backbone::BertInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, shape), &device),
        attention_mask: Tensor::<B, 2, Int>::from_data(
            TensorData::new(mask.clone(), shape),
            &device,
        ),
        token_type_ids: Tensor::<B, 2, Int>::zeros(shape, &device),
    };
    let got = values(model.forward(input));
    let want: Vec<f32> = expected["last_hidden_state"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter())
        .flat_map(|t| {
            t.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    // Compare real tokens only (padding positions are unspecified).
    for (pos, m) in mask.iter().enumerate() {
        if *m == 1 {
            let d = max_diff(
                &got[pos * 32..(pos + 1) * 32],
                &want[pos * 32..(pos + 1) * 32],
            );
            assert!(d < 1e-5, "token {pos}: max |diff| {d}");
        }
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
