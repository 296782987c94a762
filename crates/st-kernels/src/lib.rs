//! # st-kernels
//!
//! CPU kernels for transformer encoders, on plain `f32` / `i8` slices, with no framework
//! types: the fast paths behind st-backbone's fused operations on the pure-Rust backend.
//!
//! Every kernel has a portable scalar version, which is the reference in tests and runs on
//! any CPU (aarch64 included), and SIMD versions chosen at run time from what the CPU
//! reports ([`Level::detected`]). `ST_KERNELS=scalar|avx2|avx-vnni|avx512|avx512-vnni|amx` caps
//! the level, so tests (and users chasing a suspected kernel bug) can force each path in turn.
//! Stable Rust only: `std::arch` intrinsics behind `#[target_feature]`, no C, no nightly.
//!
//! fp32 kernels (each with an `_at(level, ..)` twin that forces a level):
//! - [`attention`]: multi-head self-attention read from and written to token-major rows, with
//!   an optional per-head position bias (MPNet).
//! - [`add_bias`]: bias add in place.
//! - [`bias_gelu`]: bias + exact GELU in place.
//! - [`bias_residual_layer_norm`]: bias + residual + LayerNorm in place.
//!
//! Training kernels (forward keeping what the backward needs, and the backward), same twins:
//! - [`gelu`] / [`gelu_backward`]: exact GELU and its derivative.
//! - [`residual_layer_norm_train`] / [`layer_norm_backward`]: residual + LayerNorm.
//! - [`attention_train`] / [`attention_backward`]: self-attention with dropout on its
//!   probabilities, token-major like [`attention`].
//! - [`dropout_mask`]: a dropout mask from a counter-based hash (thread-count independent).
//! - [`adamw`]: the optimizer's update of one parameter tensor, in place in one pass.
//!
//! [`linear_f32`], the fp32 projection (bias left to the kernel after it), runs the `gemm` crate's kernels, which pick their own
//! instruction set at run time (`ST_KERNELS` does not reach them).

mod adamw;
mod attention;
mod attention_train;
mod bias;
mod dispatch;
mod dropout;
mod gelu;
mod int8;
mod layer_norm;
mod linear;
mod math;
mod multiversion;

pub use adamw::{AdamWStep, adamw, adamw_at};
pub use attention::{AttentionShape, Qkv, ScoreBias, attention, attention_at};
pub use attention_train::{
    attention_backward, attention_backward_at, attention_train, attention_train_at,
};
pub use bias::{add_bias, add_bias_at};
pub use dispatch::Level;
pub use dropout::{dropout_mask, dropout_mask_at};
pub use gelu::{bias_gelu, bias_gelu_at, gelu, gelu_at, gelu_backward, gelu_backward_at};
pub use int8::{QuantizedMatrix, QuantizedTable, linear_int8, linear_int8_at, smoothing_factors};
pub use layer_norm::{
    LayerNormParams, bias_residual_layer_norm, bias_residual_layer_norm_at, layer_norm_backward,
    layer_norm_backward_at, residual_layer_norm_train, residual_layer_norm_train_at,
};
pub use linear::linear_f32;
