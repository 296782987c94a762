//! The training loop: one shared encoder, several heads, sampled batches, weighted losses,
//! per-group learning rates, freezing, evaluation, best checkpoint, early stopping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use st_backbone::{AutodiffEncoderBackend, Encoded, EncoderBackend, TokenBatch};
use st_heads::{HeadKind, HeadOutput, HeadSpec, IGNORE, MultiTaskModel, masked_cross_entropy};
use st_pooling::SentenceEncoder;

use crate::TrainError;
use crate::checkpoint::{Checkpoint, RESUME_DIR, RESUME_STATE, RunLog, kept_note, open_output};
use crate::data::{DataSpec, Example, Label, label_sets, load};
use crate::freeze::FreezePlan;
use crate::groups::{LayerwiseLrDecay, ParamEntry, ParamGroup, build_groups, group_table, params};
use crate::metrics::{accuracy, entity_f1, macro_f1};
use crate::multitask::{DwaState, Rng, Sampling, UncertaintyWeights, Weighting};
use crate::resume::{self, Optimizers, ResumeState};
use crate::schedule::{Decay, Schedule};

/// Per-task head options.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOptions {
    /// Width of a hidden layer in the head (an MLP head); none by default.
    #[serde(default)]
    pub hidden: Option<usize>,
    /// Dropout before the head's layers (default 0.1).
    #[serde(default)]
    pub dropout: Option<f64>,
}

/// Everything about a training run. `st train --print-config` prints a commented example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model folder or Hub id to start from.
    pub model: String,
    /// Training data; each entry is one source for task sampling.
    pub train: Vec<DataSpec>,
    /// Evaluation data (every task in it must exist in training).
    #[serde(default)]
    pub eval: Vec<DataSpec>,
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

/// Metric values by task, then by metric name.
pub type Metrics = BTreeMap<String, BTreeMap<String, f64>>;

/// Progress reported to the caller.
#[derive(Debug, Clone)]
pub enum Event {
    /// Printed once: the parameter-group table and what trains.
    Groups(String),
    /// Something the user should know about the run's set-up (e.g. heads taken over).
    Note(String),
    Step {
        step: usize,
        total: usize,
        /// (task, loss, weight) for each task in the batch.
        losses: Vec<(String, f64, f64)>,
    },
    Eval {
        epoch: usize,
        metrics: Metrics,
        best: bool,
    },
}

/// What a run ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: usize,
    /// Metrics of the best evaluation (or of the frozen baseline).
    pub metrics: Metrics,
    pub trainable_params: usize,
}

/// One tokenized example with a target per head.
#[derive(Debug, Clone)]
pub struct Row {
    pub encoded: Encoded,
    /// Per head: sentence class, per-token tags (IGNORE off first sub-words), or nothing.
    pub targets: Vec<Target>,
    /// Per token, the word it starts (token tasks' first sub-words).
    pub word_starts: Vec<Option<usize>>,
    pub n_words: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    None,
    Class(i64),
    Tokens(Vec<i64>),
}

/// Tokenizes examples and maps labels to ids. Unknown labels are an error naming file:line.
pub fn prepare<B: EncoderBackend>(
    encoder: &SentenceEncoder<B>,
    specs: &[HeadSpec],
    examples: &[Example],
) -> Result<Vec<Row>, TrainError> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let plain = encoder.tokenize(&texts)?;
    let mut rows = Vec::with_capacity(examples.len());
    for (ex, plain) in examples.iter().zip(plain) {
        let (encoded, word_starts) = match &ex.words {
            None => {
                let n = plain.ids.len();
                (plain, vec![None; n])
            }
            Some(words) => encoder
                .tokenize_words(words)
                .map_err(|e| TrainError::Data {
                    path: (*ex.file).clone(),
                    line: ex.line,
                    message: e.to_string(),
                })?,
        };
        let mut targets = Vec::with_capacity(specs.len());
        for spec in specs {
            let unknown = |label: &str| TrainError::Data {
                path: (*ex.file).clone(),
                line: ex.line,
                message: format!(
                    "task `{}`: label `{label}` never appears in the training data",
                    spec.name
                ),
            };
            let target = match (ex.labels.get(&spec.name), spec.kind) {
                (None, _) => Target::None,
                (Some(Label::Class(c)), HeadKind::Sentence) => {
                    Target::Class(spec.label_id(c).ok_or_else(|| unknown(c))? as i64)
                }
                (Some(Label::Tags(tags)), HeadKind::Token) => {
                    let ids = word_starts
                        .iter()
                        .map(|w| match w {
                            Some(w) => spec
                                .label_id(&tags[*w])
                                .map(|i| i as i64)
                                .ok_or_else(|| unknown(&tags[*w])),
                            None => Ok(IGNORE),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Target::Tokens(ids)
                }
                (Some(_), kind) => {
                    return Err(TrainError::Data {
                        path: (*ex.file).clone(),
                        line: ex.line,
                        message: format!(
                            "task `{}` is a {kind:?} task but this record labels it the other way",
                            spec.name
                        ),
                    });
                }
            };
            targets.push(target);
        }
        rows.push(Row {
            encoded,
            targets,
            word_starts,
            n_words: ex.words.as_ref().map_or(0, Vec::len),
        });
    }
    Ok(rows)
}

/// Head specs from the training data: one head per task, kind from its labels.
pub fn head_specs(
    examples: &[Example],
    options: &BTreeMap<String, TaskOptions>,
) -> Result<Vec<HeadSpec>, TrainError> {
    let sets = label_sets(examples);
    for name in options.keys() {
        if !sets.contains_key(name) {
            return Err(TrainError::Config(format!(
                "task `{name}` is configured but no training record has a label for it; tasks in the data: {}",
                sets.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut specs = Vec::new();
    for (name, (is_token, labels)) in sets {
        let kind = if is_token {
            HeadKind::Token
        } else {
            HeadKind::Sentence
        };
        let mut spec = HeadSpec::new(name.clone(), kind, labels.into_iter().collect());
        if let Some(o) = options.get(&name) {
            spec.hidden = o.hidden;
            if let Some(d) = o.dropout {
                spec.dropout = d;
            }
        }
        if spec.labels.len() < 2 {
            return Err(TrainError::Config(format!(
                "task `{name}` has a single class (`{}`) in the training data: nothing to learn",
                spec.labels.join(", ")
            )));
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(TrainError::Config("the training data has no labels".into()));
    }
    Ok(specs)
}

fn batch_input<B: Backend>(
    rows: &[&Row],
    pad_id: u32,
    n_heads: usize,
    device: &B::Device,
) -> (st_backbone::BertInput<B>, Vec<Option<Tensor<B, 1, Int>>>) {
    let encoded: Vec<&Encoded> = rows.iter().map(|r| &r.encoded).collect();
    let batch = TokenBatch::pad(&encoded, pad_id);
    let seq = batch.seq_len;
    let mut targets = Vec::with_capacity(n_heads);
    for h in 0..n_heads {
        if rows.iter().all(|r| r.targets[h] == Target::None) {
            targets.push(None);
            continue;
        }
        let sentence = rows
            .iter()
            .any(|r| matches!(r.targets[h], Target::Class(_)));
        let values: Vec<i64> = if sentence {
            rows.iter()
                .map(|r| match r.targets[h] {
                    Target::Class(c) => c,
                    _ => IGNORE,
                })
                .collect()
        } else {
            let mut v = vec![IGNORE; rows.len() * seq];
            for (i, r) in rows.iter().enumerate() {
                if let Target::Tokens(t) = &r.targets[h] {
                    v[i * seq..i * seq + t.len()].copy_from_slice(t);
                }
            }
            v
        };
        let n = values.len();
        targets.push(Some(Tensor::from_data(
            TensorData::new(values, [n]),
            device,
        )));
    }
    (batch.to_input::<B>(device), targets)
}

/// Evaluates every head on `rows`: accuracy and macro-F1 for sentence tasks, entity-level
/// precision/recall/F1 for token tasks (per word, read at each word's first sub-word).
pub fn evaluate<B: EncoderBackend>(
    model: &MultiTaskModel<B>,
    rows: &[Row],
    examples: &[Example],
    batch_size: usize,
) -> Metrics {
    let device = model
        .encoder
        .bert
        .devices()
        .into_iter()
        .next()
        .unwrap_or_default();
    let specs = model.specs();
    let mut sentence: Vec<(Vec<usize>, Vec<usize>)> = vec![(vec![], vec![]); specs.len()];
    let mut tokens: Vec<Vec<(Vec<String>, Vec<String>)>> = vec![vec![]; specs.len()];
    let idx: Vec<usize> = (0..rows.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch: Vec<&Row> = chunk.iter().map(|&i| &rows[i]).collect();
        let wanted: Vec<bool> = (0..specs.len())
            .map(|h| batch.iter().any(|r| r.targets[h] != Target::None))
            .collect();
        let (input, _) = batch_input::<B>(
            &batch,
            model.encoder.tokenizer.pad_id(),
            specs.len(),
            &device,
        );
        let outputs = model.forward(input, &wanted);
        for (h, out) in outputs.into_iter().enumerate() {
            let Some(out) = out else { continue };
            let seq = match &out {
                HeadOutput::Token(t) => t.dims()[1],
                HeadOutput::Sentence(_) => 1,
            };
            let predicted: Vec<i64> = out
                .flat_logits()
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec()
                .unwrap_or_default();
            for (k, &i) in chunk.iter().enumerate() {
                let row = &rows[i];
                match &row.targets[h] {
                    Target::None => {}
                    Target::Class(c) => {
                        sentence[h].0.push(predicted[k] as usize);
                        sentence[h].1.push(*c as usize);
                    }
                    Target::Tokens(_) => {
                        let Some(Label::Tags(gold)) = examples[i].labels.get(&specs[h].name) else {
                            continue;
                        };
                        // Words cut off by truncation are predicted "O".
                        let mut pred = vec!["O".to_string(); row.n_words];
                        for (pos, w) in row.word_starts.iter().enumerate() {
                            if let Some(w) = w {
                                pred[*w] =
                                    specs[h].labels[predicted[k * seq + pos] as usize].clone();
                            }
                        }
                        tokens[h].push((pred, gold.clone()));
                    }
                }
            }
        }
    }
    let mut metrics = BTreeMap::new();
    for (h, spec) in specs.iter().enumerate() {
        let mut m = BTreeMap::new();
        match spec.kind {
            HeadKind::Sentence if !sentence[h].1.is_empty() => {
                m.insert("accuracy".into(), accuracy(&sentence[h].0, &sentence[h].1));
                m.insert("macro_f1".into(), macro_f1(&sentence[h].0, &sentence[h].1));
                m.insert("n".into(), sentence[h].1.len() as f64);
            }
            HeadKind::Token if !tokens[h].is_empty() => {
                let (p, r, f) = entity_f1(&tokens[h]);
                m.insert("precision".into(), p);
                m.insert("recall".into(), r);
                m.insert("entity_f1".into(), f);
                m.insert("n".into(), tokens[h].len() as f64);
            }
            _ => continue,
        }
        metrics.insert(spec.name.clone(), m);
    }
    metrics
}

/// The number a checkpoint is judged by: `task.metric`, or the mean of each task's main metric
/// (accuracy, entity F1).
pub fn score(metrics: &Metrics, key: Option<&str>) -> Option<f64> {
    if let Some(key) = key {
        let (task, metric) = key.split_once('.')?;
        return metrics.get(task)?.get(metric).copied();
    }
    let main: Vec<f64> = metrics
        .values()
        .filter_map(|m| crate::metrics::main_metric(m).map(|(_, v)| v))
        .collect();
    (!main.is_empty()).then(|| main.iter().sum::<f64>() / main.len() as f64)
}

fn move_grad<B: Backend>(from: &mut GradientsParams, to: &mut GradientsParams, p: &ParamEntry) {
    match p.rank {
        1 => {
            if let Some(g) = from.remove::<B, 1>(p.id) {
                to.register(p.id, g)
            }
        }
        2 => {
            if let Some(g) = from.remove::<B, 2>(p.id) {
                to.register(p.id, g)
            }
        }
        3 => {
            if let Some(g) = from.remove::<B, 3>(p.id) {
                to.register(p.id, g)
            }
        }
        _ => {}
    }
}

fn grad_sq_norm<B: Backend>(grads: &GradientsParams, p: &ParamEntry) -> f64 {
    let sq = |t: Option<f64>| t.unwrap_or(0.0);
    match p.rank {
        1 => sq(grads
            .get::<B, 1>(p.id)
            .map(|g| g.square().sum().into_scalar().elem::<f64>())),
        2 => sq(grads
            .get::<B, 2>(p.id)
            .map(|g| g.square().sum().into_scalar().elem::<f64>())),
        3 => sq(grads
            .get::<B, 3>(p.id)
            .map(|g| g.square().sum().into_scalar().elem::<f64>())),
        _ => 0.0,
    }
}

fn scale_grad<B: Backend>(grads: &mut GradientsParams, p: &ParamEntry, factor: f64) {
    match p.rank {
        1 => {
            if let Some(g) = grads.remove::<B, 1>(p.id) {
                grads.register(p.id, g * factor)
            }
        }
        2 => {
            if let Some(g) = grads.remove::<B, 2>(p.id) {
                grads.register(p.id, g * factor)
            }
        }
        3 => {
            if let Some(g) = grads.remove::<B, 3>(p.id) {
                grads.register(p.id, g * factor)
            }
        }
        _ => {}
    }
}

/// A source of batches: examples from one dataset, reshuffled every pass.
struct Source {
    rows: Vec<Row>,
    order: Vec<usize>,
    cursor: usize,
    pass: u64,
}

impl Source {
    /// Puts the source back at `cursor` in pass `pass` (as `next_batch` left it): the pass's
    /// order is a function of (seed, stream, pass).
    fn restore(&mut self, cursor: usize, pass: u64, seed: u64, stream: u64) {
        self.cursor = cursor;
        self.pass = pass;
        if pass > 0 {
            self.order = (0..self.rows.len()).collect();
            Rng::for_step(seed, stream + 1000, pass - 1).shuffle(&mut self.order);
        }
    }

    fn next_batch(&mut self, size: usize, seed: u64, stream: u64) -> Vec<usize> {
        let mut out = Vec::with_capacity(size);
        while out.len() < size.min(self.rows.len()) {
            if self.cursor == 0 {
                self.order = (0..self.rows.len()).collect();
                Rng::for_step(seed, stream + 1000, self.pass).shuffle(&mut self.order);
                self.pass += 1;
            }
            out.push(self.order[self.cursor]);
            self.cursor = (self.cursor + 1) % self.rows.len();
        }
        out
    }
}

/// Trains as `config` says, starting from the encoder in `model_dir`. Writes the best model
/// (sentence-transformers folder + heads) and `metrics.jsonl` into `config.output`.
pub fn train<B: AutodiffEncoderBackend>(
    config: &TrainConfig,
    model_dir: &Path,
    device: &B::Device,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainSummary, TrainError> {
    config.validate()?;
    let folder = open_output(config)?;
    let train_sets = config
        .train
        .iter()
        .map(load)
        .collect::<Result<Vec<_>, _>>()?;
    let all_train: Vec<Example> = train_sets.iter().flatten().cloned().collect();
    let specs = head_specs(&all_train, &config.tasks)?;
    let head_names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();

    // Heads are initialized from the backend's generator: seed it so runs repeat exactly.
    B::seed(device, config.seed);
    let encoder = SentenceEncoder::<B>::from_dir(model_dir, device)?
        .with_max_seq_length(config.max_seq_length)?;
    let layers = encoder.bert.num_layers();
    config.freeze.validate(layers, &head_names)?;
    let mut model = MultiTaskModel::new(encoder, specs.clone(), device)?;
    // Starting from a model `st train` saved: heads for the same task and labels carry over.
    let reused = model.reuse_heads(model_dir, device)?;
    if !reused.is_empty() {
        on_event(&Event::Note(format!(
            "heads taken over from {}: {}",
            model_dir.display(),
            reused.join(", ")
        )));
    }

    let mut sources: Vec<Source> = train_sets
        .iter()
        .map(|set| {
            Ok(Source {
                rows: prepare(&model.encoder, &specs, set)?,
                order: vec![],
                cursor: 0,
                pass: 0,
            })
        })
        .collect::<Result<_, TrainError>>()?;
    let eval_examples = load_labelled(&config.eval, &head_names)?;
    let eval_rows = prepare(&model.encoder, &specs, &eval_examples)?;

    let mut groups = build_groups(&params(&model), layers, &head_names, &config.lr);
    let trainable_params: usize = groups
        .iter()
        .filter(|g| {
            config
                .freeze
                .trains(g, layers, usize::MAX / 2, usize::MAX / 2)
        })
        .map(ParamGroup::numel)
        .sum();
    on_event(&Event::Groups(group_table(&groups, |g| {
        config.freeze.trains(g, layers, 0, 0)
    })));

    let resume_dir = folder.path().join(RESUME_DIR);
    let resumed = match config.resume {
        true => Some(resume::read_state(&resume_dir)?),
        false => None,
    };
    let mut log = RunLog::open(folder.path(), resumed.as_ref().map(|s| s.log_bytes))?;

    let sizes: Vec<usize> = sources.iter().map(|s| s.rows.len()).collect();
    let total_examples: usize = sizes.iter().sum();
    // An epoch is one pass's worth of examples, however many batches a step takes.
    let steps_per_epoch = total_examples
        .div_ceil(
            config.batch_size
                * config.grad_accumulation
                * config.sampling.batches_per_step(sources.len()),
        )
        .max(1);
    let total_steps = config.max_steps.unwrap_or(steps_per_epoch * config.epochs);

    if config.freeze.freezes_everything() {
        // Nothing trains: report the frozen model's metrics, as a baseline.
        let metrics = evaluate(&model.valid(), &eval_rows, &eval_examples, 64);
        log.write(serde_json::json!({"epoch": 0, "step": 0, "eval": metrics, "frozen": true}))?;
        on_event(&Event::Eval {
            epoch: 0,
            metrics: metrics.clone(),
            best: true,
        });
        return Ok(TrainSummary {
            steps: 0,
            metrics,
            trainable_params: 0,
        });
    }

    let adamw = |decay: f64| {
        AdamWConfig::new()
            .with_epsilon(config.adam_epsilon as f32)
            .with_weight_decay(decay as f32)
    };
    let mut opts = Optimizers {
        decay: adamw(config.weight_decay).init::<B, MultiTaskModel<B>>(),
        plain: adamw(0.0).init::<B, MultiTaskModel<B>>(),
        uncertainty: adamw(0.0).init::<B, UncertaintyWeights<B>>(),
    };
    let mut uncertainty = matches!(config.weighting, Weighting::Uncertainty)
        .then(|| UncertaintyWeights::<B>::new(specs.len(), device));
    let mut dwa = DwaState::default();
    let mut epoch_losses: Vec<(f64, usize)> = vec![(0.0, 0); specs.len()];
    let mut best: Option<(f64, Metrics)> = None;
    let mut since_best = 0;
    let mut first_step = 0;
    // Whether this run's output holds a checkpoint of it (a resumed run starts from one).
    let mut checkpointed = resumed.is_some();

    if let Some(state) = resumed {
        if state.cursors.len() != sources.len() {
            return Err(TrainError::Config(format!(
                "{} was written for {} training sources, this config has {}",
                resume_dir.join(RESUME_STATE).display(),
                state.cursors.len(),
                sources.len()
            )));
        }
        (model, opts, uncertainty) = resume::load(&resume_dir, device, model, opts, uncertainty)?;
        for (s, (source, &(cursor, pass))) in sources.iter_mut().zip(&state.cursors).enumerate() {
            source.restore(cursor, pass, config.seed, s as u64);
        }
        // Loading restores the saved parameter ids, which the optimizer state is keyed by.
        groups = build_groups(&params(&model), layers, &head_names, &config.lr);
        dwa.history = state.dwa;
        epoch_losses = state.epoch_losses;
        best = state.best;
        since_best = state.since_best;
        first_step = state.step;
        on_event(&Event::Groups(format!(
            "resuming at step {first_step} from {}\n",
            resume_dir.display()
        )));
    }

    let schedule = Schedule {
        warmup: (config.warmup_ratio * total_steps as f64).round() as usize,
        total: total_steps,
        decay: config.schedule,
    };
    let pad_id = model.encoder.tokenizer.pad_id();

    let mut steps_done = first_step;
    for step in first_step..total_steps {
        let epoch = step / steps_per_epoch;
        // Dropout masks depend on (seed, step) only, so a resumed run repeats an unbroken one.
        B::seed(
            device,
            Rng::for_step(config.seed, 7, step as u64).next_u64(),
        );
        let dwa_weights = match &config.weighting {
            Weighting::Dwa { temperature } => dwa.weights(specs.len(), *temperature),
            _ => vec![1.0; specs.len()],
        };
        let step_started = std::time::Instant::now();
        let trainable: Vec<&ParamGroup> = groups
            .iter()
            .filter(|g| config.freeze.trains(g, layers, step, epoch))
            .collect();
        // The trainable parameters' ids, to pull their gradients out of every backward pass.
        let ids: Vec<_> = trainable
            .iter()
            .flat_map(|g| g.params.iter().map(|p| p.id))
            .collect();
        let mut accumulated = GradientsParams::new();
        let mut step_losses: Vec<(String, f64, f64)> = Vec::new();
        // Uncertainty log-variances: gradients summed over the micro-batches like the model's.
        let mut uncertainty_grads: Option<GradientsParams> = None;
        for micro in 0..config.grad_accumulation {
            let mut rng = Rng::for_step(
                config.seed,
                0,
                (step * config.grad_accumulation + micro) as u64,
            );
            for s in config.sampling.picks(&sizes, step, &mut rng) {
                let picked = sources[s].next_batch(config.batch_size, config.seed, s as u64);
                let rows: Vec<&Row> = picked.iter().map(|&i| &sources[s].rows[i]).collect();
                let (input, targets) = batch_input::<B>(&rows, pad_id, specs.len(), device);
                let wanted: Vec<bool> = targets.iter().map(Option::is_some).collect();
                let outputs = model.forward(input, &wanted);
                let mut total: Option<Tensor<B, 1>> = None;
                for (h, (out, target)) in outputs.into_iter().zip(targets).enumerate() {
                    let (Some(out), Some(target)) = (out, target) else {
                        continue;
                    };
                    let (loss, n) = masked_cross_entropy(out.flat_logits(), target);
                    if n == 0 {
                        continue;
                    }
                    let value = loss.clone().into_scalar().elem::<f64>();
                    if !value.is_finite() {
                        return Err(TrainError::Diverged(format!(
                            "task `{}` loss is {value} at step {step}; {} (try a lower learning rate)",
                            specs[h].name,
                            kept_note(&config.output, checkpointed)
                        )));
                    }
                    let (weighted, weight) = match (&config.weighting, &uncertainty) {
                        (Weighting::Uncertainty, Some(u)) => (u.weigh(h, loss), u.weights()[h]),
                        (Weighting::Static { weights }, _) => {
                            let w = weights.get(&specs[h].name).copied().unwrap_or(1.0);
                            (loss * w, w)
                        }
                        _ => (loss * dwa_weights[h], dwa_weights[h]),
                    };
                    epoch_losses[h].0 += value;
                    epoch_losses[h].1 += 1;
                    step_losses.push((specs[h].name.clone(), value, weight));
                    total = Some(match total {
                        Some(t) => t + weighted,
                        None => weighted,
                    });
                }
                let Some(total) = total else { continue };
                let total = total / config.grad_accumulation as f64;
                let mut grads = total.backward();
                let micro_grads = GradientsParams::from_params(&mut grads, &model, &ids);
                for p in trainable.iter().flat_map(|g| &g.params) {
                    add_grad::<B::InnerBackend>(&mut accumulated, &micro_grads, p);
                }
                if let Some(u) = &uncertainty {
                    let g = GradientsParams::from_module(&mut grads, u);
                    let sum = uncertainty_grads.get_or_insert_with(GradientsParams::new);
                    for p in &params(u) {
                        add_grad::<B::InnerBackend>(sum, &g, p);
                    }
                }
            }
        }

        // Global-norm clipping over every trainable parameter, as torch's clip_grad_norm_.
        let trainable_params: Vec<&ParamEntry> = trainable.iter().flat_map(|g| &g.params).collect();
        if let Some(max_norm) = config.max_grad_norm {
            let norm = trainable_params
                .iter()
                .map(|p| grad_sq_norm::<B::InnerBackend>(&accumulated, p))
                .sum::<f64>()
                .sqrt();
            if norm > max_norm {
                let factor = max_norm / (norm + 1e-6);
                for p in &trainable_params {
                    scale_grad::<B::InnerBackend>(&mut accumulated, p, factor);
                }
            }
        }

        let factor = schedule.factor(step + 1);
        for group in &trainable {
            let lr = group.lr * factor;
            let (mut with_decay, mut without) = (GradientsParams::new(), GradientsParams::new());
            for p in &group.params {
                if p.decays() {
                    move_grad::<B::InnerBackend>(&mut accumulated, &mut with_decay, p);
                } else {
                    move_grad::<B::InnerBackend>(&mut accumulated, &mut without, p);
                }
            }
            if !with_decay.is_empty() {
                model = opts.decay.step(lr, model, with_decay);
            }
            if !without.is_empty() {
                model = opts.plain.step(lr, model, without);
            }
        }
        if let (Some(u), Some(g)) = (uncertainty.take(), uncertainty_grads) {
            // The log-variances are per-task parameters like the heads, and learn at the head
            // rate: at the encoder's rate (~1e-4) they move by ~0.01 in a hundred steps.
            uncertainty = Some(opts.uncertainty.step(config.lr.head_rate() * factor, u, g));
        }
        on_event(&Event::Step {
            step: step + 1,
            total: total_steps,
            losses: step_losses.clone(),
        });
        steps_done = step + 1;
        log.write(serde_json::json!({
            "step": step + 1,
            "step_ms": step_started.elapsed().as_secs_f64() * 1e3,
            "epoch": epoch,
            "lr": groups.iter().map(|g| (g.name.clone(), if trainable.iter().any(|t| t.name == g.name) { g.lr * factor } else { 0.0 })).collect::<BTreeMap<_, _>>(),
            "losses": step_losses.iter().map(|(t, l, _)| (t.clone(), *l)).collect::<BTreeMap<_, _>>(),
            "weights": step_losses.iter().map(|(t, _, w)| (t.clone(), *w)).collect::<BTreeMap<_, _>>(),
        }))?;

        let end_of_epoch = (step + 1) % steps_per_epoch == 0 || step + 1 == total_steps;
        if end_of_epoch {
            dwa.history.push(
                epoch_losses
                    .iter()
                    .map(|(sum, n)| if *n == 0 { 1.0 } else { sum / *n as f64 })
                    .collect(),
            );
            epoch_losses = vec![(0.0, 0); specs.len()];
            let metrics = if eval_rows.is_empty() {
                BTreeMap::new()
            } else {
                evaluate(&model.valid(), &eval_rows, &eval_examples, 64)
            };
            let current = score(&metrics, config.best_metric.as_deref());
            if config.best_metric.is_some() && !metrics.is_empty() && current.is_none() {
                return Err(TrainError::Config(format!(
                    "best_metric `{}` is not among the evaluation metrics",
                    config.best_metric.as_deref().unwrap_or_default()
                )));
            }
            let improved = match (&best, current) {
                (None, _) => true,
                (Some((b, _)), Some(c)) => c > *b,
                (Some(_), None) => true,
            };
            if improved {
                best = Some((current.unwrap_or(0.0), metrics.clone()));
                since_best = 0;
            } else {
                since_best += 1;
            }
            log.write(
                serde_json::json!({"epoch": epoch + 1, "step": step + 1, "eval": metrics, "best": improved}),
            )?;
            let state = ResumeState {
                step: step + 1,
                cursors: sources.iter().map(|s| (s.cursor, s.pass)).collect(),
                dwa: dwa.history.clone(),
                epoch_losses: epoch_losses.clone(),
                best: best.clone(),
                since_best,
                log_bytes: Some(log.len()?),
            };
            let checkpoint = Checkpoint {
                model: &model,
                opts: &opts,
                uncertainty: uncertainty.as_ref(),
                state: &state,
                with_model: improved,
            };
            checkpoint.commit(&folder, config, checkpointed)?;
            checkpointed = true;
            on_event(&Event::Eval {
                epoch: epoch + 1,
                metrics,
                best: improved,
            });
            if config.patience.is_some_and(|p| since_best >= p) {
                break;
            }
        }
    }
    Ok(TrainSummary {
        steps: steps_done,
        metrics: best.map(|(_, m)| m).unwrap_or_default(),
        trainable_params,
    })
}

/// Adds the gradient of `p` in `from` into `to`.
fn add_grad<B: Backend>(to: &mut GradientsParams, from: &GradientsParams, p: &ParamEntry) {
    macro_rules! add {
        ($d:literal) => {
            if let Some(g) = from.get::<B, $d>(p.id) {
                let sum = match to.remove::<B, $d>(p.id) {
                    Some(prev) => prev + g,
                    None => g,
                };
                to.register(p.id, sum);
            }
        };
    }
    match p.rank {
        1 => add!(1),
        2 => add!(2),
        3 => add!(3),
        _ => {}
    }
}

/// Loads a model saved by [`train`]: encoder and heads.
pub fn load_trained<B: EncoderBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<MultiTaskModel<B>, TrainError> {
    let encoder = SentenceEncoder::<B>::from_dir(dir, device)?;
    Ok(MultiTaskModel::load(encoder, dir, device)?)
}

/// Reads evaluation data whose every task must be one of `tasks` (an unknown task is an error
/// naming file and line).
fn load_labelled(data: &[DataSpec], tasks: &[String]) -> Result<Vec<Example>, TrainError> {
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
    let names: Vec<String> = model.specs().iter().map(|s| s.name.clone()).collect();
    let examples = load_labelled(data, &names)?;
    let rows = prepare(&model.encoder, &model.specs(), &examples)?;
    Ok(evaluate(model, &rows, &examples, batch_size))
}
