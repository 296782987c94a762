//! # st-kernels
//!
//! CPU kernels for transformer encoders, on plain `f32` / `i8` slices, with no framework
//! types: the fast paths behind st-backbone's fused operations on the pure-Rust backend.
//!
//! Every kernel has a portable scalar version, which is the reference in tests and runs on
//! any CPU (aarch64 included), and SIMD versions chosen at run time from what the CPU
//! reports ([`Level::detected`]). `ST_KERNELS=scalar|avx2|avx-vnni|avx512|avx512-vnni` caps
//! the level, so tests (and users chasing a suspected kernel bug) can force each path in turn.
//! Stable Rust only: `std::arch` intrinsics behind `#[target_feature]`, no C, no nightly.

mod dispatch;
mod int8;

pub use dispatch::Level;
pub use int8::{QuantizedMatrix, linear_int8, linear_int8_at};
