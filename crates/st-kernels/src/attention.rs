//! Multi-head self-attention on token-major memory: `softmax(q·kᵀ/√d + bias)·v` per head, read
//! straight from the projections' `[tokens, hidden]` rows and written straight into the
//! `[tokens, hidden]` context, so no head split/merge copies exist.

use rayon::prelude::*;

use crate::Level;
use crate::math;
use crate::multiversion::multiversion;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub num_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn hidden(&self) -> usize {
        self.num_heads * self.head_dim
    }
}

/// Where `q`, `k` and `v` live: token `t`'s head `h` of `q` is
/// `q[t·row_stride + h·head_dim ..][..head_dim]`, likewise `k` and `v`. `row_stride` is
/// `hidden` for separate projections and `3·hidden` for one fused QKV projection (pass
/// `&qkv[0..]`, `&qkv[hidden..]`, `&qkv[2·hidden..]`).
#[derive(Debug, Clone, Copy)]
pub struct Qkv<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub row_stride: usize,
}

/// Self-attention for every sequence and head. `key_bias`: `[batch, seq]`, added to every
/// score for that key (0 for real tokens, −∞ for padding). `out`: `[batch·seq, hidden]`,
/// row-major. A query whose keys are all masked gets zeros. At [`Level::active`].
pub fn attention(qkv: Qkv<'_>, key_bias: &[f32], shape: AttentionShape, out: &mut [f32]) {
    attention_at(Level::active(), qkv, key_bias, shape, out)
}

/// [`attention`] at a given level (tests force each one).
pub fn attention_at(
    level: Level,
    qkv: Qkv<'_>,
    key_bias: &[f32],
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape { batch, seq, .. } = shape;
    let hidden = shape.hidden();
    let tokens = batch * seq;
    assert!(
        qkv.row_stride >= hidden,
        "attention: row stride below hidden"
    );
    let needed = if tokens == 0 {
        0
    } else {
        (tokens - 1) * qkv.row_stride + hidden
    };
    for (name, t) in [("q", qkv.q), ("k", qkv.k), ("v", qkv.v)] {
        assert!(
            t.len() >= needed,
            "attention: {name} is too short for {shape:?}"
        );
    }
    assert_eq!(
        key_bias.len(),
        tokens,
        "attention: key_bias must be [batch, seq]"
    );
    assert_eq!(
        out.len(),
        tokens * hidden,
        "attention: out must be [batch·seq, hidden]"
    );
    if tokens == 0 || hidden == 0 {
        return;
    }
    out.par_chunks_mut(seq * hidden)
        .enumerate()
        .for_each(|(b, out)| {
            let bias = &key_bias[b * seq..(b + 1) * seq];
            let mut scratch = Scratch::new(shape);
            for h in 0..shape.num_heads {
                one_head(level, qkv, bias, shape, b, h, &mut scratch, out);
            }
        });
}

/// Per-task buffers: one head's keys transposed (`[head_dim, seq]`), its values (`[seq,
/// head_dim]`), one row of scores and one of output.
struct Scratch {
    keys_t: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    context: Vec<f32>,
}

impl Scratch {
    fn new(shape: AttentionShape) -> Self {
        let n = shape.seq * shape.head_dim;
        Scratch {
            keys_t: vec![0.0; n],
            values: vec![0.0; n],
            scores: vec![0.0; shape.seq],
            context: vec![0.0; shape.head_dim],
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn one_head(
        qkv: Qkv<'_>,
        bias: &[f32],
        shape: AttentionShape,
        b: usize,
        h: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) = one_head_portable;
}

/// Sequence `b`, head `h`: gathers the head's keys (transposed) and values once, then for each
/// query row scores every key at once (vectorized over keys), softmaxes, and sums the values
/// (vectorized over the head dimension).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn one_head_portable(
    qkv: Qkv<'_>,
    bias: &[f32],
    shape: AttentionShape,
    b: usize,
    h: usize,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let AttentionShape {
        seq, head_dim: d, ..
    } = shape;
    let hidden = shape.hidden();
    let at = |i: usize| (b * seq + i) * qkv.row_stride + h * d;
    for j in 0..seq {
        for (c, &x) in qkv.k[at(j)..at(j) + d].iter().enumerate() {
            scratch.keys_t[c * seq + j] = x;
        }
        scratch.values[j * d..(j + 1) * d].copy_from_slice(&qkv.v[at(j)..at(j) + d]);
    }
    let scale = 1.0 / (d as f32).sqrt();
    for i in 0..seq {
        let scores = &mut scratch.scores;
        scores.copy_from_slice(bias);
        for (c, &q) in qkv.q[at(i)..at(i) + d].iter().enumerate() {
            let q = q * scale;
            let keys = &scratch.keys_t[c * seq..(c + 1) * seq];
            for (s, &k) in scores.iter_mut().zip(keys) {
                *s = q.mul_add(k, *s);
            }
        }
        let top = math::max(scores);
        let row = &mut out[i * hidden + h * d..i * hidden + (h + 1) * d];
        if top == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        scores.iter_mut().for_each(|s| *s = math::exp(*s - top));
        let inv_total = 1.0 / math::sum(scores);
        let context = &mut scratch.context;
        context.fill(0.0);
        for (&p, value) in scores.iter().zip(scratch.values.chunks_exact(d)) {
            for (o, &x) in context.iter_mut().zip(value) {
                *o = p.mul_add(x, *o);
            }
        }
        for (o, &c) in row.iter_mut().zip(context.iter()) {
            *o = c * inv_total;
        }
    }
}
