//! Matrix multiplication on a proven GEMM crate, with its run-time SIMD dispatch.

use rayon::prelude::*;

/// A strided matrix operand: element (i, j) is at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same data read as its transpose.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn fits(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1).checked_mul(self.row_stride).and_then(|r| {
            (self.cols - 1)
                .checked_mul(self.col_stride)
                .and_then(|c| r.checked_add(c))
        });
        matches!(last, Some(l) if l < self.data.len())
    }
}

/// A row-major output matrix whose rows may be further apart than its width (a column block of a
/// wider matrix): element (i, j) is at `data[i * row_stride + j]`.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

/// Who runs one GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// The current rayon pool, when the product is big enough to share.
    Pool,
    /// The calling thread only (the caller already runs many GEMMs in parallel).
    Caller,
}

/// `out[m, n] = alpha * a[m, k] . b[k, n] + beta * out[m, n]`, with `out` dense row-major.
///
/// With `beta == 0` the previous contents of `out` are ignored (they may be anything).
pub fn gemm(a: MatRef, b: MatRef, out: &mut [f32], alpha: f32, beta: f32) {
    let (rows, cols) = (a.rows, b.cols);
    assert!(out.len() >= rows * cols, "gemm: output slice too short");
    let out = MatMut {
        data: out,
        rows,
        cols,
        row_stride: cols,
    };
    gemm_into(a, b, out, alpha, beta, Threads::Pool);
}

/// [`gemm()`] into a strided output, on the given threads.
pub fn gemm_into(a: MatRef, b: MatRef, out: MatMut, alpha: f32, beta: f32, threads: Threads) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert!(
        a.fits() && b.fits(),
        "gemm: operand slice too short for its strides"
    );
    assert_eq!(
        (out.rows, out.cols),
        (m, n),
        "gemm: output has the wrong shape"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * out.row_stride + n <= out.data.len(),
        "gemm: output slice too short for its stride"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in out.data.chunks_mut(out.row_stride).take(m) {
            for v in &mut row[..n] {
                *v = if beta == 0.0 { 0.0 } else { *v * beta };
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::Pool => parallelism(m, n, k),
        Threads::Caller => gemm::Parallelism::None,
    };
    let row_stride = out.row_stride;
    let out = SharedPtr(out.data.as_mut_ptr());
    // One serial GEMM over columns `first..first + cols`.
    let block = |first: usize, cols: usize, parallelism: gemm::Parallelism| {
        // SAFETY: the asserts above check that every element addressed through the strides lies
        // inside `a.data`, `b.data` and `out.data` (columns `first..first + cols` are among them);
        // `out` is borrowed mutably and cannot alias the inputs, and concurrent blocks write
        // disjoint column ranges.
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                out.get().add(first),
                1,
                row_stride as isize,
                beta != 0.0,
                a.data.as_ptr(),
                a.col_stride as isize,
                a.row_stride as isize,
                b.data.as_ptr().add(first * b.col_stride),
                b.col_stride as isize,
                b.row_stride as isize,
                beta,
                alpha,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    match parallelism {
        // Wide products split their columns: each thread packs and reads only its share of B (the
        // weights, in a model), which measured 4–8% faster in whole encoders than the crate's own
        // split, whose threads share the packing of B.
        gemm::Parallelism::Rayon(t) if n >= MIN_COLUMNS_PER_THREAD * t => {
            let width = n.div_ceil(t).next_multiple_of(16);
            (0..n.div_ceil(width)).into_par_iter().for_each(|c| {
                let first = c * width;
                block(first, width.min(n - first), gemm::Parallelism::None);
            });
        }
        parallelism => block(0, n, parallelism),
    }
}

/// Columns each thread needs at least for a GEMM to be split by columns.
const MIN_COLUMNS_PER_THREAD: usize = 64;

/// An output's base pointer, shared by the threads that write its disjoint blocks.
pub(crate) struct SharedPtr(pub(crate) *mut f32);
// SAFETY: only used to let the tasks of one call (`gemm_into`'s column blocks, `gemm_panels`' panel
// and row blocks), which write disjoint blocks of an output that the call borrows mutably for its
// whole parallel section, run on several threads.
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// The pointer (a method, so that closures capture the `Sync` wrapper rather than the field).
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Threads for one GEMM: the current rayon pool's, when the product is big enough to share.
fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = crate::threads::available();
    if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// The obvious triple loop: the reference that [`gemm()`] is tested against.
pub fn gemm_reference(a: MatRef, b: MatRef, out: &mut [f32], alpha: f32, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a.data[i * a.row_stride + p * a.col_stride] as f64
                    * b.data[p * b.row_stride + j * b.col_stride] as f64;
            }
            let prev = if beta == 0.0 {
                0.0
            } else {
                beta * out[i * n + j]
            };
            out[i * n + j] = alpha * acc as f32 + prev;
        }
    }
}

/// Seeded values in [-1, 1], for the tests of the GEMM paths.
#[cfg(test)]
pub(crate) fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `alpha * a b + beta * out` on a two-thread pool into columns `at..at + n` of rows `stride`
    /// apart, with B read directly or transposed: agrees with the reference, and leaves the columns
    /// around the block untouched.
    fn check_strided_on_two_threads(
        (m, k, n): (usize, usize, usize),
        (stride, at): (usize, usize),
        (alpha, beta): (f32, f32),
        seed: u32,
    ) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let a = pseudo_random(m * k, seed);
        let b = pseudo_random(k * n, seed + 1);
        for transposed in [false, true] {
            let bm = if transposed {
                MatRef::row_major(&b, n, k).t()
            } else {
                MatRef::row_major(&b, k, n)
            };
            let init = pseudo_random(m * stride, seed + 2);
            let mut got = init.clone();
            pool.install(|| {
                let out = MatMut {
                    data: &mut got[at..],
                    rows: m,
                    cols: n,
                    row_stride: stride,
                };
                gemm_into(
                    MatRef::row_major(&a, m, k),
                    bm,
                    out,
                    alpha,
                    beta,
                    Threads::Pool,
                );
            });
            let mut want = vec![0.0; m * n];
            for i in 0..m {
                want[i * n..(i + 1) * n]
                    .copy_from_slice(&init[at + i * stride..at + i * stride + n]);
            }
            gemm_reference(MatRef::row_major(&a, m, k), bm, &mut want, alpha, beta);
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (got[at + i * stride + j], want[i * n + j]);
                    assert!((g - w).abs() < 1e-3, "{transposed} {i},{j}: {g} vs {w}");
                }
                // Columns between the block's rows are untouched.
                if i + 1 < m {
                    assert_eq!(
                        got[at + i * stride + n..at + (i + 1) * stride],
                        init[at + i * stride + n..at + (i + 1) * stride]
                    );
                }
            }
            assert_eq!(got[..at], init[..at]);
        }
    }

    /// A GEMM too narrow to split by columns: the crate's own threads.
    #[test]
    fn strided_output_on_two_threads_agrees_with_reference() {
        check_strided_on_two_threads((101, 300, 90), (97, 3), (0.5, 1.0), 4);
    }

    /// Products wide enough to be split by columns across two threads.
    #[test]
    fn column_split_on_two_threads_agrees_with_reference() {
        check_strided_on_two_threads((37, 70, 203), (211, 5), (1.5, 0.5), 7);
    }

    #[test]
    fn gemm_agrees_with_reference_on_odd_shapes_and_transposes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 31, 65), (1, 100, 3)] {
            let a = pseudo_random(m * k, 1);
            let b = pseudo_random(k * n, 2);
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let am = if ta {
                    MatRef::row_major(&a, k, m).t()
                } else {
                    MatRef::row_major(&a, m, k)
                };
                let bm = if tb {
                    MatRef::row_major(&b, n, k).t()
                } else {
                    MatRef::row_major(&b, k, n)
                };
                let init = pseudo_random(m * n, 3);
                let mut got = init.clone();
                let mut want = init.clone();
                gemm(am, bm, &mut got, 0.5, 2.0);
                gemm_reference(am, bm, &mut want, 0.5, 2.0);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "{m}x{k}x{n} {ta} {tb}: {g} vs {w}");
                }
            }
        }
    }
}
