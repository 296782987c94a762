use super::*;

/// SplitMix64: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn gaussian(&mut self) -> f32 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    fn gaussians(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| sigma * self.gaussian()).collect()
    }
}

/// `(m, d_in, d_out)`: awkward sizes (1, 2 and 257 rows, `d_in = 1`, columns not a multiple
/// of 16, row counts not a multiple of any micro-tile) and the model's own shapes, small `m`.
/// The AMX kernel takes `d_in` multiples of 64 in 16- and 32-row blocks and pairs of panels:
/// 37, 19, 64 and 100 rows with odd and even panel counts give it full blocks and tails.
const SHAPES: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (2, 3, 17),
    (1, 384, 384),
    (7, 1, 33),
    (257, 37, 100),
    (13, 64, 48),
    (5, 5, 129),
    (37, 384, 1536),
    (19, 1536, 384),
    (257, 72, 31),
    (64, 768, 200),
    (100, 128, 96),
];

/// Random activations with the traits of real ones: Gaussian rows of varied scale, one row of
/// zeros and one row with an outlier.
fn activations(rng: &mut Rng, m: usize, d_in: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(m * d_in);
    for i in 0..m {
        let sigma = 0.1 + 3.0 * rng.uniform() as f32;
        let mut row = rng.gaussians(d_in, sigma);
        match i % 11 {
            3 => row.fill(0.0),
            5 => row[i % d_in] = 40.0 * sigma,
            _ => {}
        }
        x.extend(row);
    }
    x
}

fn run_at(
    level: Level,
    x: &[f32],
    m: usize,
    w: &QuantizedMatrix,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * w.d_out()];
    linear_int8_at(level, x, m, w, bias, &mut out);
    out
}

/// The definition, written without the packing or any kernel: quantize `x` row by row with
/// the scalar rule, sum `q_x · q_w` in i64, dequantize as documented.
fn naive_int8(x: &[f32], m: usize, w: &QuantizedMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    let (d_in, d_out) = (w.d_in(), w.d_out());
    let mut out = vec![0.0; m * d_out];
    for i in 0..m {
        let row = &x[i * d_in..(i + 1) * d_in];
        let mut q = vec![0u8; d_in];
        let row_scale = quantize_row_scalar(ActivationCode::Signed, row, &mut q);
        for n in 0..d_out {
            let acc: i64 = (0..d_in)
                .map(|k| i64::from(q[k] as i8) * i64::from(w.quantized_at(k, n)))
                .sum();
            let b = bias.map_or(0.0, |b| b[n]);
            out[i * d_out + n] = dequantize(i32::try_from(acc).unwrap(), row_scale, w.scale(n), b);
        }
    }
    out
}

fn assert_bits_equal(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {j}: {g} != {w}");
    }
}

#[test]
fn scalar_kernel_is_the_definition() {
    let mut rng = Rng(1);
    for (m, d_in, d_out) in SHAPES {
        let w = QuantizedMatrix::quantize(&rng.gaussians(d_in * d_out, 0.05), d_in, d_out);
        let x = activations(&mut rng, m, d_in);
        let bias = rng.gaussians(d_out, 1.0);
        let got = run_at(Level::Scalar, &x, m, &w, Some(&bias));
        let want = naive_int8(&x, m, &w, Some(&bias));
        assert_bits_equal(&got, &want, &format!("scalar, shape {m}x{d_in}x{d_out}"));
    }
}

#[test]
fn every_supported_level_is_bit_identical_to_scalar() {
    let mut rng = Rng(2);
    let levels: Vec<Level> = Level::ALL.into_iter().filter(|l| l.supported()).collect();
    eprintln!("int8 levels tested: {levels:?}");
    for (case, (m, d_in, d_out)) in SHAPES.into_iter().enumerate() {
        let w = QuantizedMatrix::quantize(&rng.gaussians(d_in * d_out, 0.05), d_in, d_out);
        let x = activations(&mut rng, m, d_in);
        let bias = rng.gaussians(d_out, 1.0);
        let bias = (case % 2 == 0).then_some(bias.as_slice());
        let want = run_at(Level::Scalar, &x, m, &w, bias);
        for &level in &levels[1..] {
            let got = run_at(level, &x, m, &w, bias);
            assert_bits_equal(&got, &want, &format!("{level}, shape {m}x{d_in}x{d_out}"));
        }
    }
}

#[test]
fn simd_activation_quantizer_matches_scalar() {
    let mut rng = Rng(3);
    for len in [1, 15, 16, 17, 100, 384, 1536] {
        for code in [ActivationCode::Signed, ActivationCode::Offset128] {
            let mut row = rng.gaussians(len, 2.0);
            // Exact ties of the rounding, which must go to even in both.
            let inv = 127.0 / row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for v in row.iter_mut().step_by(7) {
                *v = (v.mul_add(inv, 0.0).trunc() + 0.5) / inv;
            }
            let (mut want, mut got) = (vec![0u8; len], vec![0u8; len]);
            let want_scale = quantize_row_scalar(code, &row, &mut want);
            for level in Level::ALL.into_iter().filter(|l| l.supported()) {
                let got_scale = quantize_row(level, code, &row, &mut got);
                assert_eq!(got, want, "{level}, length {len}");
                assert_eq!(got_scale.to_bits(), want_scale.to_bits());
            }
        }
    }
}

#[test]
fn weights_are_symmetric_per_column_within_half_a_step() {
    let (d_in, d_out) = (37, 21);
    let mut weight = Rng(4).gaussians(d_in * d_out, 0.05);
    weight[5 * d_out + 3] = 0.0; // a column stays nonzero elsewhere
    for k in 0..d_in {
        weight[k * d_out + 20] = 0.0; // an all-zero column
    }
    let w = QuantizedMatrix::quantize(&weight, d_in, d_out);
    for n in 0..d_out {
        let column: Vec<f32> = (0..d_in).map(|k| weight[k * d_out + n]).collect();
        let max = column.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(w.scale(n), max / 127.0);
        let peak = (0..d_in).map(|k| w.quantized_at(k, n).unsigned_abs()).max();
        assert_eq!(peak, Some(if max > 0.0 { 127 } else { 0 }));
        for (k, &v) in column.iter().enumerate() {
            let back = f32::from(w.quantized_at(k, n)) * w.scale(n);
            assert!((back - v).abs() <= 0.5001 * w.scale(n), "w[{k}, {n}]");
        }
    }
}

/// Cosine and relative L2 error of `got` against `want`, row by row.
fn row_errors(got: &[f32], want: &[f64], d_out: usize) -> Vec<(f64, f64)> {
    got.chunks(d_out)
        .zip(want.chunks(d_out))
        .map(|(g, w)| {
            let dot: f64 = g.iter().zip(w).map(|(&g, &w)| f64::from(g) * w).sum();
            let gg: f64 = g.iter().map(|&g| f64::from(g).powi(2)).sum();
            let ww: f64 = w.iter().map(|w| w * w).sum();
            let diff: f64 = g
                .iter()
                .zip(w)
                .map(|(&g, &w)| (f64::from(g) - w).powi(2))
                .sum();
            (dot / (gg * ww).sqrt(), (diff / ww).sqrt())
        })
        .collect()
}

/// The bound: with symmetric rounding to steps `s = max / 127`, each value errs by at most
/// `s / 2`, uniformly: an RMS error of `s / √12`. For Gaussian data of deviation σ the
/// maximum of 384–1,536 values is ~3–3.5σ, so `s / √12 ≈ 3.5σ / 127 / 3.46 ≈ 0.8% σ` for
/// activations and weights alike. The two errors are independent and add in quadrature to a
/// relative error of the product of ~1.1%, a cosine of `1 - 0.011² / 2 ≈ 0.99994`. Asserted
/// with margin: relative L2 error ≤ 2.5% and cosine ≥ 0.9995 on every row.
#[test]
fn int8_product_is_close_to_the_f32_product() {
    let mut rng = Rng(5);
    for (m, d_in, d_out) in [(64, 384, 1536), (64, 1536, 384), (33, 768, 768)] {
        let weight = rng.gaussians(d_in * d_out, 0.05);
        let w = QuantizedMatrix::quantize(&weight, d_in, d_out);
        let x = rng.gaussians(m * d_in, 1.0);
        let got = run_at(Level::active(), &x, m, &w, None);
        let want = exact_product(&x, &weight, m, d_in, d_out);
        for (i, (cosine, rel)) in row_errors(&got, &want, d_out).into_iter().enumerate() {
            assert!(
                cosine >= 0.9995,
                "{m}x{d_in}x{d_out} row {i}: cosine {cosine}"
            );
            assert!(
                rel <= 0.025,
                "{m}x{d_in}x{d_out} row {i}: relative error {rel}"
            );
        }
    }
}

#[test]
fn zero_rows_give_the_bias() {
    let w = QuantizedMatrix::quantize(&Rng(6).gaussians(20 * 40, 1.0), 20, 40);
    let bias: Vec<f32> = (0..40).map(|n| n as f32 - 7.5).collect();
    for level in Level::ALL.into_iter().filter(|l| l.supported()) {
        let out = run_at(level, &[0.0; 3 * 20], 3, &w, Some(&bias));
        for row in out.chunks(40) {
            assert_eq!(row, bias.as_slice(), "{level}");
        }
    }
}

#[test]
fn memory_is_about_a_quarter_of_f32() {
    let (d_in, d_out) = (384, 1536);
    let w = QuantizedMatrix::quantize(&vec![0.5; d_in * d_out], d_in, d_out);
    let f32_bytes = d_in * d_out * 4;
    assert!(w.memory_bytes() >= d_in * d_out);
    assert!(
        w.memory_bytes() * 100 <= f32_bytes * 27,
        "{}",
        w.memory_bytes()
    );
    assert_eq!((w.d_in(), w.d_out()), (d_in, d_out));
}

#[test]
#[should_panic(expected = "x has 10 values")]
fn wrong_input_length_panics() {
    let w = QuantizedMatrix::quantize(&[1.0; 12], 3, 4);
    linear_int8(&[0.0; 10], 3, &w, None, &mut [0.0; 12]);
}

#[test]
#[should_panic(expected = "out has 11 values")]
fn wrong_output_length_panics() {
    let w = QuantizedMatrix::quantize(&[1.0; 12], 3, 4);
    linear_int8(&[0.0; 9], 3, &w, None, &mut [0.0; 11]);
}

#[test]
#[should_panic(expected = "bias has 3 values")]
fn wrong_bias_length_panics() {
    let w = QuantizedMatrix::quantize(&[1.0; 12], 3, 4);
    linear_int8(&[0.0; 9], 3, &w, Some(&[0.0; 3]), &mut [0.0; 12]);
}

#[test]
#[should_panic(expected = "weight has 11 values")]
fn wrong_weight_length_panics() {
    QuantizedMatrix::quantize(&[1.0; 11], 3, 4);
}

/// Activations like a LayerNorm output's: Gaussian, with channels 3 and `d_in / 2` ~15× the
/// others in every row (the systematic outliers smoothing is for).
fn outlier_channel_activations(rng: &mut Rng, m: usize, d_in: usize) -> Vec<f32> {
    let mut x = rng.gaussians(m * d_in, 1.0);
    for row in x.chunks_mut(d_in) {
        row[3 % d_in] *= 15.0;
        row[d_in / 2] *= -15.0;
    }
    x
}

/// The exact product `x · W` in f64.
fn exact_product(x: &[f32], weight: &[f32], m: usize, d_in: usize, d_out: usize) -> Vec<f64> {
    let mut want = vec![0.0f64; m * d_out];
    for i in 0..m {
        for k in 0..d_in {
            let xv = f64::from(x[i * d_in + k]);
            for n in 0..d_out {
                want[i * d_out + n] += xv * f64::from(weight[k * d_out + n]);
            }
        }
    }
    want
}

/// Channel maxima of `x` over its rows (what calibration measures).
fn channel_max(x: &[f32], d_in: usize) -> Vec<f32> {
    let mut max = vec![0.0f32; d_in];
    for row in x.chunks(d_in) {
        for (m, v) in max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    max
}

/// A smoothed matrix is the plain one of `diag(s) · W` fed `x / s`: the same bits at every
/// level as quantizing the pre-divided activations against the pre-scaled weights.
#[test]
fn smoothing_is_a_rescaling_of_both_sides_at_every_level() {
    let mut rng = Rng(9);
    let levels: Vec<Level> = Level::ALL.into_iter().filter(|l| l.supported()).collect();
    for (m, d_in, d_out) in SHAPES {
        let weight = rng.gaussians(d_in * d_out, 0.05);
        let x = outlier_channel_activations(&mut rng, m, d_in);
        let s = smoothing_factors(&channel_max(&x, d_in), &weight, d_out, 0.5);
        let smoothed = QuantizedMatrix::quantize_smoothed(&weight, d_in, d_out, &s);
        let scaled: Vec<f32> = (0..d_in * d_out)
            .map(|j| weight[j] * s[j / d_out])
            .collect();
        let plain = QuantizedMatrix::quantize(&scaled, d_in, d_out);
        let divided: Vec<f32> = (0..m * d_in).map(|j| x[j] * (1.0 / s[j % d_in])).collect();
        let bias = rng.gaussians(d_out, 1.0);
        let want = naive_int8(&divided, m, &plain, Some(&bias));
        for &level in &levels {
            let got = run_at(level, &x, m, &smoothed, Some(&bias));
            assert_bits_equal(
                &got,
                &want,
                &format!("{level}, smoothed {m}x{d_in}x{d_out}"),
            );
        }
    }
}

/// On activations with outlier channels, smoothing at least halves the product's error
/// (per-token scales spend the int8 range on the outliers; smoothing moves them into the
/// weights' per-column scales).
#[test]
fn smoothing_tames_outlier_channels() {
    let mut rng = Rng(10);
    let (m, d_in, d_out) = (48, 384, 1152);
    let weight = rng.gaussians(d_in * d_out, 0.05);
    let x = outlier_channel_activations(&mut rng, m, d_in);
    let want = exact_product(&x, &weight, m, d_in, d_out);
    let worst = |w: &QuantizedMatrix| {
        let got = run_at(Level::active(), &x, m, w, None);
        row_errors(&got, &want, d_out)
            .into_iter()
            .map(|(_, rel)| rel)
            .fold(0.0f64, f64::max)
    };
    let plain = worst(&QuantizedMatrix::quantize(&weight, d_in, d_out));
    let s = smoothing_factors(&channel_max(&x, d_in), &weight, d_out, 0.5);
    let smoothed = worst(&QuantizedMatrix::quantize_smoothed(
        &weight, d_in, d_out, &s,
    ));
    assert!(
        smoothed <= plain / 2.0,
        "worst relative error: plain {plain:.4}, smoothed {smoothed:.4}"
    );
}

#[test]
fn smoothing_factors_follow_the_formula() {
    // Channel 0: activation max 4, weight max 0.25 → 4^0.5 / 0.25^0.5 = 4.
    // Channel 1: zero activations → 1 (nothing to move). Channel 2: zero weights → 1.
    let weight = [0.25, -0.1, 0.0, 0.5, 0.0, 0.0];
    let s = smoothing_factors(&[4.0, 0.0, 2.0], &weight, 2, 0.5);
    assert_eq!(s, vec![4.0, 1.0, 1.0]);
}

#[test]
#[should_panic(expected = "smoothing factors must be finite and > 0")]
fn zero_smoothing_factor_panics() {
    QuantizedMatrix::quantize_smoothed(&[1.0; 4], 2, 2, &[1.0, 0.0]);
}

/// The rounding trick equals `round_ties_even` then clamping, ties and out-of-range included.
#[test]
fn quantize_value_rounds_ties_to_even_and_clamps() {
    let reference = |x: f32| x.round_ties_even().clamp(-127.0, 127.0) as i8;
    let mut values = vec![
        0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.4, 127.6, 1e9, -1e9,
    ];
    values.extend([
        0.0,
        -0.0,
        0.49999997,
        0.50000006,
        f32::MIN_POSITIVE,
        63.5,
        64.5,
    ]);
    let mut rng = Rng(11);
    values.extend(rng.gaussians(10_000, 60.0));
    for v in values {
        assert_eq!(quantize_value(v, 1.0), reference(v), "{v}");
    }
    assert_eq!(quantize_value(f32::NAN, 1.0), 0);
}
