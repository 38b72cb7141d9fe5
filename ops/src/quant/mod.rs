//! Products with reduced-precision weights: int8 ([`int8`]) and bfloat16 ([`bf16`]).
//!
//! Both take f32 activations and write f32 results through the same [`Epilogue`]: the bias, an
//! activation and the residual are applied while each output tile is still in registers, so a
//! projection reads and writes its output once.

pub mod bf16;
pub mod int8;

use crate::activation::Activation;

/// What is applied to each product before it is stored:
/// `out[r][c] = act(product[r][c] + bias[c]) + (out[r][c] if accumulate)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// One value per output column.
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias, before the residual is added.
    pub activation: Option<Activation>,
    /// Add the result onto what `out` holds (a residual) instead of overwriting it.
    pub accumulate: bool,
}
