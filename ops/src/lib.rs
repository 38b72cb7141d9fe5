//! Kernels for fff: plain slices in, slices out, no graph types.
//!
//! Every kernel states its layout contract in its doc comment. Callers (the runtime and the compiler's
//! evaluator) are responsible for passing slices of the stated lengths; kernels check those lengths with
//! `assert!` only where a wrong length would otherwise read out of bounds in `unsafe` code.

pub mod activation;
#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
pub mod element;
pub mod fff;
pub mod matmul;
pub mod norm;
pub mod panels;
pub mod permute;
pub mod quant;
pub mod simd;
pub mod softmax;
pub mod threads;
