//! [`EncoderBackend`]: the few fused operations the encoder asks its backend for (Burn's
//! backend-extension pattern). Each default method is the composed tensor code of the module it
//! takes, so libtorch and wgpu run exactly what they ran before; burn-flex overrides them with
//! st-kernels' fused CPU kernels (no head split/merge copies, bias + exact GELU with a
//! vectorized `erf`, bias + residual + LayerNorm in one pass, one QKV matmul).
//!
//! Training has hooks of its own, at the level of the backend's primitives: each forward keeps
//! what its backward needs, and `autodiff.rs` registers the pair as one graph node (attention
//! after the projections, GELU, residual + LayerNorm); dropout takes the backend's masks. The
//! forwards default to `None` (compose, as before), so only a backend that overrides them
//! trains differently. The backward defaults are the same math in tensor ops: a backend that
//! overrides a forward alone still trains correctly, and the kernel tests compare against them.

use burn::nn::Dropout;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{Bool, DType, Shape, Tensor, TensorPrimitive};

use st_kernels::AdamWStep;

use crate::model::{BertIntermediate, BertSelfAttention, BertSelfOutput};

/// A backend the BERT encoder runs on. Implement it with no methods (`impl EncoderBackend for
/// MyBackend {}`) to run the composed tensor code; override a method to fuse it.
///
/// Overrides must compute what the default computes (up to float rounding). At inference the
/// layers call `self_attention`, `self_output` and `intermediate`; in training, burn's
/// `Autodiff` implements those three on the inner backend's training hooks (`autodiff.rs`).
pub trait EncoderBackend: Backend {
    /// Whether this backend's overrides run the int8 projections that
    /// [`BertModel::with_int8_linears`](crate::BertModel::with_int8_linears) prepares (it
    /// refuses backends without them rather than silently computing in float).
    const INT8_LINEARS: bool = false;

    /// Whether bf16 / f16 models run faster here than f32 ones. burn-flex has no half-float
    /// kernels (it converts around its f32 ones, ~0.3× the f32 speed), so st refuses them on
    /// flex rather than offer a "faster" mode that is slower.
    const FAST_HALF_FLOATS: bool = true;

    /// Multi-head self-attention: `x` `[batch, seq, hidden]`, `key_padding` `[batch, seq]`
    /// (true on padded keys), `position_bias` `[1, heads, seq, seq]` added to the scaled scores
    /// (MPNet) → context `[batch, seq, hidden]`, before the output projection.
    fn self_attention(
        attn: &BertSelfAttention<Self>,
        x: Tensor<Self, 3>,
        key_padding: Tensor<Self, 2, Bool>,
        position_bias: Option<Tensor<Self, 4>>,
    ) -> Tensor<Self, 3> {
        attn.forward_with_position_bias(x, key_padding, position_bias)
    }

    /// `LayerNorm(dense(hidden) + residual)`: the end of the attention and feed-forward blocks.
    fn self_output(
        output: &BertSelfOutput<Self>,
        hidden: Tensor<Self, 3>,
        residual: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        output.forward(hidden, residual)
    }

    /// `act(dense(x))`: the feed-forward expansion.
    fn intermediate(intermediate: &BertIntermediate<Self>, x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        intermediate.forward(x)
    }

    /// A dropout mask of `shape` and `dtype`: each element `1/(1 − prob)` with probability
    /// `1 − prob`, else 0. `None` (the default): [`dropout`] runs burn's `Dropout`.
    fn dropout_mask(
        _shape: Shape,
        _prob: f64,
        _dtype: DType,
        _device: &Self::Device,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// Training's attention after the projections as one graph node: `q`, `k`, `v`
    /// `[batch, seq, hidden]`, `key_padding` `[batch, seq]` (true on padded keys), dropout
    /// `prob` on the probabilities → the context `[batch, seq, hidden]` and what the backward
    /// needs. `None` (the default): composed tensor ops.
    fn attention_train(
        _qkv: [FloatTensor<Self>; 3],
        _key_padding: BoolTensor<Self>,
        _num_heads: usize,
        _prob: f64,
    ) -> Option<(FloatTensor<Self>, AttentionSaved<Self>)> {
        None
    }

    /// The backward of [`attention_train`](Self::attention_train): from the context's
    /// gradient, `[d_q, d_k, d_v]`.
    fn attention_backward(
        saved: AttentionSaved<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        attention_backward_composed(saved, grad)
    }

    /// Exact GELU as training's GELU node, whose backward gets `x` back. `None` (the
    /// default): burn's own `gelu` node.
    fn exact_gelu(_x: FloatTensor<Self>) -> Option<FloatTensor<Self>> {
        None
    }

    /// The gradient of [`exact_gelu`](Self::exact_gelu)'s input from that of its output.
    fn exact_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, grad)
    }

    /// Training's `LayerNorm(x + residual)` (`x`, `residual` `[.., width]`; `gamma`, `beta`
    /// `[width]`) as one graph node: the output and what the backward needs. `None` (the
    /// default): composed from tensor ops.
    fn residual_layer_norm(
        _x: FloatTensor<Self>,
        _residual: FloatTensor<Self>,
        _gamma: FloatTensor<Self>,
        _beta: FloatTensor<Self>,
        _eps: f64,
    ) -> Option<(FloatTensor<Self>, LayerNormSaved<Self>)> {
        None
    }

    /// The backward of [`residual_layer_norm`](Self::residual_layer_norm): from the output's
    /// gradient, `[d_x, d_gamma, d_beta]` (`d_x`, shaped like `grad`, is also the residual's).
    fn residual_layer_norm_backward(
        saved: LayerNormSaved<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        layer_norm_backward_composed(saved, gamma, grad)
    }

    /// The optimizer's step for one parameter tensor (st-train's AdamW runs it on the
    /// training backend's inner backend): `[param, moment_1, moment_2]` after the step, from
    /// the parameter, its gradient and the moments before (`None` on the first step: zeros).
    /// The default is tensor ops; a backend overrides it to update in one pass.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<[FloatTensor<Self>; 2]>,
        step: AdamWStep,
    ) -> [FloatTensor<Self>; 3] {
        adamw_step_composed::<Self>(param, grad, moments, step)
    }
}

/// AdamW's step in tensor ops, for any backend: st-kernels' [`adamw`](st_kernels::adamw)
/// formula (PyTorch's), element-wise on tensors of any shape.
pub fn adamw_step_composed<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moments: Option<[FloatTensor<B>; 2]>,
    s: AdamWStep,
) -> [FloatTensor<B>; 3] {
    // Element-wise throughout, so the rank the tensors are read as does not matter.
    let float = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let grad = float(grad);
    let [moment_1, moment_2] = match moments {
        Some(moments) => moments.map(float),
        None => [grad.zeros_like(), grad.zeros_like()],
    };
    let moment_1 = moment_1 * s.beta_1 + grad.clone() * (1.0 - s.beta_1);
    let moment_2 = moment_2 * s.beta_2 + grad.square() * (1.0 - s.beta_2);
    let step_size = s.lr / (1.0 - s.beta_1.powi(s.time));
    let inv_bias_2 = 1.0 / (1.0 - s.beta_2.powi(s.time)).sqrt();
    let denominator = moment_2.clone().sqrt() * inv_bias_2 + s.epsilon;
    let param =
        float(param) * (1.0 - s.lr * s.weight_decay) - moment_1.clone() / denominator * step_size;
    [param, moment_1, moment_2].map(|t| t.into_primitive().tensor())
}

/// What training's attention forward keeps for its backward.
#[derive(Debug, Clone)]
pub struct AttentionSaved<B: Backend> {
    /// The projections, `[batch, seq, hidden]` each.
    pub qkv: [FloatTensor<B>; 3],
    /// The softmax probabilities (before dropout), `[batch, heads, seq, seq]`.
    pub probs: FloatTensor<B>,
    /// The dropout mask applied to them (0 or `1/keep`), `None` without dropout.
    pub mask: Option<FloatTensor<B>>,
}

/// Attention's backward in tensor ops, for any backend. With `P` the probabilities,
/// `W = P ⊙ mask`: `dV = Wᵀ·dO`, `dP = (dO·Vᵀ) ⊙ mask`, `dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d`,
/// `dQ = dS·K`, `dK = dSᵀ·Q`, per head.
pub fn attention_backward_composed<B: Backend>(
    saved: AttentionSaved<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let probs = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(saved.probs));
    let [batch, heads, seq, _] = probs.dims();
    let d_out = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(grad));
    let hidden = d_out.dims()[2];
    let head_dim = hidden / heads;
    let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    let merge = |t: Tensor<B, 4>| -> FloatTensor<B> {
        t.swap_dims(1, 2)
            .reshape([batch, seq, hidden])
            .into_primitive()
            .tensor()
    };
    let [q, k, v] = saved
        .qkv
        .map(|t| split(Tensor::from_primitive(TensorPrimitive::Float(t))));
    let d_out = split(d_out);
    let mask = saved
        .mask
        .map(|m| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(m)));
    let weights = match &mask {
        Some(mask) => probs.clone() * mask.clone(),
        None => probs.clone(),
    };
    let d_v = weights.swap_dims(2, 3).matmul(d_out.clone());
    let d_weights = d_out.matmul(v.swap_dims(2, 3));
    let d_probs = match mask {
        Some(mask) => d_weights * mask,
        None => d_weights,
    };
    let dot = (d_probs.clone() * probs.clone()).sum_dim(3);
    let d_scores = probs * (d_probs - dot) / (head_dim as f64).sqrt();
    let d_q = d_scores.clone().matmul(k);
    let d_k = d_scores.swap_dims(2, 3).matmul(q);
    [merge(d_q), merge(d_k), merge(d_v)]
}

/// What training's LayerNorm forward keeps for its backward.
#[derive(Debug, Clone)]
pub struct LayerNormSaved<B: Backend> {
    /// `(x − mean) / σ` per row, shaped like the input.
    pub normalized: FloatTensor<B>,
    /// `1/σ`, one per row: the input's shape with the last dimension 1.
    pub inv_std: FloatTensor<B>,
}

/// LayerNorm's backward in tensor ops, for any backend: per row, with `g = grad · γ` and `x̂`
/// the normalized input, `d_x = (g − mean(g) − x̂ · mean(g · x̂)) / σ`; `d_γ = Σ grad · x̂`,
/// `d_β = Σ grad` over rows.
pub fn layer_norm_backward_composed<B: Backend>(
    saved: LayerNormSaved<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let float = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let dims = burn::tensor::TensorMetadata::shape(&grad);
    let width = dims[dims.num_dims() - 1];
    let rows = dims.num_elements() / width;
    let grad = float(grad).reshape([rows, width]);
    let x_hat = float(saved.normalized).reshape([rows, width]);
    let inv_std = float(saved.inv_std).reshape([rows, 1]);
    let scaled = grad.clone() * float(gamma).reshape([1, width]);
    let mean = scaled.clone().mean_dim(1);
    let mean_x = (scaled.clone() * x_hat.clone()).mean_dim(1);
    let d_x = (scaled - mean - x_hat.clone() * mean_x) * inv_std;
    let d_gamma = (grad.clone() * x_hat).sum_dim(0).reshape([width]);
    let d_beta = grad.sum_dim(0).reshape([width]);
    let d_x = B::float_reshape(d_x.into_primitive().tensor(), dims);
    [
        d_x,
        d_gamma.into_primitive().tensor(),
        d_beta.into_primitive().tensor(),
    ]
}

/// `module.forward(x)`, on the backend's [`EncoderBackend::dropout_mask`] where it has one.
/// A no-op outside training, as burn's.
pub fn dropout<B: EncoderBackend, const D: usize>(
    module: &Dropout,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) || module.prob == 0.0 {
        return x;
    }
    match B::dropout_mask(x.shape(), module.prob, x.dtype(), &x.device()) {
        Some(mask) => x * Tensor::from_primitive(TensorPrimitive::Float(mask)),
        None => module.forward(x),
    }
}

#[cfg(feature = "wgpu")]
impl EncoderBackend for burn_wgpu::Wgpu {}

/// A training backend: autodiff over a backend the encoder runs on, so both the training pass
/// and validation on the inner backend (`model.valid()`) can run the encoder.
pub trait AutodiffEncoderBackend:
    burn::tensor::backend::AutodiffBackend<InnerBackend: EncoderBackend> + EncoderBackend
{
}

impl<B> AutodiffEncoderBackend for B where
    B: burn::tensor::backend::AutodiffBackend<InnerBackend: EncoderBackend> + EncoderBackend
{
}
