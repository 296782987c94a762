//! 256-bit kernels: AVX-VNNI (`vpdpbusd` ymm) and plain AVX2 (`vpmaddubsw` made exact).
//!
//! Both compute one panel (16 columns = 2 ymm of i32) for several rows at a time; with 16 ymm
//! registers there is no room for more panels.

use super::{Block, KGROUP, PANEL, Tile};
use std::arch::x86_64::*;

/// AVX-VNNI micro-tile rows: 6 rows × 2 ymm = 12 accumulators + 2 weights + 1 broadcast.
pub(super) const VNNI_ROWS: usize = 6;
/// AVX2 micro-tile rows: 4 rows × 2 ymm = 8 accumulators + 2 weights + ones + 3 temporaries.
pub(super) const AVX2_ROWS: usize = 4;

type MicroTile = unsafe fn(&Tile, usize, usize);

/// Computes `tile` with the AVX-VNNI micro-tile.
///
/// # Safety
/// The CPU supports AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn tile_avx_vnni(tile: &Tile) {
    let by_rows: [MicroTile; VNNI_ROWS] = [
        micro_tile_vnni::<1>,
        micro_tile_vnni::<2>,
        micro_tile_vnni::<3>,
        micro_tile_vnni::<4>,
        micro_tile_vnni::<5>,
        micro_tile_vnni::<6>,
    ];
    // SAFETY: the micro-tiles need AVX2 + AVX-VNNI, which the caller guarantees.
    unsafe { for_each_micro_tile(tile, VNNI_ROWS, &by_rows) };
}

/// Computes `tile` with the AVX2 micro-tile.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn tile_avx2(tile: &Tile) {
    let by_rows: [MicroTile; AVX2_ROWS] = [
        micro_tile_avx2::<1>,
        micro_tile_avx2::<2>,
        micro_tile_avx2::<3>,
        micro_tile_avx2::<4>,
    ];
    // SAFETY: the micro-tiles need AVX2, which the caller guarantees.
    unsafe { for_each_micro_tile(tile, AVX2_ROWS, &by_rows) };
}

/// Runs `by_rows[rows - 1]` over the tile: panel by panel, every row block of up to
/// `max_rows` rows (the panel's weights stay in cache while the rows stream past).
///
/// # Safety
/// The CPU supports the features of the micro-tiles.
unsafe fn for_each_micro_tile(tile: &Tile, max_rows: usize, by_rows: &[MicroTile]) {
    for p in tile.panels.clone() {
        for i0 in tile.rows.clone().step_by(max_rows) {
            let rows = (tile.rows.end - i0).min(max_rows);
            // SAFETY: rows `i0..i0 + rows` and panel `p` lie inside the tile.
            unsafe { by_rows[rows - 1](tile, i0, p) };
        }
    }
}

/// The weights of block `g` of a panel as two ymm (columns 0–7, 8–15).
///
/// # Safety
/// AVX; `block` points to a live, 64-aligned [`Block`].
#[target_feature(enable = "avx")]
unsafe fn load_block(block: *const Block) -> [__m256i; 2] {
    let block = block.cast::<__m256i>();
    // SAFETY: a block is 64 bytes, 64-aligned: two aligned ymm.
    unsafe { [_mm256_load_si256(block), _mm256_load_si256(block.add(1))] }
}

/// The 4 activation bytes of group `g` of row `r`, broadcast to every i32 lane.
///
/// # Safety
/// AVX; `x_rows` holds row `r` of `stride ≥ 4 · (g + 1)` bytes.
#[target_feature(enable = "avx")]
unsafe fn broadcast_x4(x_rows: *const u8, stride: usize, r: usize, g: usize) -> __m256i {
    // SAFETY: in bounds by the contract.
    let x4 = unsafe {
        x_rows
            .add(r * stride + g * KGROUP)
            .cast::<i32>()
            .read_unaligned()
    };
    _mm256_set1_epi32(x4)
}

/// AVX-VNNI: like the AVX-512 micro-tile (u8 activations `q + 128`, accumulators starting at
/// the compensation), on one panel.
///
/// # Safety
/// AVX2 + AVX-VNNI; rows `i0..i0 + MR` and panel `p` belong to `tile`.
#[allow(
    clippy::needless_range_loop,
    reason = "index loops keep the accumulators in registers"
)]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn micro_tile_vnni<const MR: usize>(tile: &Tile, i0: usize, p: usize) {
    let stride = tile.x.stride;
    let start = &tile.w.u8_compensation[p * PANEL..][..PANEL];
    // SAFETY: `start` holds 16 i32 = two ymm.
    let start = unsafe {
        let ptr = start.as_ptr().cast::<__m256i>();
        [_mm256_loadu_si256(ptr), _mm256_loadu_si256(ptr.add(1))]
    };
    let mut acc = [start; MR];
    let panel = tile.w.panel(p);
    let x_rows = tile.x.bytes[i0 * stride..(i0 + MR) * stride].as_ptr();
    for (g, block) in panel.iter().enumerate() {
        // SAFETY: `block` is a live block of the panel; rows as sliced above.
        let weights = unsafe { load_block(block) };
        // Index loops over const bounds (unrolled), which keep `acc` in registers: iterators
        // over it made LLVM store it to the stack on every k-group.
        for r in 0..MR {
            let x4 = unsafe { broadcast_x4(x_rows, stride, r, g) };
            for h in 0..2 {
                acc[r][h] = _mm256_dpbusd_avx_epi32(acc[r][h], x4, weights[h]);
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { store_rows(tile, i0, p, acc) };
}

/// AVX2: `vpmaddubsw(|x|, w · sign(x))` is exact (pair sums ≤ 2 · 127², see the module docs
/// of `int8`), `vpmaddwd` by ones widens the pairs to i32. Activations are signed bytes.
///
/// # Safety
/// AVX2; rows `i0..i0 + MR` and panel `p` belong to `tile`.
#[allow(
    clippy::needless_range_loop,
    reason = "index loops keep the accumulators in registers"
)]
#[target_feature(enable = "avx2")]
unsafe fn micro_tile_avx2<const MR: usize>(tile: &Tile, i0: usize, p: usize) {
    let stride = tile.x.stride;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    let panel = tile.w.panel(p);
    let x_rows = tile.x.bytes[i0 * stride..(i0 + MR) * stride].as_ptr();
    for (g, block) in panel.iter().enumerate() {
        // SAFETY: `block` is a live block of the panel; rows as sliced above.
        let weights = unsafe { load_block(block) };
        for r in 0..MR {
            let x4 = unsafe { broadcast_x4(x_rows, stride, r, g) };
            let x_abs = _mm256_abs_epi8(x4);
            for h in 0..2 {
                let pairs = _mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(weights[h], x4));
                acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(pairs, ones));
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { store_rows(tile, i0, p, acc) };
}

/// Dequantizes and stores the sums of rows `i0..` for panel `p`.
///
/// # Safety
/// AVX2; the rows and panel `p` belong to `tile`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_rows<const MR: usize>(tile: &Tile, i0: usize, p: usize, acc: [[__m256i; 2]; MR]) {
    let n0 = p * PANEL;
    let valid = tile.valid_columns(p);
    for (r, halves) in acc.iter().enumerate() {
        let row_scale = _mm256_set1_ps(tile.x.scales[i0 + r]);
        for (h, &a) in halves.iter().enumerate() {
            let n = n0 + 8 * h;
            // SAFETY: scales and bias are padded to whole panels; the store is masked to the
            // columns that exist, in row `i0 + r` of the tile.
            unsafe {
                let scales = _mm256_loadu_ps(tile.w.scales[n..n + 8].as_ptr());
                let bias = _mm256_loadu_ps(tile.bias[n..n + 8].as_ptr());
                // Same operations, same order as `super::dequantize`: mul, mul, add.
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(a), row_scale);
                let v = _mm256_add_ps(_mm256_mul_ps(v, scales), bias);
                let out = tile.out_at(i0 + r, p).add(8 * h);
                if valid >= 8 * (h + 1) {
                    _mm256_storeu_ps(out, v);
                } else if valid > 8 * h {
                    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((valid - 8 * h) as i32), lanes);
                    _mm256_maskstore_ps(out, mask, v);
                }
            }
        }
    }
}
