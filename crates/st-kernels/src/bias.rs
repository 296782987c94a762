//! Bias add in place: the epilogue of a projection whose output feeds a fused kernel.

use rayon::prelude::*;

use crate::Level;
use crate::multiversion::{multiversion, rows_per_task};

/// `x[r, c] += bias[c]` for every row of `x` (rows of `bias.len()` columns). At
/// [`Level::active`].
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    add_bias_at(Level::active(), x, bias)
}

/// [`add_bias`] at a given level (tests force each one).
pub fn add_bias_at(level: Level, x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "add_bias: {} values are not rows of {width}",
        x.len()
    );
    let chunk = rows_per_task(x.len() / width, width) * width;
    x.par_chunks_mut(chunk)
        .for_each(|rows| add_bias_rows(level, rows, bias));
}

multiversion! {
    fn add_bias_rows(rows: &mut [f32], bias: &[f32]) = add_bias_portable;
}

#[inline(always)]
fn add_bias_portable(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
    }
}
