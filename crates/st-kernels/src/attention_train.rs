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

/// Self-attention for training: `out = (softmax(q·kᵀ/√d + key_bias) ⊙ mask)·v` per sequence and
/// head, keeping the softmax probabilities (before the mask) in `probs`
/// (`[batch, heads, seq, seq]`) for [`attention_backward`]. `qkv`: separate `[tokens, hidden]`
/// projections (`row_stride` = hidden); `key_bias` `[batch, seq]` (0, or −∞ on padding); `mask`:
/// a dropout mask shaped like `probs` (0 or `1/keep`), `None` for no dropout. A query whose keys
/// are all masked gets zeros (composed tensor ops give NaN there). At [`Level::active`].
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
    check_shapes(&qkv, shape, probs.len(), mask);
    let AttentionShape {
        batch,
        seq,
        num_heads,
        ..
    } = shape;
    let tokens = batch * seq;
    assert_eq!(
        key_bias.len(),
        tokens,
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
    let hidden = shape.hidden();
    let per_head = seq * seq;
    out.par_chunks_mut(seq * hidden)
        .zip(probs.par_chunks_mut(num_heads * per_head))
        .enumerate()
        .for_each(|(b, (out, probs))| {
            let mut dropped = mask.map(|_| vec![0.0f32; per_head]);
            for (h, p) in probs.chunks_exact_mut(per_head).enumerate() {
                let head = Head::new(shape, b, h);
                let head_mask = mask.map(|m| &m[(b * num_heads + h) * per_head..][..per_head]);
                let head_bias = &key_bias[b * seq..(b + 1) * seq];
                let weights = dropped.as_deref_mut();
                head_forward(level, head, qkv, head_bias, head_mask, p, weights, out);
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
    check_shapes(&qkv, shape, probs.len(), mask);
    let AttentionShape {
        batch,
        seq,
        num_heads,
        ..
    } = shape;
    let hidden = shape.hidden();
    let len = batch * seq * hidden;
    assert_eq!(
        d_out.len(),
        len,
        "attention_backward: d_out must be [tokens, hidden]"
    );
    let [dq, dk, dv] = d_qkv;
    for g in [&dq, &dk, &dv] {
        assert_eq!(
            g.len(),
            len,
            "attention_backward: gradients must be [tokens, hidden]"
        );
    }
    if len == 0 {
        return;
    }
    let per_head = seq * seq;
    let chunk = seq * hidden;
    dq.par_chunks_mut(chunk)
        .zip(dk.par_chunks_mut(chunk))
        .zip(dv.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let mut scratch = [vec![0.0f32; per_head], vec![0.0f32; per_head]];
            for h in 0..num_heads {
                let head = Head::new(shape, b, h);
                let first = (b * num_heads + h) * per_head;
                let saved = (
                    &probs[first..][..per_head],
                    mask.map(|m| &m[first..][..per_head]),
                );
                let grads = [&mut *dq, &mut *dk, &mut *dv];
                head_backward(level, head, qkv, saved, d_out, grads, &mut scratch);
            }
        });
}

/// Checks what the forward and the backward share: separate `[tokens, hidden]` projections,
/// and probabilities (and mask) `[batch, heads, seq, seq]`.
fn check_shapes(qkv: &Qkv<'_>, shape: AttentionShape, probs: usize, mask: Option<&[f32]>) {
    let AttentionShape {
        batch,
        seq,
        num_heads,
        ..
    } = shape;
    let hidden = shape.hidden();
    assert_eq!(
        qkv.row_stride, hidden,
        "attention_train: q, k, v rows must be [hidden]"
    );
    for (name, t) in [("q", qkv.q), ("k", qkv.k), ("v", qkv.v)] {
        assert_eq!(
            t.len(),
            batch * seq * hidden,
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

/// Sequence `b`, head `h`: where its `[seq, d]` blocks start in a token-major `[tokens, hidden]`
/// buffer (`at`) and in its sequence's `[seq, hidden]` chunk (`column`); rows are `hidden`
/// apart.
#[derive(Clone, Copy)]
struct Head {
    seq: usize,
    d: usize,
    hidden: usize,
    at: usize,
    column: usize,
}

impl Head {
    fn new(shape: AttentionShape, b: usize, h: usize) -> Self {
        let hidden = shape.hidden();
        let column = h * shape.head_dim;
        Head {
            seq: shape.seq,
            d: shape.head_dim,
            hidden,
            at: b * shape.seq * hidden + column,
            column,
        }
    }

    /// The head's block of a token-major buffer, as a `gemm` operand `(pointer, column stride,
    /// row stride)`; `transposed` reads it as `[d, seq]`.
    fn block(&self, t: &[f32], transposed: bool) -> Operand {
        self.operand(&t[self.at..], transposed)
    }

    /// The head's block of its sequence's `[seq, hidden]` chunk, to write.
    fn block_mut(&self, chunk: &mut [f32]) -> Destination {
        let to = &mut chunk[self.column..];
        self.check_reach(to.len());
        (to.as_mut_ptr(), 1, self.hidden as isize)
    }

    fn operand(&self, from: &[f32], transposed: bool) -> Operand {
        self.check_reach(from.len());
        let rs = self.hidden as isize;
        if transposed {
            (from.as_ptr(), rs, 1)
        } else {
            (from.as_ptr(), 1, rs)
        }
    }

    /// A block starting a slice of `len` elements must reach its last one (row seq − 1,
    /// column d − 1) inside it.
    fn check_reach(&self, len: usize) {
        assert!(
            len >= (self.seq - 1) * self.hidden + self.d,
            "attention block out of range"
        );
    }
}

/// A `gemm` operand: `(pointer, column stride, row stride)`.
type Operand = (*const f32, isize, isize);
/// A `gemm` destination: `(pointer, column stride, row stride)`.
type Destination = (*mut f32, isize, isize);

/// A `[seq, seq]` buffer as a `gemm` operand; `transposed` reads it as its transpose.
fn square(t: &[f32], seq: usize, transposed: bool) -> Operand {
    assert_eq!(t.len(), seq * seq, "attention: a [seq, seq] buffer");
    if transposed {
        (t.as_ptr(), seq as isize, 1)
    } else {
        (t.as_ptr(), 1, seq as isize)
    }
}

fn square_mut(t: &mut [f32], seq: usize) -> Destination {
    assert_eq!(t.len(), seq * seq, "attention: a [seq, seq] buffer");
    (t.as_mut_ptr(), 1, seq as isize)
}

/// One head's forward: `p = softmax(q·kᵀ·scale + bias)`, `out = (p ⊙ mask)·v` (the masked
/// weights go through `dropped` when there is a mask).
#[allow(clippy::too_many_arguments)]
fn head_forward(
    level: Level,
    head: Head,
    qkv: Qkv<'_>,
    key_bias: &[f32],
    mask: Option<&[f32]>,
    p: &mut [f32],
    dropped: Option<&mut [f32]>,
    out: &mut [f32],
) {
    let (seq, d) = (head.seq, head.d);
    let scale = 1.0 / (d as f32).sqrt();
    // SAFETY (both products): every operand comes from `Head::block` / `square`, which check
    // that its strided reach lies inside the slice it points into; `p`, `dropped` and `out` are
    // distinct buffers from q, k, v, and `out` is written only at this head's columns.
    unsafe {
        let scores = (
            square_mut(p, seq),
            head.block(qkv.q, false),
            head.block(qkv.k, true),
        );
        product([seq, seq, d], scores, scale);
    }
    bias_softmax_rows(level, p, key_bias);
    let weights = match mask {
        Some(mask) => {
            let dropped = dropped.expect("a dropout mask comes with a buffer for its weights");
            dropped
                .iter_mut()
                .zip(p.iter().zip(mask))
                .for_each(|(w, (&p, &m))| *w = p * m);
            &*dropped
        }
        None => &*p,
    };
    // SAFETY: as above.
    unsafe {
        let context = (
            head.block_mut(out),
            square(weights, seq, false),
            head.block(qkv.v, false),
        );
        product([seq, d, seq], context, 1.0);
    }
}

/// One head's backward into the gradient chunks of its sequence (`grads`: dq, dk, dv, each
/// `[seq, hidden]`). `saved`: the head's probabilities and mask; `scratch`: two `[seq, seq]`
/// buffers (the masked weights, then the scores' gradient).
fn head_backward(
    level: Level,
    head: Head,
    qkv: Qkv<'_>,
    (probs, mask): (&[f32], Option<&[f32]>),
    d_out: &[f32],
    [dq, dk, dv]: [&mut [f32]; 3],
    [weights, d_scores]: &mut [Vec<f32>; 2],
) {
    let (seq, d) = (head.seq, head.d);
    match mask {
        Some(m) => weights
            .iter_mut()
            .zip(probs.iter().zip(m))
            .for_each(|(w, (&p, &m))| *w = p * m),
        None => weights.copy_from_slice(probs),
    }
    let d_o = head.block(d_out, false);
    // SAFETY (all four products): as in `head_forward`; the gradient chunks are distinct from
    // every input, and each is written only at this head's columns.
    unsafe {
        // dV = Wᵀ · dO.
        product(
            [seq, d, seq],
            (head.block_mut(dv), square(weights, seq, true), d_o),
            1.0,
        );
        // dW = dO · Vᵀ.
        product(
            [seq, seq, d],
            (square_mut(d_scores, seq), d_o, head.block(qkv.v, true)),
            1.0,
        );
    }
    let scale = 1.0 / (d as f32).sqrt();
    softmax_backward_rows(level, d_scores, probs, mask, seq, scale);
    // SAFETY: as above.
    unsafe {
        // dQ = dS · K and dK = dSᵀ · Q (the scale is in dS).
        product(
            [seq, d, seq],
            (
                head.block_mut(dq),
                square(d_scores, seq, false),
                head.block(qkv.k, false),
            ),
            1.0,
        );
        product(
            [seq, d, seq],
            (
                head.block_mut(dk),
                square(d_scores, seq, true),
                head.block(qkv.q, false),
            ),
            1.0,
        );
    }
}

/// `dst = scale · a·b` for `a` `[m, k]` and `b` `[k, n]`, each operand a `gemm`
/// `(pointer, column stride, row stride)`; `dst` `[m, n]` is overwritten, never read.
///
/// # Safety
/// Every pointer must be valid for the elements its strides reach, and `dst` must not overlap
/// `a` or `b`.
unsafe fn product([m, n, k]: [usize; 3], (dst, a, b): (Destination, Operand, Operand), scale: f32) {
    // SAFETY: forwarded from the caller; with `read_dst` false, `dst` is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.1,
            dst.2,
            false,
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

multiversion! {
    fn bias_softmax_rows(scores: &mut [f32], key_bias: &[f32]) = bias_softmax_rows_portable;
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
fn bias_softmax_rows_portable(scores: &mut [f32], key_bias: &[f32]) {
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
        let dot = math::dot(g, p);
        g.iter_mut()
            .zip(p)
            .for_each(|(g, &p)| *g = scale * p * (*g - dot));
    }
}
