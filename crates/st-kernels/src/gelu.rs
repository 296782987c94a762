//! Bias + exact GELU, in place: the feed-forward expansion's epilogue.

use rayon::prelude::*;

use crate::Level;
use crate::math;
use crate::multiversion::{ELEMENTS_PER_TASK, multiversion, rows_per_task};

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

/// `out = gelu(x)` (exact erf form), keeping `x`: the forward of training, whose backward
/// ([`gelu_backward`]) needs the input. At [`Level::active`].
pub fn gelu(x: &[f32], out: &mut [f32]) {
    gelu_at(Level::active(), x, out)
}

/// [`gelu`] at a given level (tests force each one).
pub fn gelu_at(level: Level, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: output length");
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(x.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(out, x)| gelu_chunk(level, x, out));
}

/// `grad[i] *= gelu'(x[i])`: GELU's backward, in place on the gradient of its output. At
/// [`Level::active`].
pub fn gelu_backward(x: &[f32], grad: &mut [f32]) {
    gelu_backward_at(Level::active(), x, grad)
}

/// [`gelu_backward`] at a given level (tests force each one).
pub fn gelu_backward_at(level: Level, x: &[f32], grad: &mut [f32]) {
    assert_eq!(x.len(), grad.len(), "gelu_backward: gradient length");
    grad.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(x.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(grad, x)| gelu_backward_chunk(level, x, grad));
}

multiversion! {
    fn gelu_chunk(x: &[f32], out: &mut [f32]) = gelu_portable;
}

multiversion! {
    fn gelu_backward_chunk(x: &[f32], grad: &mut [f32]) = gelu_backward_portable;
}

#[inline(always)]
fn gelu_portable(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = math::gelu(v);
    }
}

#[inline(always)]
fn gelu_backward_portable(x: &[f32], grad: &mut [f32]) {
    for (g, &v) in grad.iter_mut().zip(x) {
        *g *= math::gelu_grad(v);
    }
}
