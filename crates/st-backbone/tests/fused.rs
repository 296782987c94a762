//! burn-flex's fused encoder operations ([`EncoderBackend`]) against the composed tensor code
//! they replace (the modules' own `forward`), on a random model with awkward sizes (hidden 36,
//! head 12, feed-forward 50: none a multiple of 16) and awkward batches (sequence 1, 2 and 257;
//! one long row among many short ones), at every kernel level this CPU has.

mod common;

use burn::module::Module;
use burn::tensor::{Bool, Distribution, Int, Tensor};
use burn_flex::{Flex, FlexDevice};
use common::composed_forward;
use st_backbone::{BertConfig, BertInput, BertModel, EncoderBackend, HiddenAct};

type B = Flex;

fn model() -> BertModel<B> {
    model_with(HiddenAct::Gelu)
}

fn model_with(hidden_act: HiddenAct) -> BertModel<B> {
    let config = BertConfig {
        hidden_act,
        hidden_size: 36,
        num_attention_heads: 3,
        intermediate_size: 50,
        num_hidden_layers: 2,
        max_position_embeddings: 300,
        ..BertConfig::tiny(97)
    };
    config.init::<B>(false, &FlexDevice)
}

/// A batch padded to its longest row; `lengths` real tokens per row.
fn batch(lengths: &[usize], seed: u64) -> BertInput<B> {
    batch_on::<B>(lengths, seed)
}

fn batch_on<T: burn::tensor::backend::Backend<Device = FlexDevice>>(
    lengths: &[usize],
    seed: u64,
) -> BertInput<T> {
    let seq = *lengths.iter().max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    let mut s = seed;
    for &len in lengths {
        for t in 0..seq {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ids.push(if t < len {
                1 + (s >> 33) as i32 % 96
            } else {
                0
            });
            mask.push(i32::from(t < len));
        }
    }
    let shape = [lengths.len(), seq];
    let tensor =
        |v: Vec<i32>| Tensor::<T, 1, Int>::from_ints(v.as_slice(), &FlexDevice).reshape(shape);
    BertInput {
        input_ids: tensor(ids),
        attention_mask: tensor(mask),
        token_type_ids: Tensor::zeros(shape, &FlexDevice),
    }
}

const BATCHES: &[&[usize]] = &[&[1], &[2], &[257], &[40, 1, 3, 2, 5, 1, 7, 4], &[2, 1]];

fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Every fused op and the whole model, at whatever level `ST_KERNELS` gives this process.
#[test]
fn fused_ops_match_composed_code() {
    let model = model();
    for (i, lengths) in BATCHES.iter().enumerate() {
        let input = batch(lengths, i as u64 + 1);
        let padding: Tensor<B, 2, Bool> = input.attention_mask.clone().equal_elem(0);
        let [n, seq] = input.input_ids.dims();
        let x = Tensor::<B, 3>::random([n, seq, 36], Distribution::Normal(0.0, 1.0), &FlexDevice);
        let layer = &model.encoder.layer[0];
        let attn = &layer.attention.self_attn;
        let what = format!("batch {lengths:?} at {}", st_kernels::Level::active());

        let fused = B::self_attention(attn, x.clone(), padding.clone(), None);
        let composed = attn.forward(x.clone(), padding.clone());
        assert!(max_diff(fused, composed) < 1e-5, "self_attention, {what}");

        // MPNet's relative-position bias: one [seq, seq] table per head.
        let position = Tensor::<B, 4>::random(
            [1, 3, seq, seq],
            Distribution::Normal(0.0, 2.0),
            &FlexDevice,
        );
        let fused = B::self_attention(attn, x.clone(), padding.clone(), Some(position.clone()));
        let composed = attn.forward_with_position_bias(x.clone(), padding.clone(), Some(position));
        let diff = max_diff(fused, composed);
        assert!(
            diff < 1e-5,
            "self_attention with position bias {diff}, {what}"
        );

        let residual =
            Tensor::<B, 3>::random([n, seq, 36], Distribution::Normal(0.0, 1.0), &FlexDevice);
        let out = &layer.attention.output;
        let diff = max_diff(
            B::self_output(out, x.clone(), residual.clone()),
            out.forward(x.clone(), residual),
        );
        assert!(diff < 1e-4, "self_output {diff}, {what}");

        let inter = &layer.intermediate;
        let diff = max_diff(B::intermediate(inter, x.clone()), inter.forward(x));
        assert!(diff < 1e-5, "intermediate {diff}, {what}");

        let fused = model.forward(input.clone());
        let composed = composed_forward(&model, input);
        let diff = max_diff(fused, composed);
        assert!(diff < 1e-4, "whole model {diff}, {what}");
    }
}

/// Reruns [`fused_ops_match_composed_code`] in a child process per kernel level the CPU has
/// (`ST_KERNELS` is read once per process).
#[test]
fn fused_ops_match_composed_code_at_every_level() {
    if std::env::var_os("ST_KERNELS").is_some() {
        return; // already a child
    }
    let exe = std::env::current_exe().unwrap();
    for level in st_kernels::Level::ALL.into_iter().filter(|l| l.supported()) {
        let out = std::process::Command::new(&exe)
            .args(["--exact", "fused_ops_match_composed_code", "--nocapture"])
            .env("ST_KERNELS", level.name())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "at ST_KERNELS={level}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("1 passed"),
            "the child ran no test at {level}: {stdout}"
        );
    }
}

/// Cosine of two vectors.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// int8 projections: every token's output stays within cosine 0.99 of float32's, yet differs
/// from it (the int8 kernels really ran), on every awkward batch and with each activation (the
/// fused GELU and the composed others run after the int8 product).
#[test]
fn int8_linears_stay_close_to_float32() {
    for act in [HiddenAct::Gelu, HiddenAct::GeluApprox, HiddenAct::Relu] {
        let float = model_with(act);
        // Parameters are initialized lazily, and a clone of an uninitialized one draws its own
        // values: run the model once so the int8 copy quantizes these very weights.
        float.forward(batch(&[1], 9));
        let int8 = float
            .clone()
            .with_int8_linears(batch(&[5, 3, 7], 11))
            .unwrap();
        for (i, lengths) in BATCHES.iter().enumerate() {
            let input = batch(lengths, i as u64 + 1);
            let want = float
                .forward(input.clone())
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let got = int8.forward(input).into_data().to_vec::<f32>().unwrap();
            assert_ne!(
                got, want,
                "{act:?}: int8 gave float32's numbers for batch {lengths:?}"
            );
            for (t, (g, w)) in got.chunks(36).zip(want.chunks(36)).enumerate() {
                let c = cosine(g, w);
                assert!(c >= 0.99, "{act:?} batch {lengths:?} token {t}: cosine {c}");
            }
        }
    }
}

/// An int8 model released the float weights int8 replaced, says it is int8, and refuses to be
/// saved rather than write empty tensors.
#[test]
fn int8_models_release_float_weights_and_refuse_to_save() {
    let float = model();
    float.forward(batch(&[1], 9));
    let int8 = float.clone().with_int8_linears(batch(&[4, 2], 3)).unwrap();
    assert!(int8.is_int8() && !float.is_int8());
    // Per layer Q, K, V, attention output (4 · 36²) and the feed-forward pair (2 · 36 · 50);
    // the 97 × 36 word embeddings. (This model is too small for the ¼ memory ratio: its f32
    // position table and int8 padding to 16 columns dominate; the CLI test checks the ratio
    // on all-MiniLM-L6-v2.)
    let released = 2 * (4 * 36 * 36 + 2 * 36 * 50) + 97 * 36;
    assert_eq!(int8.num_params(), float.num_params() - released);
    let (f, q) = (float.weight_bytes(), int8.weight_bytes());
    assert!(q < f, "int8 holds {q} bytes, float {f}");
    let dir = std::env::temp_dir().join(format!("st-int8-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let err = int8.save_safetensors(&path).unwrap_err().to_string();
    assert!(err.contains("released its float weights"), "{err}");
    assert!(!path.exists(), "a refused save left {}", path.display());
    float.save_safetensors(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Backends without int8 kernels refuse int8 rather than compute in float.
#[test]
fn int8_is_refused_where_it_would_not_run() {
    type Train = burn_autodiff::Autodiff<Flex>;
    let model = BertConfig::tiny(97).init::<Train>(false, &FlexDevice);
    let err = model
        .with_int8_linears(batch_on::<Train>(&[4], 1))
        .unwrap_err();
    assert!(err.to_string().contains("no int8 kernels"), "{err}");
}
