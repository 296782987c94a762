//! The training kernels (forward keeping state, backward, dropout masks) at every level this
//! CPU supports, against f64 references; the LayerNorm reference is itself checked against
//! finite differences of the forward.

mod common;

use common::{assert_close, erf_f64, gelu_f64, levels, random};
use st_kernels::{AttentionShape, LayerNormParams, Qkv};

#[test]
fn gelu_and_its_backward_match_reference_at_every_level() {
    for n in [1, 15, 16, 17, 1000, 40_000] {
        let x = random(n, 3, 6.0);
        let grad = random(n, 4, 2.0);
        let want_y: Vec<f64> = x.iter().map(|&v| gelu_f64(v as f64)).collect();
        let want_dx: Vec<f64> = x
            .iter()
            .zip(&grad)
            .map(|(&v, &g)| {
                let v = v as f64;
                let cdf = 0.5 * (1.0 + erf_f64(v / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
                g as f64 * (cdf + v * pdf)
            })
            .collect();
        for level in levels() {
            let mut y = vec![0.0; n];
            st_kernels::gelu_at(level, &x, &mut y);
            assert_close(&y, &want_y, 2e-6, &format!("gelu {n} at {level}"));
            let mut dx = grad.clone();
            st_kernels::gelu_backward_at(level, &x, &mut dx);
            assert_close(
                &dx,
                &want_dx,
                2e-6,
                &format!("gelu backward {n} at {level}"),
            );
        }
    }
}

/// `LayerNorm(x + residual)` of one row in f64.
fn layer_norm_row(s: &[f64], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let w = s.len() as f64;
    let mean = s.iter().sum::<f64>() / w;
    let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / w;
    let inv = 1.0 / (var + eps).sqrt();
    s.iter()
        .zip(gamma.iter().zip(beta))
        .map(|(v, (&g, &b))| (v - mean) * inv * g as f64 + b as f64)
        .collect()
}

/// dL/ds, dL/dγ, dL/dβ of `L = Σ dy · LayerNorm(s)` in f64, by the closed form.
fn layer_norm_backward_reference(
    s: &[f64],
    width: usize,
    dy: &[f32],
    gamma: &[f32],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut d_gamma, mut d_beta) = (vec![], vec![0.0; width], vec![0.0; width]);
    for (row, dy) in s.chunks(width).zip(dy.chunks(width)) {
        let w = width as f64;
        let mean = row.iter().sum::<f64>() / w;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / w;
        let inv = 1.0 / (var + eps).sqrt();
        let x_hat: Vec<f64> = row.iter().map(|v| (v - mean) * inv).collect();
        let g: Vec<f64> = dy
            .iter()
            .zip(gamma)
            .map(|(&d, &g)| d as f64 * g as f64)
            .collect();
        let mean_g = g.iter().sum::<f64>() / w;
        let mean_gx = g.iter().zip(&x_hat).map(|(a, b)| a * b).sum::<f64>() / w;
        for c in 0..width {
            dx.push((g[c] - mean_g - x_hat[c] * mean_gx) * inv);
            d_gamma[c] += dy[c] as f64 * x_hat[c];
            d_beta[c] += dy[c] as f64;
        }
    }
    (dx, d_gamma, d_beta)
}

#[test]
fn layer_norm_backward_reference_matches_finite_differences() {
    let width = 5;
    let s: Vec<f64> = random(width, 9, 2.0).iter().map(|&v| v as f64).collect();
    let (gamma, beta, dy) = (
        random(width, 10, 1.5),
        random(width, 11, 1.0),
        random(width, 12, 1.0),
    );
    let loss = |s: &[f64]| -> f64 {
        layer_norm_row(s, &gamma, &beta, 1e-5)
            .iter()
            .zip(&dy)
            .map(|(y, &d)| y * d as f64)
            .sum()
    };
    let (dx, _, _) = layer_norm_backward_reference(&s, width, &dy, &gamma, 1e-5);
    for c in 0..width {
        let (mut up, mut down) = (s.clone(), s.clone());
        up[c] += 1e-6;
        down[c] -= 1e-6;
        let numeric = (loss(&up) - loss(&down)) / 2e-6;
        assert!(
            (numeric - dx[c]).abs() < 1e-6,
            "column {c}: {numeric} vs {}",
            dx[c]
        );
    }
}

#[test]
fn residual_layer_norm_train_and_backward_match_reference_at_every_level() {
    for (rows, width) in [(1, 1), (3, 15), (7, 384), (65, 37), (300, 384)] {
        let x = random(rows * width, 1, 3.0);
        let residual = random(rows * width, 2, 3.0);
        let (gamma, beta) = (random(width, 3, 1.5), random(width, 4, 0.5));
        let dy = random(rows * width, 5, 1.0);
        let eps = 1e-12;
        let s: Vec<f64> = x
            .iter()
            .zip(&residual)
            .map(|(&a, &b)| a as f64 + b as f64)
            .collect();
        let want_y: Vec<f64> = s
            .chunks(width)
            .flat_map(|row| layer_norm_row(row, &gamma, &beta, eps))
            .collect();
        let (want_dx, want_dg, want_db) =
            layer_norm_backward_reference(&s, width, &dy, &gamma, eps);
        for level in levels() {
            let what = format!("layer norm {rows}x{width} at {level}");
            let mut y = x.clone();
            let (mut normalized, mut inv_std) = (vec![0.0; rows * width], vec![0.0; rows]);
            let norm = LayerNormParams {
                gamma: &gamma,
                beta: &beta,
                eps: eps as f32,
            };
            st_kernels::residual_layer_norm_train_at(
                level,
                &mut y,
                &residual,
                norm,
                &mut normalized,
                &mut inv_std,
            );
            // A width-1 row normalizes to 0 whatever its value: only β survives.
            assert_close(&y, &want_y, 2e-5, &what);
            let mut dx = dy.clone();
            let (mut dg, mut db) = (vec![0.0; width], vec![0.0; width]);
            st_kernels::layer_norm_backward_at(
                level,
                &mut dx,
                &normalized,
                &inv_std,
                &gamma,
                &mut dg,
                &mut db,
            );
            let inv_max = inv_std.iter().fold(0.0f32, |m, &v| m.max(v)) as f64;
            assert_close(
                &dx,
                &want_dx,
                2e-5 * inv_max.max(1.0),
                &format!("{what}: dx"),
            );
            assert_close(&dg, &want_dg, 1e-4, &format!("{what}: dγ"));
            assert_close(&db, &want_db, 1e-4, &format!("{what}: dβ"));
        }
    }
}

#[test]
fn dropout_mask_keeps_its_share_scaled_and_is_the_same_at_every_level() {
    let n = 100_003;
    for keep in [0.9f32, 0.5, 0.1] {
        let mut first: Option<Vec<f32>> = None;
        for level in levels() {
            let mut mask = vec![-1.0; n];
            st_kernels::dropout_mask_at(level, 42, keep, &mut mask);
            let kept = mask.iter().filter(|&&v| v == 1.0 / keep).count();
            let dropped = mask.iter().filter(|&&v| v == 0.0).count();
            assert_eq!(kept + dropped, n, "only 0 and 1/keep at {level}");
            let share = kept as f64 / n as f64;
            // 5 standard deviations of a binomial share at n = 100k: < 0.0075.
            assert!(
                (share - keep as f64).abs() < 0.0075,
                "kept {share} for {keep} at {level}"
            );
            match &first {
                Some(f) => assert_eq!(f, &mask, "level {level} draws another mask"),
                None => first = Some(mask),
            }
        }
    }
    let draw = |seed| {
        let mut mask = vec![0.0; 4096];
        st_kernels::dropout_mask(seed, 0.5, &mut mask);
        mask
    };
    assert_eq!(draw(7), draw(7), "one seed, one mask");
    assert_ne!(draw(7), draw(8), "another seed, another mask");
    let mut none = vec![1.0; 100];
    st_kernels::dropout_mask(1, 0.0, &mut none);
    assert!(none.iter().all(|&v| v == 0.0), "keep 0 drops everything");
    let mut all = vec![0.0; 100];
    st_kernels::dropout_mask(1, 1.0, &mut all);
    assert!(
        all.iter().all(|&v| v == 1.0),
        "keep 1 keeps everything unscaled"
    );
}

/// `(softmax(q·kᵀ/√d + key_bias) ⊙ mask)·v` per sequence and head in f64 (token-major rows).
fn attention_reference(
    [q, k, v]: [&[f64]; 3],
    key_bias: &[f32],
    mask: Option<&[f32]>,
    [batch, seq, heads, d]: [usize; 4],
) -> Vec<f64> {
    let hidden = heads * d;
    let mut out = vec![0.0; batch * seq * hidden];
    for b in 0..batch {
        for h in 0..heads {
            let at = |t: usize, c: usize| (b * seq + t) * hidden + h * d + c;
            for i in 0..seq {
                let scores: Vec<f64> = (0..seq)
                    .map(|j| {
                        let dot: f64 = (0..d).map(|c| q[at(i, c)] * k[at(j, c)]).sum();
                        dot / (d as f64).sqrt() + key_bias[b * seq + j] as f64
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if top == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let total: f64 = e.iter().sum();
                for j in 0..seq {
                    let m = mask.map_or(1.0, |m| m[((b * heads + h) * seq + i) * seq + j] as f64);
                    let w = e[j] / total * m;
                    for c in 0..d {
                        out[at(i, c)] += w * v[at(j, c)];
                    }
                }
            }
        }
    }
    out
}

/// Separate `[tokens, heads·d]` projections and their shape, as the kernels take them.
fn attention_inputs<'a>(
    [q, k, v]: [&'a [f32]; 3],
    [batch, seq, num_heads, head_dim]: [usize; 4],
) -> (AttentionShape, Qkv<'a>) {
    let shape = AttentionShape {
        batch,
        seq,
        num_heads,
        head_dim,
    };
    (
        shape,
        Qkv {
            q,
            k,
            v,
            row_stride: num_heads * head_dim,
        },
    )
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Key bias for rows of `lengths` real tokens, padded to `seq`.
fn key_bias(lengths: &[usize], seq: usize) -> Vec<f32> {
    lengths
        .iter()
        .flat_map(|&len| (0..seq).map(move |j| if j < len { 0.0 } else { f32::NEG_INFINITY }))
        .collect()
}

#[test]
fn attention_train_matches_reference_at_every_level() {
    // [lengths per sequence], heads, head_dim; one sequence fully padded (its queries get 0).
    let cases: [(&[usize], usize, usize); 4] = [
        (&[1], 1, 3),
        (&[2, 1], 2, 5),
        (&[257], 2, 7),
        (&[9, 3, 0, 5], 3, 12),
    ];
    for (lengths, heads, d) in cases {
        let (batch, seq) = (lengths.len(), *lengths.iter().max().unwrap().max(&1));
        let hidden = heads * d;
        let n = batch * seq * hidden;
        let (q, k, v) = (random(n, 1, 2.0), random(n, 2, 2.0), random(n, 3, 2.0));
        let bias = key_bias(lengths, seq);
        let scores = batch * heads * seq * seq;
        let mut mask = vec![0.0; scores];
        st_kernels::dropout_mask(9, 0.8, &mut mask);
        for mask in [None, Some(mask.as_slice())] {
            let want = attention_reference(
                [&wide(&q), &wide(&k), &wide(&v)],
                &bias,
                mask,
                [batch, seq, heads, d],
            );
            for level in levels() {
                let (shape, qkv) = attention_inputs([&q, &k, &v], [batch, seq, heads, d]);
                let (mut out, mut probs) = (vec![f32::NAN; n], vec![0.0; scores]);
                st_kernels::attention_train_at(
                    level, qkv, &bias, mask, shape, &mut out, &mut probs,
                );
                let what = format!(
                    "attention {lengths:?} h{heads} d{d} mask {} at {level}",
                    mask.is_some()
                );
                assert_close(&out, &want, 2e-5, &what);
            }
        }
    }
}

#[test]
fn attention_backward_matches_finite_differences_at_every_level() {
    let (lengths, heads, d): (&[usize], usize, usize) = (&[4, 2, 3], 2, 3);
    let (batch, seq) = (lengths.len(), 4);
    let hidden = heads * d;
    let n = batch * seq * hidden;
    let dims = [batch, seq, heads, d];
    let (q, k, v) = (random(n, 4, 1.5), random(n, 5, 1.5), random(n, 6, 1.5));
    let d_out = random(n, 7, 1.0);
    let bias = key_bias(lengths, seq);
    let scores = batch * heads * seq * seq;
    let mut mask = vec![0.0; scores];
    st_kernels::dropout_mask(3, 0.7, &mut mask);
    for mask in [None, Some(mask.as_slice())] {
        // L = Σ d_out ⊙ attention(q, k, v); central differences of the f64 reference.
        let loss = |qkv: [&[f64]; 3]| -> f64 {
            let out = attention_reference(qkv, &bias, mask, dims);
            out.iter().zip(&d_out).map(|(o, &g)| o * g as f64).sum()
        };
        let inputs = [wide(&q), wide(&k), wide(&v)];
        let numeric: Vec<Vec<f64>> = (0..3)
            .map(|which| {
                (0..n)
                    .map(|i| {
                        let mut bumped = inputs.clone();
                        bumped[which][i] += 1e-6;
                        let up = loss([&bumped[0], &bumped[1], &bumped[2]]);
                        bumped[which][i] -= 2e-6;
                        let down = loss([&bumped[0], &bumped[1], &bumped[2]]);
                        (up - down) / 2e-6
                    })
                    .collect()
            })
            .collect();
        for level in levels() {
            let (shape, qkv) = attention_inputs([&q, &k, &v], [batch, seq, heads, d]);
            let (mut out, mut probs) = (vec![0.0; n], vec![0.0; scores]);
            st_kernels::attention_train_at(level, qkv, &bias, mask, shape, &mut out, &mut probs);
            let mut grads = [vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]];
            let [dq, dk, dv] = &mut grads;
            st_kernels::attention_backward_at(
                level,
                qkv,
                &probs,
                mask,
                shape,
                &d_out,
                [dq, dk, dv],
            );
            for (name, (got, want)) in ["dq", "dk", "dv"].iter().zip(grads.iter().zip(&numeric)) {
                let what = format!("attention {name}, mask {} at {level}", mask.is_some());
                assert_close(got, want, 1e-4, &what);
            }
        }
    }
}

#[test]
fn adamw_matches_the_reference_over_several_steps_at_every_level() {
    let settings = |time| st_kernels::AdamWStep::new(1e-3, 1e-8, 0.01, time);
    for n in [1, 17, 40_000] {
        let param0 = random(n, 21, 1.0);
        // Gradients of every size, zeros included (the moments' zero start must hold up).
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|s| {
                random(n, 22 + s, 0.1)
                    .iter()
                    .map(|g| g * (s as f32))
                    .collect()
            })
            .collect();
        let mut want: Vec<[f64; 3]> = param0.iter().map(|&p| [p as f64, 0.0, 0.0]).collect();
        for (t, grad) in grads.iter().enumerate() {
            let s = settings(t as i32 + 1);
            let (b1, b2) = (s.beta_1 as f64, s.beta_2 as f64);
            let (lr, t) = (s.lr as f64, t as i32 + 1);
            for ([p, m, v], &g) in want.iter_mut().zip(grad) {
                let g = g as f64;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let m_hat = *m / (1.0 - b1.powi(t));
                let v_hat = *v / (1.0 - b2.powi(t));
                *p = *p * (1.0 - lr * s.weight_decay as f64)
                    - lr * m_hat / (v_hat.sqrt() + s.epsilon as f64);
            }
        }
        for level in levels() {
            let (mut p, mut m, mut v) = (param0.clone(), vec![0.0; n], vec![0.0; n]);
            for (t, grad) in grads.iter().enumerate() {
                st_kernels::adamw_at(level, &mut p, grad, &mut m, &mut v, settings(t as i32 + 1));
            }
            let column = |k: usize| -> Vec<f64> { want.iter().map(|w| w[k]).collect() };
            let what = |name| format!("adamw {name}, {n} elements, at {level}");
            assert_close(&p, &column(0), 1e-6, &what("parameter"));
            assert_close(&m, &column(1), 1e-6, &what("first moment"));
            assert_close(&v, &column(2), 1e-6, &what("second moment"));
        }
    }
}
