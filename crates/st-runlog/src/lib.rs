//! # st-runlog
//!
//! What an `st train` run writes for others to read, as serde types: the lines of its
//! `metrics.jsonl` ([`LogRecord`]) and the summary `st train --json` prints ([`TrainSummary`]).
//! `st plot`, `cargo xtask experiments` and `cargo xtask bench` deserialize these types instead
//! of picking fields out of JSON by name, so a renamed field is a compile error, not a silently
//! empty plot. The crate has no dependency besides serde: readers need not build the trainer.
//!
//! ```
//! use st_runlog::LogRecord;
//!
//! let line = r#"{"epoch":1,"step":10,"eval":{"topic":{"accuracy":0.9}},"best":true}"#;
//! let LogRecord::Eval(eval) = serde_json::from_str(line).unwrap() else { panic!() };
//! assert_eq!(eval.eval["topic"]["accuracy"], 0.9);
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Metric values by task, then by metric name (`{"topic": {"accuracy": 0.91, "n": 500}}`).
pub type Metrics = BTreeMap<String, BTreeMap<String, f64>>;

/// The file name of a run's log inside its output folder.
pub const METRICS_LOG: &str = "metrics.jsonl";

/// The metric that judges each task kind, in the order they are looked for: classification
/// accuracy, entity F1 (token tasks), Spearman ×100 (similarity), MRR@10 (retrieval).
pub const MAIN_METRICS: [&str; 4] = ["accuracy", "entity_f1", "spearman", "mrr_at_10"];

/// A task's main metric: the first of [`MAIN_METRICS`] it has, with its name.
pub fn main_metric(task: &BTreeMap<String, f64>) -> Option<(&'static str, f64)> {
    MAIN_METRICS
        .iter()
        .find_map(|&name| task.get(name).map(|&v| (name, v)))
}

/// The mean of every task's main metric: how a run's evaluations are compared when no one
/// metric is named (`None` without any).
pub fn mean_main_metric(metrics: &Metrics) -> Option<f64> {
    let main: Vec<f64> = metrics
        .values()
        .filter_map(|m| main_metric(m).map(|(_, v)| v))
        .collect();
    (!main.is_empty()).then(|| main.iter().sum::<f64>() / main.len() as f64)
}

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based: the number of steps done.
    pub step: usize,
    /// Wall-clock time of the step (forward, backward, optimizer), milliseconds.
    pub step_ms: f64,
    /// 0-based epoch the step belongs to.
    pub epoch: usize,
    /// Learning rate of each parameter group (0 for frozen groups).
    pub lr: BTreeMap<String, f64>,
    /// Unweighted loss of each task trained in the step.
    pub losses: BTreeMap<String, f64>,
    /// The weight each of those losses entered the total with.
    pub weights: BTreeMap<String, f64>,
}

/// One evaluation (end of an epoch), or the frozen baseline of a run that trains nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Epochs done (0 for a frozen baseline).
    pub epoch: usize,
    /// Steps done.
    pub step: usize,
    pub eval: Metrics,
    /// Whether this evaluation is the best so far (the saved model).
    #[serde(default)]
    pub best: bool,
    /// Set on the one evaluation of a run whose every parameter is frozen.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

/// A line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogRecord {
    // Tried first: only evaluations carry `eval`, only the test record `test`.
    Eval(EvalRecord),
    Test(TestRecord),
    Step(StepRecord),
}

/// The best model's metrics on the run's test data: the log's last line, written once after
/// training (nothing was picked on these numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    pub test: Metrics,
}

/// What `st train --json` prints on its last line when the run ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps done (fewer than planned when early stopping ended the run).
    pub steps: usize,
    /// Metrics of the best evaluation (or of the frozen baseline).
    pub metrics: Metrics,
    /// The best model's metrics on the test data (empty without any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub test: Metrics,
    /// Parameters that train in at least one step.
    pub trainable_params: usize,
    /// Median wall-clock time of a step, milliseconds (`None` when no step ran).
    #[serde(default)]
    pub median_step_ms: Option<f64>,
}

/// A `metrics.jsonl` that could not be read: the file and the line (1-based; 0 for the file).
#[derive(Debug)]
pub struct LogError {
    pub path: std::path::PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

impl std::error::Error for LogError {}

/// Reads every record of a `metrics.jsonl`; a line that is not a record is an error naming it.
pub fn read_log(path: &Path) -> Result<Vec<LogRecord>, LogError> {
    let fail = |line: usize, message: String| LogError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(0, e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| fail(i + 1, format!("not a run-log record: {e}")))
        })
        .collect()
}

/// The median of the steps' times in `records` (`None` without steps).
pub fn median_step_ms(records: &[LogRecord]) -> Option<f64> {
    let mut ms: Vec<f64> = records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Step(s) => Some(s.step_ms),
            LogRecord::Eval(_) | LogRecord::Test(_) => None,
        })
        .collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    Some(ms[ms.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_told_apart() {
        let step = LogRecord::Step(StepRecord {
            step: 3,
            step_ms: 12.5,
            epoch: 0,
            lr: BTreeMap::from([("layer.0".into(), 1e-4)]),
            losses: BTreeMap::from([("topic".into(), 0.7)]),
            weights: BTreeMap::from([("topic".into(), 1.0)]),
        });
        let eval = LogRecord::Eval(EvalRecord {
            epoch: 1,
            step: 3,
            eval: Metrics::from([("topic".into(), BTreeMap::from([("accuracy".into(), 0.5)]))]),
            best: true,
            frozen: false,
        });
        let test = LogRecord::Test(TestRecord {
            test: Metrics::from([("topic".into(), BTreeMap::from([("accuracy".into(), 0.75)]))]),
        });
        for record in [step, eval, test] {
            let line = serde_json::to_string(&record).unwrap();
            assert!(!line.contains("frozen"), "{line}");
            assert_eq!(serde_json::from_str::<LogRecord>(&line).unwrap(), record);
        }
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = std::env::temp_dir().join(format!("st-runlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(METRICS_LOG);
        std::fs::write(
            &path,
            "{\"epoch\":0,\"step\":0,\"eval\":{}}\n\n{\"step\": 1}\n",
        )
        .unwrap();
        let err = read_log(&path).unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_median_step_ignores_evaluations() {
        let line = |ms: f64| {
            LogRecord::Step(StepRecord {
                step: 1,
                step_ms: ms,
                epoch: 0,
                lr: BTreeMap::new(),
                losses: BTreeMap::new(),
                weights: BTreeMap::new(),
            })
        };
        let eval: LogRecord =
            serde_json::from_str(r#"{"epoch":1,"step":3,"eval":{},"best":false}"#).unwrap();
        assert_eq!(
            median_step_ms(&[line(3.0), eval, line(1.0), line(2.0)]),
            Some(2.0)
        );
        assert_eq!(median_step_ms(&[]), None);
    }
}
