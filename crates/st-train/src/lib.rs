//! # st-train
//!
//! Multi-task fine-tuning of a [`st_pooling::SentenceEncoder`] with named heads
//! ([`st_heads::MultiTaskModel`]), generic over Burn's `AutodiffBackend`.
//!
//! - [`data`]: st's multi-task JSONL format (single texts, word-tagged texts, pairs, retrieval
//!   triplets; partial labels allowed) and readers for SST-2, TREC, BANKING77, SNIPS (intent +
//!   slots), WNUT-17, STS-B, SICK and MSRP; errors name `file:line`.
//! - [`kinds`]: task kinds, one [`kinds::TaskKind`] `impl` each: sentence, token and pair
//!   classification, similarity (CoSENT, cosine-MSE), retrieval (multiple-negatives ranking);
//!   Matryoshka prefixes for the embedding objectives.
//! - [`weighting`]: loss weighting, one [`weighting::LossWeighter`] each: static, uncertainty,
//!   DWA, random (RLW), FAMO.
//! - [`multitask`]: task sampling across sources (round-robin, proportional, temperature, all).
//! - [`groups`]: parameter groups (embeddings, each layer, pooler, each head) with layer-wise
//!   learning-rate decay ([`LayerwiseLrDecay`]) and per-path overrides.
//! - [`freeze`]: freezing (all, backbone, embeddings, bottom k layers, named heads) and gradual
//!   unfreezing.
//! - [`schedule`]: warm-up then linear or cosine decay.
//! - [`trainer`]: the loop ([`train`], [`trainer::Trainer`]): setup, step, end of epoch; best
//!   checkpoint and early stopping. [`evaluate`]: metrics by task kind. The run log's records
//!   are [`st_runlog`] types.
//! - [`metrics`]: accuracy, macro-F1, entity-level F1, Spearman, Pearson, MRR@k, recall@k.
//! - [`predict`]: labels, tags and similarities from a trained model.
//!
//! burn 0.21's optimizer takes one learning rate per `step`; st-train splits the gradients by
//! group and steps each group with its own rate, sharing one optimizer state. [`adamw::AdamW`]
//! has PyTorch's meaning and runs the backend's one-pass update
//! (`EncoderBackend::adamw_step`): epsilon 1e-8, decoupled weight decay 0.01 (none on biases
//! and LayerNorm), and gradient clipping by the *global* norm (burn's
//! `GradientClipping::Norm` clips each tensor on its own, so st-train does not use it).

pub mod adamw;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod freeze;
mod grads;
pub mod groups;
pub mod kinds;
pub mod metrics;
pub mod multitask;
pub mod predict;
mod resume;
pub mod schedule;
pub mod trainer;
mod validate;
pub mod weighting;

use std::path::{Path, PathBuf};

pub use checkpoint::save_model;
pub use config::TrainConfig;
pub use data::{DataSpec, Example, Format, Label};
pub use evaluate::evaluate_on;
pub use freeze::{Freeze, FreezePlan, GradualUnfreeze, Unit};
pub use groups::{LayerwiseLrDecay, LrOverride, ParamGroup};
pub use kinds::{SimilarityLoss, TaskOptions};
pub use multitask::{Sampling, Weighting};
pub use predict::{TaskPrediction, predict};
pub use schedule::Decay;
pub use st_runlog::{Metrics, TrainSummary};
pub use trainer::{Event, load_trained, train};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}:{line}: {message}", path.display())]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error(transparent)]
    Model(#[from] st_pooling::PoolingError),
    #[error(transparent)]
    Backbone(#[from] st_backbone::BackboneError),
    #[error(transparent)]
    Heads(#[from] st_heads::HeadError),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
