//! Throughput of `linear_int8` at every level this CPU supports against the `gemm` crate's f32
//! sgemm (what burn-flex runs), on the encoder's projection shapes.
//!
//! `cargo run --release -p st-kernels --example int8_speed [threads] [m]` (default 2 threads,
//! m = 1,280 = batch 32 × 40 tokens). Each number is the best of several timed runs, the f32
//! and int8 runs interleaved so that noise from other processes hits both alike. int8 times
//! include the per-call activation quantization.

use st_kernels::{Level, QuantizedMatrix, linear_int8_at};
use std::time::Instant;

/// `(d_in, d_out)`: all-MiniLM-L6-v2 (384 / 1,536) and all-mpnet-base-v2 (768 / 3,072).
const SHAPES: [(usize, usize); 6] = [
    (384, 384),
    (384, 1536),
    (1536, 384),
    (768, 768),
    (768, 3072),
    (3072, 768),
];
const ROUNDS: usize = 7;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(2, |a| a.parse().expect("threads"));
    let m: usize = args.next().map_or(1280, |a| a.parse().expect("m"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let levels: Vec<Level> = Level::ALL
        .into_iter()
        .filter(|l| l.supported() && *l != Level::Scalar && *l != Level::Avx512)
        .collect();
    println!("m = {m}, {threads} threads, GOP/s (2·m·d_in·d_out / s), best of {ROUNDS}");
    print!("{:>12} {:>9}", "shape", "f32 gemm");
    for level in &levels {
        print!(" {:>12}", format!("int8 {level}"));
    }
    println!(" {:>8}", "best/f32");
    for (d_in, d_out) in SHAPES {
        bench_shape(m, d_in, d_out, threads, &levels);
    }
}

fn bench_shape(m: usize, d_in: usize, d_out: usize, threads: usize, levels: &[Level]) {
    let x = pseudo_random(m * d_in, 1);
    let weight = pseudo_random(d_in * d_out, 2);
    let bias = pseudo_random(d_out, 3);
    let w = QuantizedMatrix::quantize(&weight, d_in, d_out);
    let mut out = vec![0.0f32; m * d_out];
    let mut best_f32 = f64::INFINITY;
    let mut best_int8 = vec![f64::INFINITY; levels.len()];
    for _ in 0..ROUNDS {
        best_f32 = best_f32.min(time(|| {
            sgemm(&x, &weight, m, d_in, d_out, threads, &mut out)
        }));
        for (best, &level) in best_int8.iter_mut().zip(levels) {
            *best = best.min(time(|| {
                linear_int8_at(level, &x, m, &w, Some(&bias), &mut out)
            }));
        }
    }
    let ops = 2.0 * (m * d_in * d_out) as f64;
    let gops = |seconds: f64| ops / seconds / 1e9;
    print!("{:>12} {:>9.0}", format!("{d_in}x{d_out}"), gops(best_f32));
    for &t in &best_int8 {
        print!(" {:>12.0}", gops(t));
    }
    let fastest = best_int8.iter().copied().fold(f64::INFINITY, f64::min);
    println!(" {:>7.2}x", best_f32 / fastest);
}

fn time(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// `out[m, n] = x[m, k] · w[k, n]`, all row-major, with the `gemm` crate on `threads` threads.
fn sgemm(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, threads: usize, out: &mut [f32]) {
    // SAFETY: the pointers and strides describe the three row-major slices exactly, which
    // `gemm` reads and writes only within those bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        )
    }
}

/// Deterministic values in [-1, 1) (the speed does not depend on the distribution).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
