//! Dropout masks from a counter-based hash: the training pass draws ~20 M of them a step
//! (attention probabilities and hidden states of every layer), and a sequential RNG drawing one
//! float per element cost ~9% of a flex training step.

use rayon::prelude::*;

use crate::Level;
use crate::multiversion::{ELEMENTS_PER_TASK, multiversion};

/// Fills `out` with a dropout mask: each element `1/keep` with probability `keep`, else 0
/// (all 0 when `keep` is 0). Element `i` depends only on `seed` and `i` (SplitMix64's
/// finalizer of `seed + i·φ`), so the mask is the same however the work is split over
/// threads. At [`Level::active`].
pub fn dropout_mask(seed: u64, keep: f32, out: &mut [f32]) {
    dropout_mask_at(Level::active(), seed, keep, out)
}

/// [`dropout_mask`] at a given level (tests force each one).
pub fn dropout_mask_at(level: Level, seed: u64, keep: f32, out: &mut [f32]) {
    assert!(
        (0.0..=1.0).contains(&keep),
        "dropout_mask: keep probability {keep} is not in [0, 1]"
    );
    // Keep when the hash's top 32 bits fall below keep · 2³².
    let threshold = (keep as f64 * 4_294_967_296.0) as u64;
    let scale = if keep > 0.0 { 1.0 / keep } else { 0.0 };
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = (task * ELEMENTS_PER_TASK) as u64;
            mask_chunk(level, seed, first, threshold, scale, chunk)
        });
}

multiversion! {
    fn mask_chunk(seed: u64, first: u64, threshold: u64, scale: f32, out: &mut [f32]) = mask_portable;
}

#[inline(always)]
fn mask_portable(seed: u64, first: u64, threshold: u64, scale: f32, out: &mut [f32]) {
    for (i, v) in out.iter_mut().enumerate() {
        let mut z = seed.wrapping_add((first + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *v = if (z >> 32) < threshold { scale } else { 0.0 };
    }
}
