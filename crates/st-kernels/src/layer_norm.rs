//! Bias + residual + LayerNorm, in place: the epilogue of every post-LN sublayer.

use rayon::prelude::*;

use crate::Level;
use crate::math;
use crate::multiversion::{multiversion, rows_per_task};

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
