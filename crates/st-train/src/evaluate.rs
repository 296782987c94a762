//! Evaluation: every head's metrics on labelled data, through its [`TaskKind`].

use std::collections::BTreeMap;

use burn::module::Module;
use st_backbone::EncoderBackend;
use st_heads::MultiTaskModel;
use st_runlog::Metrics;

use crate::TrainError;
use crate::batch::{Batch, Row, prepare};
use crate::data::{DataSpec, Example, Label, load};
use crate::kinds::{Features, Output, TaskKind, TaskOptions, task_kind};

/// The kinds of a model's heads, for evaluation and prediction (which read no loss option).
pub fn kinds_of<B: EncoderBackend>(model: &MultiTaskModel<B>) -> Vec<Box<dyn TaskKind<B>>> {
    model
        .heads
        .iter()
        .map(|h| task_kind::<B>(&h.spec, &TaskOptions::default()))
        .collect()
}

/// The device a model's parameters live on.
pub(crate) fn device_of<B: EncoderBackend>(model: &MultiTaskModel<B>) -> B::Device {
    model
        .encoder
        .bert
        .devices()
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Every head's outputs on `rows` (in batches of `batch_size`), each with its example's index.
pub(crate) fn outputs<B: EncoderBackend>(
    model: &MultiTaskModel<B>,
    kinds: &[Box<dyn TaskKind<B>>],
    rows: &[Row],
    batch_size: usize,
) -> Vec<Vec<(usize, Output)>> {
    let device = device_of(model);
    let pad_id = model.encoder.tokenizer.pad_id();
    let mut outputs = vec![Vec::new(); kinds.len()];
    let idx: Vec<usize> = (0..rows.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch = Batch::<B>::new(chunk.iter().map(|&i| &rows[i]).collect(), pad_id, &device);
        let (tokens, pooled) = model.encoder.features(batch.input.clone());
        let features = Features { tokens, pooled };
        for (h, (head, kind)) in model.heads.iter().zip(kinds).enumerate() {
            let (at, task_rows) = batch.task_rows(h);
            if task_rows.is_empty() {
                continue;
            }
            let out = kind.outputs(head, &features, &task_rows);
            outputs[h].extend(at.into_iter().map(|k| chunk[k]).zip(out));
        }
    }
    outputs
}

/// Evaluates every head on `rows` (tokenized `examples`): each task's metrics by its kind.
pub fn evaluate<B: EncoderBackend>(
    model: &MultiTaskModel<B>,
    kinds: &[Box<dyn TaskKind<B>>],
    rows: &[Row],
    examples: &[Example],
    batch_size: usize,
) -> Metrics {
    let per_head = outputs(model, kinds, rows, batch_size);
    let mut metrics = BTreeMap::new();
    for ((head, kind), outs) in model.heads.iter().zip(kinds).zip(per_head) {
        let spec = &head.spec;
        let labelled: Vec<(Output, &Label)> = outs
            .into_iter()
            .map(|(i, out)| (out, &examples[i].labels[&spec.name]))
            .collect();
        if !labelled.is_empty() {
            metrics.insert(spec.name.clone(), kind.metrics(spec, &labelled));
        }
    }
    metrics
}

/// The number a checkpoint is judged by: `task.metric`, or the mean of each task's main metric
/// (accuracy, entity F1, Spearman, MRR@10).
pub fn score(metrics: &Metrics, key: Option<&str>) -> Option<f64> {
    if let Some(key) = key {
        let (task, metric) = key.split_once('.')?;
        return metrics.get(task)?.get(metric).copied();
    }
    st_runlog::mean_main_metric(metrics)
}

/// Reads evaluation data whose every task must be one of `tasks` (an unknown task is an error
/// naming file and line).
pub(crate) fn load_labelled(
    data: &[DataSpec],
    tasks: &[String],
) -> Result<Vec<Example>, TrainError> {
    let examples: Vec<Example> = data
        .iter()
        .map(load)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    for ex in &examples {
        if let Some(task) = ex.labels.keys().find(|t| !tasks.contains(t)) {
            return Err(TrainError::Data {
                path: (*ex.file).clone(),
                line: ex.line,
                message: format!(
                    "task `{task}` is not one of the model's tasks ({})",
                    tasks.join(", ")
                ),
            });
        }
    }
    Ok(examples)
}

/// Evaluates a trained model on labelled data (every task in the data must be one of the
/// model's heads): the metrics `st eval` prints.
pub fn evaluate_on<B: EncoderBackend>(
    model: &MultiTaskModel<B>,
    data: &[DataSpec],
    batch_size: usize,
) -> Result<Metrics, TrainError> {
    let specs = model.specs();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let examples = load_labelled(data, &names)?;
    let kinds = kinds_of(model);
    let rows = prepare(&model.encoder, &specs, &kinds, &examples)?;
    Ok(evaluate(model, &kinds, &rows, &examples, batch_size))
}
