//! AVX-512 VNNI kernel (`vpdpbusd` zmm) and the AVX-512 activation quantizer.

use super::{ActivationCode, BLOCK, KGROUP, PANEL, Tile, quantize_value, row_inverse_scale};
use std::arch::x86_64::*;

/// Rows of the micro-tile: 6 rows × 4 panels = 24 zmm accumulators, plus 4 weight registers
/// and one broadcast, out of 32. Each k-group then costs 4 + 6 loads for 24 `vpdpbusd`.
pub(super) const ROWS: usize = 6;
/// Panels (of 16 columns) of the micro-tile.
const PANELS: usize = 4;

/// The micro-tile for one row count and panel count.
type MicroTile = unsafe fn(&Tile, usize, usize);

/// Computes `tile`: for each group of 4 panels, every row of the tile (the group's weights,
/// `k_groups` × 256 bytes, stay in L1/L2 while rows stream past them).
///
/// # Safety
/// The CPU supports AVX-512 F/BW and AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile(tile: &Tile) {
    for p0 in tile.panels.clone().step_by(PANELS) {
        let panels = (tile.panels.end - p0).min(PANELS);
        // SAFETY: same features; rows and panels inside the tile.
        unsafe { rows(tile, tile.rows.clone(), p0, panels) };
    }
}

/// Rows `rows` × panels `p0..p0 + panels` (at most 4) of `tile`, 6 rows at a time.
///
/// # Safety
/// AVX-512 F/BW + VNNI; `rows` and `p0..p0 + panels` lie inside the tile.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn rows(tile: &Tile, rows: std::ops::Range<usize>, p0: usize, panels: usize) {
    debug_assert!(panels <= PANELS);
    for i0 in rows.clone().step_by(ROWS) {
        let count = (rows.end - i0).min(ROWS);
        // SAFETY: same features as this function; `i0..i0 + count` and `p0..p0 + panels` lie
        // inside the tile (caller's contract).
        unsafe { micro_tile_for(count, panels)(tile, i0, p0) };
    }
}

fn micro_tile_for(rows: usize, panels: usize) -> MicroTile {
    macro_rules! by_rows {
        ($np:expr) => {
            match rows {
                1 => micro_tile::<1, $np>,
                2 => micro_tile::<2, $np>,
                3 => micro_tile::<3, $np>,
                4 => micro_tile::<4, $np>,
                5 => micro_tile::<5, $np>,
                _ => micro_tile::<ROWS, $np>,
            }
        };
    }
    match panels {
        1 => by_rows!(1),
        2 => by_rows!(2),
        3 => by_rows!(3),
        _ => by_rows!(PANELS),
    }
}

/// `MR` rows from `i0` × `NP` panels from `p0`: i32 sums in registers over all of `d_in`,
/// then dequantized and stored.
///
/// # Safety
/// AVX-512 F/BW + VNNI; `i0 + MR` rows and `p0 + NP` panels exist and belong to `tile`.
#[allow(
    clippy::needless_range_loop,
    reason = "index loops keep the accumulators in registers"
)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro_tile<const MR: usize, const NP: usize>(tile: &Tile, i0: usize, p0: usize) {
    let w = tile.w;
    let stride = tile.x.stride;
    // Every accumulator starts at -128 · Σ_k q[k, n], cancelling the +128 of the u8 activations.
    let mut acc = [[_mm512_setzero_si512(); NP]; MR];
    for p in 0..NP {
        let start = &w.u8_compensation[(p0 + p) * PANEL..][..PANEL];
        // SAFETY: `start` holds 16 i32 = 64 bytes.
        let start = unsafe { _mm512_loadu_si512(start.as_ptr().cast()) };
        for row in acc.iter_mut() {
            row[p] = start;
        }
    }
    let panel_ptrs: [*const Block; NP] = std::array::from_fn(|p| w.panel(p0 + p).as_ptr());
    let x_rows = tile.x.bytes[i0 * stride..(i0 + MR) * stride].as_ptr();
    for g in 0..w.k_groups {
        let mut weights = [_mm512_setzero_si512(); NP];
        for p in 0..NP {
            // SAFETY: `g < k_groups`, the length of every panel; blocks are 64 bytes, 64-aligned.
            weights[p] = unsafe { _mm512_load_si512(panel_ptrs[p].add(g).cast()) };
        }
        for r in 0..MR {
            // SAFETY: row `r < MR` of the slice taken above has `stride = 4 · k_groups` bytes.
            let x4 = unsafe {
                x_rows
                    .add(r * stride + g * KGROUP)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let x4 = _mm512_set1_epi32(x4);
            for p in 0..NP {
                acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], x4, weights[p]);
            }
        }
    }
    // Constant indices (loops over const bounds, fully unrolled), so that `acc` stays a set
    // of registers: iterating it by reference here made LLVM keep a stack copy that the hot
    // loop above stored to on every k-group (24 stores per 24 `vpdpbusd`).
    for r in 0..MR {
        for p in 0..NP {
            // SAFETY: row `i0 + r` and panel `p0 + p` belong to the tile (caller's contract).
            unsafe { store_panel(tile, i0 + r, p0 + p, acc[r][p]) };
        }
    }
}

use super::Block;

/// Dequantizes the 16 sums of row `i`, panel `p`, and stores the columns that exist.
///
/// # Safety
/// AVX-512 F; row `i` and panel `p` belong to `tile`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn store_panel(tile: &Tile, i: usize, p: usize, acc: __m512i) {
    let n0 = p * PANEL;
    let scales = &tile.w.scales[n0..n0 + PANEL];
    let bias = &tile.bias[n0..n0 + PANEL];
    // SAFETY: `scales` and `bias` are padded to whole panels: 16 f32 each.
    let (scales, bias) = unsafe {
        (
            _mm512_loadu_ps(scales.as_ptr()),
            _mm512_loadu_ps(bias.as_ptr()),
        )
    };
    // Same operations, same order as `super::dequantize`: mul, mul, add, none fused.
    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(tile.x.scales[i]));
    let v = _mm512_add_ps(_mm512_mul_ps(v, scales), bias);
    let mask: __mmask16 = ((1u32 << tile.valid_columns(p)) - 1) as __mmask16;
    // SAFETY: the mask limits the store to the columns of row `i` that exist in `out`.
    unsafe { _mm512_mask_storeu_ps(tile.out_at(i, p), mask, v) };
}

/// AVX-512 version of `super::quantize_row_scalar`, bit-identical: the maximum is exact in any
/// order, and `vcvtps2dq` rounds to nearest even (the default MXCSR mode, which Rust never
/// changes) like `round_ties_even`; values are already within ±127.5, so the saturating
/// narrowing equals the scalar clamp.
///
/// # Safety
/// AVX-512 F/BW; `bytes.len() == row.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_row(code: ActivationCode, row: &[f32], bytes: &mut [u8]) -> f32 {
    assert_eq!(row.len(), bytes.len());
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    let mut max16 = _mm512_setzero_ps();
    for chunk in chunks.clone() {
        // SAFETY: `chunk` has 16 f32.
        let v = unsafe { _mm512_loadu_ps(chunk.as_ptr()) };
        max16 = _mm512_max_ps(max16, _mm512_abs_ps(v));
    }
    let max_abs = tail
        .iter()
        .fold(_mm512_reduce_max_ps(max16), |m, v| m.max(v.abs()));
    let inv = row_inverse_scale(max_abs);
    let inv16 = _mm512_set1_ps(inv);
    let flip = _mm_set1_epi8(code.encode(0) as i8);
    let (head, tail_bytes) = bytes.split_at_mut(row.len() - tail.len());
    for (chunk, out) in chunks.zip(head.chunks_exact_mut(16)) {
        // SAFETY: `chunk` has 16 f32 and `out` 16 bytes.
        unsafe {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(chunk.as_ptr()), inv16));
            let q = _mm_xor_si128(_mm512_cvtsepi32_epi8(q), flip);
            _mm_storeu_si128(out.as_mut_ptr().cast(), q);
        }
    }
    for (b, &v) in tail_bytes.iter_mut().zip(tail) {
        *b = code.encode(quantize_value(v, inv));
    }
    max_abs / 127.0
}

// `BLOCK` documents the 64-byte loads above.
const _: () = assert!(BLOCK == 64);
