//! AMX-INT8 kernel (`tdpbusd` on tile registers): Sapphire Rapids and later Xeons.
//!
//! A tile register holds up to 16 rows of 64 bytes. `tdpbusd C, A, B` adds to the 16 × 16 i32
//! sums in `C` the products of `A` (16 rows × 64 activation bytes, unsigned) and `B` (16 rows of
//! 64 signed bytes, each row 4 input rows × 16 columns with the 4 bytes of a column adjacent).
//! A row of `B` is exactly one packed [`Block`](super::Block), so 16 consecutive blocks of a
//! panel are one `B` tile: AMX reads the layout every level shares, and the activations in the
//! `q + 128` code of the VNNI kernels, with the same compensation. One instruction does
//! 16 × 16 × 64 multiply-adds, 64 times one `vpdpbusd` zmm.
//!
//! Micro-tile: 32 rows × 2 panels, four accumulator tiles (`tmm0`–`tmm3`), two activation
//! tiles (`tmm4`, `tmm5`) and two weight tiles (`tmm6`, `tmm7`). Stable Rust has no AMX
//! intrinsics, so the loop over `d_in` is one `asm!` block; the compiler never uses tile
//! registers, and the configuration loaded at the start of [`tile`] holds until its end.
//! What does not fill a micro-tile (fewer than 16 rows left, an odd last panel, or `d_in` not a
//! multiple of 64) runs on the AVX-512 VNNI micro-tiles: the same exact i32 sums and the same
//! epilogue, so every result is bit-identical to the other levels.

use super::{KGROUP, PANEL, Tile, avx512};
use std::arch::asm;
use std::arch::x86_64::*;

/// Rows of one tile register; a micro-tile has one or two of them.
const TILE_ROWS: usize = 16;
/// Bytes of one tile row: 16 groups of 4 input rows.
const TILE_BYTES: usize = 64;
/// Input-row groups one `B` tile covers.
const TILE_K_GROUPS: usize = TILE_BYTES / KGROUP;
/// Rows of the full micro-tile; tiles' row blocks are multiples of it.
pub(super) const ROWS: usize = 2 * TILE_ROWS;

/// The 64-byte operand of `ldtilecfg`: palette 1, tiles 0–7 each 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn sixteen_by_sixty_four() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1; // palette 1; byte 1 (start row) 0
        for t in 0..8 {
            // Bytes 16.. hold each tile's row width in bytes (u16), bytes 48.. its rows.
            bytes[16 + 2 * t..18 + 2 * t].copy_from_slice(&(TILE_BYTES as u16).to_le_bytes());
            bytes[48 + t] = TILE_ROWS as u8;
        }
        TileConfig(bytes)
    }
}

/// The i32 sums of four accumulator tiles, as `tilestored` writes them (16 rows of 16).
#[repr(C, align(64))]
struct Sums([[i32; TILE_ROWS * PANEL]; 4]);

/// Computes `tile`: for each pair of panels, 32 (then 16) rows at a time on AMX, the rest on
/// AVX-512 VNNI.
///
/// # Safety
/// The CPU supports AVX-512 F/BW, AVX512-VNNI and AMX-INT8, and the operating system has
/// granted this process the tile state (`Level::Amx.supported()`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile(tile: &Tile) {
    if !tile.w.k_groups.is_multiple_of(TILE_K_GROUPS) {
        // SAFETY: the VNNI kernel needs a subset of this function's features.
        return unsafe { avx512::tile(tile) };
    }
    let config = TileConfig::sixteen_by_sixty_four();
    // SAFETY: AMX is usable (caller's contract); `config` is a valid palette-1 configuration.
    unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
    let pairs_end = tile.panels.start + tile.panels.len() / 2 * 2;
    for p0 in (tile.panels.start..pairs_end).step_by(2) {
        let mut i0 = tile.rows.start;
        while tile.rows.end - i0 >= TILE_ROWS {
            let blocks = if tile.rows.end - i0 >= ROWS { 2 } else { 1 };
            // SAFETY: tiles configured above; `blocks · 16` rows from `i0` and panels `p0`,
            // `p0 + 1` lie inside the tile; `k_groups` is a multiple of 16.
            unsafe { micro_tile(tile, i0, p0, blocks) };
            i0 += blocks * TILE_ROWS;
        }
        // SAFETY: the rows left and this pair of panels lie inside the tile.
        unsafe { avx512::rows(tile, i0..tile.rows.end, p0, 2) };
    }
    if pairs_end < tile.panels.end {
        // SAFETY: the odd last panel lies inside the tile.
        unsafe { avx512::rows(tile, tile.rows.clone(), pairs_end, 1) };
    }
    // SAFETY: releases the configuration loaded above (back to the init state).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `blocks · 16` rows from `i0` (`blocks` is 1 or 2) × panels `p0` and `p0 + 1`: exact i32 sums
/// over all of `d_in` in tile registers, then the VNNI kernel's compensation and epilogue.
///
/// # Safety
/// As [`tile`], with the configuration loaded; the rows and both panels belong to `tile`, and
/// `k_groups` is a multiple of 16 (so every tile load stays inside its row and its panel).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro_tile(tile: &Tile, i0: usize, p0: usize, blocks: usize) {
    let (w, stride) = (tile.w, tile.x.stride);
    let x0 = tile.x.bytes[i0 * stride..(i0 + blocks * TILE_ROWS) * stride].as_ptr();
    let (b0, b1) = (w.panel(p0).as_ptr(), w.panel(p0 + 1).as_ptr());
    let steps = w.k_groups / TILE_K_GROUPS;
    // Uninitialized, read through `c` only: `tilestored` writes every element the epilogue
    // reads (zeroing these 4 KiB per micro-tile took 15% of the time).
    let mut sums = std::mem::MaybeUninit::<Sums>::uninit();
    let c = sums.as_mut_ptr().cast::<i32>();
    // One loop for both block counts: with one block, the second row block repeats the first
    // (a 16-row tail at most once per row block of the output), and its sums are never read.
    let x1 = if blocks == 2 {
        x0.wrapping_add(TILE_ROWS * stride)
    } else {
        x0
    };
    // SAFETY: each step reads 16 rows × 64 bytes of activations at `stride` from `x0` and
    // from `x1` (rows of this micro-tile) and 16 blocks of each panel, advancing 64 bytes and
    // 16 blocks: `steps` steps end exactly at the end of the rows and of the panels. The
    // stores write the 4 KiB of `sums`.
    unsafe {
        asm!(
            "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{x0} + {xs} * 1]",
            "tileloadd tmm5, [{x1} + {xs} * 1]",
            "tileloadd tmm6, [{b0} + {bs} * 1]",
            "tileloadd tmm7, [{b1} + {bs} * 1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "add {x0}, 64", "add {x1}, 64", "add {b0}, 1024", "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {bs} * 1], tmm0",
            "tilestored [{c} + {bs} * 1 + 1024], tmm1",
            "tilestored [{c} + {bs} * 1 + 2048], tmm2",
            "tilestored [{c} + {bs} * 1 + 3072], tmm3",
            x0 = inout(reg) x0 => _,
            x1 = inout(reg) x1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            steps = inout(reg) steps => _,
            xs = in(reg) stride,
            bs = in(reg) TILE_BYTES,
            c = in(reg) c,
            options(nostack),
        );
    }
    // SAFETY: the asm above stored all four accumulator tiles at `c`; the rows and panels
    // belong to the tile (this function's contract).
    unsafe { store_sums(tile, c, i0, p0, blocks) };
}

/// The epilogue of [`micro_tile`]: adds each column's `q + 128` compensation to the sums of
/// accumulator tile `2b + q` (rows `i0 + 16b ..`, panel `p0 + q`), then dequantizes and stores
/// them as the VNNI kernel does.
///
/// # Safety
/// AVX-512 F/BW; `c` holds `2 · blocks` stored tiles (16 rows of 16 i32 each, 64-aligned);
/// the rows and panels belong to `tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn store_sums(tile: &Tile, c: *const i32, i0: usize, p0: usize, blocks: usize) {
    for b in 0..blocks {
        for q in 0..2 {
            let p = p0 + q;
            let compensation = &tile.w.u8_compensation[p * PANEL..][..PANEL];
            // SAFETY: 16 i32 = 64 bytes.
            let compensation = unsafe { _mm512_loadu_si512(compensation.as_ptr().cast()) };
            for r in 0..TILE_ROWS {
                // SAFETY: tile `2b + q` is stored (caller's contract); row `i0 + 16b + r` and
                // panel `p` belong to the tile.
                unsafe {
                    let row = c.add((2 * b + q) * TILE_ROWS * PANEL + r * PANEL);
                    let acc = _mm512_load_si512(row.cast());
                    let acc = _mm512_add_epi32(acc, compensation);
                    avx512::store_panel(tile, i0 + b * TILE_ROWS + r, p, acc);
                }
            }
        }
    }
}
