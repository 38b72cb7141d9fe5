//! Weight quantisation and the packed layout every kernel reads in place.

use super::{COLS, GROUP, MAX_K};

/// Bytes of packed codes for a `[k, n]` weight matrix: `ceil(n / 64)` panels of `ceil(k / 4)`
/// groups of `64 * 4` codes. Panics if that overflows `usize`.
pub fn packed_len(k: usize, n: usize) -> usize {
    checked_packed_len(k, n).expect("packed_len: size overflows usize")
}

fn checked_packed_len(k: usize, n: usize) -> Option<usize> {
    n.div_ceil(COLS)
        .checked_mul(k.div_ceil(GROUP))?
        .checked_mul(COLS * GROUP)
}

/// The scale of a row or column whose largest magnitude has the bits `max_bits` (of `|v|`): that
/// magnitude / 127; NaN when it is not finite; 0 when it is 0 or so small that the scale
/// underflows (the values are then all taken as 0).
#[inline(always)]
pub(super) fn scale_of(max_bits: u32) -> f32 {
    if max_bits >= f32::INFINITY.to_bits() {
        return f32::NAN;
    }
    f32::from_bits(max_bits) / 127.0
}

/// `v / scale` rounded half to even and clamped to [-127, 127], for a positive finite `scale`.
#[inline(always)]
pub(super) fn code(v: f32, scale: f32) -> i32 {
    (v / scale).round_ties_even().clamp(-127.0, 127.0) as i32
}

/// Quantised weights as the compiler makes them: owned, packed ([`super`] describes the scheme).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedI8 {
    /// The codes, [`packed_len`]`(k, n)` of them.
    pub data: Vec<i8>,
    /// One per column (`n`).
    pub scales: Vec<f32>,
    /// The sum of each column's codes (`n`).
    pub col_sums: Vec<i32>,
    pub k: usize,
    pub n: usize,
}

impl PackedI8 {
    /// The weights as the kernels read them.
    pub fn view(&self) -> I8Weights<'_> {
        I8Weights::new(&self.data, &self.scales, &self.col_sums, self.k, self.n)
            .expect("PackedI8 holds the lengths of its k and n")
    }
}

/// Quantises the row-major `[k, n]` weights `w` per column and packs the codes.
pub fn quantize_pack(w: &[f32], k: usize, n: usize) -> PackedI8 {
    assert_eq!(
        Some(w.len()),
        k.checked_mul(n),
        "quantize_pack: weights are not [k, n]"
    );
    assert!(k <= MAX_K, "quantize_pack: k = {k} is above {MAX_K}");
    let mut max_bits = vec![0u32; n];
    for row in w.chunks_exact(n.max(1)) {
        for (m, &v) in max_bits.iter_mut().zip(row) {
            *m = (*m).max(v.to_bits() & 0x7fff_ffff);
        }
    }
    let scales: Vec<f32> = max_bits.into_iter().map(scale_of).collect();
    let groups = k.div_ceil(GROUP);
    let mut data = vec![0i8; packed_len(k, n)];
    let mut col_sums = vec![0i32; n];
    for (c, (&scale, sum)) in scales.iter().zip(&mut col_sums).enumerate() {
        // Zero, NaN and underflowed scales leave the column's codes 0.
        if scale.is_nan() || scale <= 0.0 {
            continue;
        }
        let (p, j) = (c / COLS, c % COLS);
        for kk in 0..k {
            let q = code(w[kk * n + c], scale);
            *sum += q;
            let (g, t) = (kk / GROUP, kk % GROUP);
            data[((p * groups + g) * COLS + j) * GROUP + t] = q as i8;
        }
    }
    PackedI8 {
        data,
        scales,
        col_sums,
        k,
        n,
    }
}

/// Packs the row-major `[k, n]` int8 codes `codes` as they are (no quantisation: weights that an
/// ONNX model brings already quantised, zero point 0, any code in [-128, 127]) with one `scales`
/// per column, and sums each column's codes: at compile time, for [`super::gemm_u8`]. `None`
/// unless `codes` holds `k n` values and `scales` `n`, and `k` is at most [`MAX_K`].
///
/// Codes of -128 are for [`super::gemm_u8`] only: [`super::gemm_i8`]'s AVX2 kernel moves signs
/// onto the codes, which -128 does not survive.
pub fn pack_codes(codes: &[i8], scales: &[f32], k: usize, n: usize) -> Option<PackedI8> {
    if k.checked_mul(n) != Some(codes.len()) || scales.len() != n || k > MAX_K {
        return None;
    }
    let groups = k.div_ceil(GROUP);
    let mut data = vec![0i8; checked_packed_len(k, n)?];
    let mut col_sums = vec![0i32; n];
    for (kk, row) in codes.chunks_exact(n.max(1)).enumerate() {
        let (g, t) = (kk / GROUP, kk % GROUP);
        for (c, (&q, sum)) in row.iter().zip(&mut col_sums).enumerate() {
            // At most 128 k <= 128 MAX_K in magnitude: no overflow.
            *sum += q as i32;
            let (p, j) = (c / COLS, c % COLS);
            data[((p * groups + g) * COLS + j) * GROUP + t] = q;
        }
    }
    Some(PackedI8 {
        data,
        scales: scales.to_vec(),
        col_sums,
        k,
        n,
    })
}

/// Quantised weights as the kernels read them, borrowed (from a [`PackedI8`], or from a plan in
/// memory).
#[derive(Clone, Copy, Debug)]
pub struct I8Weights<'a> {
    data: &'a [i8],
    scales: &'a [f32],
    col_sums: &'a [i32],
    k: usize,
    n: usize,
}

impl<'a> I8Weights<'a> {
    /// `None` unless `data` holds [`packed_len`]`(k, n)` codes, `scales` and `col_sums` one value
    /// per column, `k` is at most [`MAX_K`] and every column sum lies within `128 k` in
    /// magnitude. The sums must be those of the codes, as [`quantize_pack`] and [`pack_codes`]
    /// make them: the kernels subtract `zero col_sums`, but [`super::gemm_i8`]'s AVX2 one does
    /// not read them, so wrong sums give wrong (but defined) results that differ by kernel.
    pub fn new(
        data: &'a [i8],
        scales: &'a [f32],
        col_sums: &'a [i32],
        k: usize,
        n: usize,
    ) -> Option<Self> {
        let fits = k <= MAX_K
            && checked_packed_len(k, n) == Some(data.len())
            && scales.len() == n
            && col_sums.len() == n
            && col_sums
                .iter()
                .all(|&s| s.unsigned_abs() as usize <= 128 * k);
        fits.then_some(I8Weights {
            data,
            scales,
            col_sums,
            k,
            n,
        })
    }

    /// The same codes with other column scales (`None` unless one per column): for a product
    /// whose scales are known only at run time, such as the activations' scale times the
    /// weights' (computed once per column by the caller, as an ONNX graph does).
    pub fn with_scales(self, scales: &'a [f32]) -> Option<Self> {
        (scales.len() == self.n).then_some(I8Weights { scales, ..self })
    }

    /// Rows of the weights (the product's depth).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the weights (of the output).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The packed codes.
    pub fn data(&self) -> &'a [i8] {
        self.data
    }

    /// One scale per column.
    pub fn scales(&self) -> &'a [f32] {
        self.scales
    }

    /// One code sum per column.
    pub fn col_sums(&self) -> &'a [i32] {
        self.col_sums
    }
}
