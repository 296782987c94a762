//! The whole BERT encoder in one file: embeddings, post-LN encoder layers, optional pooler.
//! MPNet, RoBERTa / XLM-R and DistilBERT run on the same modules with their few additions from
//! `mpnet.rs`, `roberta.rs` and `distilbert.rs`.
//!
//! Field names follow Hugging Face's `BertModel` so checkpoint keys map one to one
//! (`encoder.layer.3.attention.output.dense.weight`); the only renames are the ones Rust forces:
//! `LayerNorm` → `layer_norm` and `attention.self` → `attention.self_attn` (see `weights.rs`).

use burn::module::Module;
use burn::module::{ModuleMapper, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::activation::{relu, softmax, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Int, Tensor};
use st_kernels::QuantizedMatrix;
use std::sync::Arc;

use crate::config::{Architecture, BertConfig, HiddenAct};
use crate::fused::EncoderBackend;

/// One batch of token ids, ready for the model. Rows are padded to the batch's longest input.
#[derive(Debug, Clone)]
pub struct BertInput<B: Backend> {
    /// `[batch, seq]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[batch, seq]` segment ids; all zeros for single sentences.
    pub token_type_ids: Tensor<B, 2, Int>,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct BertOutput<B: Backend> {
    /// `[batch, seq, hidden]`: the token embeddings after the last layer.
    pub last_hidden_state: Tensor<B, 3>,
    /// The embedding output and every layer's output (`num_hidden_layers + 1` tensors), when
    /// asked for with [`BertModel::forward_all`].
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

/// Word + position + token-type embeddings, then LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    /// Absent in MPNet and DistilBERT, which have no segments.
    pub token_type_embeddings: Option<Embedding<B>>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
    /// The first token's position id ([`BertConfig::position_offset`]).
    #[module(skip)]
    position_offset: usize,
    /// RoBERTa's (and MPNet's) padding index ([`BertConfig::position_padding_idx`]): positions
    /// then skip padding tokens (`roberta.rs`).
    #[module(skip)]
    position_padding_idx: Option<usize>,
}

impl<B: Backend> BertEmbeddings<B> {
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let first = self.position_offset as i64;
        let positions = match self.position_padding_idx {
            Some(padding_idx) => crate::roberta::position_ids(input_ids.clone(), padding_idx),
            None => Tensor::<B, 1, Int>::arange(first..first + seq as i64, &device)
                .unsqueeze::<2>()
                .expand([batch, seq]),
        };
        let mut embedded =
            self.word_embeddings.forward(input_ids) + self.position_embeddings.forward(positions);
        if let Some(token_types) = &self.token_type_embeddings {
            embedded = embedded + token_types.forward(token_type_ids);
        }
        self.dropout.forward(self.layer_norm.forward(embedded))
    }
}

/// `linear` applied to `[batch, seq, d_in]` as one 2-D matmul over all tokens.
///
/// burn 0.21's `Linear` on a rank-3 input broadcasts the weight to `[1, d_in, d_out]`, which
/// libtorch runs as a batched matmul: on a CPU with AMX that path does bf16 at ~60 GFLOP/s
/// where a plain 2-D matmul reaches ~2,000, and its backward reduces the weight gradient over
/// the broadcast batch dimension. Flattening the tokens first takes the fast path everywhere.
fn dense<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let y = linear.forward(x.reshape([batch * seq, d_in]));
    let d_out = y.dims()[1];
    y.reshape([batch, seq, d_out])
}

/// A linear layer's weights quantized to int8 for inference ([`BertModel::with_int8_linears`]):
/// symmetric per-output-column scales, packed once for st-kernels' int8 matmul.
#[derive(Debug)]
pub struct Int8Linear {
    pub weight: QuantizedMatrix,
    pub bias: Option<Vec<f32>>,
}

impl Int8Linear {
    fn quantize<B: Backend>(linear: &Linear<B>) -> Arc<Self> {
        let values = |t: Tensor<B, 1>| t.into_data().convert::<f32>().to_vec::<f32>();
        let [d_in, d_out] = linear.weight.dims();
        let weight = values(linear.weight.val().reshape([d_in * d_out])).expect("f32 weights");
        Arc::new(Int8Linear {
            weight: QuantizedMatrix::quantize(&weight, d_in, d_out),
            bias: linear
                .bias
                .as_ref()
                .map(|b| values(b.val()).expect("f32 bias")),
        })
    }
}

/// Multi-head scaled dot-product self-attention (`attention.self` in Hugging Face).
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub dropout: Dropout,
    #[module(skip)]
    num_heads: usize,
}

impl<B: Backend> BertSelfAttention<B> {
    /// Number of attention heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// `x`: `[batch, seq, hidden]`; `key_padding`: `[batch, seq]`, true where a key is padding.
    pub fn forward(&self, x: Tensor<B, 3>, key_padding: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        self.forward_with_position_bias(x, key_padding, None)
    }

    /// [`forward`](Self::forward) with a bias added to the scaled scores of every head:
    /// `position_bias` `[1, heads, seq, seq]` (MPNet's relative positions, `mpnet.rs`).
    pub fn forward_with_position_bias(
        &self,
        x: Tensor<B, 3>,
        key_padding: Tensor<B, 2, Bool>,
        position_bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let (x_device, x_dtype) = (x.device(), x.dtype());
        let head_dim = hidden / self.num_heads;
        let split = |t: Tensor<B, 3>| {
            t.reshape([batch, seq, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split(dense(&self.query, x.clone()));
        let k = split(dense(&self.key, x.clone()));
        let v = split(dense(&self.value, x));
        // Padding enters as an additive bias (−∞ on padded keys) rather than a boolean mask:
        // burn-tch 0.21 hands burn's mask (true = masked out) to PyTorch's SDPA, where true
        // means "attend", so a boolean mask inverts there. The bias means the same everywhere.
        let bias = Tensor::<B, 4>::zeros([batch, 1, 1, seq], &x_device)
            .cast(x_dtype)
            .mask_fill(key_padding.reshape([batch, 1, 1, seq]), f32::NEG_INFINITY)
            .expand([batch, self.num_heads, seq, seq]);
        let bias = match position_bias {
            Some(position) => bias + position.cast(x_dtype),
            None => bias,
        };

        let context = if B::ad_enabled(&q.device()) && self.dropout.prob > 0.0 {
            // Training: dropout on the attention probabilities, as BERT was trained. The fused
            // kernel has no dropout, so spell the attention out.
            let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
            let probs = self.dropout.forward(softmax(scores + bias, 3));
            probs.matmul(v)
        } else {
            attention(q, k, v, None, Some(bias), AttentionModuleOptions::default())
        };
        context.swap_dims(1, 2).reshape([batch, seq, hidden])
    }
}

/// Projection after attention, dropout, residual, LayerNorm (`attention.output`).
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
    /// `layer_norm`'s epsilon, which burn's `LayerNorm` keeps private (fused kernels need it).
    #[module(skip)]
    layer_norm_eps: f64,
    /// `dense` quantized, when int8 is on.
    #[module(skip)]
    int8_dense: Option<Arc<Int8Linear>>,
}

impl<B: Backend> BertSelfOutput<B> {
    /// The LayerNorm's epsilon.
    pub fn layer_norm_eps(&self) -> f64 {
        self.layer_norm_eps
    }

    /// `dense` in int8, when [`BertModel::with_int8_linears`] quantized it.
    pub fn int8_dense(&self) -> Option<&Int8Linear> {
        self.int8_dense.as_deref()
    }

    pub fn forward(&self, hidden: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let projected = self.dropout.forward(dense(&self.dense, hidden));
        self.layer_norm.forward(projected + residual)
    }
}

#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    pub self_attn: BertSelfAttention<B>,
    pub output: BertSelfOutput<B>,
}

/// The feed-forward expansion: dense then activation.
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    pub dense: Linear<B>,
    #[module(skip)]
    act: HiddenAct,
    /// `dense` quantized, when int8 is on.
    #[module(skip)]
    int8_dense: Option<Arc<Int8Linear>>,
}

impl<B: Backend> BertIntermediate<B> {
    /// The activation after the expansion.
    pub fn act(&self) -> HiddenAct {
        self.act
    }

    /// `dense` in int8, when [`BertModel::with_int8_linears`] quantized it.
    pub fn int8_dense(&self) -> Option<&Int8Linear> {
        self.int8_dense.as_deref()
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = dense(&self.dense, x);
        match self.act {
            HiddenAct::Gelu => burn::tensor::activation::gelu(x),
            HiddenAct::GeluApprox => burn::tensor::activation::gelu_approximate(x),
            HiddenAct::Relu => relu(x),
        }
    }
}

/// One post-LN transformer layer: attention block, then feed-forward block.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub attention: BertAttention<B>,
    pub intermediate: BertIntermediate<B>,
    /// The feed-forward contraction; same shape as [`BertSelfOutput`].
    pub output: BertSelfOutput<B>,
}

impl<B: EncoderBackend> BertLayer<B> {
    /// Runs through the backend's fused operations ([`EncoderBackend`]); their defaults are the
    /// sub-modules' own `forward`, which training (autodiff) uses. `position_bias`: MPNet's
    /// `[1, heads, seq, seq]` relative-position bias.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        key_padding: Tensor<B, 2, Bool>,
        position_bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let self_attn = &self.attention.self_attn;
        let attended = B::self_attention(self_attn, x.clone(), key_padding, position_bias);
        let x = B::self_output(&self.attention.output, attended, x);
        let expanded = B::intermediate(&self.intermediate, x.clone());
        B::self_output(&self.output, expanded, x)
    }
}

#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// Named `layer` (singular) to match Hugging Face keys: `encoder.layer.0...`.
    pub layer: Vec<BertLayer<B>>,
    /// MPNet's `[buckets, heads]` relative-position table, shared by every layer.
    pub relative_attention_bias: Option<Embedding<B>>,
}

/// `tanh(dense(h_cls))`: the next-sentence-prediction pooler some checkpoints carry.
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    pub dense: Linear<B>,
}

impl<B: Backend> BertPooler<B> {
    pub fn forward(&self, last_hidden_state: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, _, hidden] = last_hidden_state.dims();
        let cls = last_hidden_state.narrow(1, 0, 1).reshape([batch, hidden]);
        tanh(self.dense.forward(cls))
    }
}

/// A BERT encoder, generic over the Burn backend.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    pub embeddings: BertEmbeddings<B>,
    pub encoder: BertEncoder<B>,
    pub pooler: Option<BertPooler<B>>,
    /// The family: fixes the key names the model saves under (`weights.rs`).
    #[module(skip)]
    architecture: Architecture,
}

impl BertConfig {
    /// A randomly initialized model of this shape (for training from scratch and for tests).
    /// `with_pooler` adds the `tanh(dense(CLS))` pooler.
    pub fn init<B: Backend>(&self, with_pooler: bool, device: &B::Device) -> BertModel<B> {
        let h = self.hidden_size;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let layer_norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let hidden_dropout = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let embeddings = BertEmbeddings {
            word_embeddings: EmbeddingConfig::new(self.vocab_size, h).init(device),
            position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, h).init(device),
            token_type_embeddings: self
                .has_token_types()
                .then(|| EmbeddingConfig::new(self.type_vocab_size, h).init(device)),
            layer_norm: layer_norm(),
            dropout: hidden_dropout(),
            position_offset: self.position_offset(),
            position_padding_idx: self.position_padding_idx(),
        };
        let layer = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attn: BertSelfAttention {
                        query: linear(h, h),
                        key: linear(h, h),
                        value: linear(h, h),
                        dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                        num_heads: self.num_attention_heads,
                    },
                    output: BertSelfOutput {
                        dense: linear(h, h),
                        layer_norm: layer_norm(),
                        dropout: hidden_dropout(),
                        layer_norm_eps: self.layer_norm_eps,
                        int8_dense: None,
                    },
                },
                intermediate: BertIntermediate {
                    dense: linear(h, self.intermediate_size),
                    act: self.hidden_act,
                    int8_dense: None,
                },
                output: BertSelfOutput {
                    dense: linear(self.intermediate_size, h),
                    layer_norm: layer_norm(),
                    dropout: hidden_dropout(),
                    layer_norm_eps: self.layer_norm_eps,
                    int8_dense: None,
                },
            })
            .collect();
        BertModel {
            embeddings,
            encoder: BertEncoder {
                layer,
                relative_attention_bias: self
                    .relative_attention_num_buckets
                    .filter(|_| self.architecture() == Architecture::MPNet)
                    .map(|buckets| {
                        EmbeddingConfig::new(buckets, self.num_attention_heads).init(device)
                    }),
            },
            pooler: with_pooler.then(|| BertPooler {
                dense: linear(h, h),
            }),
            architecture: self.architecture(),
        }
    }
}

/// Casts every float parameter to one dtype.
struct CastFloats(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

impl<B: Backend> BertModel<B> {
    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }

    /// The family of the `config.json` the model was built from.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// Width of the token embeddings.
    pub fn hidden_size(&self) -> usize {
        self.embeddings.word_embeddings.weight.dims()[1]
    }

    /// Largest sequence the position table covers.
    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embeddings.weight.dims()[0]
    }

    /// The same model with its weights, and so its activations, in `dtype` (e.g. bf16 for
    /// reduced-precision inference). Outputs come back in that dtype.
    pub fn with_float_dtype(self, dtype: FloatDType) -> Self {
        self.map(&mut CastFloats(dtype))
    }
}

/// [`BertModel::with_int8_linears`] on a backend without int8 kernels.
#[derive(Debug, thiserror::Error)]
#[error("the {backend} backend has no int8 kernels (int8 runs on the default CPU backend, flex)")]
pub struct Int8Unsupported {
    pub backend: String,
}

impl<B: EncoderBackend> BertModel<B> {
    /// The same model with the attention output and feed-forward projections computed in
    /// int8: weights quantized here, once (symmetric, per output column), activations
    /// quantized per token on each call, i32 accumulation. Embeddings, the Q/K/V projections,
    /// attention, GELU and LayerNorm stay f32: the Q/K/V input (a LayerNorm output) has a few
    /// outlier channels that per-token int8 scales poorly (all-MiniLM-L6-v2, "ok": cosine to
    /// float32 0.982 with Q/K/V in int8, 0.991 without).
    ///
    /// Inference only: the float parameters are kept (training and saving use them) and the
    /// int8 copy is not updated if they change, so quantize after training. Only backends
    /// with int8 kernels ([`EncoderBackend::INT8_LINEARS`]) accept it.
    pub fn with_int8_linears(mut self) -> Result<Self, Int8Unsupported> {
        if !B::INT8_LINEARS {
            return Err(Int8Unsupported {
                backend: B::name(&Default::default()),
            });
        }
        for layer in &mut self.encoder.layer {
            let output = &mut layer.attention.output;
            output.int8_dense = Some(Int8Linear::quantize(&output.dense));
            let intermediate = &mut layer.intermediate;
            intermediate.int8_dense = Some(Int8Linear::quantize(&intermediate.dense));
            layer.output.int8_dense = Some(Int8Linear::quantize(&layer.output.dense));
        }
        Ok(self)
    }

    /// The last hidden state, `[batch, seq, hidden]`.
    pub fn forward(&self, input: BertInput<B>) -> Tensor<B, 3> {
        self.run(input, false).last_hidden_state
    }

    /// The last hidden state and the output of the embeddings and of every layer.
    pub fn forward_all(&self, input: BertInput<B>) -> BertOutput<B> {
        self.run(input, true)
    }

    fn run(&self, input: BertInput<B>, keep_all: bool) -> BertOutput<B> {
        let key_padding = input.attention_mask.equal_elem(0);
        let mut x = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        let mut all = keep_all.then(|| vec![x.clone()]);
        let seq = x.dims()[1];
        let position_bias = self
            .encoder
            .relative_attention_bias
            .as_ref()
            .map(|table| crate::mpnet::position_bias(table, seq).cast(x.dtype()));
        for layer in &self.encoder.layer {
            x = layer.forward(x, key_padding.clone(), position_bias.clone());
            if let Some(all) = all.as_mut() {
                all.push(x.clone());
            }
        }
        BertOutput {
            last_hidden_state: x,
            hidden_states: all,
        }
    }
}
