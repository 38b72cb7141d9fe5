//! Products with weights stored as column panels, the layout the compiler packs constant weights into.
//!
//! A `[k, n]` weight matrix is stored as `ceil(n / c)` panels of `[k, c]`, each row-major and
//! contiguous, the last one zero-padded. The GEMM crate then reads each panel in place as a
//! contiguous stream instead of gathering `c`-column strips from rows `4 n` bytes apart into its
//! packing buffer on every call: 5–19% faster at 128 rows, 1.2–2.7x at one row, and up to 1.8x at 16
//! rows when the weights come from memory (`cargo bench -p fff-ops --bench gemm`,
//! docs/PERFORMANCE.md).
//!
//! Plans store panels [`PANEL_COLS`] wide. The width that reads best follows the GEMM crate's
//! micro-kernel ([`best_cols`]); the runtime repacks a plan's panels to it at load
//! ([`repack_panels`]) when the two differ.

use rayon::prelude::*;

use crate::matmul::SharedPtr;
use crate::simd::on_best_isa;

/// Columns per panel as the compiler packs them: the height of the GEMM crate's AVX-512
/// micro-kernel (64 rows of its transposed problem).
pub const PANEL_COLS: usize = 64;

/// Rows per GEMM call. The GEMM crate packs its left operand, which for a row-major output is the
/// panel, when a call has more than 48 rows (8 times its 6-wide micro-kernel on x86); panels are
/// already laid out as it would pack them, so calls stay at this size...
pub const ROW_BLOCK: usize = 48;

/// ...unless a task's rows are this few: then one call takes them all, the panel packed once, since
/// each call costs more to set up than that packing. At 128 rows on an Intel core a 768x768 product
/// took 0.74-0.75 ms in one call per panel against 0.79-0.84 ms in three, and 128x3072x768 3.05-3.12
/// against 3.39-3.50 ms (`cargo bench -p fff-ops --bench gemm`); at 1024 rows, 128-row calls were
/// 4-9% slower than 48-row ones.
pub const ONE_CALL_ROWS: usize = 128;

/// The widest panel [`Panels`] takes (the one-row kernel keeps a panel row of sums in registers).
pub const MAX_PANEL_COLS: usize = 64;

/// The panel width the GEMM crate reads best on this CPU: the height of its micro-kernel, 64 columns
/// with AVX-512 and 16 with AVX2+FMA or NEON. The kernel reads a strip of that many columns of a
/// panel row per step; in a wider panel its strips lie a panel row apart, so its loads use a fraction
/// of L1's sets and evict the packed inputs it reuses (with the AVX2 kernel at 128 rows, 64-column
/// panels ran at 0.84–1.00x the row-major weights, 16-column ones at 1.03–1.23x; docs/PERFORMANCE.md).
pub fn best_cols() -> usize {
    // The GEMM crate's test, made where its AVX-512 kernels are built in.
    #[cfg(all(target_arch = "x86_64", feature = "avx512-gemm"))]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return 64;
    }
    16
}

/// Panels `cols` wide that hold `n` columns.
pub fn panel_count_of(n: usize, cols: usize) -> usize {
    n.div_ceil(cols)
}

/// Panels [`PANEL_COLS`] wide that hold `n` columns.
pub fn panel_count(n: usize) -> usize {
    panel_count_of(n, PANEL_COLS)
}

/// The row-major `[k, n]` matrix `w` as panels [`PANEL_COLS`] wide (`panel_count(n) * k *
/// PANEL_COLS` values).
pub fn pack_panels(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    pack_panels_of(w, k, n, PANEL_COLS)
}

/// The row-major `[k, n]` matrix `w` as panels `cols` wide.
pub fn pack_panels_of(w: &[f32], k: usize, n: usize, cols: usize) -> Vec<f32> {
    assert_eq!(w.len(), k * n, "pack_panels: weights are not [k, n]");
    assert!(cols > 0, "pack_panels: panels are at least one column wide");
    let mut out = vec![0.0; panel_count_of(n, cols) * k * cols];
    for (p, panel) in out.chunks_exact_mut((k * cols).max(1)).enumerate() {
        let first = p * cols;
        let width = cols.min(n - first);
        for (r, row) in panel.chunks_exact_mut(cols).enumerate() {
            row[..width].copy_from_slice(&w[r * n + first..r * n + first + width]);
        }
    }
    out
}

/// The panels `from` columns wide of a `[k, n]` matrix as panels `to` wide, without going through the
/// row-major matrix; `None` unless `data` holds exactly the `from`-wide panels.
pub fn repack_panels(data: &[f32], k: usize, n: usize, from: usize, to: usize) -> Option<Vec<f32>> {
    let mut out = vec![
        0.0;
        panel_count_of(n, to.max(1))
            .checked_mul(k)?
            .checked_mul(to)?
    ];
    repack_panels_into(data, k, n, from, to, &mut out).then_some(out)
}

/// [`repack_panels`] into `out`, which must hold `panel_count_of(n, to) * k * to` zeros (the padding
/// is left as found); `false`, with `out` untouched, unless `data` holds exactly the `from`-wide
/// panels, `to` is a width [`Panels`] takes and `out` has that length.
pub fn repack_panels_into(
    data: &[f32],
    k: usize,
    n: usize,
    from: usize,
    to: usize,
    out: &mut [f32],
) -> bool {
    let Some(source) = Panels::new(data, k, n, from) else {
        return false;
    };
    if to == 0 || to > MAX_PANEL_COLS {
        return false;
    }
    let len = panel_count_of(n, to)
        .checked_mul(k)
        .and_then(|v| v.checked_mul(to));
    if len != Some(out.len()) {
        return false;
    }
    for (q, panel) in out.chunks_exact_mut((k * to).max(1)).enumerate() {
        let first = q * to;
        let end = n.min(first + to);
        for (r, row) in panel.chunks_exact_mut(to).enumerate() {
            // Columns `first..end` of row `r`, in runs that each lie in one source panel.
            let mut j = first;
            while j < end {
                let (p, at) = (j / from, j % from);
                let run = (from - at).min(end - j);
                let (src, _) = source.panel(p);
                row[j - first..j - first + run].copy_from_slice(&src[r * from + at..][..run]);
                j += run;
            }
        }
    }
    true
}

/// A `[k, n]` matrix stored as panels `cols` wide.
#[derive(Clone, Copy, Debug)]
pub struct Panels<'a> {
    data: &'a [f32],
    k: usize,
    n: usize,
    cols: usize,
}

impl<'a> Panels<'a> {
    /// `None` unless `cols` is 1 to [`MAX_PANEL_COLS`] and `data` holds exactly the panels of a `[k, n]`
    /// matrix that wide.
    pub fn new(data: &'a [f32], k: usize, n: usize, cols: usize) -> Option<Self> {
        if cols == 0 || cols > MAX_PANEL_COLS {
            return None;
        }
        let len = panel_count_of(n, cols).checked_mul(k)?.checked_mul(cols)?;
        (data.len() == len).then_some(Panels { data, k, n, cols })
    }

    /// Columns per panel.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Panel `p` and the number of its columns that are real.
    fn panel(&self, p: usize) -> (&'a [f32], usize) {
        let size = self.k * self.cols;
        (
            &self.data[p * size..(p + 1) * size],
            self.cols.min(self.n - p * self.cols),
        )
    }
}

/// `out = x w + beta * out` for `x` row-major `[rows, k]` and `out` row-major `[rows, n]`, on the
/// current rayon pool when the product is big enough to share. With `beta == 0` the previous contents
/// of `out` are ignored.
pub fn gemm_panels(x: &[f32], rows: usize, w: Panels, out: &mut [f32], beta: f32) {
    let (k, n, cols) = (w.k, w.n, w.cols);
    assert_eq!(x.len(), rows * k, "gemm_panels: x is not [rows, k]");
    assert_eq!(out.len(), rows * n, "gemm_panels: out is not [rows, n]");
    if rows == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.iter_mut()
            .for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
        return;
    }
    let panels = panel_count_of(n, cols);
    let threads = crate::threads::available();
    // Tasks are (panel, row range) pairs: whole panels when there are enough of them to balance the
    // threads, otherwise each panel's rows split into runs of whole row blocks.
    let splits = if threads == 1 || panels >= 4 * threads {
        1
    } else {
        (4 * threads).div_ceil(panels).min(rows.div_ceil(ROW_BLOCK))
    };
    let run_rows = rows.div_ceil(splits).next_multiple_of(ROW_BLOCK);
    let splits = rows.div_ceil(run_rows);
    let base = SharedPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (p, s) = (t / splits, t % splits);
        let (panel, width) = w.panel(p);
        if rows == 1 {
            // SAFETY: with one row `out` holds `n` values; this task alone writes its panel's
            // columns `p * cols..p * cols + width`, which lie within `n`, while `out`
            // stays borrowed mutably for the whole call.
            let out = unsafe { std::slice::from_raw_parts_mut(base.get().add(p * cols), width) };
            return one_row(x, panel, cols, out, beta);
        }
        let first_row = s * run_rows;
        let end_row = rows.min(first_row + run_rows);
        let block = if end_row - first_row <= ONE_CALL_ROWS {
            end_row - first_row
        } else {
            ROW_BLOCK
        };
        for r in (first_row..end_row).step_by(block.max(1)) {
            let m = block.min(end_row - r);
            // SAFETY: `x` holds `rows * k` values and `out` `rows * n` (asserted above); this call
            // reads rows `r..r + m` of `x` and all `k` rows of the panel (`k * cols` values,
            // of which columns `0..width`), and writes rows `r..r + m`, columns
            // `p * cols..p * cols + width` of `out`. Tasks write disjoint blocks of `out`,
            // which is borrowed mutably for the whole call, so nothing else reads or writes them.
            unsafe {
                gemm::gemm(
                    m,
                    width,
                    k,
                    base.get().add(r * n + p * cols),
                    1,
                    n as isize,
                    beta != 0.0,
                    x.as_ptr().add(r * k),
                    1,
                    k as isize,
                    panel.as_ptr(),
                    1,
                    cols as isize,
                    beta,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    };
    let tasks = panels * splits;
    if threads > 1 && rows.saturating_mul(n).saturating_mul(k) >= 1 << 18 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// `out = x panel + beta * out` for one row `x` (`k` values) and the real columns of one panel
/// `cols` wide. One row is a matrix-vector product, for which the GEMM crate's set-up of one call per
/// panel (about a µs each) costs more than the arithmetic.
fn one_row(x: &[f32], panel: &[f32], cols: usize, out: &mut [f32], beta: f32) {
    match cols {
        64 => one_row_64(x, panel, out, beta),
        16 => one_row_16(x, panel, out, beta),
        _ => one_row_any(x, panel, cols, out, beta),
    }
}

on_best_isa!(
    /// [`one_row`] for 64-column panels: the panel's rows stream in order into 64 sums held in
    /// registers.
    fn one_row_64(x: &[f32], panel: &[f32], out: &mut [f32], beta: f32) => one_row_fixed_64
);

on_best_isa!(
    /// [`one_row`] for 16-column panels.
    fn one_row_16(x: &[f32], panel: &[f32], out: &mut [f32], beta: f32) => one_row_fixed_16
);

#[inline(always)]
fn one_row_fixed_64(x: &[f32], panel: &[f32], out: &mut [f32], beta: f32) {
    one_row_fixed::<64>(x, panel, out, beta)
}

#[inline(always)]
fn one_row_fixed_16(x: &[f32], panel: &[f32], out: &mut [f32], beta: f32) {
    one_row_fixed::<16>(x, panel, out, beta)
}

#[inline(always)]
fn one_row_fixed<const C: usize>(x: &[f32], panel: &[f32], out: &mut [f32], beta: f32) {
    let mut acc = [0.0f32; C];
    for (&v, row) in x.iter().zip(panel.chunks_exact(C)) {
        for (a, &w) in acc.iter_mut().zip(row) {
            *a += v * w;
        }
    }
    finish_row(&acc, out, beta);
}

/// [`one_row`] for other widths, which no CPU's best width is.
fn one_row_any(x: &[f32], panel: &[f32], cols: usize, out: &mut [f32], beta: f32) {
    let mut acc = [0.0f32; MAX_PANEL_COLS];
    let acc = &mut acc[..cols];
    for (&v, row) in x.iter().zip(panel.chunks_exact(cols)) {
        for (a, &w) in acc.iter_mut().zip(row) {
            *a += v * w;
        }
    }
    finish_row(acc, out, beta);
}

#[inline(always)]
fn finish_row(acc: &[f32], out: &mut [f32], beta: f32) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = if beta == 0.0 { a } else { beta * *o + a };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{gemm_reference, pseudo_random, MatRef};

    /// Panels `cols` wide, packed from the plan's 64-column panels as the runtime repacks them.
    fn check(rows: usize, k: usize, n: usize, beta: f32, threads: usize, cols: usize) {
        let x = pseudo_random(rows * k, 1 + rows as u32);
        let w = pseudo_random(k * n, 2 + n as u32);
        let init = pseudo_random(rows * n, 3);
        let packed =
            repack_panels(&pack_panels(&w, k, n), k, n, PANEL_COLS, cols).expect("repacked");
        let panels = Panels::new(&packed, k, n, cols).expect("packed length");
        let mut got = init.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| gemm_panels(&x, rows, panels, &mut got, beta));
        let mut want = init;
        gemm_reference(
            MatRef::row_major(&x, rows, k),
            MatRef::row_major(&w, k, n),
            &mut want,
            1.0,
            beta,
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{rows}x{k}x{n} beta {beta} on {threads} threads, {cols} columns a panel, element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn agrees_with_the_reference_on_odd_shapes_and_threads() {
        // Rows around the row block and the one-call limit, columns around the panel width, tiny and
        // zero sizes.
        for &(rows, k, n) in &[
            (1, 1, 1),
            (1, 768, 768),
            (3, 5, 7),
            (47, 33, 64),
            (48, 17, 65),
            (49, 64, 129),
            (128, 40, 96),
            (129, 24, 64),
            (130, 70, 200),
            (200, 300, 40),
            (5, 0, 9),
            (0, 4, 9),
            (6, 4, 0),
        ] {
            for beta in [0.0, 1.0, 0.5] {
                for threads in [1, 2, 3] {
                    // The widths CPUs read best, and one that none does.
                    for cols in [64, 16, 24] {
                        check(rows, k, n, beta, threads, cols);
                    }
                }
            }
        }
    }

    #[test]
    fn packing_pads_the_last_panel_with_zeros() {
        let w: Vec<f32> = (0..2 * 70).map(|v| v as f32 + 1.0).collect();
        let p = pack_panels(&w, 2, 70);
        assert_eq!(p.len(), 2 * 2 * PANEL_COLS);
        assert_eq!(&p[..3], &[1.0, 2.0, 3.0]);
        assert_eq!(p[PANEL_COLS], 71.0);
        // Second panel: columns 64..70 of each row, then zeros.
        let second = &p[2 * PANEL_COLS..];
        assert_eq!(&second[..6], &[65.0, 66.0, 67.0, 68.0, 69.0, 70.0]);
        assert!(second[6..PANEL_COLS].iter().all(|&v| v == 0.0));
        assert_eq!(second[PANEL_COLS], 135.0);
        assert!(Panels::new(&p, 2, 70, PANEL_COLS).is_some());
        assert!(Panels::new(&p, 2, 129, PANEL_COLS).is_none());
        assert!(Panels::new(&p[1..], 2, 70, PANEL_COLS).is_none());
        assert!(Panels::new(&p, 2, 70, 0).is_none());
    }

    #[test]
    fn repacking_matches_packing_at_the_new_width() {
        for &(k, n) in &[(3, 70), (1, 1), (5, 128), (2, 16), (4, 0), (0, 9)] {
            let w = pseudo_random(k * n, 7);
            let p64 = pack_panels(&w, k, n);
            for to in [16, 24, 64, 1] {
                assert_eq!(
                    repack_panels(&p64, k, n, PANEL_COLS, to),
                    Some(pack_panels_of(&w, k, n, to)),
                    "{k}x{n} to {to}"
                );
            }
            assert_eq!(repack_panels(&p64, k, n, PANEL_COLS, 65), None);
            if k > 0 {
                assert_eq!(repack_panels(&p64, k, n + 64, PANEL_COLS, 16), None);
            }
        }
    }
}
