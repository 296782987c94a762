//! The f32 projection `x · W` for every token, on the `gemm` crate's kernels (the ones
//! burn-flex's `matmul` runs), written into fresh memory that nothing else touches first.
//!
//! Calling `gemm` directly instead of through a framework matmul saves two passes over every
//! output: burn-flex allocates its output zeroed, then copies it into a 64-byte-aligned
//! buffer (together 5–8% of an fp32 encode on this project's machine). The bias is not added
//! here: the kernel that reads the product next fuses it ([`bias_gelu`](crate::bias_gelu),
//! [`bias_residual_layer_norm`](crate::bias_residual_layer_norm)), since a bias pass of its own,
//! or starting the accumulator from the bias rows, costs one more pass over the output.

/// Products smaller than this (`m·n·k`) run on one thread: burn-flex's threshold.
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `x · w` for the `m` rows of `x` (`[m, d_in]`, row-major); `w` is `[d_in, d_out]` row-major
/// (`d_out = w.len() / d_in`). Returns `[m, d_out]`, row-major. Threads: rayon's pool, for
/// products big enough to pay for them.
pub fn linear_f32(x: &[f32], m: usize, w: &[f32], d_in: usize) -> Vec<f32> {
    assert!(d_in > 0, "linear_f32: d_in must be positive");
    assert_eq!(x.len(), m * d_in, "linear_f32: x must be [m, d_in]");
    assert!(
        w.len().is_multiple_of(d_in),
        "linear_f32: {} weights are not rows of {d_in}",
        w.len()
    );
    let d_out = w.len() / d_in;
    let len = m * d_out;
    if len == 0 {
        return Vec::new();
    }
    let parallelism = if len * d_in >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out = Vec::<f32>::with_capacity(len);
    // SAFETY: the asserts above make `x` [m, d_in] and `w` [d_in, d_out], and `out` has room
    // for [m, d_out], each row-major with the strides passed (column stride 1, row stride =
    // width); `out` overlaps neither input. With `read_dst = false`, gemm only writes `out`
    // (through the raw pointer), every one of its `m · d_out` elements, so after the call all
    // `len` elements are initialized.
    unsafe {
        gemm::gemm(
            m,
            d_out,
            d_in,
            out.as_mut_ptr(),
            1,
            d_out as isize,
            false,
            x.as_ptr(),
            1,
            d_in as isize,
            w.as_ptr(),
            1,
            d_out as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(len);
    }
    out
}
