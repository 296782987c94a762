//! Resume state: model and optimizer records plus the loop's counters, written into
//! `OUTPUT/resume/` by every checkpoint (inside the folder swap of [`crate::checkpoint`], so it
//! always matches the model beside it) and read back by `--resume`.

use std::path::Path;

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::Recorder as _;
use serde::{Deserialize, Serialize};
use st_backbone::AutodiffEncoderBackend;
use st_heads::MultiTaskModel;

use crate::TrainError;
use crate::checkpoint::RESUME_STATE;
use crate::multitask::UncertaintyWeights;
use crate::trainer::Metrics;

/// Everything besides weights and optimizer moments that a resumed run needs. Batch order and
/// dropout masks are functions of `(seed, step)`, so they need no saving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResumeState {
    pub step: usize,
    /// Per source: position in the current pass, and the pass number.
    pub cursors: Vec<(usize, u64)>,
    pub dwa: Vec<Vec<f64>>,
    pub epoch_losses: Vec<(f64, usize)>,
    pub best: Option<(f64, Metrics)>,
    pub since_best: usize,
    /// Length of `metrics.jsonl` when the checkpoint was taken: a resumed run cuts the log back
    /// to it, so steps logged after the checkpoint by the killed run are not logged twice.
    /// (Absent in resume state written before st recorded it.)
    #[serde(default)]
    pub log_bytes: Option<u64>,
}

type Recorder = burn::record::NamedMpkFileRecorder<burn::record::FullPrecisionSettings>;

fn recorder_err(path: &Path) -> impl Fn(burn::record::RecorderError) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The optimizers a run steps: AdamW with and without weight decay, and the one for the
/// uncertainty weights' log-variances.
pub(crate) struct Optimizers<O1, O2, O3> {
    pub decay: O1,
    pub plain: O2,
    pub uncertainty: O3,
}

/// Writes resume state into the empty folder `dir`.
pub(crate) fn write<B, O1, O2, O3>(
    dir: &Path,
    model: &MultiTaskModel<B>,
    opts: &Optimizers<O1, O2, O3>,
    uncertainty: Option<&UncertaintyWeights<B>>,
    state: &ResumeState,
) -> Result<(), TrainError>
where
    B: AutodiffEncoderBackend,
    O1: Optimizer<MultiTaskModel<B>, B>,
    O2: Optimizer<MultiTaskModel<B>, B>,
    O3: Optimizer<UncertaintyWeights<B>, B>,
{
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
    if let Some(u) = uncertainty {
        u.clone()
            .save_file(dir.join("uncertainty"), &rec)
            .map_err(&bad)?;
        rec.record(opts.uncertainty.to_record(), dir.join("opt_uncertainty"))
            .map_err(&bad)?;
    }
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

/// A model, its optimizers and its uncertainty weights, as resume state restores them.
pub(crate) type Restored<B, O1, O2, O3> = (
    MultiTaskModel<B>,
    Optimizers<O1, O2, O3>,
    Option<UncertaintyWeights<B>>,
);

/// Loads the model and optimizer records of `dir` into the given fresh ones.
pub(crate) fn load<B, O1, O2, O3>(
    dir: &Path,
    device: &B::Device,
    model: MultiTaskModel<B>,
    opts: Optimizers<O1, O2, O3>,
    uncertainty: Option<UncertaintyWeights<B>>,
) -> Result<Restored<B, O1, O2, O3>, TrainError>
where
    B: AutodiffEncoderBackend,
    O1: Optimizer<MultiTaskModel<B>, B>,
    O2: Optimizer<MultiTaskModel<B>, B>,
    O3: Optimizer<UncertaintyWeights<B>, B>,
{
    let rec = Recorder::new();
    let at = |name: &str| dir.join(name);
    let bad = recorder_err(dir);
    let model = model.load_file(at("model"), &rec, device).map_err(&bad)?;
    let mut opts = Optimizers {
        decay: opts
            .decay
            .load_record(rec.load(at("opt_decay"), device).map_err(&bad)?),
        plain: opts
            .plain
            .load_record(rec.load(at("opt_plain"), device).map_err(&bad)?),
        uncertainty: opts.uncertainty,
    };
    let uncertainty = match uncertainty {
        Some(u) => {
            opts.uncertainty = opts
                .uncertainty
                .load_record(rec.load(at("opt_uncertainty"), device).map_err(&bad)?);
            Some(u.load_file(at("uncertainty"), &rec, device).map_err(&bad)?)
        }
        None => None,
    };
    Ok((model, opts, uncertainty))
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
