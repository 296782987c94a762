//! Bias + exact GELU, in place: the feed-forward expansion's epilogue.

use rayon::prelude::*;

use crate::Level;
use crate::math;
use crate::multiversion::{multiversion, rows_per_task};

/// `x[r, c] = gelu(x[r, c] + bias[c])` for every row of `x` (rows of `bias.len()` columns),
/// GELU in its exact erf form. At [`Level::active`].
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    bias_gelu_at(Level::active(), x, bias)
}

/// [`bias_gelu`] at a given level (tests force each one).
pub fn bias_gelu_at(level: Level, x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "bias_gelu: {} values are not rows of {width}",
        x.len()
    );
    let chunk = rows_per_task(x.len() / width, width) * width;
    x.par_chunks_mut(chunk)
        .for_each(|rows| bias_gelu_rows(level, rows, bias));
}

multiversion! {
    fn bias_gelu_rows(rows: &mut [f32], bias: &[f32]) = bias_gelu_portable;
}

#[inline(always)]
fn bias_gelu_portable(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = math::gelu(*v + b);
        }
    }
}
