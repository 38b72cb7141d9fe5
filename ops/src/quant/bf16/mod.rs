//! bfloat16 products: bf16 weights, activations rounded to bf16 per call, sums in f32.
//!
//! Weights `[k, n]` are rounded to bf16 (nearest, ties to even) and packed ([`pack`]) into panels of
//! [`COLS`] columns in which consecutive pairs of `k` ([`GROUP`]) sit side by side: element
//! `[p][g][j][t]` is `w[2g + t][64p + j]`, `k` padded to even and `n` to a multiple of 64 with zeros.
//! That is the operand order of `vdpbf16ps`, which multiplies a pair of bf16 by a pair and adds both
//! products to an f32 lane, so the kernels read the packed weights in place.
//!
//! Each call rounds the activations to bf16 once (ties to even), into pairs held as `u32` (the even
//! `k` in the low half). A product of two bf16 is exact in f32, so every kernel computes the same
//! sums and differs from the others only in the order it adds them:
//! `out = epilogue(Σ_k bf16(x[r][k]) * w[k][c])`.
//!
//! Kernels ([`kernels`], best first): `tdpbf16ps` on AMX tiles (AMX-BF16, where the OS grants the
//! tile state; 16 rows by 64 columns of sums over 16 pairs of `k` a step, reading the same packed
//! panels as B tiles), then `vdpbf16ps` on AVX-512 BF16, then the exact widening fallback (bf16
//! shifted into f32, fused multiply-adds) on each instruction set the CPU has. (On Sapphire
//! Rapids a `vdpbf16ps` of 32 multiply-adds issues once every 2 cycles where two fused
//! multiply-adds of 16 issue every cycle: measured, 16 against 32 multiply-adds a cycle, so there
//! the widening kernel beats it, and only AMX makes bf16 faster than f32.)
//! The AMX and AVX-512 BF16 instructions treat subnormal inputs as zero and flush subnormal
//! results, so there values below 2^-126 in magnitude (far below anything a model computes) may
//! differ from the reference. Non-finite inputs give non-finite or meaningless, but defined, results.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod dpbf16;
#[cfg(test)]
mod tests;
mod widen;

use std::cell::Cell;

use rayon::prelude::*;

use super::Epilogue;
use crate::activation::bias_act_rows;
use crate::element::Bf16;
use crate::matmul::SharedPtr;
use crate::simd::Isa;

/// Columns per packed panel: 4 AVX-512 vectors of 16 f32 sums.
pub const COLS: usize = 64;

/// Consecutive `k` stored side by side for each column: the pair `vdpbf16ps` takes.
pub const GROUP: usize = 2;

/// Rows of one micro-kernel tile (4 accumulators a row: 24 of the 32 vector registers).
const TILE_ROWS: usize = 6;

/// Bytes of activation pairs a task takes (as whole tiles of rows): small enough to stay in L2
/// (1 MiB on Zen 4) beside the panel that is read past them.
const BLOCK_PAIR_BYTES: usize = 256 << 10;

/// Values of the packed weights of a `[k, n]` matrix: `ceil(n / 64)` panels of `ceil(k / 2)`
/// pairs of 64 columns.
pub fn packed_len(k: usize, n: usize) -> usize {
    checked_packed_len(k, n).expect("packed_len: size overflows")
}

fn checked_packed_len(k: usize, n: usize) -> Option<usize> {
    n.div_ceil(COLS)
        .checked_mul(k.div_ceil(GROUP))?
        .checked_mul(COLS * GROUP)
}

/// The row-major `[k, n]` f32 matrix `w` rounded to bf16 (nearest, ties to even) and packed as the
/// kernels read it (see the module documentation).
pub fn pack(w: &[f32], k: usize, n: usize) -> Vec<Bf16> {
    assert_eq!(w.len(), k * n, "bf16::pack: weights are not [k, n]");
    let pairs = k.div_ceil(GROUP);
    let mut out = vec![Bf16(0); packed_len(k, n)];
    for (p, panel) in out
        .chunks_exact_mut((pairs * COLS * GROUP).max(1))
        .enumerate()
    {
        for (g, pair) in panel.chunks_exact_mut(COLS * GROUP).enumerate() {
            for t in 0..GROUP.min(k - GROUP * g) {
                let row = &w[(GROUP * g + t) * n..][..n];
                for (j, &v) in row[p * COLS..n.min((p + 1) * COLS)].iter().enumerate() {
                    pair[j * GROUP + t] = Bf16::from_f32(v);
                }
            }
        }
    }
    out
}

/// Packed bf16 weights of a `[k, n]` matrix, borrowed (as the runtime reads them from a plan).
#[derive(Clone, Copy)]
pub struct Bf16Weights<'a> {
    data: &'a [Bf16],
    k: usize,
    n: usize,
}

impl<'a> Bf16Weights<'a> {
    /// `None` unless `data` holds exactly the packed weights of a `[k, n]` matrix
    /// ([`packed_len`]).
    pub fn new(data: &'a [Bf16], k: usize, n: usize) -> Option<Self> {
        (checked_packed_len(k, n)? == data.len()).then_some(Bf16Weights { data, k, n })
    }

    /// Rows of the matrix (the products' inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the matrix (the products' outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Pairs of `k` in each panel.
    fn pairs(&self) -> usize {
        self.k.div_ceil(GROUP)
    }

    /// Panel `p` and the number of its columns that are real.
    fn panel(&self, p: usize) -> (&'a [Bf16], usize) {
        let size = self.pairs() * COLS * GROUP;
        (
            &self.data[p * size..(p + 1) * size],
            COLS.min(self.n - p * COLS),
        )
    }
}

impl std::fmt::Debug for Bf16Weights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The shape, not the megabytes of values.
        write!(f, "Bf16Weights {{ k: {}, n: {} }}", self.k, self.n)
    }
}

/// One of the bf16 product kernels: made only by [`kernels`], after detecting what it needs, so
/// holding one proves it may run on this CPU.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bf16Kernel(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `tdpbf16ps` on AMX tiles (AMX-BF16), activations rounded with AVX-512 BF16.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// `vdpbf16ps` (AVX-512 BF16).
    #[cfg(target_arch = "x86_64")]
    Dpbf16,
    /// Weights widened to f32 exactly, fused multiply-adds on this instruction set.
    Widen(Isa),
}

impl std::fmt::Debug for Bf16Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Amx => write!(f, "amx-bf16"),
            #[cfg(target_arch = "x86_64")]
            Kind::Dpbf16 => write!(f, "avx512-bf16"),
            Kind::Widen(isa) => write!(f, "widen-{isa:?}"),
        }
    }
}

impl Bf16Kernel {
    /// Rounds each of the `rows` rows of `x` (`k` values each) to bf16 pairs, `k.div_ceil(2)` a
    /// row, the last pair of an odd row padded with zero.
    fn convert(self, x: &[f32], k: usize, pairs: &mut [u32]) {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Amx | Kind::Dpbf16 => dpbf16::convert(x, k, pairs),
            Kind::Widen(_) => widen::convert(x, k, pairs),
        }
    }

    /// The sums of `m` rows (1 to [`TILE_ROWS`]) of activation pairs (`kp` a row) with one panel
    /// (`kp * 128` values), into rows of 64 of `tile`.
    fn tile(self, m: usize, pairs: &[u32], kp: usize, panel: &[Bf16], tile: &mut Tile) {
        assert!((1..=TILE_ROWS).contains(&m), "bf16 tile of {m} rows");
        assert_eq!(pairs.len(), m * kp, "bf16 tile: activation pairs");
        assert_eq!(panel.len(), kp * COLS * GROUP, "bf16 tile: panel");
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Dpbf16 => dpbf16::tile(m, pairs, kp, panel, tile),
            #[cfg(target_arch = "x86_64")]
            Kind::Amx => unreachable!("the AMX kernel runs its own tiles"),
            Kind::Widen(isa) => widen::tile(isa, m, pairs, kp, panel, tile),
        }
    }
}

/// The sums of a tile: [`TILE_ROWS`] rows of [`COLS`].
type Tile = [f32; TILE_ROWS * COLS];

/// Every bf16 kernel this CPU can run, fastest first: AMX tiles where AMX-BF16 runs, `vdpbf16ps`
/// where AVX-512 BF16 is present,
/// then the widening fallback on each instruction set (tests run them all).
pub fn kernels() -> Vec<Bf16Kernel> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if amx::detected() {
        v.push(Bf16Kernel(Kind::Amx));
    }
    #[cfg(target_arch = "x86_64")]
    if dpbf16::detected() {
        v.push(Bf16Kernel(Kind::Dpbf16));
    }
    v.extend(
        Isa::available()
            .into_iter()
            .map(|isa| Bf16Kernel(Kind::Widen(isa))),
    );
    v
}

/// The fastest bf16 kernel on this CPU, chosen once.
pub fn best_kernel() -> Bf16Kernel {
    static BEST: std::sync::OnceLock<Bf16Kernel> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| kernels()[0])
}

/// `out = epilogue(bf16(x) w)` for `x` row-major `[rows, k]` (f32, rounded to bf16 here) and `out`
/// row-major `[rows, n]`, with the fastest kernel, on the current rayon pool
/// ([`crate::threads::available`]) when the product is big enough to share.
///
/// The rounded activations go to a buffer of the calling thread (`rows * ceil(k / 2) * 4` bytes),
/// kept for its next call.
pub fn gemm_bf16(x: &[f32], rows: usize, w: Bf16Weights, epi: Epilogue, out: &mut [f32]) {
    gemm_bf16_with(best_kernel(), x, rows, w, epi, out)
}

thread_local! {
    /// The activation pairs of the last call on this thread, kept so that calls reuse the memory.
    static PAIRS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// [`gemm_bf16`] with the given kernel.
pub fn gemm_bf16_with(
    kernel: Bf16Kernel,
    x: &[f32],
    rows: usize,
    w: Bf16Weights,
    epi: Epilogue,
    out: &mut [f32],
) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), rows * k, "gemm_bf16: x is not [rows, k]");
    assert_eq!(out.len(), rows * n, "gemm_bf16: out is not [rows, n]");
    if let Some(b) = epi.bias {
        assert_eq!(b.len(), n, "gemm_bf16: the bias is not one value a column");
    }
    if rows == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(GROUP);
    let threads = crate::threads::available();
    let parallel = threads > 1 && rows.saturating_mul(n).saturating_mul(k) >= 1 << 18;

    // Taken out of the thread's cell and put back after, so a nested call would allocate its own.
    let mut scratch = PAIRS.take();
    #[cfg(target_arch = "x86_64")]
    if kernel.0 == Kind::Amx {
        amx::gemm(
            x,
            rows,
            w,
            epi,
            out,
            &mut scratch,
            parallel.then_some(threads),
        );
        PAIRS.set(scratch);
        return;
    }
    if scratch.len() < rows * kp {
        scratch.resize(rows * kp, 0);
    }
    let pairs = &mut scratch[..rows * kp];
    if parallel && kp > 0 {
        let chunk = rows.div_ceil(threads);
        pairs
            .par_chunks_mut(chunk * kp)
            .zip(x.par_chunks(chunk * k))
            .for_each(|(p, x)| kernel.convert(x, k, p));
    } else {
        kernel.convert(x, k, pairs);
    }
    let pairs = &*pairs;

    let panels = n.div_ceil(COLS);
    let split = Tasks::new(rows, TILE_ROWS, kp * 4, panels, parallel.then_some(threads));
    let base = SharedPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (row_range, panel_range) = split.task(t);
        let (first_row, end_row) = (row_range.start, row_range.end);
        let mut tile: Tile = [0.0; TILE_ROWS * COLS];
        for p in panel_range {
            let (panel, width) = w.panel(p);
            let first = p * COLS;
            let bias = epi.bias.map(|b| &b[first..first + width]);
            for r in (first_row..end_row).step_by(TILE_ROWS) {
                let m = TILE_ROWS.min(end_row - r);
                kernel.tile(m, &pairs[r * kp..(r + m) * kp], kp, panel, &mut tile);
                for (i, sums) in tile.chunks_exact_mut(COLS).take(m).enumerate() {
                    // SAFETY: `out` holds `rows * n` values (asserted above) and row `r + i` is
                    // below `rows`; columns `first..first + width` lie within `n`. Each (row block,
                    // panel) pair belongs to one task, so this slice is written by this task alone,
                    // while `out` stays borrowed mutably for the whole call.
                    let out_row = unsafe {
                        std::slice::from_raw_parts_mut(base.get().add((r + i) * n + first), width)
                    };
                    finish_row(&mut sums[..width], bias, epi, out_row);
                }
            }
        }
    };
    if parallel {
        (0..split.count()).into_par_iter().for_each(task);
    } else {
        (0..split.count()).for_each(task);
    }
    PAIRS.set(scratch);
}

/// How a product's work is shared: tasks are (row block, run of panels) pairs. A block's activation
/// pairs stay in the core's L2 while the task takes each of its panels in turn past them; blocks
/// are split by panels too when there are too few of them to balance the threads.
struct Tasks {
    rows: usize,
    block_rows: usize,
    panels: usize,
    groups: usize,
    group_panels: usize,
}

impl Tasks {
    /// `rows` in blocks of whole tiles of `tile_rows`, as many as [`BLOCK_PAIR_BYTES`] asks for
    /// at `row_bytes` of pairs a row, of about equal size; with `threads`, at least 4 tasks a
    /// thread where the panels allow.
    fn new(
        rows: usize,
        tile_rows: usize,
        row_bytes: usize,
        panels: usize,
        threads: Option<usize>,
    ) -> Tasks {
        let max_rows = (BLOCK_PAIR_BYTES / row_bytes.max(1) / tile_rows).max(1) * tile_rows;
        let block_rows = rows
            .div_ceil(rows.div_ceil(max_rows))
            .next_multiple_of(tile_rows)
            .min(rows);
        let blocks = rows.div_ceil(block_rows);
        let groups = match threads {
            Some(threads) if blocks < 4 * threads => (4 * threads).div_ceil(blocks).min(panels),
            _ => 1,
        };
        let group_panels = panels.div_ceil(groups);
        Tasks {
            rows,
            block_rows,
            panels,
            groups: panels.div_ceil(group_panels),
            group_panels,
        }
    }

    fn count(&self) -> usize {
        self.rows.div_ceil(self.block_rows) * self.groups
    }

    /// Task `t`'s rows and panels.
    fn task(&self, t: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (b, q) = (t / self.groups, t % self.groups);
        let first_row = b * self.block_rows;
        let panels = q * self.group_panels..self.panels.min((q + 1) * self.group_panels);
        (
            first_row..self.rows.min(first_row + self.block_rows),
            panels,
        )
    }
}

/// Applies the epilogue to one row of sums (the real columns of a panel) and stores it in `out`.
pub(super) fn finish_row(sums: &mut [f32], bias: Option<&[f32]>, epi: Epilogue, out: &mut [f32]) {
    match (epi.activation, bias) {
        (Some(act), _) => bias_act_rows(act, sums, bias),
        (None, Some(b)) => sums.iter_mut().zip(b).for_each(|(s, &b)| *s += b),
        (None, None) => {}
    }
    if epi.accumulate {
        out.iter_mut().zip(&*sums).for_each(|(o, &s)| *o += s);
    } else {
        out.copy_from_slice(sums);
    }
}

/// The plain scalar definition [`gemm_bf16`] is tested against: each activation rounded to bf16 and
/// each packed weight widened exactly, the products summed in f64 in `k` order and rounded to f32,
/// then the epilogue applied value by value.
pub fn gemm_bf16_reference(x: &[f32], rows: usize, w: Bf16Weights, epi: Epilogue, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), rows * k, "gemm_bf16_reference: x is not [rows, k]");
    assert_eq!(
        out.len(),
        rows * n,
        "gemm_bf16_reference: out is not [rows, n]"
    );
    let pairs = w.pairs();
    for r in 0..rows {
        for c in 0..n {
            let (p, j) = (c / COLS, c % COLS);
            let mut sum = 0.0f64;
            for (i, &v) in x[r * k..(r + 1) * k].iter().enumerate() {
                let (g, t) = (i / GROUP, i % GROUP);
                let wv = w.data[((p * pairs + g) * COLS + j) * GROUP + t].to_f32();
                sum += Bf16::from_f32(v).to_f32() as f64 * wv as f64;
            }
            let mut v = sum as f32;
            if let Some(b) = epi.bias {
                v += b[c];
            }
            if let Some(act) = epi.activation {
                v = act.apply(v);
            }
            let o = &mut out[r * n + c];
            *o = if epi.accumulate { *o + v } else { v };
        }
    }
}
