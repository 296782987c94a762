//! The portable kernel: the reference every SIMD kernel is tested against.

use super::{Block, KGROUP, PANEL, Tile, dequantize};

/// Computes `tile` one row × one panel at a time, reading activations as signed bytes.
pub(super) fn tile(tile: &Tile) {
    for i in tile.rows.clone() {
        let x_row = tile.x_row(i);
        let row_scale = tile.x.scales[i];
        for p in tile.panels.clone() {
            let acc = panel_dot(x_row, tile.w.panel(p));
            let columns = p * PANEL..p * PANEL + tile.valid_columns(p);
            let mut values = [0.0f32; PANEL];
            for (c, n) in columns.clone().enumerate() {
                values[c] = dequantize(acc[c], row_scale, tile.w.scales[n], tile.bias[n]);
            }
            // SAFETY: `i` and `p` are inside this tile, which owns these output columns of row
            // `i`; `valid_columns` keeps the write inside `d_out`.
            unsafe {
                std::ptr::copy_nonoverlapping(values.as_ptr(), tile.out_at(i, p), columns.len())
            };
        }
    }
}

/// `Σ_k x[k] · w[k, n]` for the 16 columns of one packed panel, in exact i32.
fn panel_dot(x_row: &[u8], panel: &[Block]) -> [i32; PANEL] {
    let mut acc = [0i32; PANEL];
    for (x4, block) in x_row.chunks_exact(KGROUP).zip(panel) {
        for (a, w4) in acc.iter_mut().zip(block.0.chunks_exact(KGROUP)) {
            for (&x, &w) in x4.iter().zip(w4) {
                *a += i32::from(x as i8) * i32::from(w);
            }
        }
    }
    acc
}
