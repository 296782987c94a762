//! Training: [`EncoderBackend`] for burn's `Autodiff` over any encoder backend.
//!
//! The projections run as burn's linear ops, which autodiff differentiates. The attention after
//! them, the feed-forward GELU and each residual + LayerNorm run as single graph nodes on the
//! inner backend's training kernels ([`EncoderBackend::attention_train`],
//! [`EncoderBackend::exact_gelu`], [`EncoderBackend::residual_layer_norm`]), and dropout on its
//! masks ([`EncoderBackend::dropout_mask`]): burn-flex overrides them with st-kernels' ones;
//! other backends keep burn's ops.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, DType, Shape, Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};

use crate::config::HiddenAct;
use crate::fused::{AttentionSaved, EncoderBackend, LayerNormSaved, dropout};
use crate::model::{BertIntermediate, BertSelfAttention, BertSelfOutput, dense};

impl<B: EncoderBackend, C: CheckpointStrategy> EncoderBackend for Autodiff<B, C> {
    fn self_attention(
        attn: &BertSelfAttention<Self>,
        x: Tensor<Self, 3>,
        key_padding: Tensor<Self, 2, Bool>,
        position_bias: Option<Tensor<Self, 4>>,
    ) -> Tensor<Self, 3> {
        // MPNet's position bias is learned: its gradient is left to the composed ops.
        if position_bias.is_some() {
            return attn.forward_with_position_bias(x, key_padding, position_bias);
        }
        let qkv = [&attn.query, &attn.key, &attn.value]
            .map(|linear| dense(linear, x.clone()).into_primitive().tensor());
        let inner = qkv.each_ref().map(|t| t.primitive.clone());
        let padding = key_padding.clone().into_primitive();
        let heads = attn.num_heads();
        let Some((context, saved)) = B::attention_train(inner, padding, heads, attn.dropout.prob)
        else {
            return attn.attend(qkv.map(float), key_padding, None);
        };
        let nodes = qkv.each_ref().map(|t| t.node.clone());
        let context = match AttentionNode.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(saved, context),
            OpsKind::UnTracked(prep) => prep.finish(context),
        };
        float(context)
    }

    fn self_output(
        output: &BertSelfOutput<Self>,
        hidden: Tensor<Self, 3>,
        residual: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        let projected = dropout(&output.dropout, dense(&output.dense, hidden));
        let norm = &output.layer_norm;
        let Some(beta) = &norm.beta else {
            return norm.forward(projected + residual);
        };
        let x = projected.into_primitive().tensor();
        let residual = residual.into_primitive().tensor();
        let gamma = norm.gamma.val().into_primitive().tensor();
        let beta = beta.val().into_primitive().tensor();
        let eps = output.layer_norm_eps();
        let inner = |t: &FloatTensor<Self>| t.primitive.clone();
        let Some((y, saved)) = B::residual_layer_norm(
            inner(&x),
            inner(&residual),
            inner(&gamma),
            inner(&beta),
            eps,
        ) else {
            return norm.forward(float::<B, C, 3>(x) + float(residual));
        };
        let nodes = [&x, &residual, &gamma, &beta].map(|t| t.node.clone());
        let y = match ResidualLayerNormNode
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((saved, gamma.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        float(y)
    }

    fn intermediate(intermediate: &BertIntermediate<Self>, x: Tensor<Self, 3>) -> Tensor<Self, 3> {
        if intermediate.act() != HiddenAct::Gelu {
            return intermediate.forward(x);
        }
        let x = dense(&intermediate.dense, x).into_primitive().tensor();
        let Some(y) = B::exact_gelu(x.primitive.clone()) else {
            return intermediate.activate(float(x));
        };
        let y = match GeluNode
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(x.primitive, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        float(y)
    }

    fn dropout_mask(
        shape: Shape,
        prob: f64,
        dtype: DType,
        device: &B::Device,
    ) -> Option<FloatTensor<Self>> {
        B::dropout_mask(shape, prob, dtype, device).map(<Self as AutodiffBackend>::from_inner)
    }
}

fn float<B: EncoderBackend, C: CheckpointStrategy, const D: usize>(
    t: FloatTensor<Autodiff<B, C>>,
) -> Tensor<Autodiff<B, C>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Attention after the projections as one node: parents `[q, k, v]`; its state is what the
/// forward kept.
#[derive(Debug)]
struct AttentionNode;

impl<B: EncoderBackend> Backward<B, 3> for AttentionNode {
    type State = AttentionSaved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let d_qkv = B::attention_backward(ops.state, grad);
        for (parent, grad) in ops.parents.into_iter().zip(d_qkv) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Exact GELU as one node; its state is the input.
#[derive(Debug)]
struct GeluNode;

impl<B: EncoderBackend> Backward<B, 1> for GeluNode {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::exact_gelu_backward(x, grad)
        });
    }
}

/// `LayerNorm(x + residual)` as one node: parents `[x, residual, gamma, beta]`; its state is
/// what the forward kept, and `gamma`.
#[derive(Debug)]
struct ResidualLayerNormNode;

impl<B: EncoderBackend> Backward<B, 4> for ResidualLayerNormNode {
    type State = (LayerNormSaved<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (saved, gamma) = ops.state;
        let [d_x, d_gamma, d_beta] = B::residual_layer_norm_backward(saved, gamma, grad);
        let [x, residual, gamma, beta] = ops.parents;
        // The residual add passes the same gradient to both of its inputs.
        for (parent, grad) in [
            (x, d_x.clone()),
            (residual, d_x),
            (gamma, d_gamma),
            (beta, d_beta),
        ] {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}
