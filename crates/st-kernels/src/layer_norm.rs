//! Bias + residual + LayerNorm, in place: the epilogue of every post-LN sublayer.

use rayon::prelude::*;

use crate::Level;
use crate::math;
use crate::multiversion::{ELEMENTS_PER_TASK, multiversion, rows_per_task};

/// LayerNorm's affine parameters and epsilon, one value per column.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

/// For every row: `x = LayerNorm(x + bias + residual)` (biased variance, as PyTorch).
/// `residual` has `x`'s shape; `bias`, `gamma` and `beta` one value per column. At
/// [`Level::active`].
pub fn bias_residual_layer_norm(
    x: &mut [f32],
    bias: Option<&[f32]>,
    residual: &[f32],
    norm: LayerNormParams<'_>,
) {
    bias_residual_layer_norm_at(Level::active(), x, bias, residual, norm)
}

/// [`bias_residual_layer_norm`] at a given level (tests force each one).
pub fn bias_residual_layer_norm_at(
    level: Level,
    x: &mut [f32],
    bias: Option<&[f32]>,
    residual: &[f32],
    norm: LayerNormParams<'_>,
) {
    let width = norm.gamma.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "layer_norm: {} values are not rows of {width}",
        x.len()
    );
    assert_eq!(residual.len(), x.len(), "layer_norm: residual shape");
    assert_eq!(norm.beta.len(), width, "layer_norm: beta width");
    assert!(
        bias.is_none_or(|b| b.len() == width),
        "layer_norm: bias width"
    );
    let chunk = rows_per_task(x.len() / width, width) * width;
    x.par_chunks_mut(chunk)
        .zip(residual.par_chunks(chunk))
        .for_each(|(rows, res)| layer_norm_rows(level, rows, bias, res, norm));
}

multiversion! {
    fn layer_norm_rows(
        rows: &mut [f32],
        bias: Option<&[f32]>,
        residual: &[f32],
        norm: LayerNormParams<'_>,
    ) = layer_norm_portable;
}

#[inline(always)]
fn layer_norm_portable(
    rows: &mut [f32],
    bias: Option<&[f32]>,
    residual: &[f32],
    norm: LayerNormParams<'_>,
) {
    let width = norm.gamma.len();
    for (row, res) in rows
        .chunks_exact_mut(width)
        .zip(residual.chunks_exact(width))
    {
        match bias {
            Some(bias) => {
                for ((v, &r), &b) in row.iter_mut().zip(res).zip(bias) {
                    *v += b + r;
                }
            }
            None => row.iter_mut().zip(res).for_each(|(v, &r)| *v += r),
        }
        let mean = math::sum(row) / width as f32;
        let var = math::sum_sq_dev(row, mean) / width as f32;
        let inv_std = 1.0 / (var + norm.eps).sqrt();
        for ((v, &g), &b) in row.iter_mut().zip(norm.gamma).zip(norm.beta) {
            *v = ((*v - mean) * inv_std).mul_add(g, b);
        }
    }
}

/// Training's forward, `x = LayerNorm(x + residual)` in place, keeping what the backward
/// ([`layer_norm_backward`]) needs: every row's normalized values (`normalized`, `x`'s shape)
/// and `1/σ` (`inv_std`, one per row). At [`Level::active`].
pub fn residual_layer_norm_train(
    x: &mut [f32],
    residual: &[f32],
    norm: LayerNormParams<'_>,
    normalized: &mut [f32],
    inv_std: &mut [f32],
) {
    residual_layer_norm_train_at(Level::active(), x, residual, norm, normalized, inv_std)
}

/// [`residual_layer_norm_train`] at a given level (tests force each one).
pub fn residual_layer_norm_train_at(
    level: Level,
    x: &mut [f32],
    residual: &[f32],
    norm: LayerNormParams<'_>,
    normalized: &mut [f32],
    inv_std: &mut [f32],
) {
    let width = norm.gamma.len();
    let rows = check_rows("residual_layer_norm_train", x.len(), width);
    assert_eq!(residual.len(), x.len(), "layer_norm: residual shape");
    assert_eq!(normalized.len(), x.len(), "layer_norm: normalized shape");
    assert_eq!(inv_std.len(), rows, "layer_norm: one 1/σ per row");
    assert_eq!(norm.beta.len(), width, "layer_norm: beta width");
    let task_rows = rows_per_task(rows, width);
    let chunk = task_rows * width;
    x.par_chunks_mut(chunk)
        .zip(residual.par_chunks(chunk))
        .zip(normalized.par_chunks_mut(chunk))
        .zip(inv_std.par_chunks_mut(task_rows))
        .for_each(|(((rows, res), normalized), inv_std)| {
            layer_norm_train_rows(level, rows, res, norm, normalized, inv_std)
        });
}

/// LayerNorm's backward. `grad` holds dL/dy on entry and dL/dx (the input before the
/// residual add, which is also the residual's gradient) on return; `d_gamma` and `d_beta` are
/// overwritten with dL/dγ and dL/dβ, summed over rows. `normalized` and `inv_std` are what
/// [`residual_layer_norm_train`] kept. At [`Level::active`].
pub fn layer_norm_backward(
    grad: &mut [f32],
    normalized: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
) {
    layer_norm_backward_at(
        Level::active(),
        grad,
        normalized,
        inv_std,
        gamma,
        d_gamma,
        d_beta,
    )
}

/// [`layer_norm_backward`] at a given level (tests force each one).
pub fn layer_norm_backward_at(
    level: Level,
    grad: &mut [f32],
    normalized: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
) {
    let width = gamma.len();
    let rows = check_rows("layer_norm_backward", grad.len(), width);
    assert_eq!(normalized.len(), grad.len(), "layer_norm: normalized shape");
    assert_eq!(inv_std.len(), rows, "layer_norm: one 1/σ per row");
    assert!(
        d_gamma.len() == width && d_beta.len() == width,
        "layer_norm: parameter gradient widths"
    );
    // Each task sums its rows' parameter gradients and the partial sums are added in task
    // order. Tasks are a fixed number of rows (not split by thread count), so the sums are the
    // same on any machine.
    let task_rows = ELEMENTS_PER_TASK.div_ceil(width).max(1);
    let chunk = task_rows * width;
    let partials: Vec<Vec<f32>> = grad
        .par_chunks_mut(chunk)
        .zip(normalized.par_chunks(chunk))
        .zip(inv_std.par_chunks(task_rows))
        .map(|((grad, normalized), inv_std)| {
            let mut sums = vec![0.0f32; 2 * width];
            layer_norm_backward_rows(level, grad, normalized, inv_std, gamma, &mut sums);
            sums
        })
        .collect();
    d_gamma.fill(0.0);
    d_beta.fill(0.0);
    for sums in partials {
        let (g, b) = sums.split_at(width);
        d_gamma.iter_mut().zip(g).for_each(|(d, &s)| *d += s);
        d_beta.iter_mut().zip(b).for_each(|(d, &s)| *d += s);
    }
}

/// Number of rows of `width` in `len` values (panics if they do not divide).
fn check_rows(kernel: &str, len: usize, width: usize) -> usize {
    assert!(
        width > 0 && len.is_multiple_of(width),
        "{kernel}: {len} values are not rows of {width}"
    );
    len / width
}

multiversion! {
    fn layer_norm_train_rows(
        rows: &mut [f32],
        residual: &[f32],
        norm: LayerNormParams<'_>,
        normalized: &mut [f32],
        inv_std: &mut [f32],
    ) = layer_norm_train_portable;
}

multiversion! {
    fn layer_norm_backward_rows(
        grad: &mut [f32],
        normalized: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
        sums: &mut [f32],
    ) = layer_norm_backward_portable;
}

#[inline(always)]
fn layer_norm_train_portable(
    rows: &mut [f32],
    residual: &[f32],
    norm: LayerNormParams<'_>,
    normalized: &mut [f32],
    inv_std: &mut [f32],
) {
    let width = norm.gamma.len();
    for (((row, res), row_normalized), row_inv_std) in rows
        .chunks_exact_mut(width)
        .zip(residual.chunks_exact(width))
        .zip(normalized.chunks_exact_mut(width))
        .zip(inv_std.iter_mut())
    {
        row.iter_mut().zip(res).for_each(|(v, &r)| *v += r);
        let mean = math::sum(row) / width as f32;
        let var = math::sum_sq_dev(row, mean) / width as f32;
        let inv = 1.0 / (var + norm.eps).sqrt();
        *row_inv_std = inv;
        for (((v, n), &g), &b) in row
            .iter_mut()
            .zip(row_normalized.iter_mut())
            .zip(norm.gamma)
            .zip(norm.beta)
        {
            *n = (*v - mean) * inv;
            *v = n.mul_add(g, b);
        }
    }
}

/// Per row, with `g = dy·γ` and `x̂` the normalized values:
/// `dx = (g − mean(g) − x̂·mean(g·x̂)) / σ`; `sums` gathers `Σ dy·x̂` (first half, dγ) and
/// `Σ dy` (second half, dβ).
#[inline(always)]
fn layer_norm_backward_portable(
    grad: &mut [f32],
    normalized: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    sums: &mut [f32],
) {
    let width = gamma.len();
    let (d_gamma, d_beta) = sums.split_at_mut(width);
    let mut scaled = vec![0.0f32; width];
    let mut scaled_normalized = vec![0.0f32; width];
    for ((dy, x_hat), &inv) in grad
        .chunks_exact_mut(width)
        .zip(normalized.chunks_exact(width))
        .zip(inv_std)
    {
        for c in 0..width {
            d_gamma[c] = dy[c].mul_add(x_hat[c], d_gamma[c]);
            d_beta[c] += dy[c];
            scaled[c] = dy[c] * gamma[c];
            scaled_normalized[c] = scaled[c] * x_hat[c];
        }
        let mean_g = math::sum(&scaled) / width as f32;
        let mean_gx = math::sum(&scaled_normalized) / width as f32;
        for c in 0..width {
            dy[c] = (scaled[c] - mean_g - x_hat[c] * mean_gx) * inv;
        }
    }
}
