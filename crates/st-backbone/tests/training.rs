//! Training through each backend's kernels (`autodiff.rs`: attention, GELU and residual +
//! LayerNorm as single graph nodes, dropout masks, the optimizer's step) against the composed
//! tensor code autodiff differentiates op by op: same outputs, same gradients for every
//! parameter, on a random model with awkward sizes (hidden 36, feed-forward 50) and a batch
//! with padding. Each check runs on burn-flex, and on libtorch in builds with `tch`.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::DropoutConfig;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, Distribution, ElementConversion, Int, Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::grads::Gradients;
use burn_flex::Flex;
use common::composed_forward;
use st_backbone::{AdamWStep, BertConfig, BertInput, BertModel, EncoderBackend};

/// The backends' RNGs are global: tests that seed them run one at a time.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `#[test]`s running `check::<Backend>()` on burn-flex, and on libtorch with `tch`.
macro_rules! on_each_backend {
    ($($flex:ident, $libtorch:ident => $check:ident;)*) => {$(
        #[test]
        fn $flex() {
            $check::<Flex>();
        }

        #[cfg(feature = "tch")]
        #[test]
        fn $libtorch() {
            $check::<burn_tch::LibTorch>();
        }
    )*};
}

on_each_backend! {
    fused_training_nodes_give_the_composed_outputs_and_gradients,
    libtorch_training_nodes_give_the_composed_outputs_and_gradients => check_training_nodes;
    layer_norm_kernel_matches_the_composed_ops,
    libtorch_layer_norm_matches_the_composed_ops => check_layer_norm;
    dropout_in_training_keeps_its_share_scaled_and_is_reproducible,
    libtorch_dropout_keeps_its_share_scaled_and_is_reproducible => check_dropout;
    attention_kernel_backward_matches_the_composed_one,
    libtorch_attention_backward_matches_the_composed_one => check_attention_backward;
    adamw_step_matches_the_composed_one_and_leaves_shared_tensors_alone,
    libtorch_adamw_step_matches_the_composed_one => check_adamw_step;
}

/// With dropout: seeded alike, the fused and composed passes draw the same masks (both take
/// them from `dropout_mask`'s stream, in the same order and layout).
fn model<B: EncoderBackend>(dropout: f64) -> BertModel<Autodiff<B>> {
    let config = BertConfig {
        hidden_size: 36,
        num_attention_heads: 3,
        intermediate_size: 50,
        num_hidden_layers: 2,
        hidden_dropout_prob: dropout,
        attention_probs_dropout_prob: dropout,
        ..BertConfig::tiny(97)
    };
    config.init::<Autodiff<B>>(false, &Default::default())
}

fn input<B: EncoderBackend>() -> BertInput<Autodiff<B>> {
    let lengths = [9usize, 3, 1, 6];
    let seq = 9;
    let ids: Vec<i32> = (0..lengths.len() * seq)
        .map(|i| 1 + (i * 37 % 96) as i32)
        .collect();
    let mask: Vec<i32> = (0..lengths.len() * seq)
        .map(|i| i32::from(i % seq < lengths[i / seq]))
        .collect();
    let device = Default::default();
    let tensor = |v: Vec<i32>| {
        Tensor::<Autodiff<B>, 1, Int>::from_ints(v.as_slice(), &device)
            .reshape([lengths.len(), seq])
    };
    BertInput {
        input_ids: tensor(ids),
        attention_mask: tensor(mask),
        token_type_ids: Tensor::zeros([lengths.len(), seq], &device),
    }
}

/// Every float parameter's gradient, in module order.
struct AllGrads<'a> {
    grads: &'a Gradients,
    out: Vec<Vec<f32>>,
}

impl<B: EncoderBackend> ModuleVisitor<Autodiff<B>> for AllGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Autodiff<B>, D>>) {
        let grad = param
            .val()
            .grad(self.grads)
            .expect("every parameter gets a gradient");
        self.out
            .push(grad.into_data().convert::<f32>().to_vec().unwrap());
    }
}

fn gradients<B: EncoderBackend>(
    model: &BertModel<Autodiff<B>>,
    output: Tensor<Autodiff<B>, 3>,
) -> Vec<Vec<f32>> {
    // A fixed random projection of the output, so every position and column matters.
    let weights = Tensor::random(
        output.dims(),
        Distribution::Normal(0.0, 1.0),
        &output.device(),
    );
    let grads = (output * weights).sum().backward();
    let mut visitor = AllGrads {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

type Pass<B> = (Tensor<Autodiff<B>, 3>, Vec<Vec<f32>>);

/// The output and every parameter's gradient of one seeded pass.
fn seeded_pass<B: EncoderBackend>(
    model: &BertModel<Autodiff<B>>,
    forward: impl Fn(&BertModel<Autodiff<B>>, BertInput<Autodiff<B>>) -> Tensor<Autodiff<B>, 3>,
) -> Pass<B> {
    let device = Default::default();
    <Autodiff<B> as Backend>::seed(&device, 3);
    let out = forward(model, input());
    <Autodiff<B> as Backend>::seed(&device, 4);
    let grads = gradients(model, out.clone());
    (out, grads)
}

fn check_training_nodes<B: EncoderBackend>() {
    let _rng = rng_lock();
    for dropout in [0.0, 0.2] {
        let model = model::<B>(dropout);
        // burn initializes parameters lazily, from the RNG: do it before the seeded passes.
        let _ = model.forward(input());
        let (fused_out, fused) = seeded_pass(&model, |m, input| m.forward(input));
        let (composed_out, composed) = seeded_pass(&model, composed_forward);
        let diff: f32 = (fused_out - composed_out).abs().max().into_scalar().elem();
        assert!(diff < 1e-5, "dropout {dropout}: outputs differ by {diff}");
        assert_eq!(fused.len(), composed.len());
        for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
            // Floor 1e-2: some gradients are 0 in exact arithmetic (the key bias: softmax
            // ignores a shift of all scores), and either pass leaves float noise there.
            let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-2);
            let diff = max_abs_diff(f, c);
            assert!(
                diff <= 1e-4 * scale,
                "dropout {dropout}, parameter {i}: gradients differ by {diff} (scale {scale})"
            );
        }
    }
}

/// A `[rows, width]` standard-normal tensor's primitive.
fn random<B: Backend>(shape: [usize; 2]) -> FloatTensor<B> {
    Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
        .into_primitive()
        .tensor()
}

/// The residual + LayerNorm hook's forward against burn's tensor ops, and its backward against
/// the composed one.
fn check_layer_norm<B: EncoderBackend>() {
    let _rng = rng_lock();
    B::seed(&Default::default(), 10);
    let [rows, width] = [37, 45];
    let eps = 1e-12;
    let flat = |t| B::float_reshape(t, [width].into());
    let (gamma, beta) = (flat(random::<B>([1, width])), flat(random::<B>([1, width])));
    let (x, residual) = (random::<B>([rows, width]), random::<B>([rows, width]));
    let (y, saved) = B::residual_layer_norm(
        x.clone(),
        residual.clone(),
        gamma.clone(),
        beta.clone(),
        eps,
    )
    .expect("the backend has a LayerNorm kernel");
    let float = |t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t));
    let sum = float(x) + float(residual);
    let centered = sum.clone() - sum.mean_dim(1);
    let inv_std = (centered.clone().square().mean_dim(1) + eps).sqrt().recip();
    let normalized = centered * inv_std.clone();
    let want_y = normalized.clone() * float(gamma.clone()).reshape([1, width])
        + float(beta).reshape([1, width]);
    let forward = [y, saved.normalized.clone(), saved.inv_std.clone()];
    let want = [want_y, normalized, inv_std].map(|t| t.into_primitive().tensor());
    assert_all_close::<B, 3>(forward, want, ["y", "x̂", "1/σ"], "layer norm forward");
    let grad = random::<B>([rows, width]);
    let kernel = B::residual_layer_norm_backward(saved.clone(), gamma.clone(), grad.clone());
    let composed = st_backbone::layer_norm_backward_composed::<B>(saved, gamma, grad);
    assert_all_close::<B, 3>(kernel, composed, ["d_x", "d_gamma", "d_beta"], "layer norm");
}

fn check_dropout<B: EncoderBackend>() {
    type A<B> = Autodiff<B>;
    let _rng = rng_lock();
    let device = Default::default();
    let dropout = DropoutConfig::new(0.25).init();
    let draw = |seed| {
        <A<B> as Backend>::seed(&device, seed);
        let x = Tensor::<A<B>, 2>::ones([64, 500], &device).require_grad();
        let y = st_backbone::dropout(&dropout, x.clone());
        let grads = y.clone().sum().backward();
        let grad: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let values: Vec<f32> = y.into_data().to_vec().unwrap();
        assert!(values == grad, "the gradient of x · mask is the mask");
        values
    };
    let mask = draw(5);
    let kept = mask.iter().filter(|&&v| v == 1.0 / 0.75).count();
    assert_eq!(
        kept + mask.iter().filter(|&&v| v == 0.0).count(),
        mask.len()
    );
    let share = kept as f64 / mask.len() as f64;
    assert!((share - 0.75).abs() < 0.01, "kept {share}");
    assert!(mask == draw(5), "Backend::seed fixes the mask");
    assert!(mask != draw(6), "another seed, another mask");
    // Off autodiff, dropout does nothing.
    let x = Tensor::<B, 2>::ones([4, 4], &device);
    let y = st_backbone::dropout(&dropout, x.clone());
    assert!(
        y.into_data() == x.into_data(),
        "dropout changed values off autodiff"
    );
}

fn check_attention_backward<B: EncoderBackend>() {
    // Sequence 1, 7 and 130 (gemm's packed paths), rows of every length.
    check_attention_cases::<B>(&[&[1, 1], &[7, 2, 5], &[130, 1, 64]]);
}

/// Rows with no key to attend to: flex's kernel gives them zeros (libtorch's composed ops give
/// NaN, as burn's do; no input has such a row, as every row holds `[CLS]`).
#[test]
fn attention_kernel_backward_handles_fully_padded_rows() {
    check_attention_cases::<Flex>(&[&[1, 0], &[130, 0, 64]]);
}

/// Attention's kernel backward against the composed one, with and without dropout: each case
/// lists the rows' lengths, the first being the sequence length.
fn check_attention_cases<B: EncoderBackend>(cases: &[&[usize]]) {
    let _rng = rng_lock();
    let device = Default::default();
    B::seed(&device, 11);
    let [heads, head_dim] = [3, 5];
    let hidden = heads * head_dim;
    for lengths in cases {
        let (batch, seq) = (lengths.len(), lengths[0]);
        let random = || {
            Tensor::<B, 3>::random(
                [batch, seq, hidden],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .into_primitive()
            .tensor()
        };
        let padding: Vec<bool> = (0..batch * seq)
            .map(|i| i % seq >= lengths[i / seq])
            .collect();
        let padding = Tensor::<B, 1, Bool>::from_bool(padding.as_slice().into(), &device)
            .reshape([batch, seq])
            .into_primitive();
        for prob in [0.0, 0.3] {
            let (_, saved) =
                B::attention_train([random(), random(), random()], padding.clone(), heads, prob)
                    .expect("the backend has an attention kernel");
            assert_eq!(saved.mask.is_some(), prob > 0.0);
            let grad = random();
            let kernel = B::attention_backward(saved.clone(), grad.clone());
            let composed = st_backbone::attention_backward_composed::<B>(saved, grad);
            let what = format!("attention {lengths:?}, dropout {prob}");
            assert_all_close::<B, 3>(kernel, composed, ["d_q", "d_k", "d_v"], &what);
        }
    }
}

fn check_adamw_step<B: EncoderBackend>() {
    let _rng = rng_lock();
    B::seed(&Default::default(), 12);
    let shape = [37, 45];
    let step = |time| AdamWStep::new(1e-3, 1e-8, 0.01, time);
    // Independent copies, so the kernel may write its inputs in place.
    let copy = |t: &FloatTensor<B>| {
        let data = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t.clone())).into_data();
        Tensor::<B, 2>::from_data(data, &Default::default())
            .into_primitive()
            .tensor()
    };
    let param = random::<B>(shape);
    let moments = [random::<B>(shape), random::<B>(shape)];
    // Second moments are non-negative.
    let moments = [moments[0].clone(), B::float_abs(moments[1].clone())];
    for (time, with_moments) in [(1, false), (5, true)] {
        let grad = random::<B>(shape);
        let given = || with_moments.then(|| moments.each_ref().map(copy));
        let composed =
            st_backbone::adamw_step_composed::<B>(copy(&param), copy(&grad), given(), step(time));
        let kernel = B::adamw_step(copy(&param), copy(&grad), given(), step(time));
        let what = format!("adamw at step {time}");
        assert_all_close::<B, 3>(kernel, composed, ["param", "moment 1", "moment 2"], &what);
    }
    // Inputs that other tensors share are left as they were.
    let before = values::<B>(param.clone());
    let moments_before = moments.each_ref().map(|m| values::<B>(m.clone()));
    let shared_moments = moments.clone();
    let _ = B::adamw_step(
        param.clone(),
        random::<B>(shape),
        Some(shared_moments),
        step(3),
    );
    assert!(
        values::<B>(param) == before,
        "adamw wrote a shared parameter"
    );
    for (m, b) in moments.into_iter().zip(moments_before) {
        assert!(values::<B>(m) == b, "adamw wrote a shared moment");
    }
}

fn values<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
}

/// The largest `|a − b|`; NaN if any difference is (`f32::max` alone would skip it).
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if m.is_nan() || d.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    })
}

/// Each kernel result within 1e-4 of the composed one (NaN fails).
fn assert_all_close<B: Backend, const N: usize>(
    kernel: [FloatTensor<B>; N],
    composed: [FloatTensor<B>; N],
    names: [&str; N],
    what: &str,
) {
    for ((k, c), name) in kernel.into_iter().zip(composed).zip(names) {
        let diff = max_abs_diff(&values::<B>(k), &values::<B>(c));
        assert!(diff < 1e-4, "{what}: {name} differs by {diff}");
    }
}
