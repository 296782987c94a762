//! burn-flex's [`EncoderBackend`]: the encoder's hot path on st-kernels' fused CPU kernels.
//!
//! Each override runs only on f32 tensors (bf16/f16 models fall back to the composed code).
//! The projections run on st-kernels' f32 `linear_f32` (the `gemm` crate, into fresh memory),
//! or on its int8 matmul when
//! [`BertModel::with_int8_linears`](crate::BertModel::with_int8_linears) quantized them; the
//! work around them (bias, GELU, residual, LayerNorm, attention) happens in place on the
//! product's output.

use burn::tensor::{Bool, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use st_kernels::{AttentionShape, LayerNormParams, Qkv};

use crate::config::HiddenAct;
use crate::fused::EncoderBackend;
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
        let shape = AttentionShape {
            batch,
            seq,
            num_heads: attn.num_heads(),
            head_dim: hidden / attn.num_heads(),
        };
        let positions = position_bias.map(f32_values);
        let key_bias: Vec<f32> = key_padding
            .into_data()
            .iter::<bool>()
            .map(|pad| if pad { f32::NEG_INFINITY } else { 0.0 })
            .collect();
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
