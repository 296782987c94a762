//! int8 linear layers: `y = x · W + b` with int8 weights and int8 activations, i32 accumulation.
//!
//! # Numerics (the same at every level)
//!
//! - **Weights**: symmetric, per output column: `scale_n = max_k |W[k, n]| / 127`,
//!   `q = round_ties_even(W / scale_n)` in `[-127, 127]` (never -128; the AVX2 kernel relies on
//!   it). Quantized once, in [`QuantizedMatrix::quantize`].
//! - **Activations**: symmetric, per row (token), on every call: `scale_i = max_k |x[i, k]| / 127`,
//!   `q = round_ties_even(x · (127 / max))` in `[-127, 127]`. A row of zeros has scale 0.
//! - **Smoothing** (optional, SmoothQuant: Xiao et al. 2023): a few input channels of a
//!   LayerNorm output carry values 5–10× the others in every token, and one scale per token
//!   spends the int8 range on them. [`QuantizedMatrix::quantize_smoothed`] takes per-channel
//!   factors `s_k` ([`smoothing_factors`], from calibration maxima), quantizes `diag(s) · W`,
//!   and every call quantizes `x_k / s_k` (one multiply by the stored `1 / s_k`, in f32, before
//!   the rule above): the product is unchanged in exact arithmetic, the difficulty moves from
//!   the activations to the weights, which have a scale per column to absorb it.
//! - **Product**: `acc = Σ_k qx[i, k] · qw[k, n]` exactly, in i32 (exact while
//!   `d_in · 127² < 2³¹`, i.e. `d_in < 133,000`).
//! - **Dequantization**: `out = ((acc as f32) · scale_i) · scale_n + bias_n`, two roundings of
//!   multiplication and one of addition, in that order, never fused, so that every level gives
//!   bit-identical floats, not just bit-identical i32 sums.
//!
//! # Kernels
//!
//! Weights are packed once into panels of 16 output columns; inside a panel, blocks of 4 input
//! rows × 16 columns (64 bytes, column-major within the block: the 4 bytes of a column are
//! adjacent), which is exactly one `vpdpbusd` zmm operand. Rows and columns are zero-padded to
//! multiples of 4 and 16. Every level reads this one layout:
//!
//! - [`Level::Avx512Vnni`]: `vpdpbusd` zmm, 6 rows × 4 panels (64 columns) of i32 accumulators.
//!   `vpdpbusd` multiplies *unsigned* by signed bytes, so activations are stored as `q + 128`
//!   (u8) and each column's accumulator starts at `-128 · Σ_k qw[k, n]` (precomputed at pack
//!   time), which cancels the offset exactly.
//! - [`Level::Amx`]: `tdpbusd` on AMX tile registers, 32 rows × 2 panels; 16 packed blocks of a
//!   panel are exactly one weight tile (see the `amx` module). Row, panel and `d_in` tails
//!   (`d_in` not a multiple of 64) run the AVX-512 VNNI micro-tiles.
//! - [`Level::AvxVnni`]: the same on 256-bit registers (`vpdpbusd` ymm), 6 rows × 1 panel.
//! - [`Level::Avx2`] (also what [`Level::Avx512`] runs): `vpmaddubsw` multiplies u8 × i8 into
//!   *saturating* i16 pair sums. It is made exact by feeding it `|qx|` (≤ 127) and
//!   `qw · sign(qx)` (`vpsignb`, in `[-127, 127]` because weights never are -128): a pair sum
//!   is at most 2 · 127² = 32,258 < 32,767. `vpmaddwd` by ones then widens to i32.
//! - [`Level::Scalar`]: portable Rust over the same layout; the reference in tests.
//!
//! [`linear_int8`] splits the output into tiles of rows × column panels and runs them with
//! rayon on the current pool.

use crate::Level;
use rayon::prelude::*;

pub use table::QuantizedTable;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;
mod table;
#[cfg(test)]
mod tests;

/// Output columns per packed panel (one zmm of i32 lanes).
const PANEL: usize = 16;
/// Input rows per packed block (the bytes one `vpdpbusd` lane sums).
const KGROUP: usize = 4;
/// Bytes per packed block: 4 input rows × 16 columns.
const BLOCK: usize = PANEL * KGROUP;
/// The largest `d_in` whose sums `Σ q_x · q_w` (each term within ±127²) always fit an i32.
const MAX_D_IN: usize = i32::MAX as usize / (127 * 127);

/// Symmetric per-output-channel int8 weights (`scale = max|w_col| / 127`), packed once at
/// construction for the kernel layout (see the [module docs](self)).
#[derive(Clone)]
pub struct QuantizedMatrix {
    d_in: usize,
    d_out: usize,
    /// `d_in` rounded up to a multiple of [`KGROUP`], over [`KGROUP`].
    k_groups: usize,
    /// `d_out` rounded up to a multiple of [`PANEL`], over [`PANEL`].
    panels: usize,
    /// `panels × k_groups` blocks; zero where padded.
    packed: Vec<Block>,
    /// Per column, `panels · PANEL` long, zero where padded.
    scales: Vec<f32>,
    /// Per column, `-128 · Σ_k q[k, n]`: the start value of a VNNI accumulator fed `q + 128`.
    u8_compensation: Vec<i32>,
    /// `1 / s_k` per input channel when the weights were smoothed (`d_in` long).
    inverse_smoothing: Option<Vec<f32>>,
}

impl QuantizedMatrix {
    /// `weight`: row-major `[d_in, d_out]` (burn's Linear weight layout: y = x · W).
    ///
    /// Panics if `weight.len() != d_in * d_out`, a dimension is 0, or `d_in > 133,144` (the
    /// i32 sums could overflow). Weights must be finite.
    pub fn quantize(weight: &[f32], d_in: usize, d_out: usize) -> Self {
        Self::quantize_packed(weight, d_in, d_out, None)
    }

    /// [`quantize`](Self::quantize) of `diag(smoothing) · W`, remembering `1 / smoothing` so
    /// that [`linear_int8`] divides each activation channel by its factor before quantizing
    /// (see the [module docs](self)). Panics unless `smoothing` has `d_in` finite factors > 0.
    pub fn quantize_smoothed(weight: &[f32], d_in: usize, d_out: usize, smoothing: &[f32]) -> Self {
        assert_eq!(
            smoothing.len(),
            d_in,
            "QuantizedMatrix::quantize_smoothed: {} factors for d_in = {d_in}",
            smoothing.len()
        );
        assert!(
            smoothing.iter().all(|s| s.is_finite() && *s > 0.0),
            "QuantizedMatrix::quantize_smoothed: smoothing factors must be finite and > 0"
        );
        assert_eq!(
            weight.len(),
            d_in * d_out,
            "QuantizedMatrix::quantize_smoothed: weight has {} values, shape [{d_in}, {d_out}] needs {}",
            weight.len(),
            d_in * d_out
        );
        let scaled: Vec<f32> = weight
            .chunks(d_out)
            .zip(smoothing)
            .flat_map(|(row, s)| row.iter().map(move |w| w * s))
            .collect();
        let inverse = smoothing.iter().map(|s| 1.0 / s).collect();
        Self::quantize_packed(&scaled, d_in, d_out, Some(inverse))
    }

    fn quantize_packed(
        weight: &[f32],
        d_in: usize,
        d_out: usize,
        inverse_smoothing: Option<Vec<f32>>,
    ) -> Self {
        assert!(
            d_in > 0 && d_out > 0,
            "QuantizedMatrix::quantize: empty shape [{d_in}, {d_out}]"
        );
        assert_eq!(
            weight.len(),
            d_in * d_out,
            "QuantizedMatrix::quantize: weight has {} values, shape [{d_in}, {d_out}] needs {}",
            weight.len(),
            d_in * d_out
        );
        assert!(
            d_in <= MAX_D_IN,
            "QuantizedMatrix::quantize: d_in = {d_in} could overflow the i32 sums (max {MAX_D_IN})"
        );
        let k_groups = d_in.div_ceil(KGROUP);
        let panels = d_out.div_ceil(PANEL);
        let mut scales = vec![0.0f32; panels * PANEL];
        let mut u8_compensation = vec![0i32; panels * PANEL];
        let mut packed = vec![Block([0; BLOCK]); panels * k_groups];
        // Row by row, the order the weight lies in memory (a column walk strides `d_out`).
        let mut max_abs = vec![0.0f32; d_out];
        for row in weight.chunks_exact(d_out) {
            for (m, w) in max_abs.iter_mut().zip(row) {
                *m = m.max(w.abs());
            }
        }
        let inverse: Vec<f32> = max_abs
            .iter()
            .map(|&m| if m > 0.0 { 127.0 / m } else { 0.0 })
            .collect();
        for (scale, m) in scales.iter_mut().zip(&max_abs) {
            *scale = m / 127.0;
        }
        let mut sums = vec![0i32; d_out];
        for (k, row) in weight.chunks_exact(d_out).enumerate() {
            for (n, (&w, &inv)) in row.iter().zip(&inverse).enumerate() {
                let q = quantize_value(w, inv);
                sums[n] += i32::from(q);
                let (block, byte) = packed_index(k_groups, k, n);
                packed[block].0[byte] = q;
            }
        }
        for (c, sum) in u8_compensation.iter_mut().zip(sums) {
            *c = -128 * sum;
        }
        QuantizedMatrix {
            d_in,
            d_out,
            k_groups,
            panels,
            packed,
            scales,
            u8_compensation,
            inverse_smoothing,
        }
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Bytes held (int8 weights + scales + packing), for memory reports.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of_val(self.packed.as_slice())
            + self.scales.len() * std::mem::size_of::<f32>()
            + self.u8_compensation.len() * std::mem::size_of::<i32>()
            + self.inverse_smoothing.as_ref().map_or(0, |v| v.len() * 4)
    }

    /// The quantized weight `q[k, n]` (tests and debugging; the kernels read the packing).
    pub fn quantized_at(&self, k: usize, n: usize) -> i8 {
        assert!(k < self.d_in && n < self.d_out);
        let (block, byte) = packed_index(self.k_groups, k, n);
        self.packed[block].0[byte]
    }

    /// The scale of output column `n`: `W[k, n] ≈ quantized_at(k, n) · scale(n)`.
    pub fn scale(&self, n: usize) -> f32 {
        self.scales[n]
    }

    /// The packed blocks of panel `p`, one per group of 4 input rows.
    fn panel(&self, p: usize) -> &[Block] {
        &self.packed[p * self.k_groups..(p + 1) * self.k_groups]
    }
}

impl std::fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedMatrix")
            .field("d_in", &self.d_in)
            .field("d_out", &self.d_out)
            .field("memory_bytes", &self.memory_bytes())
            .finish_non_exhaustive()
    }
}

/// 4 input rows × 16 output columns of quantized weights, the 4 bytes of a column adjacent:
/// one `vpdpbusd` zmm operand. Aligned to a cache line so no kernel load ever splits one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([i8; BLOCK]);

/// Where `q[k, n]` lives in the packing: (block index, byte in the block). Blocks go panel by
/// panel, then by group of 4 rows; inside a block, column by column, then row.
fn packed_index(k_groups: usize, k: usize, n: usize) -> (usize, usize) {
    let (panel, column) = (n / PANEL, n % PANEL);
    let (group, row) = (k / KGROUP, k % KGROUP);
    (panel * k_groups + group, column * KGROUP + row)
}

/// `round_ties_even(v · inv)` clamped to `[-127, 127]`: the one rounding rule of weights and
/// activations (the SIMD activation quantizers reproduce it bit for bit).
fn quantize_value(v: f32, inv: f32) -> i8 {
    // Clamping first changes nothing (127 is an integer) and keeps the value small enough
    // for the classic round-to-nearest-even trick: adding 1.5 · 2²³ leaves no fraction bits,
    // so the FPU's rounding (ties to even) does the work. `round_ties_even` itself compiles to
    // a libm call on baseline x86-64, a quarter of the time spent quantizing weights at load.
    const MAGIC: f32 = 12_582_912.0;
    let clamped = (v * inv).clamp(-127.0, 127.0);
    ((clamped + MAGIC) - MAGIC) as i8
}

/// Activations quantized per row, in the byte format one kernel reads.
struct QuantizedRows {
    /// `m` rows of `stride` bytes: `q` as i8, or `q + 128` as u8 for the VNNI kernels; the
    /// padding past `d_in` holds the encoding of 0 (the weights there are 0 anyway).
    bytes: AlignedBytes,
    /// `k_groups · KGROUP`.
    stride: usize,
    /// Per row: `max |x| / 127`.
    scales: Vec<f32>,
}

/// Bytes starting on a cache line: every row of activations does when the row length is a
/// multiple of 64, which the AMX kernel requires. Its tile loads read 64 bytes per row, and a
/// row split over two cache lines made them 4× slower (measured from L1 on Sapphire Rapids).
struct AlignedBytes {
    lines: Vec<Block>,
    len: usize,
}

impl AlignedBytes {
    fn filled(len: usize, byte: u8) -> Self {
        AlignedBytes {
            lines: vec![Block([byte as i8; BLOCK]); len.div_ceil(BLOCK)],
            len,
        }
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `lines` holds at least `len` initialized bytes (whole blocks of i8, which
        // have u8's layout), borrowed for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably and uniquely through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

/// How a kernel wants activations encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ActivationCode {
    /// `q` as i8 bytes (scalar, AVX2).
    Signed,
    /// `q + 128` as u8 bytes (`vpdpbusd` takes unsigned × signed).
    Offset128,
}

impl ActivationCode {
    fn encode(self, q: i8) -> u8 {
        match self {
            ActivationCode::Signed => q as u8,
            ActivationCode::Offset128 => (q as u8) ^ 0x80,
        }
    }
}

/// `out[m, d_out] = x[m, d_in] · W + bias`: each row of `x` quantized dynamically to int8
/// (symmetric, per-token scale `max|x_row| / 127`), i32 accumulation, dequantized to f32.
/// Runs the best kernel at or below [`Level::active`], parallel with rayon over the current
/// pool. Panics with a message on a slice length that does not match the shapes. A row holding
/// an infinity or NaN gives unspecified values (NaN or garbage) in that output row only.
pub fn linear_int8(
    x: &[f32],
    m: usize,
    w: &QuantizedMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    linear_int8_at(Level::active(), x, m, w, bias, out)
}

/// [`linear_int8`] at a given level. A level this CPU does not support **panics** (a test
/// that forces a level must not silently test another one); a supported level without an int8
/// kernel of its own runs the best one below it ([`Level::Avx512`] runs the AVX2 kernel).
/// Every level gives bit-identical results.
pub fn linear_int8_at(
    level: Level,
    x: &[f32],
    m: usize,
    w: &QuantizedMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    check_shapes(x, m, w, bias, out);
    assert!(
        level.supported(),
        "linear_int8_at: this CPU does not support level {level}"
    );
    if m == 0 {
        return;
    }
    let kernel = Kernel::for_level(level);
    let rows = quantize_rows(level, kernel.activation_code(), x, m, w);
    let bias_padded = padded_bias(bias, w);
    run_tiles(kernel, &rows, m, w, &bias_padded, out);
}

fn check_shapes(x: &[f32], m: usize, w: &QuantizedMatrix, bias: Option<&[f32]>, out: &[f32]) {
    assert_eq!(
        x.len(),
        m * w.d_in,
        "linear_int8: x has {} values, m = {m} rows of d_in = {} need {}",
        x.len(),
        w.d_in,
        m * w.d_in
    );
    assert_eq!(
        out.len(),
        m * w.d_out,
        "linear_int8: out has {} values, m = {m} rows of d_out = {} need {}",
        out.len(),
        w.d_out,
        m * w.d_out
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.len(),
            w.d_out,
            "linear_int8: bias has {} values, d_out is {}",
            bias.len(),
            w.d_out
        );
    }
}

/// The bias padded to whole panels with zeros (all kernels load whole panels).
fn padded_bias(bias: Option<&[f32]>, w: &QuantizedMatrix) -> Vec<f32> {
    let mut padded = vec![0.0f32; w.panels * PANEL];
    if let Some(bias) = bias {
        padded[..w.d_out].copy_from_slice(bias);
    }
    padded
}

/// The int8 kernels that exist; [`Kernel::for_level`] maps every level onto one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    Amx,
}

impl Kernel {
    fn for_level(level: Level) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            match level {
                Level::Scalar => Kernel::Scalar,
                Level::Avx2 | Level::Avx512 => Kernel::Avx2,
                Level::AvxVnni => Kernel::AvxVnni,
                Level::Avx512Vnni => Kernel::Avx512Vnni,
                Level::Amx => Kernel::Amx,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = level;
            Kernel::Scalar
        }
    }

    fn activation_code(self) -> ActivationCode {
        match self {
            Kernel::Scalar => ActivationCode::Signed,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => ActivationCode::Signed,
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni | Kernel::Avx512Vnni | Kernel::Amx => ActivationCode::Offset128,
        }
    }

    /// Rows of a micro-tile; tiles' row blocks are multiples of it.
    fn rows_per_tile(self) -> usize {
        match self {
            Kernel::Scalar => 4,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::AVX2_ROWS,
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => avx2::VNNI_ROWS,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => avx512::ROWS,
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => amx::ROWS,
        }
    }

    /// Computes one output tile.
    fn run(self, tile: &Tile) {
        match self {
            Kernel::Scalar => scalar::tile(tile),
            // SAFETY (all four): `for_level` maps only levels that `linear_int8_at` checked
            // with `Level::supported` onto these kernels, so the CPU has their features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::tile_avx2(tile) },
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => unsafe { avx2::tile_avx_vnni(tile) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe { avx512::tile(tile) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => unsafe { amx::tile(tile) },
        }
    }
}

/// Quantizes every row of `x` (in parallel: this is `m · d_in` work in front of a
/// `m · d_in · d_out` product, too much to leave serial).
fn quantize_rows(
    level: Level,
    code: ActivationCode,
    x: &[f32],
    m: usize,
    w: &QuantizedMatrix,
) -> QuantizedRows {
    let (d_in, stride) = (w.d_in, w.k_groups * KGROUP);
    let mut bytes = AlignedBytes::filled(m * stride, code.encode(0));
    let mut scales = vec![0.0f32; m];
    let rows = bytes
        .par_chunks_mut(stride)
        .zip(scales.par_iter_mut())
        .zip(x.par_chunks(d_in))
        .with_min_len(16);
    match &w.inverse_smoothing {
        None => rows.for_each(|((row_bytes, scale), row)| {
            *scale = quantize_row(level, code, row, &mut row_bytes[..d_in]);
        }),
        Some(inverse) => rows.for_each_init(
            || vec![0.0f32; d_in],
            |smoothed, ((row_bytes, scale), row)| {
                for ((s, x), inv) in smoothed.iter_mut().zip(row).zip(inverse) {
                    *s = x * inv;
                }
                *scale = quantize_row(level, code, smoothed, &mut row_bytes[..d_in]);
            },
        ),
    }
    QuantizedRows {
        bytes,
        stride,
        scales,
    }
}

/// Quantizes one row into `bytes`, returns its scale. SIMD at [`Level::Avx512`] and above
/// (bit-identical to [`quantize_row_scalar`], which the tests check).
fn quantize_row(level: Level, code: ActivationCode, row: &[f32], bytes: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx512 && level.supported() {
        // SAFETY: the CPU supports AVX-512 F/BW (every level from `Avx512` up includes them).
        return unsafe { avx512::quantize_row(code, row, bytes) };
    }
    quantize_row_scalar(code, row, bytes)
}

/// The portable activation quantizer: the definition the SIMD ones match.
fn quantize_row_scalar(code: ActivationCode, row: &[f32], bytes: &mut [u8]) -> f32 {
    let max_abs = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let inv = row_inverse_scale(max_abs);
    for (b, &v) in bytes.iter_mut().zip(row) {
        *b = code.encode(quantize_value(v, inv));
    }
    max_abs / 127.0
}

/// `127 / max_abs`, or 0 for a row of zeros (whose values then all quantize to 0).
fn row_inverse_scale(max_abs: f32) -> f32 {
    if max_abs > 0.0 { 127.0 / max_abs } else { 0.0 }
}

/// SmoothQuant's per-input-channel factors for [`QuantizedMatrix::quantize_smoothed`]:
/// `s_k = max|X_k|^α / max_n |W[k, n]|^(1 − α)`, from `activation_max[k]`, the largest
/// `|x[·, k]|` seen on calibration inputs, and the row-major `[d_in, d_out]` weight. `α = 0.5`
/// splits the difficulty evenly between activations and weights (the paper's default for
/// encoder models). A channel that is zero on either side keeps the factor 1.
pub fn smoothing_factors(
    activation_max: &[f32],
    weight: &[f32],
    d_out: usize,
    alpha: f32,
) -> Vec<f32> {
    assert_eq!(
        weight.len(),
        activation_max.len() * d_out,
        "smoothing_factors: weight has {} values, {} channels × d_out = {d_out} need {}",
        weight.len(),
        activation_max.len(),
        activation_max.len() * d_out
    );
    activation_max
        .iter()
        .zip(weight.chunks(d_out))
        .map(|(&a, row)| {
            let w = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s = a.powf(alpha) / w.powf(1.0 - alpha);
            if s.is_finite() && s > 0.0 { s } else { 1.0 }
        })
        .collect()
}

/// One unit of parallel work: rows `rows` × panels `panels` of the output.
struct Tile<'a> {
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    x: &'a QuantizedRows,
    w: &'a QuantizedMatrix,
    bias: &'a [f32],
    out: OutPtr,
}

impl Tile<'_> {
    /// The quantized bytes of row `i` (absolute row index).
    fn x_row(&self, i: usize) -> &[u8] {
        &self.x.bytes[i * self.x.stride..(i + 1) * self.x.stride]
    }

    /// Output columns of panel `p` that exist (the last panel may be partial).
    fn valid_columns(&self, p: usize) -> usize {
        (self.w.d_out - p * PANEL).min(PANEL)
    }

    /// Pointer to `out[i, p · PANEL]`.
    ///
    /// # Safety
    /// `i < m` and `p < panels`; the caller writes only inside its tile.
    unsafe fn out_at(&self, i: usize, p: usize) -> *mut f32 {
        // SAFETY: in bounds of `out` by the caller's contract (check_shapes fixed its length).
        unsafe { self.out.0.add(i * self.w.d_out + p * PANEL) }
    }
}

/// The output pointer shared by tiles. Tiles cover disjoint rectangles of `out`, so writes
/// through it from several threads never overlap.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: see the type's doc: every tile writes only its own rectangle, and `run_tiles` keeps
// the `&mut [f32]` borrowed until every tile has finished.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Splits the output into tiles and runs them on the rayon pool.
fn run_tiles(
    kernel: Kernel,
    x: &QuantizedRows,
    m: usize,
    w: &QuantizedMatrix,
    bias: &[f32],
    out: &mut [f32],
) {
    let (row_block, panel_block) = tile_shape(kernel.rows_per_tile(), m, w.panels);
    let row_blocks = m.div_ceil(row_block);
    let panel_blocks = w.panels.div_ceil(panel_block);
    let out = OutPtr(out.as_mut_ptr());
    (0..row_blocks * panel_blocks)
        .into_par_iter()
        .for_each(|t| {
            let (rb, pb) = (t / panel_blocks, t % panel_blocks);
            let tile = Tile {
                rows: rb * row_block..((rb + 1) * row_block).min(m),
                panels: pb * panel_block..((pb + 1) * panel_block).min(w.panels),
                x,
                w,
                bias,
                out,
            };
            kernel.run(&tile);
        });
}

/// Rows and panels per tile: row blocks of up to 96 rows (a multiple of the micro-tile, so
/// only the last block has a row tail), and the columns split too when there are too few row
/// blocks to keep every thread busy (small `m`).
fn tile_shape(rows_per_tile: usize, m: usize, panels: usize) -> (usize, usize) {
    let wanted_tasks = 4 * rayon::current_num_threads();
    let max_rows = 16 * rows_per_tile;
    let row_block = m
        .div_ceil(wanted_tasks)
        .next_multiple_of(rows_per_tile)
        .min(max_rows);
    let row_blocks = m.div_ceil(row_block);
    let panel_splits = wanted_tasks.div_ceil(row_blocks).min(panels);
    // Whole groups of 4 panels, so the AVX-512 kernel keeps its widest micro-tile.
    let panel_block = panels
        .div_ceil(panel_splits)
        .next_multiple_of(4)
        .min(panels);
    (row_block, panel_block)
}

/// The dequantization every kernel applies to an i32 sum (scalar form of the SIMD epilogues).
fn dequantize(acc: i32, row_scale: f32, column_scale: f32, bias: f32) -> f32 {
    (acc as f32) * row_scale * column_scale + bias
}
