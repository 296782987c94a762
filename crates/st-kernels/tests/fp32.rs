//! Each fp32 kernel at every level this CPU supports, against a plain f64 reference, on
//! awkward shapes: sequences of 1, 2 and 257, widths that are not a multiple of 16, and a batch
//! with one long row among short ones.

mod common;

use common::{assert_close, gelu_f64, levels, random};
use st_kernels::{AttentionShape, LayerNormParams, Qkv, ScoreBias};

#[test]
fn bias_gelu_matches_reference_at_every_level() {
    for (rows, width) in [(1, 1), (3, 15), (7, 384), (65, 37), (300, 1536)] {
        let x = random(rows * width, 1, 6.0);
        let bias = random(width, 2, 1.0);
        let want: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| gelu_f64(v as f64 + bias[i % width] as f64))
            .collect();
        for level in levels() {
            let mut got = x.clone();
            st_kernels::bias_gelu_at(level, &mut got, &bias);
            // 2e-6: for x < −5, `1 + erf` cancels, so a few ulp of erf show (libm's too).
            assert_close(
                &got,
                &want,
                2e-6,
                &format!("gelu {rows}x{width} at {level}"),
            );
        }
    }
}

#[test]
fn bias_residual_layer_norm_matches_reference_at_every_level() {
    for (rows, width) in [(1, 1), (2, 15), (5, 33), (257, 384)] {
        let x = random(rows * width, 3, 4.0);
        let residual = random(rows * width, 4, 4.0);
        let bias = random(width, 5, 1.0);
        let (gamma, beta) = (random(width, 6, 2.0), random(width, 7, 1.0));
        let eps = 1e-12;
        let mut want = Vec::new();
        for r in 0..rows {
            let row: Vec<f64> = (0..width)
                .map(|c| {
                    let i = r * width + c;
                    x[i] as f64 + bias[c] as f64 + residual[i] as f64
                })
                .collect();
            let mean = row.iter().sum::<f64>() / width as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            for (c, v) in row.iter().enumerate() {
                let norm = (v - mean) / (var + eps).sqrt();
                want.push(norm * gamma[c] as f64 + beta[c] as f64);
            }
        }
        let norm = LayerNormParams {
            gamma: &gamma,
            beta: &beta,
            eps: eps as f32,
        };
        for level in levels() {
            let mut got = x.clone();
            st_kernels::bias_residual_layer_norm_at(level, &mut got, Some(&bias), &residual, norm);
            // A constant row (width 1) normalizes to beta exactly; elsewhere f32 rounding.
            assert_close(
                &got,
                &want,
                2e-5,
                &format!("layer norm {rows}x{width} at {level}"),
            );
        }
    }
}

/// Plain attention in f64 over `[tokens, stride]` rows; `lens[b]` real keys per sequence;
/// `positions`: `[heads, seq, seq]` added to the scaled scores.
fn attention_reference(
    qkv: &[f32],
    stride: usize,
    lens: &[usize],
    s: AttentionShape,
    positions: Option<&[f32]>,
) -> Vec<f64> {
    let hidden = s.num_heads * s.head_dim;
    let at = |t: usize, part: usize, h: usize, c: usize| {
        qkv[t * stride + part * hidden + h * s.head_dim + c] as f64
    };
    let mut out = vec![0.0; s.batch * s.seq * hidden];
    for (b, &len) in lens.iter().enumerate().take(s.batch) {
        for h in 0..s.num_heads {
            for i in 0..s.seq {
                let qi = b * s.seq + i;
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        let kj = b * s.seq + j;
                        let position =
                            positions.map_or(0.0, |p| p[(h * s.seq + i) * s.seq + j] as f64);
                        (0..s.head_dim)
                            .map(|c| at(qi, 0, h, c) * at(kj, 1, h, c))
                            .sum::<f64>()
                            / (s.head_dim as f64).sqrt()
                            + position
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..s.head_dim {
                    let v: f64 = (0..len)
                        .map(|j| weights[j] * at(b * s.seq + j, 2, h, c))
                        .sum();
                    out[qi * hidden + h * s.head_dim + c] = v / total;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference_at_every_level() {
    // (batch, seq, heads, head_dim, lengths): seq 1, 2, 257; head widths not a multiple of 16;
    // one long row among short ones.
    let cases: Vec<(usize, usize, usize, usize, Vec<usize>)> = vec![
        (1, 1, 1, 4, vec![1]),
        (2, 2, 3, 5, vec![2, 1]),
        (1, 257, 2, 32, vec![257]),
        (6, 40, 12, 32, vec![40, 3, 5, 1, 7, 2]),
        (3, 17, 4, 12, vec![17, 17, 9]),
    ];
    for (batch, seq, num_heads, head_dim, lens) in cases {
        let shape = AttentionShape {
            batch,
            seq,
            num_heads,
            head_dim,
        };
        let hidden = num_heads * head_dim;
        let stride = 3 * hidden;
        let qkv = random(batch * seq * stride, 8, 3.0);
        let key_bias: Vec<f32> = (0..batch * seq)
            .map(|t| {
                if t % seq < lens[t / seq] {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        // Without and with a position bias (MPNet's), which must reach every head and row.
        let positions = random(num_heads * seq * seq, 12, 2.0);
        for positions in [None, Some(positions.as_slice())] {
            let want = attention_reference(&qkv, stride, &lens, shape, positions);
            for level in levels() {
                let mut got = vec![f32::NAN; batch * seq * hidden];
                let parts = Qkv {
                    q: &qkv,
                    k: &qkv[hidden..],
                    v: &qkv[2 * hidden..],
                    row_stride: stride,
                };
                let bias = ScoreBias {
                    keys: &key_bias,
                    positions,
                };
                st_kernels::attention_at(level, parts, bias, shape, &mut got);
                let what = format!(
                    "attention {shape:?}, position bias {}, at {level}",
                    positions.is_some()
                );
                assert_close(&got, &want, 2e-5, &what);
            }
        }
    }
}

#[test]
fn a_fully_masked_query_gets_zeros() {
    let shape = AttentionShape {
        batch: 1,
        seq: 2,
        num_heads: 1,
        head_dim: 3,
    };
    let q = random(6, 9, 1.0);
    let mut out = vec![f32::NAN; 6];
    let parts = Qkv {
        q: &q,
        k: &q,
        v: &q,
        row_stride: 3,
    };
    let bias = ScoreBias {
        keys: &[f32::NEG_INFINITY; 2],
        positions: Some(&[1.0; 4]),
    };
    st_kernels::attention(parts, bias, shape, &mut out);
    assert_eq!(out, vec![0.0; 6]);
}

#[test]
fn add_bias_matches_reference_at_every_level() {
    for (rows, width) in [(1, 1), (3, 17), (40, 1152)] {
        let x = random(rows * width, 10, 2.0);
        let bias = random(width, 11, 2.0);
        let want: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f64 + bias[i % width] as f64)
            .collect();
        for level in levels() {
            let mut got = x.clone();
            st_kernels::add_bias_at(level, &mut got, &bias);
            assert_close(
                &got,
                &want,
                1e-7,
                &format!("add_bias {rows}x{width} at {level}"),
            );
        }
    }
}

#[test]
fn linear_f32_matches_reference() {
    // One row, widths that are not a multiple of 16, and a product big enough to thread.
    for (m, d_in, d_out) in [(1, 1, 1), (3, 17, 5), (7, 384, 100), (257, 384, 1152)] {
        let x = random(m * d_in, 10, 1.0);
        let w = random(d_in * d_out, 11, 0.2);
        let want: Vec<f64> = (0..m * d_out)
            .map(|i| {
                let (t, c) = (i / d_out, i % d_out);
                (0..d_in)
                    .map(|j| x[t * d_in + j] as f64 * w[j * d_out + c] as f64)
                    .sum()
            })
            .collect();
        let got = st_kernels::linear_f32(&x, m, &w, d_in);
        assert_close(&got, &want, 1e-5, &format!("linear_f32 {m}x{d_in}x{d_out}"));
    }
    assert!(st_kernels::linear_f32(&[], 0, &[1.0; 6], 2).is_empty());
}
