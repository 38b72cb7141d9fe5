//! Activation rows quantised at run time, per row, as the kernels read them.

use rayon::prelude::*;

use super::pack::{code, scale_of};
#[cfg(target_arch = "x86_64")]
use super::rows_x86;
use super::GROUP;
#[cfg(target_arch = "x86_64")]
use crate::simd::{Isa, Kind};

/// Rows quantised per row ([`super`] describes the scheme): codes offset by 128 as `u8`, rows of
/// `k` rounded up to whole groups (padded with 128, a zero), and one scale per row. Reusable: each
/// [`QuantRows::quantize`] keeps the buffers' capacity.
#[derive(Clone, Debug, Default)]
pub struct QuantRows {
    rows: usize,
    k: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
}

/// Rows quantised on the pool only when there are at least this many values.
const PARALLEL_VALUES: usize = 1 << 16;

impl QuantRows {
    /// Quantises the row-major `[rows, k]` values `x`, replacing what was held.
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        assert_eq!(
            Some(x.len()),
            rows.checked_mul(k),
            "QuantRows::quantize: x is not [rows, k]"
        );
        let stride = k.div_ceil(GROUP) * GROUP;
        self.rows = rows;
        self.k = k;
        // Every byte is written below: resizing keeps the old contents rather than filling.
        self.data.resize(rows * stride, 128);
        self.scales.resize(rows, 0.0);
        if k == 0 {
            self.scales.fill(0.0);
            return;
        }
        let each = |((x, codes), s): ((&[f32], &mut [u8]), &mut f32)| *s = quantize_row(x, codes);
        if crate::threads::available() > 1 && x.len() >= PARALLEL_VALUES {
            let min = (PARALLEL_VALUES / 4 / k).max(1);
            x.par_chunks_exact(k)
                .zip(self.data.par_chunks_exact_mut(stride))
                .zip(&mut self.scales)
                .with_min_len(min)
                .for_each(each);
        } else {
            x.chunks_exact(k)
                .zip(self.data.chunks_exact_mut(stride))
                .zip(&mut self.scales)
                .for_each(each);
        }
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row before padding.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes per row: `k` rounded up to a multiple of [`GROUP`].
    pub fn stride(&self) -> usize {
        self.k.div_ceil(GROUP) * GROUP
    }

    /// The codes, `stride` per row.
    pub fn codes(&self) -> &[u8] {
        &self.data
    }

    /// One scale per row.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
}

/// Quantises one row `x` into `codes` (`x.len()` rounded up to whole groups; the padding is set to
/// 128) and returns its scale: for producers that write rows of a [`QuantRows`]'s layout
/// themselves.
pub fn quantize_row(x: &[f32], codes: &mut [u8]) -> f32 {
    assert_eq!(
        codes.len(),
        x.len().div_ceil(GROUP) * GROUP,
        "quantize_row: codes are not the row rounded up to whole groups"
    );
    let (codes, padding) = codes.split_at_mut(x.len());
    padding.fill(128);
    let scale = scale_of(max_abs_bits(x));
    if scale > 0.0 {
        encode(x, scale, codes);
    } else {
        // Zero, underflowed and non-finite rows.
        codes.fill(128);
    }
    scale
}

/// The largest bits of `|v|` over `x`: as integers the magnitudes of floats order as the floats
/// do, infinity above every finite one and NaN above infinity, so one integer maximum finds the
/// largest magnitude and whether any value is not finite.
pub(super) fn max_abs_bits(x: &[f32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    match Isa::best().kind() {
        // SAFETY: `Isa::best` reports AVX-512 only after detecting AVX-512F.
        Kind::Avx512 => return unsafe { rows_x86::max_abs_bits_avx512(x) },
        // SAFETY: `Isa::best` reports AVX2 only after detecting AVX2.
        Kind::Avx2Fma => return unsafe { rows_x86::max_abs_bits_avx2(x) },
        _ => {}
    }
    x.iter()
        .map(|v| v.to_bits() & 0x7fff_ffff)
        .max()
        .unwrap_or(0)
}

/// Codes + 128 of the values `x` at the positive finite `scale`.
fn encode(x: &[f32], scale: f32, codes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    match Isa::best().kind() {
        // SAFETY: `Isa::best` reports AVX-512 only after detecting AVX-512F.
        Kind::Avx512 => return unsafe { rows_x86::encode_avx512(x, scale, codes) },
        // SAFETY: `Isa::best` reports AVX2 only after detecting AVX2.
        Kind::Avx2Fma => return unsafe { rows_x86::encode_avx2(x, scale, codes, encode_scalar) },
        _ => {}
    }
    encode_scalar(x, scale, codes)
}

pub(super) fn encode_scalar(x: &[f32], scale: f32, codes: &mut [u8]) {
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (code(v, scale) + 128) as u8;
    }
}
