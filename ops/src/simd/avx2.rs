//! AVX2 + FMA: 8-lane vectors, four accumulators where a row has no others to interleave with.

use std::arch::x86_64::*;
use std::ops::Range;

use super::vector::combine_terms;
use super::{portable, prefetch_ahead, Init, Picked, Store, Vector};
use crate::element::{Bf16, Element};

/// AVX2 + FMA.
pub(crate) struct Avx2;

/// How an element type's rows are read here.
pub trait Lanes: Sized {
    /// Eight elements at `p` as f32.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `p` points to eight readable elements.
    unsafe fn load8(p: *const Self) -> __m256;

    /// `y += alpha * v`, over the shorter of the two.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    unsafe fn axpy(alpha: f32, v: &[Self], y: &mut [f32]);
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(
                py.add(i),
                _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))),
            );
            i += 8;
        }
        while i < n {
            *py.add(i) = alpha.mul_add(*px.add(i), *py.add(i));
            i += 1;
        }
    }
}

impl Lanes for Bf16 {
    /// The 16 bytes loaded into both halves of the register, then one byte shuffle puts each value
    /// in the upper half of its lane and zeros below: one vector operation where a zero-extension
    /// and a shift took two.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const Bf16) -> __m256 {
        const Z: i8 = -128;
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let to_upper = _mm256_setr_epi8(
            Z, Z, 0, 1, Z, Z, 2, 3, Z, Z, 4, 5, Z, Z, 6, 7, Z, Z, 8, 9, Z, Z, 10, 11, Z, Z, 12, 13,
            Z, Z, 14, 15,
        );
        _mm256_castsi256_ps(_mm256_shuffle_epi8(v, to_upper))
    }

    /// The plain sums (a lone row's emission of the levels above its last; the results it has
    /// always had).
    #[inline(always)]
    unsafe fn axpy(alpha: f32, v: &[Bf16], y: &mut [f32]) {
        portable::axpy(alpha, v, y)
    }
}

impl Vector for Avx2 {
    #[inline(always)]
    fn dot<E: Element>(a: &[f32], w: &[E]) -> f32 {
        // SAFETY: only instantiated inside functions compiled with `avx2,fma`, which run only with an
        // `Isa` made after detecting both; the reads stay within `n = min(len)` elements.
        unsafe { dot(a, w) }
    }

    #[inline(always)]
    fn axpy<E: Element>(alpha: f32, v: &[E], y: &mut [f32]) {
        // SAFETY: as for `dot`.
        unsafe { E::axpy(alpha, v, y) }
    }

    #[inline(always)]
    fn dot4<E: Element>(a: [&[f32]; 4], w: [&[E]; 4], ahead: bool) -> [f32; 4] {
        // SAFETY: as for `dot`; reads stay within the shortest slice.
        unsafe { dot4(a, w, ahead) }
    }

    #[inline(always)]
    fn dots<E: Element, const R: usize, const N: usize>(
        a: [&[f32]; R],
        w: [&[E]; N],
        ahead: bool,
    ) -> [[f32; N]; R] {
        // SAFETY: as for `dot4`.
        unsafe { dots(a, w, ahead) }
    }

    #[inline(always)]
    fn combine<E: Element>(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        x: Picked<E>,
        cols: Range<usize>,
        store: Store,
    ) {
        let k = combine_terms(y, init, alpha, &x, &cols);
        // SAFETY: as for `dot`; `combine_terms` checked that every access lies within the slices.
        unsafe { combine(y, init, alpha, x, cols, k, store) }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// `a . w` in four running sums, 32 elements a step, then eight at a time into the first, then the
/// tail one element at a time.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot<E: Element>(a: &[f32], w: &[E]) -> f32 {
    let n = a.len().min(w.len());
    let (pa, pw) = (a.as_ptr(), w.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, s) in acc.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8 * k)),
                E::load8(pw.add(i + 8 * k)),
                *s,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), E::load8(pw.add(i)), acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    tail(hsum256(sum), pa, pw, i, n)
}

/// The length every row of a set of dot products reaches.
#[inline(always)]
fn common_len<E>(a: &[&[f32]], b: &[&[E]]) -> usize {
    let a = a.iter().map(|s| s.len());
    a.chain(b.iter().map(|s| s.len())).min().unwrap_or(0)
}

/// The last `i..n` elements of `a . w` added one at a time to `total`, the lanes' sum.
#[inline(always)]
unsafe fn tail<E: Element>(total: f32, a: *const f32, w: *const E, i: usize, n: usize) -> f32 {
    (i..n).fold(total, |t, e| (*a.add(e)).mul_add((*w.add(e)).widen(), t))
}

/// Four independent dot products `a[k] . w[k]`, interleaved. One running sum per product, eight
/// elements a step, then the tail one element at a time: the sums [`dots`] makes, so that a row
/// routed in a group, or walking alone beside others, gets the same logits.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4<E: Element>(a: [&[f32]; 4], w: [&[E]; 4], ahead: bool) -> [f32; 4] {
    let n = common_len(&a, &w);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 8 <= n {
        for k in 0..4 {
            if ahead && i % 16 == 0 {
                prefetch_ahead(a[k].as_ptr(), i);
            }
            acc[k] = _mm256_fmadd_ps(
                _mm256_loadu_ps(a[k].as_ptr().add(i)),
                E::load8(w[k].as_ptr().add(i)),
                acc[k],
            );
        }
        i += 8;
    }
    std::array::from_fn(|k| tail(hsum256(acc[k]), a[k].as_ptr(), w[k].as_ptr(), i, n))
}

/// The body of [`Vector::dots`]: each `w` row's eight lanes are loaded once a step for all `R` rows;
/// the sums of [`dot4`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots<E: Element, const R: usize, const N: usize>(
    a: [&[f32]; R],
    w: [&[E]; N],
    ahead: bool,
) -> [[f32; N]; R] {
    let n = common_len(&a, &w);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let mut i = 0;
    while i + 8 <= n {
        let wv: [__m256; N] = std::array::from_fn(|j| E::load8(w[j].as_ptr().add(i)));
        for r in 0..R {
            if ahead && i % 16 == 0 {
                prefetch_ahead(a[r].as_ptr(), i);
            }
            let x = _mm256_loadu_ps(a[r].as_ptr().add(i));
            for j in 0..N {
                acc[r][j] = _mm256_fmadd_ps(x, wv[j], acc[r][j]);
            }
        }
        i += 8;
    }
    // Summed into a separate array first: with the sums taken inside the closures below, the
    // accumulators were kept in memory and stored back at every step, a store per multiply-add.
    let mut sums = [[0.0f32; N]; R];
    for (s, a) in sums.iter_mut().zip(&acc) {
        for (s, a) in s.iter_mut().zip(a) {
            *s = hsum256(*a);
        }
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|j| tail(sums[r][j], a[r].as_ptr(), w[j].as_ptr(), i, n))
    })
}

/// The body of `combine`: 32 columns at a time in four chains of fused adds, then one column at a
/// time.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn combine<E: Element>(
    y: &mut [f32],
    init: Init,
    alpha: &[f32],
    x: Picked<E>,
    cols: Range<usize>,
    k: usize,
    store: Store,
) {
    let py = y.as_mut_ptr();
    let mut i = cols.start;
    while i + 32 <= cols.end {
        let mut acc = [_mm256_setzero_ps(); 4];
        match init {
            Init::Zero => {}
            Init::Keep => {
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(py.add(i + 8 * q));
                }
            }
            Init::From(b) => {
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(b.as_ptr().add(i + 8 * q));
                }
            }
        }
        for j in 0..k {
            let va = _mm256_set1_ps(*alpha.get_unchecked(j));
            let px = x.row_ptr(j).add(i);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(va, E::load8(px.add(8 * q)), *a);
            }
        }
        if store == Store::Streaming && (py.add(i) as usize).is_multiple_of(32) {
            for (q, a) in acc.iter().enumerate() {
                _mm256_stream_ps(py.add(i + 8 * q), *a);
            }
        } else {
            for (q, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(py.add(i + 8 * q), *a);
            }
        }
        i += 32;
    }
    while i < cols.end {
        let mut acc = match init {
            Init::Zero => 0.0,
            Init::Keep => *py.add(i),
            Init::From(b) => *b.as_ptr().add(i),
        };
        for j in 0..k {
            acc = alpha
                .get_unchecked(j)
                .mul_add((*x.row_ptr(j).add(i)).widen(), acc);
        }
        *py.add(i) = acc;
        i += 1;
    }
}
