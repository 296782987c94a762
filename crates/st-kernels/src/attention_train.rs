//! Training's self-attention: the forward keeps each head's probabilities (and takes a dropout
//! mask for them), the backward turns the context's gradient into those of q, k and v. Like
//! [`attention`](crate::attention), both read and write token-major `[tokens, hidden]` rows, so
//! no head split/merge copies exist; the per-head products run on the `gemm` crate with
//! strides (one thread each: the rayon tasks are the sequences).

use rayon::prelude::*;

use crate::Level;
use crate::attention::{AttentionShape, Qkv};
use crate::math;
use crate::multiversion::multiversion;

/// `dst = alpha·dst + beta · a·b` for `a` `[m, k]` and `b` `[k, n]`, each given as
/// `(pointer, column stride, row stride)`; `dst` `[m, n]` likewise (read only when `alpha` is
/// not 0).
///
/// # Safety
/// Every pointer must be valid for the elements its strides reach, and `dst` must not overlap
/// `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, isize, isize),
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
    alpha: f32,
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.1,
            dst.2,
            alpha != 0.0,
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Checks what the forward and the backward share: separate `[tokens, hidden]` projections,
/// and probabilities (and mask) `[batch, heads, seq, seq]`.
fn check(qkv: &Qkv<'_>, shape: AttentionShape, probs: usize, mask: Option<&[f32]>) {
    let AttentionShape {
        batch,
        seq,
        num_heads,
        head_dim,
    } = shape;
    let tokens = batch * seq;
    let hidden = num_heads * head_dim;
    assert_eq!(
        qkv.row_stride, hidden,
        "attention_train: q, k, v rows must be [hidden]"
    );
    for (name, t) in [("q", qkv.q), ("k", qkv.k), ("v", qkv.v)] {
        assert_eq!(
            t.len(),
            tokens * hidden,
            "attention_train: {name} must be [tokens, hidden]"
        );
    }
    let scores = batch * num_heads * seq * seq;
    assert_eq!(
        probs, scores,
        "attention_train: probabilities must be [batch, heads, seq, seq]"
    );
    assert!(
        mask.is_none_or(|m| m.len() == scores),
        "attention_train: the dropout mask must be [batch, heads, seq, seq]"
    );
}

/// Self-attention for training: `out = (softmax(q·kᵀ/√d + key_bias) ⊙ mask)·v` per sequence and
/// head, keeping the softmax probabilities (before the mask) in `probs`
/// (`[batch, heads, seq, seq]`) for [`attention_backward`]. `qkv`: separate `[tokens, hidden]`
/// projections (`row_stride` = hidden); `key_bias` `[batch, seq]` (0, or −∞ on padding); `mask`:
/// a dropout mask shaped like `probs` (0 or `1/keep`), `None` for no dropout. A query whose keys
/// are all masked gets zeros. At [`Level::active`].
pub fn attention_train(
    qkv: Qkv<'_>,
    key_bias: &[f32],
    mask: Option<&[f32]>,
    shape: AttentionShape,
    out: &mut [f32],
    probs: &mut [f32],
) {
    attention_train_at(Level::active(), qkv, key_bias, mask, shape, out, probs)
}

/// [`attention_train`] at a given level (tests force each one).
pub fn attention_train_at(
    level: Level,
    qkv: Qkv<'_>,
    key_bias: &[f32],
    mask: Option<&[f32]>,
    shape: AttentionShape,
    out: &mut [f32],
    probs: &mut [f32],
) {
    check(&qkv, shape, probs.len(), mask);
    let AttentionShape {
        seq,
        num_heads,
        head_dim: d,
        ..
    } = shape;
    let hidden = num_heads * d;
    assert_eq!(
        key_bias.len(),
        out.len() / hidden.max(1),
        "attention_train: the key bias must be [batch, seq]"
    );
    assert_eq!(
        out.len(),
        qkv.q.len(),
        "attention_train: out must be [tokens, hidden]"
    );
    if out.is_empty() {
        return;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let per_head = seq * seq;
    out.par_chunks_mut(seq * hidden)
        .zip(probs.par_chunks_mut(num_heads * per_head))
        .enumerate()
        .for_each(|(b, (out, probs))| {
            let mut dropped = vec![0.0f32; per_head];
            // Head `h`'s [seq, d] block of this sequence: row stride `hidden`, column stride 1.
            let block = |t: &[f32], h: usize| t[b * seq * hidden + h * d..].as_ptr();
            let rs = hidden as isize;
            for (h, p) in probs.chunks_exact_mut(per_head).enumerate() {
                let (q, k, v) = (block(qkv.q, h), block(qkv.k, h), block(qkv.v, h));
                // SAFETY: q, k, v hold this sequence's `seq` rows of `hidden` (checked), of which
                // the head reads `d` columns from `h·d`; `p` is [seq, seq]; `out` is this
                // sequence's [seq, hidden], written at the head's columns; nothing overlaps.
                unsafe {
                    // scores = q · kᵀ · scale: kᵀ[c, j] = k[j, c].
                    product(
                        [seq, seq, d],
                        (p.as_mut_ptr(), 1, seq as isize),
                        (q, 1, rs),
                        (k, rs, 1),
                        0.0,
                        scale,
                    );
                }
                softmax_rows(level, p, &key_bias[b * seq..(b + 1) * seq]);
                let weights = match mask {
                    Some(mask) => {
                        let m = &mask[(b * num_heads + h) * per_head..][..per_head];
                        dropped
                            .iter_mut()
                            .zip(p.iter().zip(m))
                            .for_each(|(o, (&p, &m))| *o = p * m);
                        dropped.as_ptr()
                    }
                    None => p.as_ptr(),
                };
                // SAFETY: as above; `weights` is [seq, seq].
                unsafe {
                    product(
                        [seq, d, seq],
                        (out[h * d..].as_mut_ptr(), 1, rs),
                        (weights, 1, seq as isize),
                        (v, 1, rs),
                        0.0,
                        1.0,
                    );
                }
            }
        });
}

/// The gradients of [`attention_train`]'s `q`, `k` and `v` from that of its output (`d_out`,
/// `[tokens, hidden]`), written into `d_qkv` (three `[tokens, hidden]` buffers). `probs` and
/// `mask` are the forward's. With `P` the probabilities, `W = P ⊙ mask` and `S` the scaled
/// scores: `dV = Wᵀ·dO`, `dW = dO·Vᵀ`, `dP = dW ⊙ mask`,
/// `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS·K/√d`, `dK = dSᵀ·Q/√d`. At [`Level::active`].
pub fn attention_backward(
    qkv: Qkv<'_>,
    probs: &[f32],
    mask: Option<&[f32]>,
    shape: AttentionShape,
    d_out: &[f32],
    d_qkv: [&mut [f32]; 3],
) {
    attention_backward_at(Level::active(), qkv, probs, mask, shape, d_out, d_qkv)
}

/// [`attention_backward`] at a given level (tests force each one).
pub fn attention_backward_at(
    level: Level,
    qkv: Qkv<'_>,
    probs: &[f32],
    mask: Option<&[f32]>,
    shape: AttentionShape,
    d_out: &[f32],
    d_qkv: [&mut [f32]; 3],
) {
    let tokens = shape.batch * shape.seq;
    check(&qkv, shape, probs.len(), mask);
    let AttentionShape {
        seq,
        num_heads,
        head_dim: d,
        ..
    } = shape;
    let hidden = num_heads * d;
    assert_eq!(
        d_out.len(),
        tokens * hidden,
        "attention_backward: d_out must be [tokens, hidden]"
    );
    let [dq, dk, dv] = d_qkv;
    for g in [&dq, &dk, &dv] {
        assert_eq!(
            g.len(),
            tokens * hidden,
            "attention_backward: gradients must be [tokens, hidden]"
        );
    }
    if tokens == 0 || hidden == 0 {
        return;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let per_head = seq * seq;
    let chunk = seq * hidden;
    dq.par_chunks_mut(chunk)
        .zip(dk.par_chunks_mut(chunk))
        .zip(dv.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let mut weights = vec![0.0f32; per_head];
            let mut d_scores = vec![0.0f32; per_head];
            let block = |t: &[f32], h: usize| t[b * seq * hidden + h * d..].as_ptr();
            let rs = hidden as isize;
            for h in 0..num_heads {
                let (q, k, v) = (block(qkv.q, h), block(qkv.k, h), block(qkv.v, h));
                let d_o = block(d_out, h);
                let first = (b * num_heads + h) * per_head;
                let p = &probs[first..][..per_head];
                let m = mask.map(|m| &m[first..][..per_head]);
                match m {
                    Some(m) => weights
                        .iter_mut()
                        .zip(p.iter().zip(m))
                        .for_each(|(w, (&p, &m))| *w = p * m),
                    None => weights.copy_from_slice(p),
                }
                // SAFETY: as in `attention_train_at`: every block is this sequence's [seq, d]
                // at the head's columns (row stride hidden), `weights` and `d_scores` are
                // [seq, seq], and the gradient buffers are this sequence's [seq, hidden],
                // written at the head's columns only; nothing written overlaps what is read.
                unsafe {
                    // dV = Wᵀ · dO: Wᵀ[j, i] = W[i, j].
                    product(
                        [seq, d, seq],
                        (dv[h * d..].as_mut_ptr(), 1, rs),
                        (weights.as_ptr(), seq as isize, 1),
                        (d_o, 1, rs),
                        0.0,
                        1.0,
                    );
                    // dW = dO · Vᵀ.
                    product(
                        [seq, seq, d],
                        (d_scores.as_mut_ptr(), 1, seq as isize),
                        (d_o, 1, rs),
                        (v, rs, 1),
                        0.0,
                        1.0,
                    );
                }
                softmax_backward_rows(level, &mut d_scores, p, m, seq, scale);
                // SAFETY: as above.
                unsafe {
                    // dQ = dS · K (scale applied in dS).
                    product(
                        [seq, d, seq],
                        (dq[h * d..].as_mut_ptr(), 1, rs),
                        (d_scores.as_ptr(), 1, seq as isize),
                        (k, 1, rs),
                        0.0,
                        1.0,
                    );
                    // dK = dSᵀ · Q.
                    product(
                        [seq, d, seq],
                        (dk[h * d..].as_mut_ptr(), 1, rs),
                        (d_scores.as_ptr(), seq as isize, 1),
                        (q, 1, rs),
                        0.0,
                        1.0,
                    );
                }
            }
        });
}

multiversion! {
    fn softmax_rows(scores: &mut [f32], key_bias: &[f32]) = softmax_rows_portable;
}

multiversion! {
    fn softmax_backward_rows(
        d_scores: &mut [f32],
        probs: &[f32],
        mask: Option<&[f32]>,
        seq: usize,
        scale: f32,
    ) = softmax_backward_rows_portable;
}

/// Each `[seq]` row: add the key bias, then softmax in place (zeros where every key is masked).
#[inline(always)]
fn softmax_rows_portable(scores: &mut [f32], key_bias: &[f32]) {
    for row in scores.chunks_exact_mut(key_bias.len()) {
        row.iter_mut().zip(key_bias).for_each(|(s, &b)| *s += b);
        let top = math::max(row);
        if top == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        row.iter_mut().for_each(|s| *s = math::exp(*s - top));
        let inv_total = 1.0 / math::sum(row);
        row.iter_mut().for_each(|s| *s *= inv_total);
    }
}

/// Each row, in place: `dW` → `dS = scale · P ⊙ (dP − Σ dP ⊙ P)` with `dP = dW ⊙ mask`.
#[inline(always)]
fn softmax_backward_rows_portable(
    d_scores: &mut [f32],
    probs: &[f32],
    mask: Option<&[f32]>,
    seq: usize,
    scale: f32,
) {
    if let Some(mask) = mask {
        d_scores.iter_mut().zip(mask).for_each(|(g, &m)| *g *= m);
    }
    for (g, p) in d_scores.chunks_exact_mut(seq).zip(probs.chunks_exact(seq)) {
        let mut acc = [0.0f32; math::LANES];
        let (g_chunks, p_chunks) = (g.chunks_exact(math::LANES), p.chunks_exact(math::LANES));
        let tail: f32 = g_chunks
            .remainder()
            .iter()
            .zip(p_chunks.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (gc, pc) in g_chunks.zip(p_chunks) {
            for l in 0..math::LANES {
                acc[l] = gc[l].mul_add(pc[l], acc[l]);
            }
        }
        let dot = acc.iter().sum::<f32>() + tail;
        g.iter_mut()
            .zip(p)
            .for_each(|(g, &p)| *g = scale * p * (*g - dot));
    }
}
