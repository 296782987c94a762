//! # st-backbone
//!
//! A BERT encoder written in [Burn](https://burn.dev), generic over the backend, that loads real
//! Hugging Face checkpoints and tokenizes text exactly as sentence-transformers does. The same
//! modules run MPNet, RoBERTa / XLM-RoBERTa and DistilBERT ([`Architecture`], from
//! `config.json`'s `model_type`).
//!
//! - [`BertConfig`] is deserialized straight from a model's `config.json`
//!   (bert-base-uncased, all-MiniLM-L6-v2 and every other `BertModel` share the architecture).
//! - [`BertModel<B>`] is the encoder: embeddings, post-LN self-attention layers, optional pooler.
//!   It loads `model.safetensors` or `pytorch_model.bin` with Hugging Face key names
//!   ([`BertModel::from_pretrained`]) and can also be randomly initialized ([`BertConfig::init`]).
//! - [`BertTokenizer`] wraps a `tokenizer.json` (or builds WordPiece from `vocab.txt`) with
//!   per-batch padding and truncation at `max_seq_length`.
//!
//! ## Choosing a backend
//!
//! The backend is a type parameter: `BertModel<Flex>` runs on the pure-Rust CPU backend,
//! `BertModel<LibTorch>` or `BertModel<Wgpu>` on theirs, with no other change. Write code
//! generic over `B: EncoderBackend` (a Burn `Backend` that may fuse the encoder's operations;
//! every backend st supports implements it) and pick the backend where you call it:
//!
//! ```
//! use st_backbone::{BertConfig, Encoded, EncoderBackend, TokenBatch};
//!
//! /// Hidden states of one tokenized sentence, on any backend.
//! fn hidden_dims<B: EncoderBackend>(device: &B::Device) -> [usize; 3] {
//!     let model = BertConfig::tiny(100).init::<B>(false, device);
//!     let rows = [Encoded { ids: vec![2, 7, 9, 3], type_ids: vec![0; 4], truncated: false }];
//!     let input = TokenBatch::pad(&rows.iter().collect::<Vec<_>>(), 0).to_input::<B>(device);
//!     model.forward(input).dims()
//! }
//!
//! // burn-flex: pure-Rust CPU, nothing to install.
//! assert_eq!(hidden_dims::<burn_flex::Flex>(&Default::default()), [1, 4, 32]);
//! ```
//!
//! The same function on libtorch (`burn-tch = "=0.21.0"`; build with `LIBTORCH` pointing at
//! libtorch 2.9.0, which `cargo xtask setup-libtorch` fetches) and on WebGPU
//! (`burn-wgpu = "=0.21.0"`; needs a Vulkan, Metal or DX12 driver):
//!
//! ```text
//! use burn_tch::{LibTorch, LibTorchDevice};
//! hidden_dims::<LibTorch>(&LibTorchDevice::Cuda(0)); // or LibTorchDevice::Cpu
//!
//! use burn_wgpu::{Wgpu, WgpuDevice};
//! hidden_dims::<Wgpu>(&WgpuDevice::DefaultDevice);
//! ```
//!
//! (Those two are not compiled here because they need native libraries; st-cli's
//! `tests/backends.rs` runs the real model and training on each, see docs/backends.md.)
//!

mod atomic;
mod autodiff;
mod config;
mod distilbert;
mod flex;
mod fused;
#[cfg(feature = "tch")]
mod libtorch;
mod model;
mod mpnet;
mod roberta;
mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};

pub use atomic::{AtomicFile, write_atomic};
pub use config::{Architecture, BertConfig, HiddenAct};
pub use fused::{
    AttentionSaved, AutodiffEncoderBackend, EncoderBackend, LayerNormSaved, adamw_step_composed,
    attention_backward_composed, dropout, layer_norm_backward_composed,
};
pub use model::{
    BertAttention, BertEmbeddings, BertEncoder, BertInput, BertIntermediate, BertLayer, BertModel,
    BertOutput, BertPooler, BertSelfAttention, BertSelfOutput, Int8Linear, Int8Unsupported,
};
/// The settings of one optimizer step ([`EncoderBackend::adamw_step`]).
pub use st_kernels::AdamWStep;
pub use tokenizer::{BertTokenizer, Encoded, TokenBatch};
pub use weights::{KEY_REMAPPING, find_weights, load_problems};

/// Everything that can go wrong loading or running a backbone. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: file not found ({hint})", path.display())]
    MissingFile { path: PathBuf, hint: String },
    #[error("{}: invalid model config: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: cannot load weights: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("{}: cannot load tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
}

impl BackboneError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
