//! Task sampling across data sources, and the loss-weighting config (its methods are in
//! [`crate::weighting`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A small deterministic generator (SplitMix64): runs repeat exactly for a seed, and any step's
/// draws can be recomputed from `(seed, step)` without replaying the run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator for one step of a run.
    pub fn for_step(seed: u64, stream: u64, step: u64) -> Self {
        let mut r = Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.0 ^= step.wrapping_mul(0x94D0_49BB_1331_11EB);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln stays finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Which data source the next batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "strategy")]
pub enum Sampling {
    /// Sources in turn.
    RoundRobin,
    /// Probability proportional to the source's size.
    #[default]
    Proportional,
    /// Probability ∝ size^(1/T): T=1 is proportional, large T approaches uniform.
    Temperature { t: f64 },
    /// Every step takes one batch from every source and sums their weighted losses: the
    /// setting loss weighting is written for. With one source per step, AdamW's per-parameter
    /// normalization cancels most of a task's constant weight; summed in one step, the weights
    /// set how the tasks' gradients mix.
    AllTasks,
}

impl Sampling {
    /// Sampling probabilities for sources of these sizes.
    pub fn probabilities(&self, sizes: &[usize]) -> Vec<f64> {
        let raw: Vec<f64> = match self {
            Sampling::RoundRobin | Sampling::AllTasks => sizes.iter().map(|_| 1.0).collect(),
            Sampling::Proportional => sizes.iter().map(|&n| n as f64).collect(),
            Sampling::Temperature { t } => {
                sizes.iter().map(|&n| (n as f64).powf(1.0 / t)).collect()
            }
        };
        let total: f64 = raw.iter().sum();
        raw.iter().map(|x| x / total).collect()
    }

    /// The sources whose batches make up the step at `step`: every one for
    /// [`Sampling::AllTasks`], else one drawn by [`Sampling::pick`].
    pub fn picks(&self, sizes: &[usize], step: usize, rng: &mut Rng) -> Vec<usize> {
        match self {
            Sampling::AllTasks => (0..sizes.len()).collect(),
            _ => vec![self.pick(sizes, step, rng)],
        }
    }

    /// Batches one step takes (one per source for [`Sampling::AllTasks`]).
    pub fn batches_per_step(&self, sources: usize) -> usize {
        match self {
            Sampling::AllTasks => sources.max(1),
            _ => 1,
        }
    }

    /// The source of the batch at `step` (for [`Sampling::AllTasks`], the sources in turn).
    pub fn pick(&self, sizes: &[usize], step: usize, rng: &mut Rng) -> usize {
        if let Sampling::RoundRobin | Sampling::AllTasks = self {
            return step % sizes.len();
        }
        let p = self.probabilities(sizes);
        let mut u = rng.next_f64();
        for (i, pi) in p.iter().enumerate() {
            if u < *pi {
                return i;
            }
            u -= pi;
        }
        sizes.len() - 1
    }
}

/// How task losses combine into one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Weighting {
    /// Fixed weights per task (missing tasks weigh 1).
    Static {
        #[serde(default)]
        weights: BTreeMap<String, f64>,
    },
    /// Kendall et al. 2018: a learned log-variance `s` per task; loss `Σ exp(-s)·L + s`.
    Uncertainty,
    /// Liu et al. 2019, Dynamic Weight Average: `w ∝ exp(r/T)`, `r = L(e-1)/L(e-2)` per epoch,
    /// scaled so the weights sum to the number of tasks.
    Dwa {
        #[serde(default = "two")]
        temperature: f64,
    },
    /// Lin et al. 2021, Random Loss Weighting: fresh weights `softmax(N(0, 1))` every step.
    Rlw,
    /// Liu et al. 2023, FAMO: weights that balance the tasks' rates of improvement, learned
    /// by Adam on task logits (`lr`, weight decay `gamma`; the reference code's 0.025 and 0.01).
    Famo {
        #[serde(default = "famo_lr")]
        lr: f64,
        #[serde(default = "famo_gamma")]
        gamma: f64,
    },
}

fn two() -> f64 {
    2.0
}
fn famo_lr() -> f64 {
    0.025
}
fn famo_gamma() -> f64 {
    0.01
}

impl Default for Weighting {
    fn default() -> Self {
        Weighting::Static {
            weights: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_probabilities() {
        let sizes = [100, 900];
        assert_eq!(Sampling::RoundRobin.probabilities(&sizes), vec![0.5, 0.5]);
        assert_eq!(Sampling::Proportional.probabilities(&sizes), vec![0.1, 0.9]);
        let p = Sampling::Temperature { t: 2.0 }.probabilities(&sizes);
        assert!((p[0] - 10.0 / 40.0).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn sampling_draws_follow_probabilities() {
        let sizes = [100, 300];
        let mut rng = Rng::new(7);
        let n = 20_000;
        let ones = (0..n)
            .filter(|&s| Sampling::Proportional.pick(&sizes, s, &mut rng) == 1)
            .count();
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.02, "{ones}");
        let rr: Vec<usize> = (0..4)
            .map(|s| Sampling::RoundRobin.pick(&sizes, s, &mut rng))
            .collect();
        assert_eq!(rr, vec![0, 1, 0, 1]);
    }

    #[test]
    fn all_tasks_takes_every_source_each_step() {
        let sizes = [100, 300, 5];
        let mut rng = Rng::new(7);
        for step in 0..3 {
            assert_eq!(
                Sampling::AllTasks.picks(&sizes, step, &mut rng),
                vec![0, 1, 2]
            );
            assert_eq!(
                Sampling::Proportional.picks(&sizes, step, &mut rng).len(),
                1
            );
        }
        assert_eq!(Sampling::AllTasks.batches_per_step(3), 3);
        assert_eq!(Sampling::Temperature { t: 2.0 }.batches_per_step(3), 1);
    }

    #[test]
    fn rng_is_repeatable() {
        let a: Vec<u64> = (0..3).map(|s| Rng::for_step(1, 2, s).next_u64()).collect();
        let b: Vec<u64> = (0..3).map(|s| Rng::for_step(1, 2, s).next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
    }
}
