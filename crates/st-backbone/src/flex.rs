//! burn-flex's [`EncoderBackend`]: the encoder's hot path on st-kernels' fused CPU kernels.
//!
//! Each override runs only on f32 tensors (bf16/f16 models fall back to the composed code).
//! The projections run on st-kernels' f32 `linear_f32` (the `gemm` crate, into fresh memory),
//! or on its int8 matmul when
//! [`BertModel::with_int8_linears`](crate::BertModel::with_int8_linears) quantized them; the
//! work around them (bias, GELU, residual, LayerNorm, attention) happens in place on the
//! product's output.

use burn::tensor::ops::{ActivationOps, BoolTensor, FloatTensorOps};
use burn::tensor::{
    Bool, DType, Distribution, FloatDType, Shape, Tensor, TensorData, TensorMetadata,
    TensorPrimitive,
};
use burn_flex::{Flex, FlexDevice, FlexTensor};
use st_kernels::{AdamWStep, AttentionShape, LayerNormParams, Qkv};

use crate::config::HiddenAct;
use crate::fused::{AttentionSaved, EncoderBackend, LayerNormSaved};
use crate::model::{BertIntermediate, BertSelfAttention, BertSelfOutput, Int8Linear};

impl EncoderBackend for Flex {
    const INT8_LINEARS: bool = true;
    const FAST_HALF_FLOATS: bool = false;

    fn self_attention(
        attn: &BertSelfAttention<Flex>,
        x: Tensor<Flex, 3>,
        key_padding: Tensor<Flex, 2, Bool>,
        position_bias: Option<Tensor<Flex, 4>>,
    ) -> Tensor<Flex, 3> {
        let projections = [&attn.query, &attn.key, &attn.value];
        let with_bias = projections.iter().filter(|l| l.bias.is_some()).count();
        let f32_bias = position_bias
            .as_ref()
            .is_none_or(|b| b.dtype() == DType::F32);
        // An int8 model has released its float weights: it must take the int8 path.
        let mixed_bias = attn.int8_qkv().is_none() && with_bias != 0 && with_bias != 3;
        if x.dtype() != DType::F32 || !f32_bias || mixed_bias {
            return attn.forward_with_position_bias(x, key_padding, position_bias);
        }
        let [batch, seq, hidden] = x.dims();
        let shape = attention_shape([batch, seq, hidden], attn.num_heads());
        let positions = position_bias.map(f32_values);
        let key_bias = key_bias(key_padding);
        let mut context = vec![0.0f32; batch * seq * hidden];
        let bias = st_kernels::ScoreBias {
            keys: &key_bias,
            positions: positions.as_ref().map(f32_slice),
        };
        if let Some(int8) = attn.int8_qkv() {
            // One int8 product, Q, K and V side by side in each row, bias added.
            let qkv = linear_int8(int8, x);
            let qkv = f32_slice(&qkv);
            let parts = Qkv {
                q: qkv,
                k: &qkv[hidden..],
                v: &qkv[2 * hidden..],
                row_stride: 3 * hidden,
            };
            st_kernels::attention(parts, bias, shape, &mut context);
            return from_vec(context, [batch, seq, hidden]);
        }
        // Three products on the weights as loaded: joining them into one would copy the
        // weights on every call.
        let x = f32_values(x.reshape([batch * seq, hidden]));
        let [q, k, v] = projections.map(|linear| {
            let mut y = product(linear, f32_slice(&x), batch * seq);
            if let Some(bias) = &linear.bias {
                st_kernels::add_bias(&mut y, f32_slice(&f32_values(bias.val())));
            }
            y
        });
        let parts = Qkv {
            q: &q,
            k: &k,
            v: &v,
            row_stride: hidden,
        };
        st_kernels::attention(parts, bias, shape, &mut context);
        from_vec(context, [batch, seq, hidden])
    }

    fn self_output(
        output: &BertSelfOutput<Flex>,
        hidden: Tensor<Flex, 3>,
        residual: Tensor<Flex, 3>,
    ) -> Tensor<Flex, 3> {
        if hidden.dtype() != DType::F32 || residual.dtype() != DType::F32 {
            return output.forward(hidden, residual);
        }
        let dims = residual.dims();
        let width = dims[2];
        // The int8 product adds its bias itself.
        let (mut y, bias) = match output.int8_dense() {
            Some(dense) => (linear_int8(dense, hidden), None),
            None => (
                project(&output.dense, hidden),
                output.dense.bias.as_ref().map(|b| f32_values(b.val())),
            ),
        };
        let residual = f32_values(residual);
        let gamma = f32_values(output.layer_norm.gamma.val());
        let beta = match &output.layer_norm.beta {
            Some(beta) => f32_values(beta.val()),
            None => FlexTensor::from_data(TensorData::new(vec![0.0f32; width], [width])),
        };
        st_kernels::bias_residual_layer_norm(
            f32_mut(&mut y),
            bias.as_ref().map(f32_slice),
            f32_slice(&residual),
            LayerNormParams {
                gamma: f32_slice(&gamma),
                beta: f32_slice(&beta),
                eps: output.layer_norm_eps() as f32,
            },
        );
        from_flex(y, dims)
    }

    fn intermediate(intermediate: &BertIntermediate<Flex>, x: Tensor<Flex, 3>) -> Tensor<Flex, 3> {
        if x.dtype() != DType::F32 {
            return intermediate.forward(x);
        }
        let [batch, seq, _] = x.dims();
        let gelu = intermediate.act() == HiddenAct::Gelu;
        let (mut y, d_out, bias) = match intermediate.int8_dense() {
            // The int8 product adds the bias itself.
            Some(int8) => (linear_int8(int8, x), int8.weight.d_out(), None),
            None if !gelu => return intermediate.forward(x),
            None => {
                let dense = &intermediate.dense;
                let bias = dense.bias.as_ref().map(|b| f32_values(b.val()));
                (project(dense, x), dense.weight.dims()[1], bias)
            }
        };
        if !gelu {
            // Only int8 gets here: its product is done, the activation is the composed one.
            let y = from_flex(y, [batch, seq, d_out]);
            return intermediate.activate(y);
        }
        let zeros = || FlexTensor::from_data(TensorData::new(vec![0.0f32; d_out], [d_out]));
        let bias = bias.unwrap_or_else(zeros);
        st_kernels::bias_gelu(f32_mut(&mut y), f32_slice(&bias));
        from_flex(y, [batch, seq, d_out])
    }

    fn dropout_mask(
        shape: Shape,
        prob: f64,
        dtype: DType,
        device: &burn::tensor::Device<Flex>,
    ) -> Option<FlexTensor> {
        if dtype != DType::F32 {
            return None;
        }
        Some(FlexTensor::from_data(TensorData::new(
            mask_values(shape.num_elements(), prob, device),
            shape,
        )))
    }

    fn attention_train(
        qkv: [FlexTensor; 3],
        key_padding: BoolTensor<Flex>,
        num_heads: usize,
        prob: f64,
    ) -> Option<(FlexTensor, AttentionSaved<Flex>)> {
        if qkv.iter().any(|t| t.dtype() != DType::F32) {
            return None;
        }
        let [batch, seq, hidden] = qkv[0].shape().dims();
        let shape = attention_shape([batch, seq, hidden], num_heads);
        let key_bias = key_bias(Tensor::from_primitive(key_padding));
        let qkv = qkv.map(exact);
        let scores = [batch, num_heads, seq, seq];
        let mask = (prob > 0.0).then(|| {
            let values = mask_values(scores.iter().product(), prob, &FlexDevice);
            FlexTensor::from_data(TensorData::new(values, scores))
        });
        let mut context = vec![0.0f32; batch * seq * hidden];
        let mut probs = vec![0.0f32; scores.iter().product()];
        st_kernels::attention_train(
            qkv_slices(&qkv),
            &key_bias,
            mask.as_ref().map(f32_slice),
            shape,
            &mut context,
            &mut probs,
        );
        let saved = AttentionSaved {
            qkv,
            probs: FlexTensor::from_data(TensorData::new(probs, scores)),
            mask,
        };
        Some((
            FlexTensor::from_data(TensorData::new(context, [batch, seq, hidden])),
            saved,
        ))
    }

    fn attention_backward(saved: AttentionSaved<Flex>, grad: FlexTensor) -> [FlexTensor; 3] {
        let [batch, num_heads, seq, _] = saved.probs.shape().dims();
        let hidden = saved.qkv[0].shape()[2];
        let shape = attention_shape([batch, seq, hidden], num_heads);
        let mut d_qkv = [(); 3].map(|_| vec![0.0f32; batch * seq * hidden]);
        let [d_q, d_k, d_v] = &mut d_qkv;
        st_kernels::attention_backward(
            qkv_slices(&saved.qkv),
            f32_slice(&saved.probs),
            saved.mask.as_ref().map(f32_slice),
            shape,
            f32_slice(&exact(grad)),
            [d_q, d_k, d_v],
        );
        d_qkv.map(|d| FlexTensor::from_data(TensorData::new(d, [batch, seq, hidden])))
    }

    fn exact_gelu(x: FlexTensor) -> Option<FlexTensor> {
        if x.dtype() != DType::F32 {
            return None;
        }
        let shape = x.shape();
        let x = exact(x);
        let mut y = vec![0.0f32; shape.num_elements()];
        st_kernels::gelu(f32_slice(&x), &mut y);
        Some(FlexTensor::from_data(TensorData::new(y, shape)))
    }

    fn exact_gelu_backward(x: FlexTensor, mut grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return Flex::gelu_backward(x, grad);
        }
        st_kernels::gelu_backward(f32_slice(&exact(x)), f32_mut(&mut grad));
        grad
    }

    fn residual_layer_norm(
        mut x: FlexTensor,
        residual: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f64,
    ) -> Option<(FlexTensor, LayerNormSaved<Flex>)> {
        let all_f32 = [&x, &residual, &gamma, &beta]
            .iter()
            .all(|t| t.dtype() == DType::F32);
        if !all_f32 {
            return None;
        }
        let shape = x.shape();
        let mut row_shape = shape.clone();
        let last = row_shape.num_dims() - 1;
        row_shape[last] = 1;
        let [residual, gamma, beta] = [residual, gamma, beta].map(exact);
        let mut normalized = vec![0.0f32; shape.num_elements()];
        let mut inv_std = vec![0.0f32; row_shape.num_elements()];
        st_kernels::residual_layer_norm_train(
            f32_mut(&mut x),
            f32_slice(&residual),
            LayerNormParams {
                gamma: f32_slice(&gamma),
                beta: f32_slice(&beta),
                eps: eps as f32,
            },
            &mut normalized,
            &mut inv_std,
        );
        let saved = LayerNormSaved {
            normalized: FlexTensor::from_data(TensorData::new(normalized, shape)),
            inv_std: FlexTensor::from_data(TensorData::new(inv_std, row_shape)),
        };
        Some((x, saved))
    }

    fn residual_layer_norm_backward(
        saved: LayerNormSaved<Flex>,
        gamma: FlexTensor,
        mut grad: FlexTensor,
    ) -> [FlexTensor; 3] {
        let width = gamma.shape().num_elements();
        let mut d_gamma = vec![0.0f32; width];
        let mut d_beta = vec![0.0f32; width];
        st_kernels::layer_norm_backward(
            f32_mut(&mut grad),
            f32_slice(&exact(saved.normalized)),
            f32_slice(&exact(saved.inv_std)),
            f32_slice(&exact(gamma)),
            &mut d_gamma,
            &mut d_beta,
        );
        let vector = |v| FlexTensor::from_data(TensorData::new(v, [width]));
        [grad, vector(d_gamma), vector(d_beta)]
    }

    fn adamw_step(
        mut param: FlexTensor,
        grad: FlexTensor,
        moments: Option<[FlexTensor; 2]>,
        step: AdamWStep,
    ) -> [FlexTensor; 3] {
        let all_f32 = std::iter::once(&param)
            .chain([&grad])
            .chain(moments.iter().flatten())
            .all(|t| t.dtype() == DType::F32);
        if !all_f32 {
            return crate::fused::adamw_step_composed::<Flex>(param, grad, moments, step);
        }
        let shape = param.shape();
        let zeros = || {
            FlexTensor::from_data(TensorData::new(
                vec![0.0f32; shape.num_elements()],
                shape.clone(),
            ))
        };
        let [mut moment_1, mut moment_2] = moments.unwrap_or_else(|| [zeros(), zeros()]);
        // In place where the optimizer holds the only reference (`f32_mut` copies otherwise).
        st_kernels::adamw(
            f32_mut(&mut param),
            f32_slice(&exact(grad)),
            f32_mut(&mut moment_1),
            f32_mut(&mut moment_2),
            step,
        );
        [param, moment_1, moment_2]
    }
}

/// `n` dropout mask values (0, or `1/(1 − prob)` with probability `1 − prob`). The seed comes
/// from burn-flex's own RNG, so `Backend::seed` makes masks reproducible; st-kernels'
/// counter-based hash draws the mask itself.
fn mask_values(n: usize, prob: f64, device: &burn::tensor::Device<Flex>) -> Vec<f32> {
    let draws = Flex::float_random([4].into(), Distribution::Default, device, FloatDType::F32);
    let seed = f32_slice(&exact(draws)).iter().fold(0u64, |seed, v| {
        (seed ^ u64::from(v.to_bits())).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let mut mask = vec![0.0f32; n];
    st_kernels::dropout_mask(seed, (1.0 - prob) as f32, &mut mask);
    mask
}

fn attention_shape([batch, seq, hidden]: [usize; 3], num_heads: usize) -> AttentionShape {
    AttentionShape {
        batch,
        seq,
        num_heads,
        head_dim: hidden / num_heads,
    }
}

/// The key padding `[batch, seq]` as the additive bias st-kernels take: −∞ on padded keys.
fn key_bias(key_padding: Tensor<Flex, 2, Bool>) -> Vec<f32> {
    key_padding
        .into_data()
        .iter::<bool>()
        .map(|pad| if pad { f32::NEG_INFINITY } else { 0.0 })
        .collect()
}

/// Separate `[tokens, hidden]` projections as st-kernels' [`Qkv`].
fn qkv_slices(qkv: &[FlexTensor; 3]) -> Qkv<'_> {
    let hidden = qkv[0].shape()[2];
    Qkv {
        q: f32_slice(&qkv[0]),
        k: f32_slice(&qkv[1]),
        v: f32_slice(&qkv[2]),
        row_stride: hidden,
    }
}

/// `x · W` over all tokens (`[batch·seq, d_out]`), bias not yet added.
fn project(linear: &burn::nn::Linear<Flex>, x: Tensor<Flex, 3>) -> FlexTensor {
    let [batch, seq, d_in] = x.dims();
    let tokens = batch * seq;
    let x = f32_values(x.reshape([tokens, d_in]));
    let y = product(linear, f32_slice(&x), tokens);
    FlexTensor::from_data(TensorData::new(y, [tokens, linear.weight.dims()[1]]))
}

/// `x · W` for `x` as `tokens` rows (`[tokens, d_in]`), on st-kernels' f32 projection (the
/// weights as loaded: contiguous, so no copy).
fn product(linear: &burn::nn::Linear<Flex>, x: &[f32], tokens: usize) -> Vec<f32> {
    let weight = f32_values(linear.weight.val());
    st_kernels::linear_f32(x, tokens, f32_slice(&weight), linear.weight.dims()[0])
}

/// `x · W + b` over all tokens (`[batch·seq, d_out]`) in int8 (st-kernels' VNNI/AVX2 matmul).
fn linear_int8(linear: &Int8Linear, x: Tensor<Flex, 3>) -> FlexTensor {
    let [batch, seq, d_in] = x.dims();
    let tokens = batch * seq;
    let x = f32_values(x.reshape([tokens, d_in]));
    let d_out = linear.weight.d_out();
    let mut out = vec![0.0f32; tokens * d_out];
    st_kernels::linear_int8(
        f32_slice(&x),
        tokens,
        &linear.weight,
        linear.bias.as_deref(),
        &mut out,
    );
    FlexTensor::from_data(TensorData::new(out, [tokens, d_out]))
}

/// The tensor as a contiguous f32 buffer of exactly its elements, starting at 0.
fn f32_values<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    exact(t.into_primitive().tensor())
}

fn exact(t: FlexTensor) -> FlexTensor {
    let t = t.to_contiguous();
    let n = t.layout().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.bytes().len() == n * 4 {
        t
    } else {
        FlexTensor::from_data(t.into_data())
    }
}

fn empty() -> FlexTensor {
    FlexTensor::empty([0].into(), DType::F32)
}

fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("an f32 tensor")
}

/// Mutable view of a tensor's elements, copying first if its storage is shared or strided.
fn f32_mut(t: &mut FlexTensor) -> &mut [f32] {
    *t = exact(std::mem::replace(t, empty()));
    t.storage_mut::<f32>()
}

fn from_flex<const D: usize>(t: FlexTensor, dims: [usize; D]) -> Tensor<Flex, D> {
    Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(t)).reshape(dims)
}

fn from_vec<const D: usize>(values: Vec<f32>, dims: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(
        TensorData::new(values, dims),
    )))
}
