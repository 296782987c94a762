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
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use st_kernels::{QuantizedMatrix, QuantizedTable};
use std::sync::Arc;

use crate::config::{Architecture, BertConfig, HiddenAct};
use crate::fused::{EncoderBackend, dropout};

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
    /// `word_embeddings` in int8, when [`BertModel::with_int8_linears`] quantized them.
    #[module(skip)]
    int8_words: Option<Arc<QuantizedTable>>,
}

impl<B: EncoderBackend> BertEmbeddings<B> {
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
        let words = match &self.int8_words {
            Some(table) => int8_lookup(table, input_ids),
            None => self.word_embeddings.forward(input_ids),
        };
        let mut embedded = words + self.position_embeddings.forward(positions);
        if let Some(token_types) = &self.token_type_embeddings {
            embedded = embedded + token_types.forward(token_type_ids);
        }
        dropout(&self.dropout, self.layer_norm.forward(embedded))
    }
}

/// Rows of an int8 table for `[batch, seq]` ids, dequantized: `[batch, seq, dim]`.
fn int8_lookup<B: Backend>(table: &QuantizedTable, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [batch, seq] = ids.dims();
    let device = ids.device();
    let ids: Vec<usize> = ids
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("integer ids")
        .into_iter()
        .map(|id| usize::try_from(id).unwrap_or(usize::MAX))
        .collect();
    let mut values = vec![0.0f32; ids.len() * table.dim()];
    table.gather(&ids, &mut values);
    Tensor::from_data(TensorData::new(values, [batch, seq, table.dim()]), &device)
}

/// `linear` applied to `[batch, seq, d_in]` as one 2-D matmul over all tokens.
///
/// burn 0.21's `Linear` on a rank-3 input broadcasts the weight to `[1, d_in, d_out]`, which
/// libtorch runs as a batched matmul: on a CPU with AMX that path does bf16 at ~60 GFLOP/s
/// where a plain 2-D matmul reaches ~2,000, and its backward reduces the weight gradient over
/// the broadcast batch dimension. Flattening the tokens first takes the fast path everywhere.
pub(crate) fn dense<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
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
    /// `linears` (all with the same input) as one int8 product, their outputs side by side:
    /// Q, K and V share one quantization of their input this way. `activation_max`: the
    /// input's per-channel maxima on calibration data, which smooth the weights
    /// ([`st_kernels::smoothing_factors`]).
    fn quantize<B: Backend>(linears: &[&Linear<B>], activation_max: &[f32]) -> Arc<Self> {
        fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
            let data = t.into_data().convert::<f32>();
            data.into_vec::<f32>().expect("f32 weights")
        }
        let d_in = linears[0].weight.dims()[0];
        let widths: Vec<usize> = linears.iter().map(|l| l.weight.dims()[1]).collect();
        let d_out = widths.iter().sum();
        let parts: Vec<Vec<f32>> = linears.iter().map(|l| values(l.weight.val())).collect();
        // Row k of the joined weight: row k of each part, side by side.
        let mut weight = Vec::with_capacity(d_in * d_out);
        for k in 0..d_in {
            for (part, &width) in parts.iter().zip(&widths) {
                weight.extend_from_slice(&part[k * width..(k + 1) * width]);
            }
        }
        let bias = linears.iter().any(|l| l.bias.is_some()).then(|| {
            let parts = linears
                .iter()
                .zip(&widths)
                .map(|(l, &width)| match &l.bias {
                    Some(b) => values(b.val()),
                    None => vec![0.0; width],
                });
            parts.flatten().collect()
        });
        // α = 0.5, SmoothQuant's default. Worst cosine to float32 over 302 STS-B sentences on
        // all-MiniLM-L6-v2: 0.9944 at 0.5, 0.9948 at 0.65, 0.9925 at 0.8 (docs/performance.md).
        let smoothing = st_kernels::smoothing_factors(activation_max, &weight, d_out, 0.5);
        let weight = QuantizedMatrix::quantize_smoothed(&weight, d_in, d_out, &smoothing);
        Arc::new(Int8Linear { weight, bias })
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
    /// Q, K and V as one smoothed int8 product (outputs side by side), when int8 is on.
    #[module(skip)]
    int8_qkv: Option<Arc<Int8Linear>>,
}

impl<B: Backend> BertSelfAttention<B> {
    /// Number of attention heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// Q, K and V in int8, `[hidden, 3·hidden]`, when [`BertModel::with_int8_linears`]
    /// quantized them.
    pub fn int8_qkv(&self) -> Option<&Int8Linear> {
        self.int8_qkv.as_deref()
    }
}

impl<B: EncoderBackend> BertSelfAttention<B> {
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
        let [q, k, v] = [&self.query, &self.key, &self.value].map(|l| dense(l, x.clone()));
        self.attend([q, k, v], key_padding, position_bias)
    }

    /// The attention after the projections: `q`, `k`, `v` `[batch, seq, hidden]` → context
    /// `[batch, seq, hidden]` (before the output projection).
    pub fn attend(
        &self,
        [q, k, v]: [Tensor<B, 3>; 3],
        key_padding: Tensor<B, 2, Bool>,
        position_bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, hidden] = q.dims();
        let (device, dtype) = (q.device(), q.dtype());
        let head_dim = hidden / self.num_heads;
        let split = |t: Tensor<B, 3>| {
            t.reshape([batch, seq, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let [q, k, v] = [q, k, v].map(split);
        // Padding enters as an additive bias (−∞ on padded keys) rather than a boolean mask:
        // burn-tch 0.21 hands burn's mask (true = masked out) to PyTorch's SDPA, where true
        // means "attend", so a boolean mask inverts there. The bias means the same everywhere.
        let bias = Tensor::<B, 4>::zeros([batch, 1, 1, seq], &device)
            .cast(dtype)
            .mask_fill(key_padding.reshape([batch, 1, 1, seq]), f32::NEG_INFINITY)
            .expand([batch, self.num_heads, seq, seq]);
        let bias = match position_bias {
            Some(position) => bias + position.cast(dtype),
            None => bias,
        };

        let context = if B::ad_enabled(&q.device()) && self.dropout.prob > 0.0 {
            // Training: dropout on the attention probabilities, as BERT was trained. The fused
            // kernel has no dropout, so spell the attention out.
            let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
            let probs = dropout(&self.dropout, softmax(scores + bias, 3));
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
}

impl<B: EncoderBackend> BertSelfOutput<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let projected = dropout(&self.dropout, dense(&self.dense, hidden));
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
        self.activate(dense(&self.dense, x))
    }

    /// The activation alone, on the expansion's output.
    pub fn activate(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
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

/// The four inputs of a layer's projections, in the order a layer computes them (what int8
/// calibration observes, [`BertModel::with_int8_linears`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionInput {
    /// The layer's input, which Q, K and V project.
    Qkv = 0,
    /// The attention context, before `attention.output.dense`.
    AttentionOutput = 1,
    /// The attention block's output, before `intermediate.dense`.
    FeedForwardUp = 2,
    /// The activation, before `output.dense`.
    FeedForwardDown = 3,
}

/// Sees a layer's projection inputs as they are computed: `(layer index, which, input)`.
type Observer<'a, B> = &'a mut dyn FnMut(usize, ProjectionInput, &Tensor<B, 3>);

impl<B: EncoderBackend> BertLayer<B> {
    /// Runs through the backend's fused operations ([`EncoderBackend`]); their defaults are the
    /// sub-modules' own `forward` (in training, `autodiff.rs` runs them on the inner backend's
    /// training hooks). `position_bias`: MPNet's `[1, heads, seq, seq]` relative-position bias.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        key_padding: Tensor<B, 2, Bool>,
        position_bias: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        self.forward_observed(x, key_padding, position_bias, &mut |_, _, _| {}, 0)
    }

    fn forward_observed(
        &self,
        x: Tensor<B, 3>,
        key_padding: Tensor<B, 2, Bool>,
        position_bias: Option<Tensor<B, 4>>,
        observe: Observer<'_, B>,
        index: usize,
    ) -> Tensor<B, 3> {
        observe(index, ProjectionInput::Qkv, &x);
        let self_attn = &self.attention.self_attn;
        let attended = B::self_attention(self_attn, x.clone(), key_padding, position_bias);
        observe(index, ProjectionInput::AttentionOutput, &attended);
        let x = B::self_output(&self.attention.output, attended, x);
        observe(index, ProjectionInput::FeedForwardUp, &x);
        let expanded = B::intermediate(&self.intermediate, x.clone());
        observe(index, ProjectionInput::FeedForwardDown, &expanded);
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
            int8_words: None,
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
                        int8_qkv: None,
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

/// Replaces a weight its int8 copy now serves by an empty `[0, width]` tensor: the float one
/// would hold four times the int8 memory for nothing. The width stays, so shapes still read.
fn release<B: Backend>(param: &mut Param<Tensor<B, 2>>) {
    let [_, width] = param.dims();
    let device = param.device();
    *param = Param::initialized(param.id, Tensor::zeros([0, width], &device));
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

    /// Whether [`with_int8_linears`](Self::with_int8_linears) made this an int8 model.
    pub fn is_int8(&self) -> bool {
        self.embeddings.int8_words.is_some()
    }

    /// Bytes the weights hold: float parameters at their dtype's size, plus the int8 copies.
    pub fn weight_bytes(&self) -> usize {
        let dtype = self.embeddings.layer_norm.gamma.val().dtype();
        let int8 = self.encoder.layer.iter().flat_map(|l| {
            [
                l.attention.self_attn.int8_qkv(),
                l.attention.output.int8_dense(),
                l.intermediate.int8_dense(),
                l.output.int8_dense(),
            ]
        });
        let int8: usize = int8
            .flatten()
            .map(|q| q.weight.memory_bytes() + q.bias.as_ref().map_or(0, |b| b.len() * 4))
            .sum();
        let table = self.embeddings.int8_words.as_ref();
        self.num_params() * dtype.size() + int8 + table.map_or(0, |t| t.memory_bytes())
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
    /// The same model in int8 for inference: every encoder projection and the word
    /// embeddings. Projection weights are quantized here, once (symmetric, per output
    /// column), activations per token on each call, with i32 accumulation; word embeddings
    /// per row. Position embeddings, attention, GELU, LayerNorm and the pooler stay f32.
    ///
    /// A projection's input has a few channels 5–10× the others in every token (in
    /// all-MiniLM-L6-v2 channel 99 of the layer input reaches 10 where the median channel's
    /// maximum is 1.3), which one scale per token quantizes poorly ("ok": cosine to float32
    /// 0.982 with plain int8 Q/K/V). So every projection is smoothed (SmoothQuant):
    /// `calibration`, a batch of typical inputs, runs through the float model once, and each
    /// input's channel maxima move that range into the weights
    /// ([`st_kernels::smoothing_factors`]). Q, K and V run as one product on one quantized
    /// input.
    ///
    /// Inference only: the float weights that int8 replaces are released (the model then
    /// holds ~¼ of its float memory), so it cannot be trained or saved
    /// ([`save_safetensors`](Self::save_safetensors) refuses); quantize after training. Only
    /// backends with int8 kernels ([`EncoderBackend::INT8_LINEARS`]) accept it.
    pub fn with_int8_linears(mut self, calibration: BertInput<B>) -> Result<Self, Int8Unsupported> {
        if !B::INT8_LINEARS {
            return Err(Int8Unsupported {
                backend: B::name(&Default::default()),
            });
        }
        let maxima = self.projection_input_maxima(calibration);
        for (layer, max) in self.encoder.layer.iter_mut().zip(&maxima) {
            let attn = &mut layer.attention.self_attn;
            let qkv = [&attn.query, &attn.key, &attn.value];
            attn.int8_qkv = Some(Int8Linear::quantize(&qkv, &max[0]));
            for linear in [&mut attn.query, &mut attn.key, &mut attn.value] {
                release(&mut linear.weight);
            }
            let output = &mut layer.attention.output;
            output.int8_dense = Some(Int8Linear::quantize(&[&output.dense], &max[1]));
            release(&mut output.dense.weight);
            let intermediate = &mut layer.intermediate;
            intermediate.int8_dense = Some(Int8Linear::quantize(&[&intermediate.dense], &max[2]));
            release(&mut intermediate.dense.weight);
            let output = &mut layer.output;
            output.int8_dense = Some(Int8Linear::quantize(&[&output.dense], &max[3]));
            release(&mut output.dense.weight);
        }
        let words = &mut self.embeddings.word_embeddings.weight;
        let [_, dim] = words.dims();
        let table = words.val().into_data().convert::<f32>();
        let table = table.into_vec::<f32>().expect("f32 embeddings");
        self.embeddings.int8_words = Some(Arc::new(QuantizedTable::quantize(&table, dim)));
        release(words);
        Ok(self)
    }

    /// Per layer and [`ProjectionInput`], the largest `|x|` of each channel over the real
    /// (unpadded) tokens of `input`.
    fn projection_input_maxima(&self, input: BertInput<B>) -> Vec<[Vec<f32>; 4]> {
        let [batch, seq] = input.attention_mask.dims();
        let real = input
            .attention_mask
            .clone()
            .float()
            .reshape([batch, seq, 1]);
        let mut maxima = vec![[vec![], vec![], vec![], vec![]]; self.num_layers()];
        let mut observe = |layer: usize, which: ProjectionInput, x: &Tensor<B, 3>| {
            let width = x.dims()[2];
            maxima[layer][which as usize] = (x.clone().cast(FloatDType::F32).abs() * real.clone())
                .reshape([batch * seq, width])
                .max_dim(0)
                .into_data()
                .to_vec::<f32>()
                .expect("f32 maxima");
        };
        self.run_observed(input, false, &mut observe);
        maxima
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
        self.run_observed(input, keep_all, &mut |_, _, _| {})
    }

    fn run_observed(
        &self,
        input: BertInput<B>,
        keep_all: bool,
        observe: Observer<'_, B>,
    ) -> BertOutput<B> {
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
        for (i, layer) in self.encoder.layer.iter().enumerate() {
            x = layer.forward_observed(x, key_padding.clone(), position_bias.clone(), observe, i);
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
