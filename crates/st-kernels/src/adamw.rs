//! AdamW's update of one parameter tensor, in place and in one pass over the parameter, its
//! gradient and both moments: the optimizer step that otherwise costs about fifteen
//! element-wise passes (and as many temporary tensors) per parameter tensor.

use rayon::prelude::*;

use crate::Level;
use crate::multiversion::{ELEMENTS_PER_TASK, multiversion};

/// One AdamW step's settings for a parameter tensor (decoupled weight decay; PyTorch's
/// `torch.optim.AdamW` formula).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this step.
    pub lr: f32,
    /// Decay of the first moment (0.9).
    pub beta_1: f32,
    /// Decay of the second moment (0.999).
    pub beta_2: f32,
    /// Added to the denominator's square root.
    pub epsilon: f32,
    /// Decoupled weight decay (0 for biases and LayerNorm).
    pub weight_decay: f32,
    /// How many steps this parameter has taken, this one included (from 1): the exponent of
    /// the bias corrections.
    pub time: i32,
}

impl AdamWStep {
    /// A step with PyTorch's default β = (0.9, 0.999).
    pub fn new(lr: f32, epsilon: f32, weight_decay: f32, time: i32) -> Self {
        Self {
            lr,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon,
            weight_decay,
            time,
        }
    }
}

/// The per-step constants of the update.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    /// `1 − lr·λ`: the decoupled weight decay.
    decay: f32,
    beta_1: f32,
    beta_2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f32,
    /// `1 / √(1 − β₂ᵗ)`.
    inv_bias_2: f32,
    epsilon: f32,
}

impl From<AdamWStep> for Coefficients {
    fn from(s: AdamWStep) -> Self {
        Self {
            decay: 1.0 - s.lr * s.weight_decay,
            beta_1: s.beta_1,
            beta_2: s.beta_2,
            step_size: s.lr / (1.0 - s.beta_1.powi(s.time)),
            inv_bias_2: 1.0 / (1.0 - s.beta_2.powi(s.time)).sqrt(),
            epsilon: s.epsilon,
        }
    }
}

/// For every element: `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`, then
/// `θ ← θ(1 − lr·λ) − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`. Moments start at zero. At
/// [`Level::active`].
pub fn adamw(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    step: AdamWStep,
) {
    adamw_at(Level::active(), param, grad, moment_1, moment_2, step)
}

/// [`adamw`] at a given level (tests force each one).
pub fn adamw_at(
    level: Level,
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    step: AdamWStep,
) {
    let n = param.len();
    assert!(
        grad.len() == n && moment_1.len() == n && moment_2.len() == n,
        "adamw: parameter, gradient and moments differ in length ({n}, {}, {}, {})",
        grad.len(),
        moment_1.len(),
        moment_2.len()
    );
    assert!(step.time >= 1, "adamw: steps count from 1");
    let c = Coefficients::from(step);
    param
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(grad.par_chunks(ELEMENTS_PER_TASK))
        .zip(moment_1.par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(moment_2.par_chunks_mut(ELEMENTS_PER_TASK))
        .for_each(|(((p, g), m), v)| adamw_chunk(level, p, g, m, v, c));
}

multiversion! {
    fn adamw_chunk(
        param: &mut [f32],
        grad: &[f32],
        moment_1: &mut [f32],
        moment_2: &mut [f32],
        c: Coefficients,
    ) = adamw_portable;
}

#[inline(always)]
fn adamw_portable(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    c: Coefficients,
) {
    let elements = param.iter_mut().zip(grad).zip(moment_1).zip(moment_2);
    for (((p, &g), m), v) in elements {
        *m = c.beta_1 * *m + (1.0 - c.beta_1) * g;
        *v = c.beta_2 * *v + (1.0 - c.beta_2) * (g * g);
        let denominator = v.sqrt() * c.inv_bias_2 + c.epsilon;
        *p = *p * c.decay - c.step_size * *m / denominator;
    }
}
