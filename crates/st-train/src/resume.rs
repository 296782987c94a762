//! Resume state: model and optimizer records plus the loop's counters, written into
//! `OUTPUT/resume/` by every checkpoint (inside the folder swap of [`crate::checkpoint`], so it
//! always matches the model beside it) and read back by `--resume`.

use std::path::Path;

use burn::module::Module;
use burn::optim::Optimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::record::Recorder as _;
use serde::{Deserialize, Serialize};
use st_backbone::AutodiffEncoderBackend;
use st_heads::MultiTaskModel;
use st_runlog::Metrics;

use crate::TrainError;
use crate::adamw::AdamW;
use crate::checkpoint::RESUME_STATE;
use crate::config::TrainConfig;
use crate::weighting::LossWeighter;

/// Everything besides weights, optimizer moments and the loss weighter's state that a resumed
/// run needs. Batch order and dropout masks are functions of `(seed, step)`, so they need no
/// saving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResumeState {
    pub step: usize,
    /// Per source: position in the current pass, and the pass number.
    pub cursors: Vec<(usize, u64)>,
    pub best: Option<(f64, Metrics)>,
    pub since_best: usize,
    /// Length of `metrics.jsonl` when the checkpoint was taken: a resumed run cuts the log back
    /// to it, so steps logged after the checkpoint by the killed run are not logged twice.
    /// (Absent in resume state written before st recorded it.)
    #[serde(default)]
    pub log_bytes: Option<u64>,
}

/// How resume state records are written (the weighter's learned weights too).
pub(crate) type Recorder = burn::record::NamedMpkFileRecorder<burn::record::FullPrecisionSettings>;

pub(crate) fn recorder_err(path: &Path) -> impl Fn(burn::record::RecorderError) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// AdamW over the model.
pub(crate) type ModelOptimizer<B> = OptimizerAdaptor<AdamW, MultiTaskModel<B>, B>;

/// The model's optimizers: AdamW with and without weight decay (biases and LayerNorm get none).
pub(crate) struct Optimizers<B: AutodiffEncoderBackend> {
    pub decay: ModelOptimizer<B>,
    pub plain: ModelOptimizer<B>,
}

impl<B: AutodiffEncoderBackend> Optimizers<B> {
    /// Fresh optimizers with the config's settings (a checkpoint's records hold moments and
    /// step counts, not settings: a resumed run builds these, then loads the records).
    pub fn new(config: &TrainConfig) -> Self {
        let adamw = |decay| AdamW::new(config.adam_epsilon, decay).init();
        Self {
            decay: adamw(config.weight_decay),
            plain: adamw(0.0),
        }
    }
}

/// Writes resume state into the empty folder `dir`.
pub(crate) fn write<B: AutodiffEncoderBackend>(
    dir: &Path,
    model: &MultiTaskModel<B>,
    opts: &Optimizers<B>,
    weighter: &dyn LossWeighter<B>,
    state: &ResumeState,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let rec = Recorder::new();
    let bad = recorder_err(dir);
    model
        .clone()
        .save_file(dir.join("model"), &rec)
        .map_err(&bad)?;
    rec.record(opts.decay.to_record(), dir.join("opt_decay"))
        .map_err(&bad)?;
    rec.record(opts.plain.to_record(), dir.join("opt_plain"))
        .map_err(&bad)?;
    weighter.save(dir)?;
    let text = serde_json::to_string(state).expect("state serializes");
    let path = dir.join(RESUME_STATE);
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}

/// Reads `dir/state.json`.
pub(crate) fn read_state(dir: &Path) -> Result<ResumeState, TrainError> {
    let path = dir.join(RESUME_STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Data {
        path: path.clone(),
        line: e.line(),
        message: e.to_string(),
    })
}

/// Loads the model, optimizer and weighter records of `dir` into the given fresh ones.
pub(crate) fn load<B: AutodiffEncoderBackend>(
    dir: &Path,
    device: &B::Device,
    model: MultiTaskModel<B>,
    opts: Optimizers<B>,
    weighter: &mut dyn LossWeighter<B>,
) -> Result<(MultiTaskModel<B>, Optimizers<B>), TrainError> {
    let rec = Recorder::new();
    let at = |name: &str| dir.join(name);
    let bad = recorder_err(dir);
    let model = model.load_file(at("model"), &rec, device).map_err(&bad)?;
    let opts = Optimizers {
        decay: opts
            .decay
            .load_record(rec.load(at("opt_decay"), device).map_err(&bad)?),
        plain: opts
            .plain
            .load_record(rec.load(at("opt_plain"), device).map_err(&bad)?),
    };
    weighter.load(dir)?;
    Ok((model, opts))
}

/// Cuts `log` back to its first `bytes` bytes, in one rename (a kill leaves the old log or the
/// cut one).
pub(crate) fn truncate_log(log: &Path, bytes: u64) -> Result<(), TrainError> {
    let text = match std::fs::read(log) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && bytes == 0 => return Ok(()),
        Err(e) => return Err(TrainError::io(log, e)),
    };
    let keep = usize::try_from(bytes).unwrap_or(usize::MAX);
    if text.len() < keep || (keep > 0 && text[keep - 1] != b'\n') {
        return Err(TrainError::Io {
            path: log.to_path_buf(),
            source: std::io::Error::other(format!(
                "the resume state says this log held {bytes} bytes of whole lines at the \
                 checkpoint; it holds {} (edited since?)",
                text.len()
            )),
        });
    }
    if text.len() > keep {
        st_backbone::write_atomic(log, &text[..keep])?;
    }
    Ok(())
}
