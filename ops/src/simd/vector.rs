//! The vector primitives kernels are written against, generic over the stored element type of the
//! weight rows they read (the activations are always f32).

use std::ops::Range;

use crate::element::Element;

/// Where [`Vector::combine`] starts each output element.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init<'a> {
    /// From zero.
    Zero,
    /// From what the output already holds (a later tree adding into the row).
    Keep,
    /// From these values (the output bias).
    From(&'a [f32]),
}

/// How [`Vector::combine`] writes its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// Through the caches: the output is read again soon.
    Cached,
    /// Around the caches (non-temporal stores) for the whole cache lines of the output that a step
    /// writes, through them for the rest; a hint that instruction sets without such stores ignore. For
    /// outputs far larger than the caches: their lines would evict what the kernel reads, and each
    /// would be read from memory before being written. Callers start column ranges at line boundaries
    /// where they can, and call [`super::store_fence`] before the output is read on another thread.
    Streaming,
}

/// Rows picked from a row-major matrix of `width` columns: row `k` is
/// `matrix[idx[k] * width..][..width]`. How [`Vector::combine`] takes a path's weight rows: indices
/// instead of slices, so a call costs no slice building when a kernel combines column block by block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Picked<'a, T> {
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

    /// The start of picked row `k`, for the SIMD bodies of `combine` (checked by [`combine_terms`]).
    ///
    /// # Safety
    /// `k` is below the count `combine_terms` returned for these rows.
    #[inline(always)]
    pub unsafe fn row_ptr(&self, k: usize) -> *const T {
        // SAFETY: `combine_terms` checked that every picked row lies within the matrix.
        unsafe {
            self.matrix
                .as_ptr()
                .add(*self.idx.get_unchecked(k) as usize * self.width)
        }
    }
}

/// Checks a [`Vector::combine`] call and returns how many terms it sums. Panics unless `cols` lies
/// within `y`, the init row and the picked rows, and every picked row lies within its matrix: after
/// this, the SIMD bodies read and write without further checks.
pub(crate) fn combine_terms<T>(
    y: &[f32],
    init: Init,
    alpha: &[f32],
    x: &Picked<T>,
    cols: &Range<usize>,
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

/// The vector primitives a kernel is written against; one implementation per instruction set, each
/// generic over the element type `E` of the weight rows (`w`, `v`, picked rows), which it widens to
/// f32 as it loads them. Kernels are generic over this trait and `#[inline(always)]`, and are
/// instantiated inside functions compiled with the matching target features.
pub(crate) trait Vector {
    /// `a . w`, free to sum in several running sums (for a row with no others to interleave with);
    /// [`Vector::dot4`] and [`Vector::dots`] sum each product in the same order as each other.
    fn dot<E: Element>(a: &[f32], w: &[E]) -> f32;

    /// `y += alpha * v`.
    fn axpy<E: Element>(alpha: f32, v: &[E], y: &mut [f32]);

    /// `a . w`, summed as [`Vector::dot`] sums it, while `y += alpha * v`: a lone row routes one level
    /// of its tree while it emits the level above, so that the output weights stream in during the
    /// waits of the dot product, whose next row of weights depends on its result.
    #[inline(always)]
    fn dot_axpy<E: Element>(a: &[f32], w: &[E], alpha: f32, v: &[E], y: &mut [f32]) -> f32 {
        Self::axpy(alpha, v, y);
        Self::dot(a, w)
    }

    /// Four independent dot products `a[k] . w[k]`, interleaved so their loads overlap. With `ahead`,
    /// each `a` row is fetched into L1 a few lines ahead of its loads where the machine has a hint
    /// for it: for rows that come from beyond L2's reach of the hardware prefetchers.
    #[inline(always)]
    fn dot4<E: Element>(a: [&[f32]; 4], w: [&[E]; 4], ahead: bool) -> [f32; 4] {
        let _ = ahead;
        std::array::from_fn(|k| Self::dot(a[k], w[k]))
    }

    /// Every dot product `a[r] . w[n]` of `R` rows with `N` rows, each row loaded once per step: how
    /// routing computes a node and both its children in one pass over the inputs. `ahead` as for
    /// [`Vector::dot4`].
    #[inline(always)]
    fn dots<E: Element, const R: usize, const N: usize>(
        a: [&[f32]; R],
        w: [&[E]; N],
        ahead: bool,
    ) -> [[f32; N]; R] {
        let _ = ahead;
        std::array::from_fn(|r| std::array::from_fn(|n| Self::dot(a[r], w[n])))
    }

    /// `y[c] = init[c] + sum_k alpha[k] * x_k[c]` for the columns `c` in `cols`, where `x_k` is picked
    /// row `k`: a whole path of output rows summed in registers, so each output element is written
    /// once instead of once per neuron. `store` says whether `y` is written through the caches.
    /// Panics if `cols` reaches past `y`, the init row or the picked rows, or a picked row lies
    /// outside its matrix.
    #[inline(always)]
    fn combine<E: Element>(
        y: &mut [f32],
        init: Init,
        alpha: &[f32],
        x: Picked<E>,
        cols: Range<usize>,
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
