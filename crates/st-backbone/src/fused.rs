//! [`EncoderBackend`]: the few fused operations the encoder asks its backend for (Burn's
//! backend-extension pattern). Each default method is the composed tensor code of the module it
//! takes, so libtorch, wgpu and autodiff run exactly what they ran before; burn-flex overrides
//! them with st-kernels' fused CPU kernels (no head split/merge copies, bias + exact GELU with a
//! vectorized `erf`, bias + residual + LayerNorm in one pass, one QKV matmul).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use crate::model::{BertIntermediate, BertSelfAttention, BertSelfOutput};

/// A backend the BERT encoder runs on. Implement it with no methods (`impl EncoderBackend for
/// MyBackend {}`) to run the composed tensor code; override a method to fuse it.
///
/// Overrides must compute what the default computes at inference (dropout off); the model only
/// calls them when autodiff is off, and trains through the modules' own `forward`.
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
}

/// Training runs the composed ops, which autodiff differentiates.
impl<B: EncoderBackend, C: burn_autodiff::checkpoint::strategy::CheckpointStrategy> EncoderBackend
    for burn_autodiff::Autodiff<B, C>
{
}

#[cfg(feature = "tch")]
impl<E: burn_tch::TchElement> EncoderBackend for burn_tch::LibTorch<E> {}

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
