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
    pub(crate) fn hidden(&self) -> usize {
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

/// What is added to the scaled scores `q·kᵀ/√d` before the softmax.
#[derive(Debug, Clone, Copy)]
pub struct ScoreBias<'a> {
    /// `[batch, seq]`: added to every score of that key (0 for real tokens, −∞ for padding).
    pub keys: &'a [f32],
    /// `[num_heads, seq, seq]` (query-major), shared by every sequence: MPNet's
    /// relative-position bias. `None` for BERT.
    pub positions: Option<&'a [f32]>,
}

/// Self-attention for every sequence and head: `softmax(q·kᵀ/√d + bias)·v`. `out`:
/// `[batch·seq, hidden]`, row-major. A query whose keys are all masked gets zeros. At
/// [`Level::active`].
pub fn attention(qkv: Qkv<'_>, bias: ScoreBias<'_>, shape: AttentionShape, out: &mut [f32]) {
    attention_at(Level::active(), qkv, bias, shape, out)
}

/// [`attention`] at a given level (tests force each one).
pub fn attention_at(
    level: Level,
    qkv: Qkv<'_>,
    bias: ScoreBias<'_>,
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
        bias.keys.len(),
        tokens,
        "attention: the key bias must be [batch, seq]"
    );
    if let Some(positions) = bias.positions {
        assert_eq!(
            positions.len(),
            shape.num_heads * shape.seq * shape.seq,
            "attention: the position bias must be [num_heads, seq, seq]"
        );
    }
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
            let sequence_bias = ScoreBias {
                keys: &bias.keys[b * seq..(b + 1) * seq],
                positions: bias.positions,
            };
            let mut scratch = Scratch::new(shape);
            for h in 0..shape.num_heads {
                one_head(level, qkv, sequence_bias, shape, b, h, &mut scratch, out);
            }
        });
}

/// Query rows one pass scores and sums together: their accumulators (`ROWS` × one 16-lane
/// chunk) stay in registers, each key and value vector loaded once serves all of them, and the
/// `ROWS` independent FMA chains hide the FMA latency that bound a one-row loop (12 ymm
/// accumulators on AVX2, 6 zmm on AVX-512).
const ROWS: usize = 6;
/// Lanes of one accumulator chunk (one AVX-512 register of `f32`).
const CHUNK: usize = 16;

/// Per-task buffers, padded to whole [`CHUNK`]s so the kernel loads fixed-size arrays: one
/// head's keys transposed (`[head_dim, seq_pad]`, zero padded: lanes run over keys), its values
/// (`[seq, dim_pad]`), the key bias (`[seq_pad]`, −∞ on padding) and [`ROWS`] rows of scores
/// (`[ROWS, seq_pad]`). Queries and probabilities are read in place, one broadcast per element:
/// copying them into a row-interleaved layout compiled to scatter stores, which cost more than
/// the arithmetic they fed.
struct Scratch {
    seq_pad: usize,
    dim_pad: usize,
    keys_t: Vec<f32>,
    values: Vec<f32>,
    bias: Vec<f32>,
    scores: Vec<f32>,
}

impl Scratch {
    fn new(shape: AttentionShape) -> Self {
        let seq_pad = shape.seq.div_ceil(CHUNK) * CHUNK;
        let dim_pad = shape.head_dim.div_ceil(CHUNK) * CHUNK;
        Scratch {
            seq_pad,
            dim_pad,
            keys_t: vec![0.0; shape.head_dim * seq_pad],
            values: vec![0.0; shape.seq * dim_pad],
            bias: vec![f32::NEG_INFINITY; seq_pad],
            scores: vec![0.0; ROWS * seq_pad],
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn one_head(
        qkv: Qkv<'_>,
        bias: ScoreBias<'_>,
        shape: AttentionShape,
        b: usize,
        h: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) = one_head_portable;
}

/// Sequence `b`, head `h`: gathers the head's keys (transposed) and values once, then runs
/// [`ROWS`] query rows at a time through scores, softmax and the weighted sum of values.
/// `bias.keys` is this sequence's `[seq]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn one_head_portable(
    qkv: Qkv<'_>,
    bias: ScoreBias<'_>,
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
    let (seq_pad, dim_pad) = (scratch.seq_pad, scratch.dim_pad);
    let at = |i: usize| (b * seq + i) * qkv.row_stride + h * d;
    // A local slice: stored through `scratch` directly, each element reloaded the buffer's
    // pointer (the store might have changed it) and checked its bounds again.
    let keys_t = &mut scratch.keys_t[..d * seq_pad];
    for j in 0..seq {
        for (column, &x) in keys_t
            .chunks_exact_mut(seq_pad)
            .zip(&qkv.k[at(j)..at(j) + d])
        {
            column[j] = x;
        }
        scratch.values[j * dim_pad..j * dim_pad + d].copy_from_slice(&qkv.v[at(j)..at(j) + d]);
    }
    scratch.bias[..seq].copy_from_slice(bias.keys);
    let scale = 1.0 / (d as f32).sqrt();
    for first in (0..seq).step_by(ROWS) {
        // Rows past the sequence's end repeat its last row; their results are dropped.
        let queries: [&[f32]; ROWS] = std::array::from_fn(|r| {
            let i = (first + r).min(seq - 1);
            &qkv.q[at(i)..at(i) + d]
        });
        scores_block(&queries, scratch, scale);
        if let Some(positions) = bias.positions {
            add_position_bias(&mut scratch.scores, &positions[h * seq * seq..], seq, first);
        }
        let inv_totals = softmax_rows(&mut scratch.scores, seq_pad);
        let probs: [&[f32]; ROWS] =
            std::array::from_fn(|r| &scratch.scores[r * seq_pad..r * seq_pad + seq]);
        for d0 in (0..dim_pad).step_by(CHUNK) {
            let sums = weighted_values(&probs, &scratch.values, dim_pad, d0);
            let width = CHUNK.min(d - d0);
            for r in 0..ROWS.min(seq - first) {
                let i = first + r;
                let row = &mut out[i * hidden + h * d + d0..][..width];
                for (o, &s) in row.iter_mut().zip(&sums[r]) {
                    *o = s * inv_totals[r];
                }
            }
        }
    }
}

/// `scores[r, j] = scale · (q_r · k_j) + bias[j]` for the block's rows, one [`CHUNK`] of keys
/// at a time with every row's accumulator in registers.
#[inline(always)]
fn scores_block(queries: &[&[f32]; ROWS], scratch: &mut Scratch, scale: f32) {
    let seq_pad = scratch.seq_pad;
    let head_dim = scratch.keys_t.len() / seq_pad;
    assert!(queries.iter().all(|q| q.len() == head_dim));
    for j0 in (0..seq_pad).step_by(CHUNK) {
        let mut acc = [[0.0f32; CHUNK]; ROWS];
        for (c, keys) in scratch.keys_t.chunks_exact(seq_pad).enumerate() {
            let keys: &[f32; CHUNK] = keys[j0..j0 + CHUNK].try_into().expect("padded");
            for r in 0..ROWS {
                // SAFETY: c < head_dim, each row's length (asserted above). A checked index here
                // kept a compare per FMA, against a length spilled to the stack.
                let q = unsafe { *queries[r].get_unchecked(c) };
                for l in 0..CHUNK {
                    acc[r][l] = q.mul_add(keys[l], acc[r][l]);
                }
            }
        }
        let bias: &[f32; CHUNK] = scratch.bias[j0..j0 + CHUNK].try_into().expect("padded");
        for (r, acc) in acc.iter().enumerate() {
            let row = &mut scratch.scores[r * seq_pad + j0..][..CHUNK];
            for l in 0..CHUNK {
                row[l] = acc[l].mul_add(scale, bias[l]);
            }
        }
    }
}

/// Adds each block row's `[seq]` slice of the head's `[seq, seq]` position bias (rows past the
/// sequence's end repeat its last row, as their queries do).
#[inline(always)]
fn add_position_bias(scores: &mut [f32], head_bias: &[f32], seq: usize, first: usize) {
    let seq_pad = scores.len() / ROWS;
    for (r, row) in scores.chunks_exact_mut(seq_pad).enumerate() {
        let i = (first + r).min(seq - 1);
        for (s, &b) in row[..seq]
            .iter_mut()
            .zip(&head_bias[i * seq..(i + 1) * seq])
        {
            *s += b;
        }
    }
}

/// Softmax numerators in place (`e^(s − max)`, 0 on masked keys) for each of the [`ROWS`]
/// score rows; returns each row's `1 / Σ`, or 0 for a row whose keys are all masked.
#[inline(always)]
fn softmax_rows(scores: &mut [f32], seq_pad: usize) -> [f32; ROWS] {
    let mut inv_totals = [0.0f32; ROWS];
    for (row, inv_total) in scores.chunks_exact_mut(seq_pad).zip(inv_totals.iter_mut()) {
        let top = math::max(row);
        if top == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        row.iter_mut().for_each(|s| *s = math::exp(*s - top));
        *inv_total = 1.0 / math::sum(row);
    }
    inv_totals
}

/// `Σ_j p_r[j] · v[j, d0..d0 + CHUNK]` for the block's rows.
#[inline(always)]
fn weighted_values(
    probs: &[&[f32]; ROWS],
    values: &[f32],
    dim_pad: usize,
    d0: usize,
) -> [[f32; CHUNK]; ROWS] {
    let mut acc = [[0.0f32; CHUNK]; ROWS];
    let seq = values.len() / dim_pad;
    assert!(probs.iter().all(|p| p.len() == seq));
    for (j, v) in values.chunks_exact(dim_pad).enumerate() {
        let v: &[f32; CHUNK] = v[d0..d0 + CHUNK].try_into().expect("padded");
        for r in 0..ROWS {
            // SAFETY: j < seq, each row's length (asserted above); see `scores_block`.
            let p = unsafe { *probs[r].get_unchecked(j) };
            for l in 0..CHUNK {
                acc[r][l] = p.mul_add(v[l], acc[r][l]);
            }
        }
    }
    acc
}
