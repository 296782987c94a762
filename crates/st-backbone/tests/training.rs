//! Training through burn-flex's kernels (`autodiff.rs`: GELU and residual + LayerNorm as single
//! graph nodes, dropout masks from st-kernels) against the composed tensor code autodiff
//! differentiates op by op: same outputs, same gradients for every parameter, on a random
//! model with awkward sizes (hidden 36, feed-forward 50) and a batch with padding.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::DropoutConfig;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, Distribution, Int, Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::grads::Gradients;
use burn_flex::{Flex, FlexDevice};
use common::composed_forward;
use st_backbone::{BertConfig, BertInput, BertModel, EncoderBackend};

type A = Autodiff<Flex>;

/// burn-flex's RNG is global: tests that seed it run one at a time.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// With dropout: seeded alike, the fused and composed passes draw the same masks (both take
/// them from `dropout_mask`'s stream, in the same order and layout).
fn model(dropout: f64) -> BertModel<A> {
    let config = BertConfig {
        hidden_size: 36,
        num_attention_heads: 3,
        intermediate_size: 50,
        num_hidden_layers: 2,
        hidden_dropout_prob: dropout,
        attention_probs_dropout_prob: dropout,
        ..BertConfig::tiny(97)
    };
    config.init::<A>(false, &FlexDevice)
}

fn input() -> BertInput<A> {
    let lengths = [9usize, 3, 1, 6];
    let seq = 9;
    let ids: Vec<i32> = (0..lengths.len() * seq)
        .map(|i| 1 + (i * 37 % 96) as i32)
        .collect();
    let mask: Vec<i32> = (0..lengths.len() * seq)
        .map(|i| i32::from(i % seq < lengths[i / seq]))
        .collect();
    let tensor = |v: Vec<i32>| {
        Tensor::<A, 1, Int>::from_ints(v.as_slice(), &FlexDevice).reshape([lengths.len(), seq])
    };
    BertInput {
        input_ids: tensor(ids),
        attention_mask: tensor(mask),
        token_type_ids: Tensor::zeros([lengths.len(), seq], &FlexDevice),
    }
}

/// Every float parameter's gradient, in module order.
struct AllGrads<'a> {
    grads: &'a Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor<A> for AllGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let grad = param
            .val()
            .grad(self.grads)
            .expect("every parameter gets a gradient");
        self.out.push(grad.into_data().to_vec().unwrap());
    }
}

fn gradients(model: &BertModel<A>, output: Tensor<A, 3>) -> Vec<Vec<f32>> {
    // A fixed random projection of the output, so every position and column matters.
    let weights =
        Tensor::<A, 3>::random(output.dims(), Distribution::Normal(0.0, 1.0), &FlexDevice);
    let grads = (output * weights).sum().backward();
    let mut visitor = AllGrads {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// The output and every parameter's gradient of one seeded pass.
fn seeded_pass(
    model: &BertModel<A>,
    forward: impl Fn(&BertModel<A>, BertInput<A>) -> Tensor<A, 3>,
) -> (Tensor<A, 3>, Vec<Vec<f32>>) {
    <A as Backend>::seed(&FlexDevice, 3);
    let out = forward(model, input());
    <A as Backend>::seed(&FlexDevice, 4);
    let grads = gradients(model, out.clone());
    (out, grads)
}

#[test]
fn fused_training_nodes_give_the_composed_outputs_and_gradients() {
    let _rng = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for dropout in [0.0, 0.2] {
        let model = model(dropout);
        // burn initializes parameters lazily, from the RNG: do it before the seeded passes.
        let _ = model.forward(input());
        let (fused_out, fused) = seeded_pass(&model, |m, input| m.forward(input));
        let (composed_out, composed) = seeded_pass(&model, composed_forward);
        let diff = (fused_out - composed_out).abs().max().into_scalar();
        assert!(diff < 1e-5, "dropout {dropout}: outputs differ by {diff}");
        assert_eq!(fused.len(), composed.len());
        for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
            // Floor 1e-2: some gradients are 0 in exact arithmetic (the key bias: softmax
            // ignores a shift of all scores), and either pass leaves float noise there.
            let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-2);
            let diff = f
                .iter()
                .zip(c)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "dropout {dropout}, parameter {i}: gradients differ by {diff} (scale {scale})"
            );
        }
    }
}

#[test]
fn layer_norm_kernel_backward_matches_the_composed_one() {
    let _rng = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    <Flex as Backend>::seed(&FlexDevice, 10);
    let [rows, width] = [37, 45];
    let random = |shape: [usize; 2]| {
        Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, 1.0), &FlexDevice)
            .into_primitive()
            .tensor()
    };
    let (gamma, beta) = (random([1, width]), random([1, width]));
    let flat = |t| Flex::float_reshape(t, [width].into());
    use burn::tensor::ops::FloatTensorOps;
    let (_, saved) = Flex::residual_layer_norm(
        random([rows, width]),
        random([rows, width]),
        flat(gamma.clone()),
        flat(beta),
        1e-12,
    )
    .expect("flex has a LayerNorm kernel");
    let grad = random([rows, width]);
    let kernel =
        Flex::residual_layer_norm_backward(saved.clone(), flat(gamma.clone()), grad.clone());
    let composed = st_backbone::layer_norm_backward_composed::<Flex>(saved, flat(gamma), grad);
    assert_all_close(kernel, composed, ["d_x", "d_gamma", "d_beta"], "layer norm");
}

#[test]
fn dropout_in_training_keeps_its_share_scaled_and_is_reproducible() {
    let _rng = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dropout = DropoutConfig::new(0.25).init();
    let draw = |seed| {
        <A as Backend>::seed(&FlexDevice, seed);
        let x = Tensor::<A, 2>::ones([64, 500], &FlexDevice).require_grad();
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
    let x = Tensor::<Flex, 2>::ones([4, 4], &FlexDevice);
    let y = st_backbone::dropout(&dropout, x.clone());
    assert!(
        y.into_data() == x.into_data(),
        "dropout changed values off autodiff"
    );
}

#[test]
fn attention_kernel_backward_matches_the_composed_one() {
    let _rng = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    <Flex as Backend>::seed(&FlexDevice, 11);
    // Sequence 1, 7 and 130 (gemm's packed paths), rows of every length down to fully padded.
    let cases: [&[usize]; 3] = [&[1, 0], &[7, 2, 5], &[130, 0, 64]];
    let [heads, head_dim] = [3, 5];
    let hidden = heads * head_dim;
    for lengths in cases {
        let (batch, seq) = (lengths.len(), lengths[0]);
        let random = || {
            Tensor::<Flex, 3>::random(
                [batch, seq, hidden],
                Distribution::Normal(0.0, 1.0),
                &FlexDevice,
            )
            .into_primitive()
            .tensor()
        };
        let padding: Vec<bool> = (0..batch * seq)
            .map(|i| i % seq >= lengths[i / seq])
            .collect();
        let padding = Tensor::<Flex, 1, Bool>::from_bool(padding.as_slice().into(), &FlexDevice)
            .reshape([batch, seq])
            .into_primitive();
        for prob in [0.0, 0.3] {
            let (_, saved) =
                Flex::attention_train([random(), random(), random()], padding.clone(), heads, prob)
                    .expect("flex has an attention kernel");
            assert_eq!(saved.mask.is_some(), prob > 0.0);
            let grad = random();
            let kernel = Flex::attention_backward(saved.clone(), grad.clone());
            let composed = st_backbone::attention_backward_composed::<Flex>(saved, grad);
            let what = format!("attention {lengths:?}, dropout {prob}");
            assert_all_close(kernel, composed, ["d_q", "d_k", "d_v"], &what);
        }
    }
}

/// Each kernel gradient within 1e-4 of the composed one.
fn assert_all_close<const N: usize>(
    kernel: [FloatTensor<Flex>; N],
    composed: [FloatTensor<Flex>; N],
    names: [&str; N],
    what: &str,
) {
    let values = |t| {
        Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(t))
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    for ((k, c), name) in kernel.into_iter().zip(composed).zip(names) {
        let (k, c) = (values(k), values(c));
        let diff = k
            .iter()
            .zip(&c)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "{what}: {name} differs by {diff}");
    }
}
