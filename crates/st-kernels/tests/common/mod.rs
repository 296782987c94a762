//! Helpers the kernel tests share: deterministic random inputs, the levels this CPU has,
//! tolerant comparison against f64 references, and `erf` in f64.

use st_kernels::Level;

/// SplitMix64 → uniform floats in [-scale, scale].
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub fn levels() -> Vec<Level> {
    let levels: Vec<_> = Level::ALL.into_iter().filter(|l| l.supported()).collect();
    eprintln!("testing levels {levels:?}");
    levels
}

pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: {g} vs reference {w}"
        );
    }
}

pub fn erf_f64(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.28 is too coarse; integrate the series instead (|x| small here).
    if x.abs() > 5.0 {
        return x.signum();
    }
    let (mut term, mut total, mut n) = (x, x, 0.0);
    while term.abs() > 1e-18 * total.abs().max(1e-300) && n < 400.0 {
        n += 1.0;
        term *= -x * x / n;
        total += term / (2.0 * n + 1.0);
    }
    total * 2.0 / std::f64::consts::PI.sqrt()
}

/// Exact GELU in f64: `x/2 · (1 + erf(x/√2))`.
pub fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
}
