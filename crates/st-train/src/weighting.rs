//! Loss weighting: how the task losses of a step combine into the one loss the encoder
//! trains on. Each method is one [`LossWeighter`]; [`Weighting::weighter`] (the config) builds it.
//!
//! The trainer calls the weighter around every step: [`LossWeighter::begin_step`], then
//! [`LossWeighter::weigh`] once per task loss as each batch is computed (a step may hold several
//! batches, each with its own backward pass), [`LossWeighter::collect_grads`] after each backward,
//! [`LossWeighter::end_step`] after the model's update and [`LossWeighter::end_epoch`].

use std::path::Path;

use burn::module::{AutodiffModule, Module, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::Recorder as _;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::multitask::{Rng, Weighting};
use crate::resume::{Recorder, recorder_err};

/// One way of weighting task losses.
pub trait LossWeighter<B: AutodiffBackend> {
    /// Called before the step's first loss.
    fn begin_step(&mut self, _step: usize) {}
    /// Task `task`'s loss (whose value is `value`) as it enters the step's total, and the
    /// weight it was given.
    fn weigh(&mut self, task: usize, loss: Tensor<B, 1>, value: f64) -> (Tensor<B, 1>, f64);
    /// The gradients of a backward pass, for weights that are learned.
    fn collect_grads(&mut self, _grads: &mut B::Gradients) {}
    /// After the model's update; `lr_factor` is the schedule's factor for the step.
    fn end_step(&mut self, _lr_factor: f64) {}
    /// After the last step of an epoch.
    fn end_epoch(&mut self) {}
    /// Writes what a resumed run needs into the (existing) folder `dir`.
    fn save(&self, dir: &Path) -> Result<(), TrainError>;
    /// Reads what [`save`](Self::save) wrote.
    fn load(&mut self, dir: &Path) -> Result<(), TrainError>;
}

impl Weighting {
    /// The weighter for `tasks` (their names, in head order). `head_rate` is the rate of learned
    /// weights (they are per-task parameters like the heads).
    pub fn weighter<B: AutodiffBackend>(
        &self,
        tasks: &[String],
        head_rate: f64,
        seed: u64,
        device: &B::Device,
    ) -> Box<dyn LossWeighter<B>> {
        match self {
            Weighting::Static { weights } => Box::new(StaticWeights(
                tasks
                    .iter()
                    .map(|t| weights.get(t).copied().unwrap_or(1.0))
                    .collect(),
            )),
            Weighting::Uncertainty => Box::new(Uncertainty::new(tasks.len(), head_rate, device)),
            Weighting::Dwa { temperature } => Box::new(Dwa::new(tasks.len(), *temperature)),
            Weighting::Rlw => Box::new(Rlw::new(tasks.len(), seed)),
            Weighting::Famo { lr, gamma } => Box::new(Famo::new(tasks.len(), *lr, *gamma)),
        }
    }
}

/// Reads the JSON state file `name` in `dir`.
fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<T, TrainError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Data {
        path: path.clone(),
        line: e.line(),
        message: e.to_string(),
    })
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), TrainError> {
    let path = dir.join(name);
    let text = serde_json::to_string(value).expect("weighting state serializes");
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}

/// Fixed weights (1 for tasks the config does not name).
struct StaticWeights(Vec<f64>);

impl<B: AutodiffBackend> LossWeighter<B> for StaticWeights {
    fn weigh(&mut self, task: usize, loss: Tensor<B, 1>, _: f64) -> (Tensor<B, 1>, f64) {
        (loss * self.0[task], self.0[task])
    }
    fn save(&self, _: &Path) -> Result<(), TrainError> {
        Ok(())
    }
    fn load(&mut self, _: &Path) -> Result<(), TrainError> {
        Ok(())
    }
}

/// Liu et al. 2019, Dynamic Weight Average: `w ∝ exp(r/T)`, `r = L(e−1)/L(e−2)` per epoch,
/// scaled so the weights sum to the number of tasks; 1 each until two epochs are known.
struct Dwa {
    temperature: f64,
    state: DwaState,
    weights: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DwaState {
    /// Mean loss of each task, per finished epoch.
    history: Vec<Vec<f64>>,
    /// Sum and count of each task's losses in the current epoch.
    epoch: Vec<(f64, usize)>,
}

impl Dwa {
    fn new(tasks: usize, temperature: f64) -> Self {
        Self {
            temperature,
            state: DwaState {
                history: Vec::new(),
                epoch: vec![(0.0, 0); tasks],
            },
            weights: vec![1.0; tasks],
        }
    }

    fn weights(&self) -> Vec<f64> {
        let (tasks, n) = (self.state.epoch.len(), self.state.history.len());
        if n < 2 {
            return vec![1.0; tasks];
        }
        let (prev, before) = (&self.state.history[n - 1], &self.state.history[n - 2]);
        let r: Vec<f64> = (0..tasks)
            .map(|t| (prev[t] / before[t].max(1e-12) / self.temperature).exp())
            .collect();
        let total: f64 = r.iter().sum();
        r.iter().map(|x| tasks as f64 * x / total).collect()
    }
}

impl<B: AutodiffBackend> LossWeighter<B> for Dwa {
    fn begin_step(&mut self, _: usize) {
        self.weights = self.weights();
    }
    fn weigh(&mut self, task: usize, loss: Tensor<B, 1>, value: f64) -> (Tensor<B, 1>, f64) {
        self.state.epoch[task].0 += value;
        self.state.epoch[task].1 += 1;
        (loss * self.weights[task], self.weights[task])
    }
    fn end_epoch(&mut self) {
        let means = self
            .state
            .epoch
            .iter_mut()
            .map(|(sum, n)| {
                let mean = if *n == 0 { 1.0 } else { *sum / *n as f64 };
                (*sum, *n) = (0.0, 0);
                mean
            })
            .collect();
        self.state.history.push(means);
    }
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        write_json(dir, "dwa.json", &self.state)
    }
    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.state = read_json(dir, "dwa.json")?;
        Ok(())
    }
}

/// Lin et al. 2021, Random Loss Weighting: each step, weights `softmax(z)` with `z ~ N(0, 1)`
/// per task (they sum to 1), drawn from `(seed, step)` so runs and resumes repeat.
struct Rlw {
    seed: u64,
    weights: Vec<f64>,
}

impl Rlw {
    fn new(tasks: usize, seed: u64) -> Self {
        Self {
            seed,
            weights: vec![1.0 / tasks as f64; tasks],
        }
    }
}

impl<B: AutodiffBackend> LossWeighter<B> for Rlw {
    fn begin_step(&mut self, step: usize) {
        let mut rng = Rng::for_step(self.seed, 11, step as u64);
        let z: Vec<f64> = self.weights.iter().map(|_| rng.normal()).collect();
        self.weights = softmax(&z);
    }
    fn weigh(&mut self, task: usize, loss: Tensor<B, 1>, _: f64) -> (Tensor<B, 1>, f64) {
        (loss * self.weights[task], self.weights[task])
    }
    fn save(&self, _: &Path) -> Result<(), TrainError> {
        Ok(())
    }
    fn load(&mut self, _: &Path) -> Result<(), TrainError> {
        Ok(())
    }
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|x| x / total).collect()
}

/// Liu et al. 2023, FAMO (Fast Adaptive Multitask Optimization): task logits `ξ`,
/// `z = softmax(ξ)`; the step minimizes `Σ zᵢ log Lᵢ / c`, i.e. weights `wᵢ = zᵢ / (c Lᵢ)` with
/// `c = Σ zⱼ / Lⱼ` (they sum to 1). After the update, `ξ` takes an Adam step (weight decay `γ`)
/// along `∂z/∂ξ · δ`, `δᵢ = log Lᵢ(before) − log Lᵢ(after)`: tasks that improved least gain
/// weight. Two differences from the reference code, both because st backpropagates each batch
/// as it goes: `c` uses each other task's most recent loss, and "after" is the next step's loss
/// on its own batch rather than a second forward pass on the same batch (no extra cost).
struct Famo {
    lr: f64,
    gamma: f64,
    state: FamoState,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FamoState {
    logits: Vec<f64>,
    /// Adam's first and second moments, and its step count.
    m: Vec<f64>,
    v: Vec<f64>,
    t: u64,
    /// Each task's most recent loss, and the one of the step before it was updated.
    last: Vec<Option<f64>>,
    previous: Vec<Option<f64>>,
    /// Tasks seen in the current step.
    seen: Vec<bool>,
}

impl Famo {
    fn new(tasks: usize, lr: f64, gamma: f64) -> Self {
        Self {
            lr,
            gamma,
            state: FamoState {
                logits: vec![0.0; tasks],
                m: vec![0.0; tasks],
                v: vec![0.0; tasks],
                t: 0,
                last: vec![None; tasks],
                previous: vec![None; tasks],
                seen: vec![false; tasks],
            },
        }
    }

    /// `wᵢ = zᵢ / (c Lᵢ)`, `c` over the tasks whose loss is known.
    fn weight(&self, task: usize, value: f64) -> f64 {
        let z = softmax(&self.state.logits);
        let loss = |j: usize| {
            if j == task {
                Some(value)
            } else {
                self.state.last[j]
            }
        };
        let c: f64 = (0..z.len())
            .filter_map(|j| loss(j).map(|l| z[j] / (l + 1e-8)))
            .sum();
        z[task] / (c * (value + 1e-8))
    }

    /// One Adam step on the logits along `∂z/∂ξ · δ`.
    fn update(&mut self, delta: &[f64]) {
        let s = &mut self.state;
        let z = softmax(&s.logits);
        let zd: f64 = z.iter().zip(delta).map(|(a, b)| a * b).sum();
        s.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        for i in 0..z.len() {
            // torch.optim.Adam's weight_decay: L2 added to the gradient.
            let g = z[i] * (delta[i] - zd) + self.gamma * s.logits[i];
            s.m[i] = b1 * s.m[i] + (1.0 - b1) * g;
            s.v[i] = b2 * s.v[i] + (1.0 - b2) * g * g;
            let m_hat = s.m[i] / (1.0 - b1.powi(s.t as i32));
            let v_hat = s.v[i] / (1.0 - b2.powi(s.t as i32));
            s.logits[i] -= self.lr * m_hat / (v_hat.sqrt() + 1e-8);
        }
    }
}

impl<B: AutodiffBackend> LossWeighter<B> for Famo {
    fn begin_step(&mut self, _: usize) {
        self.state.seen.iter_mut().for_each(|s| *s = false);
    }
    fn weigh(&mut self, task: usize, loss: Tensor<B, 1>, value: f64) -> (Tensor<B, 1>, f64) {
        let w = self.weight(task, value);
        if !self.state.seen[task] {
            self.state.previous[task] = self.state.last[task];
            self.state.seen[task] = true;
        }
        self.state.last[task] = Some(value);
        (loss * w, w)
    }
    fn end_step(&mut self, _: f64) {
        let s = &self.state;
        let delta: Vec<f64> = (0..s.logits.len())
            .map(|i| match (s.seen[i], s.previous[i], s.last[i]) {
                (true, Some(before), Some(after)) => (before + 1e-8).ln() - (after + 1e-8).ln(),
                _ => 0.0,
            })
            .collect();
        if delta.iter().any(|&d| d != 0.0) {
            self.update(&delta);
        }
    }
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        write_json(dir, "famo.json", &self.state)
    }
    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.state = read_json(dir, "famo.json")?;
        Ok(())
    }
}

/// Learned log-variances for uncertainty weighting, one per task.
#[derive(Module, Debug)]
pub struct UncertaintyWeights<B: Backend> {
    pub log_vars: Param<Tensor<B, 1>>,
}

/// Kendall et al. 2018: a learned log-variance `s` per task; loss `Σ exp(−s)·L + s`. The
/// log-variances learn at the head rate: at the encoder's rate (~1e-4) they move by ~0.01 in a
/// hundred steps.
struct Uncertainty<B: AutodiffBackend> {
    weights: UncertaintyWeights<B>,
    optimizer: OptimizerAdaptor<AdamW, UncertaintyWeights<B>, B>,
    /// Gradients summed over the step's backward passes.
    grads: Option<GradientsParams>,
    head_rate: f64,
    device: B::Device,
}

impl<B: AutodiffBackend> Uncertainty<B> {
    fn new(tasks: usize, head_rate: f64, device: &B::Device) -> Self {
        Self {
            weights: UncertaintyWeights {
                log_vars: Param::from_tensor(Tensor::zeros([tasks], device)),
            },
            optimizer: AdamWConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(0.0)
                .init(),
            grads: None,
            head_rate,
            device: device.clone(),
        }
    }
}

impl<B: AutodiffBackend> LossWeighter<B> for Uncertainty<B> {
    fn weigh(&mut self, task: usize, loss: Tensor<B, 1>, _: f64) -> (Tensor<B, 1>, f64) {
        let s = self.weights.log_vars.val().narrow(0, task, 1);
        let weight = (-s.clone()).exp();
        let value = weight.clone().into_scalar().elem::<f64>();
        (weight * loss + s, value)
    }
    fn collect_grads(&mut self, grads: &mut B::Gradients) {
        let g = GradientsParams::from_module(grads, &self.weights);
        let sum = self.grads.get_or_insert_with(GradientsParams::new);
        for p in &crate::groups::params(&self.weights) {
            crate::grads::add_grad::<B::InnerBackend>(sum, &g, p);
        }
    }
    fn end_step(&mut self, lr_factor: f64) {
        if let Some(grads) = self.grads.take() {
            let weights = self.weights.clone();
            self.weights = self
                .optimizer
                .step(self.head_rate * lr_factor, weights, grads);
        }
    }
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let rec = Recorder::new();
        let bad = recorder_err(dir);
        self.weights
            .clone()
            .save_file(dir.join("uncertainty"), &rec)
            .map_err(&bad)?;
        rec.record(self.optimizer.to_record(), dir.join("opt_uncertainty"))
            .map_err(&bad)
    }
    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        let rec = Recorder::new();
        let bad = recorder_err(dir);
        self.weights = self
            .weights
            .clone()
            .load_file(dir.join("uncertainty"), &rec, &self.device)
            .map_err(&bad)?;
        let record = rec
            .load(dir.join("opt_uncertainty"), &self.device)
            .map_err(&bad)?;
        self.optimizer =
            std::mem::replace(&mut self.optimizer, AdamWConfig::new().init()).load_record(record);
        Ok(())
    }
}

impl<B: AutodiffBackend> UncertaintyWeights<B> {
    /// The effective weights `exp(−s)`.
    pub fn weights(&self) -> Vec<f64> {
        self.valid()
            .log_vars
            .val()
            .neg()
            .exp()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_autodiff::Autodiff;
    use burn_flex::Flex;

    type B = Autodiff<Flex>;

    fn weigh_all(w: &mut dyn LossWeighter<B>, values: &[f64]) -> Vec<f64> {
        let device = Default::default();
        values
            .iter()
            .enumerate()
            .map(|(t, &v)| {
                w.weigh(t, Tensor::<B, 1>::from_floats([v as f32], &device), v)
                    .1
            })
            .collect()
    }

    #[test]
    fn dwa_upweights_the_task_that_improves_least() {
        let mut dwa = Dwa::new(2, 2.0);
        for losses in [[1.0, 1.0], [0.5, 0.9]] {
            LossWeighter::<B>::begin_step(&mut dwa, 0);
            assert_eq!(weigh_all(&mut dwa, &losses), vec![1.0, 1.0]);
            LossWeighter::<B>::end_epoch(&mut dwa);
        }
        LossWeighter::<B>::begin_step(&mut dwa, 0);
        let w = weigh_all(&mut dwa, &[0.4, 0.8]);
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-12);
        assert!(w[1] > w[0], "{w:?}");
    }

    #[test]
    fn rlw_draws_new_weights_each_step_that_sum_to_one() {
        let mut rlw = Rlw::new(3, 42);
        let mut draws = Vec::new();
        for step in 0..2 {
            LossWeighter::<B>::begin_step(&mut rlw, step);
            let w = weigh_all(&mut rlw, &[1.0, 1.0, 1.0]);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
            draws.push(w);
        }
        assert_ne!(draws[0], draws[1]);
        let mut again = Rlw::new(3, 42);
        LossWeighter::<B>::begin_step(&mut again, 1);
        assert_eq!(weigh_all(&mut again, &[1.0; 3]), draws[1]);
    }

    #[test]
    fn famo_weights_sum_to_one_and_shift_to_the_task_that_stalls() {
        let mut famo = Famo::new(2, 0.025, 0.0);
        // Task 0's loss halves every step, task 1's stays: task 1 must gain weight.
        let mut last = Vec::new();
        for step in 0..20 {
            LossWeighter::<B>::begin_step(&mut famo, step);
            let l0 = 0.5f64.powi(step as i32);
            last = weigh_all(&mut famo, &[l0, 1.0]);
            LossWeighter::<B>::end_step(&mut famo, 1.0);
        }
        let z = softmax(&famo.state.logits);
        assert!(z[1] > z[0] + 0.05, "{z:?}");
        assert!((last.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{last:?}");
    }

    #[test]
    fn uncertainty_weights_start_at_one_and_learn() {
        let device = Default::default();
        let mut u = Uncertainty::<B>::new(2, 0.1, &device);
        let loss = Tensor::<B, 1>::from_floats([3.0], &device);
        let (total, w) = u.weigh(0, loss, 3.0);
        assert_eq!(w, 1.0);
        let mut grads = total.backward();
        u.collect_grads(&mut grads);
        u.end_step(1.0);
        // d/ds (e^-s·3 + s) = 1 − 3 < 0: s grows, the weight falls.
        assert!(u.weights.weights()[0] < 1.0);
        assert_eq!(u.weights.weights()[1], 1.0);
    }
}
