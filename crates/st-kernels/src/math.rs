//! Branch-free `f32` math written so LLVM vectorizes it: every function here is
//! `#[inline(always)]`, so it is compiled again inside each `#[target_feature]` kernel that calls
//! it (AVX-512, AVX2+FMA) and in the portable kernel (baseline SSE2 on x86-64, NEON on aarch64).
//!
//! Reductions keep [`LANES`] independent accumulators: without fast-math, LLVM must keep a
//! single float sum in order and will not vectorize it.

/// Independent accumulators per reduction: one AVX-512 register of `f32`.
pub(crate) const LANES: usize = 16;

/// `erf(x)`, the rational approximation Eigen and XLA use for `f32` (max error a few ulp on
/// `[-4, 4]`; beyond that `erf` is ±1 to `f32` precision).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_5e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329_4e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

/// Exact (erf-based) GELU: `x/2 · (1 + erf(x/√2))`, as BERT and PyTorch's default define it.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's derivative, `Φ(x) + x·φ(x)`: the backward of [`gelu`].
#[inline(always)]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

/// `e^x` to ~1 ulp (Cephes' polynomial on a range-reduced argument); 0 below −87.3 (so an
/// additive −∞ mask gives exactly 0), `e^88.3` above 88.3 (finite).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.3, 88.3);
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = n.mul_add(-0.693_359_4, xc);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let p = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { p * scale }
}

/// Sum of a slice, [`LANES`] accumulators.
#[inline(always)]
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail
}

/// `Σ a·b` over two slices of one length, [`LANES`] accumulators.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail
}

/// Largest element (−∞ for an empty slice).
#[inline(always)]
pub(crate) fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    fold_lanes(acc, f32::max).max(tail)
}

/// `Σ (v - mean)²`, [`LANES`] accumulators.
#[inline(always)]
pub(crate) fn sum_sq_dev(v: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&x| (x - mean) * (x - mean))
        .sum();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] = d.mul_add(d, acc[l]);
        }
    }
    fold_lanes(acc, |a, b| a + b) + tail
}

/// Folds the [`LANES`] accumulators in halves (8 + 8, 4 + 4, 2 + 2, 1 + 1): four vector steps
/// instead of a chain of 16 dependent scalar ones, which on the attention's short rows (a few
/// chunks each) took longer than the chunks themselves.
#[inline(always)]
fn fold_lanes(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] = op(acc[l], acc[l + width]);
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64 (beyond 4.5, erf is 1 to within 1e-10).
    fn erf_f64(x: f64) -> f64 {
        if x.abs() > 4.5 {
            return x.signum();
        }
        let (mut term, mut total, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_and_exp_match_f64_references() {
        for i in -4000..=4000 {
            let x = i as f32 / 800.0; // [-5, 5]
            let want = erf_f64(x as f64);
            assert!(
                (erf(x) as f64 - want).abs() < 5e-7,
                "erf({x}) = {} want {want}",
                erf(x)
            );
            let e = exp(x * 17.0) as f64;
            let want = ((x * 17.0) as f64).exp();
            assert!(
                (e - want).abs() <= want * 3e-7,
                "exp({}) = {e} want {want}",
                x * 17.0
            );
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn reductions_cover_the_tail() {
        let v: Vec<f32> = (0..37).map(|i| i as f32 - 10.0).collect();
        assert_eq!(sum(&v), v.iter().sum::<f32>());
        assert_eq!(max(&v), 26.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let w: Vec<f32> = (0..37).map(|i| 0.5 - i as f32 / 8.0).collect();
        let want: f32 = v.iter().zip(&w).map(|(a, b)| a * b).sum();
        assert!((dot(&v, &w) - want).abs() < 1e-3);
        let mean = sum(&v) / 37.0;
        let want: f32 = v.iter().map(|x| (x - mean) * (x - mean)).sum();
        assert!((sum_sq_dev(&v, mean) - want).abs() < 1e-3);
    }
}
