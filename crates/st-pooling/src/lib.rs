//! # st-pooling
//!
//! Sentence-transformers' pooling and post-pooling modules in Burn, and the [`SentenceEncoder`]
//! that turns text into fixed-length embeddings.
//!
//! - [`PoolingMode`]: `cls`, `max`, `mean`, `mean_sqrt_len_tokens`, `weightedmean`, `lasttoken`;
//!   [`Pooling`] concatenates several exactly as sentence-transformers does and reads
//!   `1_Pooling/config.json`. Padding never leaks into a result.
//! - [`Dense`] and [`l2_normalize`]: the modules `modules.json` may list after pooling.
//! - [`SentenceEncoder`]: tokenizer → [`st_backbone::BertModel`] → pooling → modules, loaded from a
//!   sentence-transformers folder. `encode` sorts inputs by length before batching (so each batch
//!   pads little) and returns embeddings in input order.
//! - Prompts: `EncodeOptions::prompt` / `prompt_name` prepend a prompt (the model's
//!   `default_prompt_name` when neither is given), left out of pooling when the pooling's
//!   `include_prompt` is false, as sentence-transformers does.
//! - Matryoshka truncation: [`SentenceEncoder::with_truncate_dim`] (or
//!   `config_sentence_transformers.json`'s `truncate_dim`) and `EncodeOptions::truncate_dim` cut
//!   each embedding after the whole pipeline, `Normalize` included, without renormalizing;
//!   `EncodeOptions::normalize_embeddings` normalizes after the cut (sentence-transformers'
//!   `truncate_dim=` and `normalize_embeddings=`).
//! - [`Precision`] and [`quantize`]: output embeddings in `int8`, `uint8`, `binary` or `ubinary`,
//!   as sentence-transformers' `quantize_embeddings`.
//!
//! ```no_run
//! use burn_flex::Flex;
//! use st_pooling::SentenceEncoder;
//!
//! let encoder = SentenceEncoder::<Flex>::from_dir("all-MiniLM-L6-v2", &Default::default())?;
//! let embeddings = encoder.encode(&["A man is eating food.", "A man is riding a horse."])?;
//! assert_eq!(embeddings[0].len(), 384);
//! # Ok::<(), st_pooling::PoolingError>(())
//! ```

mod encoder;
mod modules;
mod pooling;
mod quantize;

use std::path::{Path, PathBuf};

pub use encoder::{
    DEFAULT_MAX_SEQ_LENGTH, EncodeOptions, EncodeOutput, INT8_CALIBRATION, Prompts, SentenceEncoder,
};
pub use modules::{
    Dense, DenseActivation, DenseConfigFile, ModuleEntry, ModuleSpec, l2_normalize, read_modules,
};
pub use pooling::{Pooling, PoolingConfigFile, PoolingMode};
pub use quantize::{Precision, QuantizedRow, Ranges, hamming, pack_bits, quantize};

/// Errors from reading a sentence-transformers folder or pooling. Each names its file.
#[derive(Debug, thiserror::Error)]
pub enum PoolingError {
    #[error(transparent)]
    Backbone(#[from] st_backbone::BackboneError),
    #[error("{}: file or folder not found", .0.display())]
    MissingFile(PathBuf),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    UnknownMode(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("{0}")]
    UnknownPrompt(String),
    /// A `truncate_dim` of 0 or wider than the model's embeddings.
    #[error("{0}")]
    TruncateDim(String),
    /// int8 asked of a backend without int8 kernels.
    #[error(transparent)]
    Int8(#[from] st_backbone::Int8Unsupported),
}

/// Reads and parses a JSON file, naming the file (and line) on failure.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PoolingError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            PoolingError::MissingFile(path.to_path_buf())
        } else {
            PoolingError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| PoolingError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
