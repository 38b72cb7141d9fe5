//! AVX-512F: 16-lane vectors, masked loads and stores for the tails.

use std::arch::x86_64::*;
use std::ops::Range;

use super::vector::combine_terms;
use super::{prefetch_ahead, Init, Picked, Store, Vector};
use crate::element::{Bf16, Element};

/// AVX-512F (and FMA).
pub(crate) struct Avx512;

/// How an element type's rows are read here. Reachable outside the crate only as a bound of
/// [`Element`]; [`Lanes::combine128`] takes crate-private types, so it cannot be called there.
#[allow(private_interfaces)]
pub trait Lanes: Sized {
    /// Running sums of a lone dot product ([`Vector::dot`]), 16 lanes each, and so the elements of
    /// one of its steps over 16: 2 or 4. Enough to hide the fused adds' latency; rows that take
    /// more instructions to widen need fewer.
    const DOT_SUMS: usize;

    /// The lanes of `m` (its low bits, all of them or a tail) of the 16 elements at `p` as f32,
    /// zeros in the others.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA; the lanes of `m` at `p` are readable.
    unsafe fn load16(p: *const Self, m: __mmask16) -> __m512;

    /// 128 columns of `combine` from column `i`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA; the columns lie within the output, the init row and the
    /// first `k` picked rows (checked by `combine_terms`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn combine128(
        py: *mut f32,
        init: Init,
        i: usize,
        alpha: &[f32],
        x: &Picked<Self>,
        k: usize,
        store: Store,
    );
}

#[allow(private_interfaces)]
impl Lanes for f32 {
    const DOT_SUMS: usize = 4;

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn load16(p: *const f32, m: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(m, p)
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn combine128(
        py: *mut f32,
        init: Init,
        i: usize,
        alpha: &[f32],
        x: &Picked<f32>,
        k: usize,
        store: Store,
    ) {
        combine_block::<8, f32>(py, init, i, alpha, x, k, store)
    }
}

#[allow(private_interfaces)]
impl Lanes for Bf16 {
    const DOT_SUMS: usize = 2;

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn load16(p: *const Bf16, m: __mmask16) -> __m512 {
        if m == 0xffff {
            widen16(p)
        } else {
            // AVX-512F has no masked 16-bit load: the tail goes through a small buffer.
            let mut buf = [Bf16(0); 16];
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), m.count_ones() as usize);
            widen16(buf.as_ptr())
        }
    }

    /// A 512-bit load holds 32 bf16, whose even elements a 16-bit shift widens and whose odd ones a
    /// mask does, so each weight costs a third of the instructions of widening 16 at a time (a
    /// zero-extension is a cross-lane shuffle). Even and odd columns are summed apart and
    /// interleaved once, before the store; each column's sum is the same sequence of fused adds as
    /// [`combine_block`]'s.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn combine128(
        py: *mut f32,
        init: Init,
        i: usize,
        alpha: &[f32],
        x: &Picked<Bf16>,
        k: usize,
        store: Store,
    ) {
        // Output lane m of 16 from (even, odd) lane m / 2 (+ 8 for the upper half), and back.
        let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi_idx =
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let high_half = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut even = [_mm512_setzero_ps(); 4];
        let mut odd = [_mm512_setzero_ps(); 4];
        let from = match init {
            Init::Zero => None,
            Init::Keep => Some(py as *const f32),
            Init::From(b) => Some(b.as_ptr()),
        };
        if let Some(b) = from {
            for q in 0..4 {
                let lo = _mm512_loadu_ps(b.add(i + 32 * q));
                let hi = _mm512_loadu_ps(b.add(i + 32 * q + 16));
                even[q] = _mm512_permutex2var_ps(lo, even_idx, hi);
                odd[q] = _mm512_permutex2var_ps(lo, odd_idx, hi);
            }
        }
        for j in 0..k {
            let va = _mm512_set1_ps(*alpha.get_unchecked(j));
            let px = x.row_ptr(j).add(i);
            for q in 0..4 {
                let v = _mm512_loadu_si512(px.add(32 * q).cast());
                let e = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                let o = _mm512_castsi512_ps(_mm512_and_si512(v, high_half));
                even[q] = _mm512_fmadd_ps(va, e, even[q]);
                odd[q] = _mm512_fmadd_ps(va, o, odd[q]);
            }
        }
        let stream = store == Store::Streaming && (py.add(i) as usize).is_multiple_of(64);
        for q in 0..4 {
            let lo = _mm512_permutex2var_ps(even[q], lo_idx, odd[q]);
            let hi = _mm512_permutex2var_ps(even[q], hi_idx, odd[q]);
            let p = py.add(i + 32 * q);
            if stream {
                _mm512_stream_ps(p, lo);
                _mm512_stream_ps(p.add(16), hi);
            } else {
                _mm512_storeu_ps(p, lo);
                _mm512_storeu_ps(p.add(16), hi);
            }
        }
    }
}

/// Sixteen bf16 at `p` widened to f32.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn widen16(p: *const Bf16) -> __m512 {
    let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
}

impl Vector for Avx512 {
    #[inline(always)]
    fn dot<E: Element>(a: &[f32], w: &[E]) -> f32 {
        // SAFETY: only instantiated inside functions compiled with `avx512f,fma`, which run only
        // with an `Isa` made after detecting both; loads are masked to `n = min(len)` elements.
        unsafe { dot_stepped(a, w, || {}) }
    }

    #[inline(always)]
    fn axpy<E: Element>(alpha: f32, v: &[E], y: &mut [f32]) {
        // SAFETY: as for `dot`.
        unsafe { axpy(alpha, v, y) }
    }

    #[inline(always)]
    fn dot_axpy<E: Element>(a: &[f32], w: &[E], alpha: f32, v: &[E], y: &mut [f32]) -> f32 {
        // SAFETY: as for `dot`; the dot product reads `min(len)` elements of `a` and `w`, the
        // update `min(len)` of `v` and `y`.
        unsafe { dot_axpy(a, w, alpha, v, y) }
    }

    #[inline(always)]
    fn dot4<E: Element>(a: [&[f32]; 4], w: [&[E]; 4], ahead: bool) -> [f32; 4] {
        // SAFETY: as for `dot`; each pair is read up to the shortest length of the eight slices.
        unsafe { dots::<E, 4>(a, w, ahead) }
    }

    #[inline(always)]
    fn dots<E: Element, const R: usize, const N: usize>(
        a: [&[f32]; R],
        w: [&[E]; N],
        ahead: bool,
    ) -> [[f32; N]; R] {
        // SAFETY: as for `dot`; every row is read up to the shortest length of all the slices.
        unsafe { dots_all(a, w, ahead) }
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

/// The mask of the first `left` (at most 16) lanes.
#[inline(always)]
fn lanes(left: usize) -> __mmask16 {
    if left == 16 {
        0xffff
    } else {
        (1u16 << left) - 1
    }
}

/// `a . w` in `E::DOT_SUMS` running sums, `16 * E::DOT_SUMS` elements a step, calling `between`
/// after each step (other work interleaved with the dot product's loads, its sums unchanged), then
/// masked 16-lane steps into the first sum for the rest.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dot_stepped<E: Element>(a: &[f32], w: &[E], mut between: impl FnMut()) -> f32 {
    let n = a.len().min(w.len());
    let (pa, pw) = (a.as_ptr(), w.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 16 * E::DOT_SUMS <= n {
        for (k, s) in acc.iter_mut().enumerate().take(E::DOT_SUMS) {
            *s = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16 * k)),
                E::load16(pw.add(i + 16 * k), 0xffff),
                *s,
            );
        }
        i += 16 * E::DOT_SUMS;
        between();
    }
    while i < n {
        let left = (n - i).min(16);
        let m = lanes(left);
        acc[0] = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(m, pa.add(i)),
            E::load16(pw.add(i), m),
            acc[0],
        );
        i += left;
    }
    let sum = match E::DOT_SUMS {
        2 => _mm512_add_ps(acc[0], acc[1]),
        _ => _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])),
    };
    _mm512_reduce_add_ps(sum)
}

/// `y += alpha * v`, 16 lanes a step, the last masked: per element the fused add of [`combine`]
/// with one term.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn axpy<E: Element>(alpha: f32, v: &[E], y: &mut [f32]) {
    let n = v.len().min(y.len());
    let (pv, py) = (v.as_ptr(), y.as_mut_ptr());
    let va = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i < n {
        let left = (n - i).min(16);
        let m = lanes(left);
        let u = _mm512_fmadd_ps(
            va,
            E::load16(pv.add(i), m),
            _mm512_maskz_loadu_ps(m, py.add(i)),
        );
        _mm512_mask_storeu_ps(py.add(i), m, u);
        i += left;
    }
}

/// [`dot_stepped`] interleaved with [`axpy`]: each step of the dot product is followed by one of the
/// update, as many elements, while both have steps left; the sums are those of the two apart.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dot_axpy<E: Element>(a: &[f32], w: &[E], alpha: f32, v: &[E], y: &mut [f32]) -> f32 {
    let m = v.len().min(y.len());
    let (pv, py) = (v.as_ptr(), y.as_mut_ptr());
    let va = _mm512_set1_ps(alpha);
    let step = 16 * E::DOT_SUMS;
    let mut j = 0;
    let dot = dot_stepped(a, w, || {
        if j + step <= m {
            for q in 0..E::DOT_SUMS {
                let at = py.add(j + 16 * q);
                let u = _mm512_fmadd_ps(
                    va,
                    E::load16(pv.add(j + 16 * q), 0xffff),
                    _mm512_loadu_ps(at),
                );
                _mm512_storeu_ps(at, u);
            }
            j += step;
        }
    });
    axpy(alpha, &v[j..m], &mut y[j..m]);
    dot
}

/// Four independent dot products `a[k] . w[k]`, interleaved, one running sum each, 16 elements a
/// step: the sums [`dots_all`] makes, so that a row routed in a group, or walking alone beside
/// others, gets the same logits.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dots<E: Element, const K: usize>(a: [&[f32]; K], w: [&[E]; K], ahead: bool) -> [f32; K] {
    let n = a
        .iter()
        .map(|s| s.len())
        .chain(w.iter().map(|s| s.len()))
        .min()
        .unwrap_or(0);
    let mut acc = [_mm512_setzero_ps(); K];
    // Whole steps with a constant mask (plain loads), then one masked step for the tail: the sums
    // of masking every step, for fewer instructions a step.
    let mut step = |i: usize, m: __mmask16| {
        for k in 0..K {
            if ahead {
                prefetch_ahead(a[k].as_ptr(), i);
            }
            acc[k] = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, a[k].as_ptr().add(i)),
                E::load16(w[k].as_ptr().add(i), m),
                acc[k],
            );
        }
    };
    let whole = n - n % 16;
    for i in (0..whole).step_by(16) {
        step(i, 0xffff);
    }
    if whole < n {
        step(whole, lanes(n - whole));
    }
    std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
}

/// The body of [`Vector::dots`]: each `w` row's 16 lanes are loaded once a step for all `R` rows.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dots_all<E: Element, const R: usize, const N: usize>(
    a: [&[f32]; R],
    w: [&[E]; N],
    ahead: bool,
) -> [[f32; N]; R] {
    let n = a
        .iter()
        .map(|s| s.len())
        .chain(w.iter().map(|s| s.len()))
        .min()
        .unwrap_or(0);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    // As in `dots`: whole steps, then the tail's masked step.
    let mut step = |i: usize, m: __mmask16| {
        let wv: [__m512; N] = std::array::from_fn(|j| E::load16(w[j].as_ptr().add(i), m));
        for r in 0..R {
            if ahead {
                prefetch_ahead(a[r].as_ptr(), i);
            }
            let x = _mm512_maskz_loadu_ps(m, a[r].as_ptr().add(i));
            for j in 0..N {
                acc[r][j] = _mm512_fmadd_ps(x, wv[j], acc[r][j]);
            }
        }
    };
    let whole = n - n % 16;
    for i in (0..whole).step_by(16) {
        step(i, 0xffff);
    }
    if whole < n {
        step(whole, lanes(n - whole));
    }
    std::array::from_fn(|r| std::array::from_fn(|j| _mm512_reduce_add_ps(acc[r][j])))
}

/// The body of `combine`: 128 columns at a time as the element type does them, then 64 in four
/// chains of fused adds, then masked 16-lane steps.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,fma")]
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
    while i + 128 <= cols.end {
        E::combine128(py, init, i, alpha, &x, k, store);
        i += 128;
    }
    while i + 64 <= cols.end {
        combine_block::<4, E>(py, init, i, alpha, &x, k, store);
        i += 64;
    }
    while i < cols.end {
        let left = (cols.end - i).min(16);
        let m = lanes(left);
        let mut acc = match init {
            Init::Zero => _mm512_setzero_ps(),
            Init::Keep => _mm512_maskz_loadu_ps(m, py.add(i)),
            Init::From(b) => _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)),
        };
        for j in 0..k {
            acc = _mm512_fmadd_ps(
                _mm512_set1_ps(*alpha.get_unchecked(j)),
                E::load16(x.row_ptr(j).add(i), m),
                acc,
            );
        }
        if left == 16 && store == Store::Streaming && (py.add(i) as usize).is_multiple_of(64) {
            _mm512_stream_ps(py.add(i), acc);
        } else {
            _mm512_mask_storeu_ps(py.add(i), m, acc);
        }
        i += left;
    }
}

/// `Q` 16-lane columns of `combine` from column `i`: `Q` independent chains of fused adds, enough to
/// cover the adds' latency.
#[inline]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn combine_block<const Q: usize, E: Element>(
    py: *mut f32,
    init: Init,
    i: usize,
    alpha: &[f32],
    x: &Picked<E>,
    k: usize,
    store: Store,
) {
    let mut acc = [_mm512_setzero_ps(); Q];
    match init {
        Init::Zero => {}
        Init::Keep => {
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(py.add(i + 16 * q));
            }
        }
        Init::From(b) => {
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(b.as_ptr().add(i + 16 * q));
            }
        }
    }
    for j in 0..k {
        let va = _mm512_set1_ps(*alpha.get_unchecked(j));
        let px = x.row_ptr(j).add(i);
        for (q, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(va, E::load16(px.add(16 * q), 0xffff), *a);
        }
    }
    if store == Store::Streaming && (py.add(i) as usize).is_multiple_of(64) {
        for (q, a) in acc.iter().enumerate() {
            _mm512_stream_ps(py.add(i + 16 * q), *a);
        }
    } else {
        for (q, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(py.add(i + 16 * q), *a);
        }
    }
}
