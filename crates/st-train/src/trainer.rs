//! The training loop: one shared encoder, several tasks, sampled batches, weighted losses,
//! per-group learning rates, freezing, evaluation, best checkpoint, early stopping.
//!
//! [`train`] is [`Trainer::setup`] then [`Trainer::run`]. A step ([`Trainer::step`]) draws one
//! batch per picked source and micro-batch, asks each task's [`TaskKind`] for its loss and the
//! [`LossWeighter`] for its weight, backpropagates each batch into summed gradients, clips them
//! globally and lets each parameter group take its AdamW step at its own rate.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Tensor};
use st_backbone::{AutodiffEncoderBackend, EncoderBackend};
use st_heads::{HeadSpec, MultiTaskModel};
use st_pooling::SentenceEncoder;
use st_runlog::{EvalRecord, LogRecord, Metrics, StepRecord, TestRecord, TrainSummary};

use crate::TrainError;
use crate::batch::{Batch, Row, Source, head_specs, prepare};
use crate::checkpoint::{
    Checkpoint, OutputFolder, RESUME_DIR, RESUME_STATE, RunLog, kept_note, open_output,
};
use crate::config::TrainConfig;
use crate::data::{DataSpec, Example, load};
use crate::evaluate::{evaluate, load_labelled, score};
use crate::freeze::track_only;
use crate::grads::{add_grad, grad_sq_norm, move_grad, scale_grad};
use crate::groups::{ParamEntry, ParamGroup, build_groups, group_table, params};
use crate::kinds::{Features, TaskKind, task_kind};
use crate::multitask::Rng;
use crate::resume::{self, Optimizers, ResumeState};
use crate::schedule::Schedule;
use crate::weighting::LossWeighter;

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
        /// (task, loss, weight) for each task in the step.
        losses: Vec<(String, f64, f64)>,
    },
    Eval {
        epoch: usize,
        metrics: Metrics,
        best: bool,
    },
    /// The best model's metrics on the test data, after training.
    Test(Metrics),
}

/// Trains as `config` says, starting from the encoder in `model_dir`. Writes the best model
/// (sentence-transformers folder + heads) and `metrics.jsonl` into `config.output`.
pub fn train<B: AutodiffEncoderBackend>(
    config: &TrainConfig,
    model_dir: &Path,
    device: &B::Device,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainSummary, TrainError> {
    let (trainer, model) = Trainer::<B>::setup(config, model_dir, device, on_event)?;
    trainer.run(model, on_event)
}

/// Loads a model saved by [`train`]: encoder and heads.
pub fn load_trained<B: EncoderBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<MultiTaskModel<B>, TrainError> {
    let encoder = SentenceEncoder::<B>::from_dir(dir, device)?;
    Ok(MultiTaskModel::load(encoder, dir, device)?)
}

/// Held-out data, tokenized once.
struct EvalSet {
    examples: Vec<Example>,
    rows: Vec<Row>,
}

/// Where the run stands: what a checkpoint saves besides weights.
#[derive(Default)]
struct Progress {
    /// The first step this invocation runs (after a resume, the checkpoint's).
    first_step: usize,
    steps_done: usize,
    best: Option<(f64, Metrics)>,
    since_best: usize,
    /// Whether this run's output holds a checkpoint of it (a resumed run starts from one).
    checkpointed: bool,
    step_ms: Vec<f64>,
}

/// A run, set up: everything but the model, which each step consumes and returns.
pub struct Trainer<'a, B: AutodiffEncoderBackend> {
    config: &'a TrainConfig,
    device: B::Device,
    specs: Vec<HeadSpec>,
    kinds: Vec<Box<dyn TaskKind<B>>>,
    sources: Vec<Source>,
    eval: EvalSet,
    /// Held-out data the best model is scored on once, after training.
    test: EvalSet,
    groups: Vec<ParamGroup>,
    layers: usize,
    opts: Optimizers<B>,
    weighter: Box<dyn LossWeighter<B>>,
    folder: OutputFolder,
    log: RunLog,
    schedule: Schedule,
    steps_per_epoch: usize,
    trainable_params: usize,
    pad_id: u32,
    progress: Progress,
}

/// The step's gradients and what it reports, as its batches add to them.
struct StepGrads {
    grads: GradientsParams,
    /// (task, loss, weight) per task loss.
    losses: Vec<(String, f64, f64)>,
}

impl<'a, B: AutodiffEncoderBackend> Trainer<'a, B> {
    /// Reads the data, builds the model and its heads, the parameter groups, the optimizers and
    /// the loss weighter, and (with `resume`) restores all of them from the last checkpoint.
    pub fn setup(
        config: &'a TrainConfig,
        model_dir: &Path,
        device: &B::Device,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(Self, MultiTaskModel<B>), TrainError> {
        config.validate()?;
        let folder = open_output(config)?;
        let train_sets = config
            .train
            .iter()
            .map(load)
            .collect::<Result<Vec<_>, _>>()?;
        let (model, specs) = build_model::<B>(config, model_dir, &train_sets, device, on_event)?;
        let kinds: Vec<Box<dyn TaskKind<B>>> = specs
            .iter()
            .map(|s| task_kind::<B>(s, &config.tasks.get(&s.name).cloned().unwrap_or_default()))
            .collect();
        let sources = train_sets
            .iter()
            .map(|set| Ok(Source::new(prepare(&model.encoder, &specs, &kinds, set)?)))
            .collect::<Result<Vec<_>, TrainError>>()?;
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let eval_set = |data: &[DataSpec]| -> Result<EvalSet, TrainError> {
            let examples = load_labelled(data, &names)?;
            let rows = prepare(&model.encoder, &specs, &kinds, &examples)?;
            Ok(EvalSet { examples, rows })
        };
        let (eval, test) = (eval_set(&config.eval)?, eval_set(&config.test)?);
        let layers = model.encoder.bert.num_layers();
        let groups = build_groups(&params(&model), layers, &names, &config.lr);
        on_event(&Event::Groups(group_table(&groups, |g| {
            config.freeze.trains(g, layers, 0, 0)
        })));
        let resumed = match config.resume {
            true => Some(resume::read_state(&folder.path().join(RESUME_DIR))?),
            false => None,
        };
        let log = RunLog::open(folder.path(), resumed.as_ref().map(|s| s.log_bytes))?;
        let steps_per_epoch = steps_per_epoch(config, &sources);
        let total = config.max_steps.unwrap_or(steps_per_epoch * config.epochs);
        let mut trainer = Self {
            config,
            device: device.clone(),
            weighter: config
                .weighting
                .weighter(&names, config.lr.head_rate(), config.seed, device),
            trainable_params: groups
                .iter()
                .filter(|g| {
                    config
                        .freeze
                        .trains(g, layers, usize::MAX / 2, usize::MAX / 2)
                })
                .map(ParamGroup::numel)
                .sum(),
            specs,
            kinds,
            sources,
            eval,
            test,
            groups,
            layers,
            opts: Optimizers::new(config),
            folder,
            log,
            schedule: Schedule {
                warmup: (config.warmup_ratio * total as f64).round() as usize,
                total,
                decay: config.schedule,
            },
            steps_per_epoch,
            pad_id: model.encoder.tokenizer.pad_id(),
            progress: Progress::default(),
        };
        let model = match resumed {
            Some(state) => trainer.resume(model, state, on_event)?,
            None => model,
        };
        Ok((trainer, model))
    }

    /// Restores the model, optimizers, weighter, sources and progress of the last checkpoint.
    fn resume(
        &mut self,
        model: MultiTaskModel<B>,
        state: ResumeState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<MultiTaskModel<B>, TrainError> {
        let dir = self.folder.path().join(RESUME_DIR);
        if state.cursors.len() != self.sources.len() {
            return Err(TrainError::Config(format!(
                "{} was written for {} training sources, this config has {}",
                dir.join(RESUME_STATE).display(),
                state.cursors.len(),
                self.sources.len()
            )));
        }
        let fresh = std::mem::replace(&mut self.opts, Optimizers::new(self.config));
        let (model, opts) = resume::load(&dir, &self.device, model, fresh, self.weighter.as_mut())?;
        self.opts = opts;
        for (s, (source, &(cursor, pass))) in
            self.sources.iter_mut().zip(&state.cursors).enumerate()
        {
            source.restore(cursor, pass, self.config.seed, s as u64);
        }
        // Loading restores the saved parameter ids, which the optimizer state is keyed by.
        let names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        self.groups = build_groups(&params(&model), self.layers, &names, &self.config.lr);
        self.progress = Progress {
            first_step: state.step,
            steps_done: state.step,
            best: state.best,
            since_best: state.since_best,
            checkpointed: true,
            step_ms: Vec::new(),
        };
        on_event(&Event::Groups(format!(
            "resuming at step {} from {}\n",
            state.step,
            dir.display()
        )));
        Ok(model)
    }

    /// Trains to the end (or until patience runs out) and says how it went.
    pub fn run(
        mut self,
        mut model: MultiTaskModel<B>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<TrainSummary, TrainError> {
        if self.config.freeze.freezes_everything() {
            return self.baseline(&model, on_event);
        }
        for step in self.progress.first_step..self.schedule.total {
            model = self.step(model, step, on_event)?;
            let end_of_epoch =
                (step + 1) % self.steps_per_epoch == 0 || step + 1 == self.schedule.total;
            if end_of_epoch && self.end_epoch(&model, step, on_event)? {
                break;
            }
        }
        // The best model is the one on disk (it may predate a resume): score that one.
        let test = match self.test.rows.is_empty() {
            true => Metrics::new(),
            false => self.score_on(
                &load_trained::<B::InnerBackend>(&self.config.output, &self.device)?,
                &self.test,
            ),
        };
        self.report_test(&test, on_event)?;
        let mut ms = std::mem::take(&mut self.progress.step_ms);
        ms.sort_by(f64::total_cmp);
        Ok(TrainSummary {
            steps: self.progress.steps_done,
            metrics: self.progress.best.map(|(_, m)| m).unwrap_or_default(),
            test,
            trainable_params: self.trainable_params,
            median_step_ms: ms.get(ms.len() / 2).copied(),
        })
    }

    /// Logs and announces the test metrics (nothing without test data).
    fn report_test(
        &mut self,
        metrics: &Metrics,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(), TrainError> {
        if metrics.is_empty() {
            return Ok(());
        }
        self.log.write(&LogRecord::Test(TestRecord {
            test: metrics.clone(),
        }))?;
        on_event(&Event::Test(metrics.clone()));
        Ok(())
    }

    /// Nothing trains: the frozen model's metrics, as a baseline.
    fn baseline(
        mut self,
        model: &MultiTaskModel<B>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<TrainSummary, TrainError> {
        let metrics = self.evaluate(model);
        self.log.write(&LogRecord::Eval(EvalRecord {
            epoch: 0,
            step: 0,
            eval: metrics.clone(),
            best: true,
            frozen: true,
        }))?;
        on_event(&Event::Eval {
            epoch: 0,
            metrics: metrics.clone(),
            best: true,
        });
        let test = self.score_on(&model.valid(), &self.test);
        self.report_test(&test, on_event)?;
        Ok(TrainSummary {
            steps: 0,
            metrics,
            test,
            trainable_params: 0,
            median_step_ms: None,
        })
    }

    fn evaluate(&self, model: &MultiTaskModel<B>) -> Metrics {
        // Without eval data there is nothing to score: skip copying the model off autodiff.
        if self.eval.rows.is_empty() {
            return Metrics::new();
        }
        self.score_on(&model.valid(), &self.eval)
    }

    /// Every head's metrics on `set` (none for an empty set).
    fn score_on(&self, model: &MultiTaskModel<B::InnerBackend>, set: &EvalSet) -> Metrics {
        if set.rows.is_empty() {
            return Metrics::new();
        }
        let kinds: Vec<_> = self
            .specs
            .iter()
            .map(|s| task_kind::<B::InnerBackend>(s, &Default::default()))
            .collect();
        evaluate(model, &kinds, &set.rows, &set.examples, 64)
    }

    /// One optimizer step: gradients of every batch the step draws, clipped, applied per group.
    fn step(
        &mut self,
        model: MultiTaskModel<B>,
        step: usize,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<MultiTaskModel<B>, TrainError> {
        let config = self.config;
        let started = std::time::Instant::now();
        let epoch = step / self.steps_per_epoch;
        // Dropout masks depend on (seed, step) only, so a resumed run repeats an unbroken one.
        B::seed(
            &self.device,
            Rng::for_step(config.seed, 7, step as u64).next_u64(),
        );
        self.weighter.begin_step(step);
        let trainable: Vec<usize> = (0..self.groups.len())
            .filter(|&g| {
                config
                    .freeze
                    .trains(&self.groups[g], self.layers, step, epoch)
            })
            .collect();
        let tracked = trainable
            .iter()
            .flat_map(|&g| self.groups[g].params.iter().map(|p| p.id))
            .collect();
        let model = track_only(model, &tracked);
        let mut acc = StepGrads {
            grads: GradientsParams::new(),
            losses: Vec::new(),
        };
        let sizes: Vec<usize> = self.sources.iter().map(|s| s.rows.len()).collect();
        for micro in 0..config.grad_accumulation {
            let draw = (step * config.grad_accumulation + micro) as u64;
            let mut rng = Rng::for_step(config.seed, 0, draw);
            for s in config.sampling.picks(&sizes, step, &mut rng) {
                self.backward_batch(&model, s, step, &trainable, &mut acc)?;
            }
        }
        let factor = self.schedule.factor(step + 1);
        let model = self.apply(model, &trainable, acc.grads, factor);
        self.weighter.end_step(factor);
        on_event(&Event::Step {
            step: step + 1,
            total: self.schedule.total,
            losses: acc.losses.clone(),
        });
        let step_ms = started.elapsed().as_secs_f64() * 1e3;
        self.progress.step_ms.push(step_ms);
        self.progress.steps_done = step + 1;
        self.log.write(&LogRecord::Step(StepRecord {
            step: step + 1,
            step_ms,
            epoch,
            lr: self
                .groups
                .iter()
                .enumerate()
                .map(|(g, group)| {
                    let rate = if trainable.contains(&g) {
                        group.lr * factor
                    } else {
                        0.0
                    };
                    (group.name.clone(), rate)
                })
                .collect(),
            losses: acc.losses.iter().map(|(t, l, _)| (t.clone(), *l)).collect(),
            weights: acc.losses.iter().map(|(t, _, w)| (t.clone(), *w)).collect(),
        }))?;
        Ok(model)
    }

    /// Draws a batch from source `s`, computes each labelled task's weighted loss on one
    /// encoder pass, backpropagates their sum and adds the trainable gradients to `acc`.
    fn backward_batch(
        &mut self,
        model: &MultiTaskModel<B>,
        s: usize,
        step: usize,
        trainable: &[usize],
        acc: &mut StepGrads,
    ) -> Result<(), TrainError> {
        let config = self.config;
        let picked = self.sources[s].next_batch(config.batch_size, config.seed, s as u64);
        let rows = picked.iter().map(|&i| &self.sources[s].rows[i]).collect();
        let batch = Batch::<B>::new(rows, self.pad_id, &self.device);
        let (tokens, pooled) = model.encoder.features(batch.input.clone());
        let features = Features { tokens, pooled };
        let mut total: Option<Tensor<B, 1>> = None;
        for (h, (head, kind)) in model.heads.iter().zip(&self.kinds).enumerate() {
            let (_, task_rows) = batch.task_rows(h);
            if task_rows.is_empty() {
                continue;
            }
            let loss = kind.loss(head, &features, &task_rows);
            let value = loss.clone().into_scalar().elem::<f64>();
            if !value.is_finite() {
                return Err(TrainError::Diverged(format!(
                    "task `{}` loss is {value} at step {step}; {} (try a lower learning rate)",
                    self.specs[h].name,
                    kept_note(&config.output, self.progress.checkpointed)
                )));
            }
            let (weighted, weight) = self.weighter.weigh(h, loss, value);
            acc.losses.push((self.specs[h].name.clone(), value, weight));
            total = Some(match total {
                Some(t) => t + weighted,
                None => weighted,
            });
        }
        let Some(total) = total else { return Ok(()) };
        let mut grads = (total / config.grad_accumulation as f64).backward();
        let ids: Vec<_> = self.trainable_params(trainable).map(|p| p.id).collect();
        let batch_grads = GradientsParams::from_params(&mut grads, model, &ids);
        for p in self.trainable_params(trainable) {
            add_grad::<B::InnerBackend>(&mut acc.grads, &batch_grads, p);
        }
        self.weighter.collect_grads(&mut grads);
        Ok(())
    }

    fn trainable_params<'g>(
        &'g self,
        trainable: &'g [usize],
    ) -> impl Iterator<Item = &'g ParamEntry> {
        trainable.iter().flat_map(|&g| &self.groups[g].params)
    }

    /// Clips the gradients by their global norm (as torch's `clip_grad_norm_`), then steps
    /// each trainable group at its own rate, with and without weight decay.
    fn apply(
        &mut self,
        mut model: MultiTaskModel<B>,
        trainable: &[usize],
        mut grads: GradientsParams,
        factor: f64,
    ) -> MultiTaskModel<B> {
        if let Some(max_norm) = self.config.max_grad_norm {
            let norm = self
                .trainable_params(trainable)
                .map(|p| grad_sq_norm::<B::InnerBackend>(&grads, p))
                .sum::<f64>()
                .sqrt();
            if norm > max_norm {
                let clip = max_norm / (norm + 1e-6);
                for p in trainable.iter().flat_map(|&g| &self.groups[g].params) {
                    scale_grad::<B::InnerBackend>(&mut grads, p, clip);
                }
            }
        }
        for &g in trainable {
            let group = &self.groups[g];
            let (mut with_decay, mut without) = (GradientsParams::new(), GradientsParams::new());
            for p in &group.params {
                let to = if p.decays() {
                    &mut with_decay
                } else {
                    &mut without
                };
                move_grad::<B::InnerBackend>(&mut grads, to, p);
            }
            let lr = group.lr * factor;
            if !with_decay.is_empty() {
                model = self.opts.decay.step(lr, model, with_decay);
            }
            if !without.is_empty() {
                model = self.opts.plain.step(lr, model, without);
            }
        }
        model
    }

    /// End of an epoch: evaluate, keep the best model, checkpoint. Returns whether patience
    /// has run out.
    fn end_epoch(
        &mut self,
        model: &MultiTaskModel<B>,
        step: usize,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<bool, TrainError> {
        self.weighter.end_epoch();
        let metrics = self.evaluate(model);
        let best_metric = self.config.best_metric.as_deref();
        let current = score(&metrics, best_metric);
        if let Some(key) = best_metric
            && !metrics.is_empty()
            && current.is_none()
        {
            return Err(TrainError::Config(format!(
                "best_metric `{key}` is not among the evaluation metrics"
            )));
        }
        let progress = &mut self.progress;
        let improved = match (&progress.best, current) {
            (Some((b, _)), Some(c)) => c > *b,
            _ => true,
        };
        if improved {
            progress.best = Some((current.unwrap_or(0.0), metrics.clone()));
            progress.since_best = 0;
        } else {
            progress.since_best += 1;
        }
        let epoch = step / self.steps_per_epoch + 1;
        self.log.write(&LogRecord::Eval(EvalRecord {
            epoch,
            step: step + 1,
            eval: metrics.clone(),
            best: improved,
            frozen: false,
        }))?;
        self.checkpoint(model, step, improved)?;
        on_event(&Event::Eval {
            epoch,
            metrics,
            best: improved,
        });
        Ok(self
            .config
            .patience
            .is_some_and(|p| self.progress.since_best >= p))
    }

    /// Commits the resume state (and the model, when it improved) as one folder swap.
    fn checkpoint(
        &mut self,
        model: &MultiTaskModel<B>,
        step: usize,
        with_model: bool,
    ) -> Result<(), TrainError> {
        let state = ResumeState {
            step: step + 1,
            cursors: self.sources.iter().map(|s| (s.cursor, s.pass)).collect(),
            best: self.progress.best.clone(),
            since_best: self.progress.since_best,
            log_bytes: Some(self.log.len()?),
        };
        let checkpoint = Checkpoint {
            model,
            opts: &self.opts,
            weighter: self.weighter.as_ref(),
            state: &state,
            with_model,
        };
        checkpoint.commit(&self.folder, self.config, self.progress.checkpointed)?;
        self.progress.checkpointed = true;
        Ok(())
    }
}

/// The encoder from `model_dir` with a head per task of the training data (taking over the
/// trained heads of a model `st train` saved there).
fn build_model<B: AutodiffEncoderBackend>(
    config: &TrainConfig,
    model_dir: &Path,
    train_sets: &[Vec<Example>],
    device: &B::Device,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(MultiTaskModel<B>, Vec<HeadSpec>), TrainError> {
    // Heads are initialized from the backend's generator: seed it so runs repeat exactly.
    B::seed(device, config.seed);
    let encoder = SentenceEncoder::<B>::from_dir(model_dir, device)?
        .with_max_seq_length(config.max_seq_length)?;
    let all: Vec<Example> = train_sets.iter().flatten().cloned().collect();
    let specs = head_specs(&all, &config.tasks, encoder.embedding_dim())?;
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    config.freeze.validate(encoder.bert.num_layers(), &names)?;
    let mut model = MultiTaskModel::new(encoder, specs.clone(), device)?;
    let reused = model.reuse_heads(model_dir, device)?;
    if !reused.is_empty() {
        on_event(&Event::Note(format!(
            "heads taken over from {}: {}",
            model_dir.display(),
            reused.join(", ")
        )));
    }
    Ok((model, specs))
}

/// An epoch is one pass's worth of examples, however many batches a step takes.
fn steps_per_epoch(config: &TrainConfig, sources: &[Source]) -> usize {
    let examples: usize = sources.iter().map(|s| s.rows.len()).sum();
    let per_step = config.batch_size
        * config.grad_accumulation
        * config.sampling.batches_per_step(sources.len());
    examples.div_ceil(per_step).max(1)
}
