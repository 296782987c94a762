//! The training run's configuration: what `st train --config` reads and `train_config.json`
//! records.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::DataSpec;
use crate::freeze::FreezePlan;
use crate::groups::LayerwiseLrDecay;
use crate::kinds::TaskOptions;
use crate::multitask::{Sampling, Weighting};
use crate::schedule::Decay;

/// Everything about a training run. `st train --print-config` prints a commented example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model folder or Hub id to start from.
    pub model: String,
    /// Training data; each entry is one source for task sampling.
    pub train: Vec<DataSpec>,
    /// Evaluation data (every task in it must exist in training): scored after every epoch,
    /// it picks the best model (and early stopping).
    #[serde(default)]
    pub eval: Vec<DataSpec>,
    /// Test data: the best model is scored on it once, after training, so nothing is chosen
    /// on these numbers (`TrainSummary::test`, the last line of metrics.jsonl).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<DataSpec>,
    /// Where the best model, metrics.jsonl and the run's config go.
    pub output: PathBuf,
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskOptions>,
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides epochs × steps per epoch).
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_seq")]
    pub max_seq_length: usize,
    pub lr: LayerwiseLrDecay,
    /// Fraction of steps spent warming up.
    #[serde(default = "d_warmup")]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub schedule: Decay,
    /// AdamW decoupled weight decay (PyTorch's default 0.01; burn's own default is 1e-4).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// AdamW epsilon (PyTorch's 1e-8; burn's own default is 1e-5).
    #[serde(default = "d_eps")]
    pub adam_epsilon: f64,
    /// Clip the global gradient norm (over all parameters, as PyTorch's clip_grad_norm_).
    #[serde(default = "d_clip")]
    pub max_grad_norm: Option<f64>,
    #[serde(default = "d_one")]
    pub grad_accumulation: usize,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub weighting: Weighting,
    #[serde(default)]
    pub freeze: FreezePlan,
    /// Metric that picks the best checkpoint, `task.metric` (default: mean of every task's
    /// main metric).
    #[serde(default)]
    pub best_metric: Option<String>,
    /// Stop after this many evaluations without improvement.
    #[serde(default)]
    pub patience: Option<usize>,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Continue from `output/resume/` (written at every evaluation); an error when there is
    /// none.
    #[serde(default)]
    pub resume: bool,
    /// Replace a trained model already in `output` (refused otherwise).
    #[serde(default)]
    pub overwrite: bool,
}

fn d_epochs() -> usize {
    3
}
fn d_batch() -> usize {
    32
}
fn d_seq() -> usize {
    128
}
fn d_warmup() -> f64 {
    0.1
}
fn d_wd() -> f64 {
    0.01
}
fn d_eps() -> f64 {
    1e-8
}
fn d_clip() -> Option<f64> {
    Some(1.0)
}
fn d_one() -> usize {
    1
}
fn d_seed() -> u64 {
    42
}

impl TrainConfig {
    /// A run with defaults for everything but data and output.
    pub fn new(model: impl Into<String>, train: Vec<DataSpec>, output: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            train,
            eval: Vec::new(),
            test: Vec::new(),
            output: output.into(),
            tasks: BTreeMap::new(),
            epochs: d_epochs(),
            max_steps: None,
            batch_size: d_batch(),
            max_seq_length: d_seq(),
            lr: LayerwiseLrDecay::flat(5e-5),
            warmup_ratio: d_warmup(),
            schedule: Decay::default(),
            weight_decay: d_wd(),
            adam_epsilon: d_eps(),
            max_grad_norm: d_clip(),
            grad_accumulation: 1,
            sampling: Sampling::default(),
            weighting: Weighting::default(),
            freeze: FreezePlan::default(),
            best_metric: None,
            patience: None,
            seed: d_seed(),
            resume: false,
            overwrite: false,
        }
    }
}
