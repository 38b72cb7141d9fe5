//! Instruction sets and the run-time choice between them. Kernels are written once as
//! `#[inline(always)]` bodies over plain slices; thin wrappers compile that body with each instruction
//! set's target features, and [`Isa::best`] picks the widest the CPU has, once. Nothing is compiled with
//! `target-cpu=native`, so the binaries run on any x86-64 or aarch64 machine.

use std::sync::OnceLock;

/// The instruction sets kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 with AVX-512F (and FMA).
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// aarch64 with NEON (always present there).
    Neon,
    /// Whatever the baseline target has: SSE2 on x86-64.
    Portable,
}

impl Isa {
    /// The widest instruction set this CPU supports, detected once.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| Isa::available()[0])
    }

    /// Every instruction set this CPU supports, widest first (tests run kernels on each).
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2Fma);
            }
        }
        #[cfg(target_arch = "aarch64")]
        v.push(Isa::Neon);
        v.push(Isa::Portable);
        v
    }
}

/// Defines `fn $name(args)` that runs `$body`, an `#[inline(always)]` function taking the same
/// arguments, compiled for the instruction set [`Isa::best`] picked: plain loops in the body are then
/// vectorised for that set. For kernels written without the [`Vector`] trait.
macro_rules! on_best_isa {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::simd::Isa::best() {
                    // SAFETY: `Isa::best` reports AVX-512 only after detecting AVX-512F and FMA.
                    $crate::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: `Isa::best` reports AVX2 only after detecting AVX2 and FMA.
                    $crate::simd::Isa::Avx2Fma => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use on_best_isa;

/// A bf16 bit pattern widened to the f32 it denotes (exact: bf16 is the top half of an f32).
#[inline(always)]
pub fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// Where [`Vector::combine`] starts each output element.
#[derive(Clone, Copy, Debug)]
pub enum Init<'a> {
    /// From zero.
    Zero,
    /// From what the output already holds (a later tree adding into the row).
    Keep,
    /// From these values (the output bias).
    From(&'a [f32]),
}

/// How [`Vector::combine`] writes its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// Through the caches: the output is read again soon.
    Cached,
    /// Around the caches (non-temporal stores) for the whole cache lines of the output that a step
    /// writes, through them for the rest; a hint that instruction sets without such stores ignore. For
    /// outputs far larger than the caches: their lines would evict what the kernel reads, and each
    /// would be read from memory before being written. Callers start column ranges at line boundaries
    /// where they can, and call [`store_fence`] before the output is read on another thread.
    Streaming,
}

/// Orders earlier streaming stores before later stores, so another thread that learns of them sees
/// the data.
#[inline]
pub fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SFENCE is part of the x86-64 baseline (SSE) and touches no memory.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Rows picked from a row-major matrix of `width` columns: row `k` is
/// `matrix[idx[k] * width..][..width]`. How [`Vector::combine`] takes a path's weight rows: indices
/// instead of slices, so a call costs no slice building when a kernel combines column block by block.
#[derive(Clone, Copy, Debug)]
pub struct Picked<'a, T> {
    pub matrix: &'a [T],
    pub width: usize,
    pub idx: &'a [u32],
}

impl<'a, T> Picked<'a, T> {
    /// Picked row `k`.
    pub fn row(&self, k: usize) -> &'a [T] {
        let start = self.idx[k] as usize * self.width;
        &self.matrix[start..start + self.width]
    }
}

/// Checks a [`Vector::combine`] call and returns how many terms it sums. Panics unless `cols` lies
/// within `y`, the init row and the picked rows, and every picked row lies within its matrix: after
/// this, the SIMD bodies read and write without further checks.
fn combine_terms<T>(
    y: &[f32],
    init: Init,
    alpha: &[f32],
    x: &Picked<T>,
    cols: &std::ops::Range<usize>,
) -> usize {
    assert!(
        cols.start <= cols.end && cols.end <= y.len() && cols.end <= x.width,
        "combine columns {cols:?} outside the rows"
    );
    if let Init::From(b) = init {
        assert!(
            cols.end <= b.len(),
            "combine columns {cols:?} outside the init row"
        );
    }
    let k = alpha.len().min(x.idx.len());
    for &r in &x.idx[..k] {
        let end = (r as usize + 1).checked_mul(x.width);
        assert!(
            end.is_some_and(|e| e <= x.matrix.len()),
            "picked row {r} outside its matrix"
        );
    }
    k
}

/// The vector primitives a kernel is written against; one implementation per instruction set. Kernels
/// are generic over this trait and `#[inline(always)]`, and are instantiated inside functions compiled
/// with the matching target features.
pub trait Vector {
    /// `a . b`, free to sum in several running sums (for a row with no others to interleave with);
    /// [`Vector::dot4`] and [`Vector::dots`] sum each product in the same order as each other.
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `y += alpha * x`.
    fn axpy(alpha: f32, x: &[f32], y: &mut [f32]);

    /// `a . w`, summed as [`Vector::dot`] sums it, while `y += alpha * v`: a lone row routes one level
    /// of its tree while it emits the level above, so that the output weights stream in during the
    /// waits of the dot product, whose next row of weights depends on its result.
    #[inline(always)]
    fn dot_axpy(a: &[f32], w: &[f32], alpha: f32, v: &[f32], y: &mut [f32]) -> f32 {
        Self::axpy(alpha, v, y);
        Self::dot(a, w)
    }

    /// [`Vector::dot_axpy`] with `w` and `v` in bf16 (bit patterns).
    #[inline(always)]
    fn dot_axpy_bf16(a: &[f32], w: &[u16], alpha: f32, v: &[u16], y: &mut [f32]) -> f32 {
        for (yv, &x) in y.iter_mut().zip(v) {
            *yv += alpha * bf16_to_f32(x);
        }
        Self::dot_bf16(a, w)
    }

    /// Four independent dot products `a[k] . b[k]`, interleaved so their loads overlap. With `ahead`,
    /// each `a` row is fetched into L1 a few lines ahead of its loads where the machine has a hint
    /// for it: for rows that come from beyond L2's reach of the hardware prefetchers.
    #[inline(always)]
    fn dot4(a: [&[f32]; 4], b: [&[f32]; 4], ahead: bool) -> [f32; 4] {
        let _ = ahead;
        std::array::from_fn(|k| Self::dot(a[k], b[k]))
    }

    /// Every dot product `a[r] . b[n]` of `R` rows with `N` rows, each row loaded once per step: how
    /// routing computes a node and both its children in one pass over the inputs. `ahead` as for
    /// [`Vector::dot4`].
    #[inline(always)]
    fn dots<const R: usize, const N: usize>(
        a: [&[f32]; R],
        b: [&[f32]; N],
        ahead: bool,
    ) -> [[f32; N]; R] {
        let _ = ahead;
        std::array::from_fn(|r| std::array::from_fn(|n| Self::dot(a[r], b[n])))
    }

    /// [`Vector::dots`] with the `b` rows in bf16.
    #[inline(always)]
    fn dots_bf16<const R: usize, const N: usize>(
        a: [&[f32]; R],
        b: [&[u16]; N],
        ahead: bool,
    ) -> [[f32; N]; R] {
        let _ = ahead;
        std::array::from_fn(|r| std::array::from_fn(|n| Self::dot_bf16(a[r], b[n])))
    }

    /// Four independent `y[k] += alpha[k] * x[k]`, interleaved.
    #[inline(always)]
    fn axpy4(alpha: [f32; 4], x: [&[f32]; 4], y: [&mut [f32]; 4]) {
        for ((a, xk), yk) in alpha.into_iter().zip(x).zip(y) {
            Self::axpy(a, xk, yk);
        }
    }

    /// `a . w` with `w` in bf16 (bit patterns), widened exactly to f32: activations keep full precision.
    #[inline(always)]
    fn dot_bf16(a: &[f32], w: &[u16]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (ac, wc) = (a.chunks_exact(8), w.chunks_exact(8));
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(wc.remainder())
            .map(|(x, &v)| x * bf16_to_f32(v))
            .sum();
        for (ca, cw) in ac.zip(wc) {
            for j in 0..8 {
                acc[j] += ca[j] * bf16_to_f32(cw[j]);
            }
        }
        (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
    }

    /// Four independent [`Vector::dot_bf16`]; `ahead` as for [`Vector::dot4`].
    #[inline(always)]
    fn dot4_bf16(a: [&[f32]; 4], w: [&[u16]; 4], ahead: bool) -> [f32; 4] {
        let _ = ahead;
        std::array::from_fn(|k| Self::dot_bf16(a[k], w[k]))
    }

    /// [`Vector::combine`] with the picked rows in bf16.
    #[inline(always)]
    fn combine_bf16(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        x: Picked<u16>,
        cols: std::ops::Range<usize>,
        store: Store,
    ) {
        let _ = store;
        let k = combine_terms(y, init, alpha, &x, &cols);
        let y = &mut y[cols.clone()];
        match init {
            Init::Zero => y.fill(0.0),
            Init::Keep => {}
            Init::From(b) => y.copy_from_slice(&b[cols.clone()]),
        }
        for (j, &a) in alpha[..k].iter().enumerate() {
            for (yv, &v) in y.iter_mut().zip(&x.row(j)[cols.clone()]) {
                *yv += a * bf16_to_f32(v);
            }
        }
    }

    /// `y[c] = init[c] + sum_k alpha[k] * x_k[c]` for the columns `c` in `cols`, where `x_k` is picked
    /// row `k`: a whole path of output rows summed in registers, so each output element is written
    /// once instead of once per neuron. `store` says whether `y` is written through the caches.
    /// Panics if `cols` reaches past `y`, the init row or the picked rows, or a picked row lies
    /// outside its matrix.
    #[inline(always)]
    fn combine(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        x: Picked<f32>,
        cols: std::ops::Range<usize>,
        store: Store,
    ) {
        let _ = store;
        let k = combine_terms(y, init, alpha, &x, &cols);
        let y = &mut y[cols.clone()];
        match init {
            Init::Zero => y.fill(0.0),
            Init::Keep => {}
            Init::From(b) => y.copy_from_slice(&b[cols.clone()]),
        }
        for (j, &a) in alpha[..k].iter().enumerate() {
            Self::axpy(a, &x.row(j)[cols.clone()], y);
        }
    }
}

/// Plain Rust: what the baseline target vectorises on its own.
pub struct Portable;

impl Vector for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(bc.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (ca, cb) in ac.zip(bc) {
            for j in 0..8 {
                acc[j] += ca[j] * cb[j];
            }
        }
        (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
    }

    #[inline(always)]
    fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv += alpha * xv;
        }
    }
}

/// Plain Rust with fused multiply-add: aarch64, where NEON and FMA are baseline.
pub struct PortableFma;

impl Vector for PortableFma {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 16];
        let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: f32 = ac
            .remainder()
            .iter()
            .zip(bc.remainder())
            .fold(0.0, |s, (x, y)| x.mul_add(*y, s));
        for (ca, cb) in ac.zip(bc) {
            for j in 0..16 {
                acc[j] = ca[j].mul_add(cb[j], acc[j]);
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    #[inline(always)]
    fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv = alpha.mul_add(*xv, *yv);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use std::ops::Range;

    use super::{bf16_to_f32, combine_terms, Init, Picked, Store, Vector};

    /// AVX2 + FMA: four 8-lane accumulators.
    pub struct Avx2;

    /// AVX-512F: four 16-lane accumulators, masked loads for the tail.
    pub struct Avx512;

    impl Vector for Avx2 {
        #[inline(always)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: only instantiated inside functions compiled with `avx2,fma`, which run only after
            // `Isa::available` detected both; the intrinsic reads stay within `n = min(len)` elements.
            unsafe { dot_avx2(a, b) }
        }

        #[inline(always)]
        fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
            // SAFETY: as for `dot`.
            unsafe { axpy_avx2(alpha, x, y) }
        }

        #[inline(always)]
        fn combine(
            y: &mut [f32],
            init: Init,
            alpha: &[f32],
            x: Picked<f32>,
            cols: Range<usize>,
            store: Store,
        ) {
            let k = combine_terms(y, init, alpha, &x, &cols);
            // SAFETY: as for `dot`; `combine_terms` checked that every access lies within the slices.
            unsafe {
                combine_avx2(
                    y,
                    init,
                    alpha,
                    x,
                    cols,
                    k,
                    store,
                    |p| _mm256_loadu_ps(p),
                    |p| *p,
                )
            }
        }

        #[inline(always)]
        fn dot_bf16(a: &[f32], w: &[u16]) -> f32 {
            // SAFETY: as for `dot`; reads stay within `n = min(len)` elements.
            unsafe { dot_bf16_avx2(a, w) }
        }

        #[inline(always)]
        fn dot4(a: [&[f32]; 4], b: [&[f32]; 4], ahead: bool) -> [f32; 4] {
            // SAFETY: as for `dot`; reads stay within the shortest slice.
            unsafe { dot4_avx2(a, b, ahead, |p| _mm256_loadu_ps(p), |p| *p) }
        }

        #[inline(always)]
        fn dot4_bf16(a: [&[f32]; 4], w: [&[u16]; 4], ahead: bool) -> [f32; 4] {
            // SAFETY: as for `dot4`.
            unsafe { dot4_avx2(a, w, ahead, |p| widen8(p), |p| bf16_to_f32(*p)) }
        }

        #[inline(always)]
        fn dots<const R: usize, const N: usize>(
            a: [&[f32]; R],
            b: [&[f32]; N],
            ahead: bool,
        ) -> [[f32; N]; R] {
            // SAFETY: as for `dot4`.
            unsafe { dots_avx2(a, b, ahead, |p| _mm256_loadu_ps(p), |p| *p) }
        }

        #[inline(always)]
        fn dots_bf16<const R: usize, const N: usize>(
            a: [&[f32]; R],
            b: [&[u16]; N],
            ahead: bool,
        ) -> [[f32; N]; R] {
            // SAFETY: as for `dot4`.
            unsafe { dots_avx2(a, b, ahead, |p| widen8(p), |p| bf16_to_f32(*p)) }
        }

        #[inline(always)]
        fn combine_bf16(
            y: &mut [f32],
            init: Init,
            alpha: &[f32],
            x: Picked<u16>,
            cols: Range<usize>,
            store: Store,
        ) {
            let k = combine_terms(y, init, alpha, &x, &cols);
            // SAFETY: as for `dot`; `combine_terms` checked that every access lies within the slices.
            unsafe {
                combine_avx2(
                    y,
                    init,
                    alpha,
                    x,
                    cols,
                    k,
                    store,
                    |p| widen8(p),
                    |p| bf16_to_f32(*p),
                )
            }
        }
    }

    impl Vector for Avx512 {
        #[inline(always)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: only instantiated inside functions compiled with `avx512f,fma`, which run only after
            // `Isa::available` detected both; loads are masked to `n = min(len)` elements.
            unsafe { dot_avx512(a, b) }
        }

        #[inline(always)]
        fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
            // SAFETY: as for `dot`.
            unsafe { axpy_avx512(alpha, x, y) }
        }

        #[inline(always)]
        fn dot_axpy(a: &[f32], w: &[f32], alpha: f32, v: &[f32], y: &mut [f32]) -> f32 {
            // SAFETY: as for `dot`; the dot product reads `min(len)` elements of `a` and `w`, the
            // update `min(len)` of `v` and `y`.
            unsafe { dot_axpy_avx512(a, w, alpha, v, y) }
        }

        #[inline(always)]
        fn dot4(a: [&[f32]; 4], b: [&[f32]; 4], ahead: bool) -> [f32; 4] {
            // SAFETY: as for `dot`; each pair is read up to the shortest length of the eight slices.
            unsafe { dot4_avx512(a, b, ahead, |p, i, m| _mm512_maskz_loadu_ps(m, p.add(i))) }
        }

        #[inline(always)]
        fn axpy4(alpha: [f32; 4], x: [&[f32]; 4], y: [&mut [f32]; 4]) {
            // SAFETY: as for `dot`; each pair is accessed up to the shortest length of the slices.
            unsafe { axpy4_avx512(alpha, x, y) }
        }

        #[inline(always)]
        fn dots<const R: usize, const N: usize>(
            a: [&[f32]; R],
            b: [&[f32]; N],
            ahead: bool,
        ) -> [[f32; N]; R] {
            // SAFETY: as for `dot`; every row is read up to the shortest length of all the slices.
            unsafe { dots_avx512(a, b, ahead, |p, i, m| _mm512_maskz_loadu_ps(m, p.add(i))) }
        }

        #[inline(always)]
        fn dots_bf16<const R: usize, const N: usize>(
            a: [&[f32]; R],
            b: [&[u16]; N],
            ahead: bool,
        ) -> [[f32; N]; R] {
            // SAFETY: as for `dot`; every row is read up to the shortest length of all the slices.
            unsafe { dots_avx512(a, b, ahead, |p, i, m| widen16_masked(p.add(i), m)) }
        }

        #[inline(always)]
        fn combine(
            y: &mut [f32],
            init: Init,
            alpha: &[f32],
            x: Picked<f32>,
            cols: Range<usize>,
            store: Store,
        ) {
            let k = combine_terms(y, init, alpha, &x, &cols);
            // SAFETY: as for `dot`; `combine_terms` checked that every access lies within the slices.
            unsafe {
                combine_avx512(y, init, alpha, x, cols, k, store, |p, m| {
                    _mm512_maskz_loadu_ps(m, p)
                })
            }
        }

        #[inline(always)]
        fn dot_bf16(a: &[f32], w: &[u16]) -> f32 {
            // SAFETY: as for `dot`; reads stay within `n = min(len)` elements.
            unsafe { dot_bf16_avx512(a, w) }
        }

        #[inline(always)]
        fn dot4_bf16(a: [&[f32]; 4], w: [&[u16]; 4], ahead: bool) -> [f32; 4] {
            // SAFETY: as for `dot`; each pair is read up to the shortest length of the eight slices.
            unsafe { dot4_avx512(a, w, ahead, |p, i, m| widen16_masked(p.add(i), m)) }
        }

        #[inline(always)]
        fn dot_axpy_bf16(a: &[f32], w: &[u16], alpha: f32, v: &[u16], y: &mut [f32]) -> f32 {
            // SAFETY: as for `dot_axpy`.
            unsafe { dot_axpy_bf16_avx512(a, w, alpha, v, y) }
        }

        #[inline(always)]
        fn combine_bf16(
            y: &mut [f32],
            init: Init,
            alpha: &[f32],
            x: Picked<u16>,
            cols: Range<usize>,
            store: Store,
        ) {
            let k = combine_terms(y, init, alpha, &x, &cols);
            // SAFETY: as for `dot`; `combine_terms` checked that every access lies within the slices.
            unsafe { combine_bf16_avx512(y, init, alpha, x, cols, k, store) }
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

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                *s = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * k)),
                    _mm256_loadu_ps(pb.add(i + 8 * k)),
                    *s,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum256(sum);
        while i < n {
            total = (*pa.add(i)).mul_add(*pb.add(i), total);
            i += 1;
        }
        total
    }

    /// The length every row of a set of dot products reaches.
    #[inline(always)]
    fn common_len<T>(a: &[&[f32]], b: &[&[T]]) -> usize {
        let a = a.iter().map(|s| s.len());
        a.chain(b.iter().map(|s| s.len())).min().unwrap_or(0)
    }

    /// The last `i..n` elements of `a . b` added one at a time to `total`, the lanes' sum.
    #[inline(always)]
    unsafe fn tail_avx2<T>(
        total: f32,
        a: *const f32,
        b: *const T,
        i: usize,
        n: usize,
        get: &impl Fn(*const T) -> f32,
    ) -> f32 {
        (i..n).fold(total, |t, e| (*a.add(e)).mul_add(get(b.add(e)), t))
    }

    /// Four independent dot products `a[k] . b[k]`, interleaved, with `load(p)` reading eight lanes of
    /// a `b` row at `p` as f32 and `get(p)` one. One running sum per product, eight elements a step,
    /// then the tail one element at a time: the sums [`dots_avx2`] makes, so that a row routed in a
    /// group, or walking alone beside others, gets the same logits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot4_avx2<T>(
        a: [&[f32]; 4],
        b: [&[T]; 4],
        ahead: bool,
        load: impl Fn(*const T) -> __m256,
        get: impl Fn(*const T) -> f32,
    ) -> [f32; 4] {
        let n = common_len(&a, &b);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 8 <= n {
            for k in 0..4 {
                if ahead && i % 16 == 0 {
                    prefetch_ahead(a[k].as_ptr(), i);
                }
                acc[k] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a[k].as_ptr().add(i)),
                    load(b[k].as_ptr().add(i)),
                    acc[k],
                );
            }
            i += 8;
        }
        std::array::from_fn(|k| {
            tail_avx2(hsum256(acc[k]), a[k].as_ptr(), b[k].as_ptr(), i, n, &get)
        })
    }

    /// The body of [`Vector::dots`] for AVX2: each `b` row's eight lanes are loaded once a step for
    /// all `R` rows. `load` and `get` as for [`dot4_avx2`], whose sums these are.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_avx2<const R: usize, const N: usize, T>(
        a: [&[f32]; R],
        b: [&[T]; N],
        ahead: bool,
        load: impl Fn(*const T) -> __m256,
        get: impl Fn(*const T) -> f32,
    ) -> [[f32; N]; R] {
        let n = common_len(&a, &b);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut i = 0;
        while i + 8 <= n {
            let w: [__m256; N] = std::array::from_fn(|j| load(b[j].as_ptr().add(i)));
            for r in 0..R {
                if ahead && i % 16 == 0 {
                    prefetch_ahead(a[r].as_ptr(), i);
                }
                let x = _mm256_loadu_ps(a[r].as_ptr().add(i));
                for j in 0..N {
                    acc[r][j] = _mm256_fmadd_ps(x, w[j], acc[r][j]);
                }
            }
            i += 8;
        }
        // Summed into a separate array first: with the sums taken inside the closures below, the
        // accumulators were kept in memory and stored back at every step, a store per multiply-add
        // (on a Zen 3 core the FFF 1x11 layer took 34.6 ms at 16384 rows with them, 27.3 without).
        let mut sums = [[0.0f32; N]; R];
        for (s, a) in sums.iter_mut().zip(&acc) {
            for (s, a) in s.iter_mut().zip(a) {
                *s = hsum256(*a);
            }
        }
        std::array::from_fn(|r| {
            std::array::from_fn(|j| tail_avx2(sums[r][j], a[r].as_ptr(), b[j].as_ptr(), i, n, &get))
        })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
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

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        dot_stepped_avx512(a, b, || {})
    }

    /// [`dot_avx512`], calling `between` after each of its 64-element steps: other work interleaved
    /// with the dot product's loads, its sums unchanged.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_stepped_avx512(a: &[f32], b: &[f32], mut between: impl FnMut()) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 16 * k)),
                    _mm512_loadu_ps(pb.add(i + 16 * k)),
                    *s,
                );
            }
            i += 64;
            between();
        }
        while i < n {
            let left = (n - i).min(16);
            let m: __mmask16 = if left == 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            acc[0] = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                acc[0],
            );
            i += left;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn axpy_avx512(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm512_set1_ps(alpha);
        let mut i = 0;
        while i < n {
            let left = (n - i).min(16);
            let m: __mmask16 = if left == 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            let v = _mm512_fmadd_ps(
                va,
                _mm512_maskz_loadu_ps(m, px.add(i)),
                _mm512_maskz_loadu_ps(m, py.add(i)),
            );
            _mm512_mask_storeu_ps(py.add(i), m, v);
            i += left;
        }
    }

    /// Asks for the line of row `p` eight lines past element `i` into L1, for a dot product that walks
    /// several rows at once: the hardware prefetchers follow few such streams. (At 16384 rows a 1x11
    /// layer took 11.7 against 13.5 ms with this; at 128 rows, whose inputs stay in L2 from one call
    /// to the next, 0.097 against 0.093 ms, so only large calls ask for it.)
    #[inline(always)]
    fn prefetch_ahead(p: *const f32, i: usize) {
        // SAFETY: a prefetch never faults, whatever the address (computed with wrapping arithmetic
        // and never dereferenced); SSE is part of the x86-64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + 128).cast::<i8>()) };
    }

    /// [`dot_avx512`] interleaved with [`axpy_avx512`]: each 64-element step of the dot product is
    /// followed by one of the update while both have steps left; the sums are those of the two apart.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_axpy_avx512(a: &[f32], w: &[f32], alpha: f32, v: &[f32], y: &mut [f32]) -> f32 {
        let m = v.len().min(y.len());
        let (pv, py) = (v.as_ptr(), y.as_mut_ptr());
        let va = _mm512_set1_ps(alpha);
        let mut j = 0;
        let dot = dot_stepped_avx512(a, w, || {
            if j + 64 <= m {
                for q in 0..4 {
                    let at = py.add(j + 16 * q);
                    let u = _mm512_fmadd_ps(
                        va,
                        _mm512_loadu_ps(pv.add(j + 16 * q)),
                        _mm512_loadu_ps(at),
                    );
                    _mm512_storeu_ps(at, u);
                }
                j += 64;
            }
        });
        axpy_avx512(alpha, &v[j..m], &mut y[j..m]);
        dot
    }

    /// Four independent dot products `a[k] . b[k]`, interleaved, with `load(row, i, mask)` reading 16
    /// lanes of a `b` row as f32. One running sum per product, 16 elements a step: the sums
    /// [`dots_avx512`] makes, so that a row routed in a group, or walking alone beside others, gets the
    /// same logits.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot4_avx512<T>(
        a: [&[f32]; 4],
        b: [&[T]; 4],
        ahead: bool,
        load: impl Fn(*const T, usize, __mmask16) -> __m512,
    ) -> [f32; 4] {
        let n = common_len(&a, &b);
        let mut acc = [_mm512_setzero_ps(); 4];
        // Whole steps with a constant mask (plain loads), then one masked step for the tail: the sums
        // of masking every step, for fewer instructions a step.
        let mut step = |i: usize, m: __mmask16| {
            for k in 0..4 {
                if ahead {
                    prefetch_ahead(a[k].as_ptr(), i);
                }
                acc[k] = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(m, a[k].as_ptr().add(i)),
                    load(b[k].as_ptr(), i, m),
                    acc[k],
                );
            }
        };
        let whole = n - n % 16;
        for i in (0..whole).step_by(16) {
            step(i, 0xffff);
        }
        if whole < n {
            step(whole, (1u16 << (n - whole)) - 1);
        }
        [
            _mm512_reduce_add_ps(acc[0]),
            _mm512_reduce_add_ps(acc[1]),
            _mm512_reduce_add_ps(acc[2]),
            _mm512_reduce_add_ps(acc[3]),
        ]
    }

    /// The body of [`Vector::dots`] for AVX-512, with `load(row, i, mask)` reading 16 lanes of a `b`
    /// row as f32.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dots_avx512<const R: usize, const N: usize, T>(
        a: [&[f32]; R],
        b: [&[T]; N],
        ahead: bool,
        load: impl Fn(*const T, usize, __mmask16) -> __m512,
    ) -> [[f32; N]; R] {
        let n = common_len(&a, &b);
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        // As in `dot4_avx512`: whole steps, then the tail's masked step.
        let mut step = |i: usize, m: __mmask16| {
            let w: [__m512; N] = std::array::from_fn(|j| load(b[j].as_ptr(), i, m));
            for r in 0..R {
                if ahead {
                    prefetch_ahead(a[r].as_ptr(), i);
                }
                let x = _mm512_maskz_loadu_ps(m, a[r].as_ptr().add(i));
                for j in 0..N {
                    acc[r][j] = _mm512_fmadd_ps(x, w[j], acc[r][j]);
                }
            }
        };
        let whole = n - n % 16;
        for i in (0..whole).step_by(16) {
            step(i, 0xffff);
        }
        if whole < n {
            step(whole, (1u16 << (n - whole)) - 1);
        }
        std::array::from_fn(|r| std::array::from_fn(|j| _mm512_reduce_add_ps(acc[r][j])))
    }

    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn axpy4_avx512(alpha: [f32; 4], x: [&[f32]; 4], y: [&mut [f32]; 4]) {
        let n = x
            .iter()
            .map(|s| s.len())
            .chain(y.iter().map(|s| s.len()))
            .min()
            .unwrap_or(0);
        let va: [__m512; 4] = [
            _mm512_set1_ps(alpha[0]),
            _mm512_set1_ps(alpha[1]),
            _mm512_set1_ps(alpha[2]),
            _mm512_set1_ps(alpha[3]),
        ];
        let py: [*mut f32; 4] = [
            y[0].as_mut_ptr(),
            y[1].as_mut_ptr(),
            y[2].as_mut_ptr(),
            y[3].as_mut_ptr(),
        ];
        let mut i = 0;
        while i < n {
            let left = (n - i).min(16);
            let m: __mmask16 = if left == 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            for k in 0..4 {
                let v = _mm512_fmadd_ps(
                    va[k],
                    _mm512_maskz_loadu_ps(m, x[k].as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(m, py[k].add(i)),
                );
                _mm512_mask_storeu_ps(py[k].add(i), m, v);
            }
            i += left;
        }
    }

    /// The start of picked row `j`, for the SIMD bodies of `combine` (checked by `combine_terms`).
    #[inline(always)]
    unsafe fn picked_row<T>(x: &Picked<T>, j: usize) -> *const T {
        x.matrix
            .as_ptr()
            .add(*x.idx.get_unchecked(j) as usize * x.width)
    }

    /// The body of `combine` for AVX2, for picked rows of `T`: `load(p)` reads eight lanes at `p`
    /// and `get(p)` one, as f32.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn combine_avx2<T>(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        x: Picked<T>,
        cols: Range<usize>,
        k: usize,
        store: Store,
        load: impl Fn(*const T) -> __m256,
        get: impl Fn(*const T) -> f32,
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
                let px = picked_row(&x, j).add(i);
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(va, load(px.add(8 * q)), *a);
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
        // One element at a time for the rest.
        while i < cols.end {
            let mut acc = match init {
                Init::Zero => 0.0,
                Init::Keep => *py.add(i),
                Init::From(b) => *b.as_ptr().add(i),
            };
            for j in 0..k {
                acc = alpha
                    .get_unchecked(j)
                    .mul_add(get(picked_row(&x, j).add(i)), acc);
            }
            *py.add(i) = acc;
            i += 1;
        }
    }

    /// The body of `combine` for AVX-512, for picked rows of `T`: `load(p, mask)` reads the masked
    /// lanes of sixteen at `p` as f32.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn combine_avx512<T>(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        x: Picked<T>,
        cols: Range<usize>,
        k: usize,
        store: Store,
        load: impl Fn(*const T, __mmask16) -> __m512 + Copy,
    ) {
        let py = y.as_mut_ptr();
        let mut i = cols.start;
        while i + 128 <= cols.end {
            combine_block_avx512::<8, T>(py, init, i, alpha, &x, k, store, load);
            i += 128;
        }
        while i + 64 <= cols.end {
            combine_block_avx512::<4, T>(py, init, i, alpha, &x, k, store, load);
            i += 64;
        }
        // Masked 16-lane steps for the rest.
        while i < cols.end {
            let left = (cols.end - i).min(16);
            let m: __mmask16 = if left == 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            let mut acc = match init {
                Init::Zero => _mm512_setzero_ps(),
                Init::Keep => _mm512_maskz_loadu_ps(m, py.add(i)),
                Init::From(b) => _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)),
            };
            for j in 0..k {
                acc = _mm512_fmadd_ps(
                    _mm512_set1_ps(*alpha.get_unchecked(j)),
                    load(picked_row(&x, j).add(i), m),
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
    unsafe fn combine_block_avx512<const Q: usize, T>(
        py: *mut f32,
        init: Init,
        i: usize,
        alpha: &[f32],
        x: &Picked<T>,
        k: usize,
        store: Store,
        load: impl Fn(*const T, __mmask16) -> __m512,
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
            let px = picked_row(x, j).add(i);
            for (q, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(va, load(px.add(16 * q), 0xffff), *a);
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

    /// [`combine_avx512`] for bf16 rows, 128 columns at a time: a 512-bit load holds 32 bf16, whose
    /// even elements a 16-bit shift widens and whose odd ones a mask does, so each weight costs a
    /// third of the instructions of widening 16 at a time (a zero-extension is a cross-lane shuffle).
    /// Even and odd columns are summed apart and interleaved once, before the store; each column's sum
    /// is the same sequence of fused adds as [`combine_avx512`]'s.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn combine_bf16_avx512(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        x: Picked<u16>,
        cols: Range<usize>,
        k: usize,
        store: Store,
    ) {
        let py = y.as_mut_ptr();
        // Output lane m of 16 from (even, odd) lane m / 2 (+ 8 for the upper half), and back.
        let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi_idx =
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let high_half = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut i = cols.start;
        while i + 128 <= cols.end {
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
                let px = picked_row(&x, j).add(i);
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
            i += 128;
        }
        combine_avx512(y, init, alpha, x, i..cols.end, k, store, |p, m| {
            widen16_masked(p, m)
        })
    }

    /// Eight bf16 at `p` widened to f32: the 16 bytes loaded into both halves of the register, then
    /// one byte shuffle puts each value in the upper half of its lane and zeros below: one vector
    /// operation where a zero-extension and a shift took two.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen8(p: *const u16) -> __m256 {
        const Z: i8 = -128;
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let to_upper = _mm256_setr_epi8(
            Z, Z, 0, 1, Z, Z, 2, 3, Z, Z, 4, 5, Z, Z, 6, 7, Z, Z, 8, 9, Z, Z, 10, 11, Z, Z, 12, 13,
            Z, Z, 14, 15,
        );
        _mm256_castsi256_ps(_mm256_shuffle_epi8(v, to_upper))
    }

    /// Sixteen bf16 at `p` widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn widen16(p: *const u16) -> __m512 {
        let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
    }

    /// The first `left < 16` bf16 at `p` widened to f32, zeros after (AVX-512F has no masked 16-bit
    /// load, so the tail goes through a small buffer).
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn widen16_tail(p: *const u16, left: usize) -> __m512 {
        let mut buf = [0u16; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), left);
        widen16(buf.as_ptr())
    }

    /// The lanes of `m` (its low bits, all of them or a tail) of sixteen bf16 at `p` widened to f32,
    /// zeros in the others.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn widen16_masked(p: *const u16, m: __mmask16) -> __m512 {
        if m == 0xffff {
            widen16(p)
        } else {
            widen16_tail(p, m.count_ones() as usize)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_bf16_avx2(a: &[f32], w: &[u16]) -> f32 {
        let n = a.len().min(w.len());
        let (pa, pw) = (a.as_ptr(), w.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, s) in acc.iter_mut().enumerate() {
                *s = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * k)),
                    widen8(pw.add(i + 8 * k)),
                    *s,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), widen8(pw.add(i)), acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum256(sum);
        while i < n {
            total = (*pa.add(i)).mul_add(bf16_to_f32(*pw.add(i)), total);
            i += 1;
        }
        total
    }

    /// One dot product of an f32 row with a bf16 row, in two running sums (32 elements a step) to hide
    /// the multiply-add latency: for a call of a single row, the only row it routes.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_bf16_avx512(a: &[f32], w: &[u16]) -> f32 {
        dot_bf16_stepped_avx512(a, w, || {})
    }

    /// [`dot_bf16_avx512`], calling `between` after each of its 32-element steps (see
    /// [`dot_stepped_avx512`]).
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_bf16_stepped_avx512(a: &[f32], w: &[u16], mut between: impl FnMut()) -> f32 {
        let n = a.len().min(w.len());
        let (pa, pw) = (a.as_ptr(), w.as_ptr());
        let (mut acc, mut acc2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), widen16(pw.add(i)), acc);
            acc2 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                widen16(pw.add(i + 16)),
                acc2,
            );
            i += 32;
            between();
        }
        while i < n {
            let left = (n - i).min(16);
            let m: __mmask16 = if left == 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            acc = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                widen16_masked(pw.add(i), m),
                acc,
            );
            i += left;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc, acc2))
    }

    /// [`dot_bf16_avx512`] interleaved with [`axpy_bf16_avx512`], 32 elements of each a step while
    /// both have steps left; the sums are those of the two apart.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_axpy_bf16_avx512(
        a: &[f32],
        w: &[u16],
        alpha: f32,
        v: &[u16],
        y: &mut [f32],
    ) -> f32 {
        let m = v.len().min(y.len());
        let (pv, py) = (v.as_ptr(), y.as_mut_ptr());
        let va = _mm512_set1_ps(alpha);
        let mut j = 0;
        let dot = dot_bf16_stepped_avx512(a, w, || {
            if j + 32 <= m {
                for q in [0, 16] {
                    let at = py.add(j + q);
                    let u = _mm512_fmadd_ps(va, widen16(pv.add(j + q)), _mm512_loadu_ps(at));
                    _mm512_storeu_ps(at, u);
                }
                j += 32;
            }
        });
        axpy_bf16_avx512(alpha, &v[j..m], &mut y[j..m]);
        dot
    }

    /// `y += alpha * v` with `v` in bf16, 16 lanes a step: per element the fused add of
    /// [`combine_bf16_avx512`] with one term.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn axpy_bf16_avx512(alpha: f32, v: &[u16], y: &mut [f32]) {
        let m = v.len().min(y.len());
        let (pv, py) = (v.as_ptr(), y.as_mut_ptr());
        let va = _mm512_set1_ps(alpha);
        let mut j = 0;
        while j < m {
            let left = (m - j).min(16);
            let mask: __mmask16 = if left == 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            let at = py.add(j);
            let u = _mm512_fmadd_ps(
                va,
                widen16_masked(pv.add(j), mask),
                _mm512_maskz_loadu_ps(mask, at),
            );
            _mm512_mask_storeu_ps(at, mask, u);
            j += left;
        }
    }
}

on_best_isa!(
    /// The sum of rows `rows` of `matrix` (rows of `width` elements), each read once in full at the
    /// widest vector width: the cost of fetching weight rows alone, without the arithmetic the tree
    /// kernel does on them (the `weight_rows` benchmark's probe of the memory floor).
    pub fn sum_rows(matrix: &[f32], width: usize, rows: &[u32]) -> f32 => sum_rows_generic
);

#[inline(always)]
fn sum_rows_generic(matrix: &[f32], width: usize, rows: &[u32]) -> f32 {
    // Independent lanes, so that the loop vectorises without reassociating a sum.
    let mut acc = [0f32; 64];
    for &r in rows {
        let row = &matrix[r as usize * width..][..width];
        let mut chunks = row.chunks_exact(64);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
            *a += v;
        }
    }
    acc.iter().sum()
}

/// Asks the CPU to start loading `s` into its caches: a hint that never faults.
#[inline(always)]
pub fn prefetch<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }, T>(s);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

/// Like [`prefetch`], but into L2 only, so that what L1 holds stays there: for data needed soon,
/// though not by the loop that asks.
#[inline(always)]
pub fn prefetch_l2<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T1 }, T>(s);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_lines<const HINT: i32, T>(s: &[T]) {
    use std::arch::x86_64::_mm_prefetch;
    let p = s.as_ptr().cast::<i8>();
    // Every line `s` touches, the first from its start rounded down to a line.
    let head = p as usize % 64;
    let bytes = std::mem::size_of_val(s) + head;
    let line = p.wrapping_sub(head);
    let mut off = 0;
    while off < bytes {
        // SAFETY: a prefetch never faults, whatever the address (no memory is accessed through the
        // pointer, which is only computed with wrapping arithmetic); SSE is part of the x86-64 baseline.
        unsafe { _mm_prefetch::<HINT>(line.wrapping_add(off)) };
        off += 64;
    }
}

#[cfg(test)]
mod tests {
    use super::sum_rows;

    #[test]
    fn sum_rows_adds_every_element_of_the_picked_rows_once() {
        // Width 70: one whole 64-lane step and a remainder; row 1 picked twice, row 2 never.
        let width = 70;
        let matrix: Vec<f32> = (0..4 * width).map(|i| (i % 7) as f32 - 3.0).collect();
        let rows = [3, 1, 0, 1];
        let want: f32 = rows
            .iter()
            .map(|&r| matrix[r * width..(r + 1) * width].iter().sum::<f32>())
            .sum();
        let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        assert_eq!(sum_rows(&matrix, width, &rows), want);
        assert_eq!(sum_rows(&matrix, width, &[]), 0.0);
    }
}
