//! int8 products: weights quantised per output column, activations per row, sums exact in i32.
//!
//! # The scheme
//! - Weights `[k, n]` are quantised per output column, symmetrically: `scale[c] = max_k |w[k][c]| /
//!   127` and `q = round_half_even(w / scale)` clamped to `[-127, 127]` (never -128, so a code's
//!   sign can be moved onto another byte without overflow). A column of zeros, or of values so
//!   small that the scale underflows to 0, has scale 0 and zero codes. `col_sums[c] = Σ_k q[k][c]`.
//! - The codes are packed once, as the kernels read them in place ([`packed_len`]): panels of
//!   [`COLS`] columns, and within a panel `k` in groups of [`GROUP`], byte `[p][g][j][t]` =
//!   `q[4g + t][64p + j]`, so that one 32-bit lane holds one column's four consecutive codes, the
//!   operand of one `vpdpbusd` lane. `k` and `n` are padded with zero codes. Every kernel reads
//!   this one layout, so a plan needs no repacking for the CPU it runs on.
//! - Activations are quantised per row at run time ([`QuantRows`]), symmetrically the same way, and
//!   stored offset by 128 as `u8` (the unsigned operand of `vpdpbusd`), padding bytes 128 (zero).
//! - `acc[r][c] = Σ_k u[r][k] q[k][c] - 128 col_sums[c]`, exact in i32 for `k` up to [`MAX_K`];
//!   then `out = epilogue((acc * s[r]) * scale[c])` ([`Epilogue`]: bias, activation, residual),
//!   applied while the tile is in registers; GELU is applied to the finished rows of a tile, by
//!   [`bias_act_rows`].
//!
//! # ONNX-quantised models
//! Models quantised by ONNX Runtime bring their codes; the same layout and kernels take them:
//! - [`pack_codes`] packs int8 weight codes as given (zero point 0, any code in [-128, 127]) with
//!   the caller's column scales, at compile time.
//! - [`gemm_u8`] multiplies u8 activations with one zero point for the whole tensor (as
//!   DynamicQuantizeLinear and QuantizeLinear per tensor make them): `acc = Σ_k (x - x_zero) q`,
//!   taken as `Σ u q - x_zero col_sums` (the kernels' `128` generalised), exact in i32, then
//!   `epilogue(acc as f32 * scale[c])` with one multiply: bitwise what `Mul(Cast(MatMulInteger(x,
//!   W, x_zero, 0)), scale)` and the bias, activation and residual compute. On AVX2 it runs a
//!   kernel that widens both operands to i16 (`vpmaddwd`), since `vpmaddubsw`'s sign trick needs
//!   activations offset by 128 and no code of -128. [`I8Weights::with_scales`] swaps in the
//!   column scales of one call (the activations' scale times the weights').
//! - [`quantize_u8`], [`quantize_i8`], [`dequantize_u8`], [`dequantize_i8`] and
//!   [`dynamic_quantize_u8`] are QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear per
//!   tensor, bit for bit (round half to even of the f32 quotient, saturation); the latter's
//!   all-zero, non-finite and overflowing inputs are defined on it.
//!
//! Non-finite values are not quantised: a row of activations with a NaN or infinity gets scale NaN
//! (zero codes), so its outputs are NaN (ReLU turns them into 0, as [`Activation::apply`] does); a
//! weight column with one gets scale NaN, and so NaN outputs in that column.
//!
//! # Kernels
//! Chosen at run time ([`kernels`], best first): AMX-INT8 (`tdpbusd` on tile registers, where the
//! CPU has AMX and the OS lets the process use it, [`crate::amx`]), strips of 16 rows x 64 columns
//! in four i32 tiles, the weights read in place as tiles of 16 groups x 16 columns (rows 256 bytes
//! apart), then the AVX-512 epilogue; AVX-512 VNNI on zmm, tiles of 6 rows x 64 columns;
//! AVX-VNNI (VEX) and AVX-512 VNNI on ymm, the same 256-bit kernel written once; AVX2 with
//! `vpmaddubsw`, the activations' signs moved onto the weights so that its i16 pair sums cannot
//! saturate (for [`gemm_u8`], the widening AVX2 kernel instead); and a portable one. Every kernel
//! is tested against [`gemm_i8_reference`], and on [`gemm_u8`] against the ONNX formula computed
//! from the unpacked codes.

mod amx;
mod avx512;
mod pack;
mod per_tensor;
mod per_tensor_x86;
mod portable;
mod reference;
mod rows;
mod rows_x86;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_per_tensor;
#[cfg(test)]
mod tests_u8;
mod ymm;

use std::sync::OnceLock;

use rayon::prelude::*;

pub use pack::{pack_codes, packed_len, quantize_pack, I8Weights, PackedI8};
pub use per_tensor::{dequantize_i8, dequantize_u8, dynamic_quantize_u8, quantize_i8, quantize_u8};
pub use reference::gemm_i8_reference;
pub use rows::{quantize_row, QuantRows};

use super::Epilogue;
use crate::activation::{bias_act_rows, Activation};
use crate::matmul::SharedPtr;

/// Columns per weight panel: one zmm of i32 sums holds 16 of them, a row of a tile four zmm.
pub const COLS: usize = 64;

/// Consecutive `k` a 32-bit lane of packed weights holds: the four products `vpdpbusd` sums.
pub const GROUP: usize = 4;

/// The deepest product the scheme takes: the kernels sum `u * q` with `u` up to 255 and `|q|` up to
/// 128 (codes of -128 come with ONNX weights, [`pack_codes`]), and take off `zero * col_sum`
/// with `zero` up to 255, so every sum stays within i32 while `255 * 128 * k <= i32::MAX`,
/// k <= 65793.
pub const MAX_K: usize = i32::MAX as usize / (255 * 128);

/// Rows a task hands to a kernel at once; the bound of the scratch tile the GELU epilogue uses. A
/// multiple of every kernel's tile height (16, 6 and 4).
const CHUNK_ROWS: usize = 48;

/// Products smaller than this many multiply-adds run on the calling thread: waking the pool costs
/// more than they take.
const PARALLEL_MACS: usize = 1 << 20;

/// An int8 GEMM kernel this CPU can run, as detected at run time: only [`kernels`] and
/// [`I8Kernel::best`] make one, so holding one is what lets [`gemm_i8_with`] run it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct I8Kernel(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// AMX-INT8 tiles, with an AVX-512F/BW/VL epilogue.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX-512F/BW/VL with VNNI, 512-bit.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// AVX-VNNI (VEX-encoded `vpdpbusd`), 256-bit.
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX-512 VNNI on 256-bit registers (EVEX-encoded): the AVX-VNNI kernel's code on CPUs with
    /// AVX-512 VNNI, so that it is tested where AVX-VNNI is missing.
    #[cfg(target_arch = "x86_64")]
    Avx512VnniYmm,
    /// AVX2: `vpmaddubsw` and `vpmaddwd`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Plain Rust.
    Portable,
}

impl I8Kernel {
    /// The fastest kernel this CPU runs, detected once.
    pub fn best() -> I8Kernel {
        static BEST: OnceLock<I8Kernel> = OnceLock::new();
        *BEST.get_or_init(|| kernels()[0])
    }

    /// A short name for tables and test messages.
    pub fn name(self) -> &'static str {
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Amx => "amx-int8",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni => "avx512-vnni",
            #[cfg(target_arch = "x86_64")]
            Kind::AvxVnni => "avx-vnni",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512VnniYmm => "avx512-vnni-ymm",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => "avx2",
            Kind::Portable => "portable",
        }
    }
}

impl std::fmt::Debug for I8Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernels this CPU can run, fastest first; the last is always the portable one.
pub fn kernels() -> Vec<I8Kernel> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        if avx512 && crate::amx::available(crate::amx::Product::Int8) {
            v.push(I8Kernel(Kind::Amx));
        }
        let avx512_vnni = avx512 && has!("avx512vnni");
        if avx512_vnni {
            v.push(I8Kernel(Kind::Avx512Vnni));
        }
        if has!("avx2") && has!("avxvnni") {
            v.push(I8Kernel(Kind::AvxVnni));
        }
        if avx512_vnni {
            v.push(I8Kernel(Kind::Avx512VnniYmm));
        }
        if has!("avx2") {
            v.push(I8Kernel(Kind::Avx2));
        }
    }
    v.push(I8Kernel(Kind::Portable));
    v
}

/// `out = epilogue(x w)` for quantised rows `x` (`[rows, k]`) and weights `w` (`[k, n]`), `out`
/// row-major `[rows, n]`, with the fastest kernel. Runs on the current rayon pool
/// ([`crate::threads::available`]) when the product is big enough to share, on the calling thread
/// inside [`crate::threads::serial`].
pub fn gemm_i8(x: &QuantRows, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    gemm_i8_with(I8Kernel::best(), x, w, epi, out)
}

/// [`gemm_i8`] after quantising the row-major `[rows, w.k()]` activations `x` ([`QuantRows`]), into
/// a buffer kept per thread.
pub fn linear_i8(x: &[f32], rows: usize, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    thread_local! {
        static ROWS: std::cell::Cell<QuantRows> = std::cell::Cell::new(QuantRows::default());
    }
    // Taken out rather than borrowed: a pool thread waiting inside `gemm_i8` may run another
    // call's `linear_i8`, which then quantises into a buffer of its own.
    let mut q = ROWS.take();
    q.quantize(x, rows, w.k());
    gemm_i8(&q, w, epi, out);
    ROWS.set(q);
}

/// [`gemm_i8`] with the given kernel (tests and benches compare them).
pub fn gemm_i8_with(kernel: I8Kernel, x: &QuantRows, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    assert_eq!(
        x.k(),
        w.k(),
        "gemm_i8: rows of {} values, weights of {}",
        x.k(),
        w.k()
    );
    let rows = Rows {
        codes: x.codes(),
        rows: x.rows(),
        stride: x.stride(),
        scales: Some(x.scales()),
        zero: 128,
        full_range: false,
    };
    gemm_rows(kernel, &rows, w, epi, out)
}

/// `out = epilogue(acc * w.scales()[c])` with `acc[r][c] = Σ_k (x[r][k] - x_zero) q[k][c]` exact in
/// i32, for ONNX-quantised activations: `x` row-major `[rows, w.k()]` u8 codes with one zero point
/// for the whole tensor (DynamicQuantizeLinear, QuantizeLinear per tensor), and weights of any
/// codes in [-128, 127] ([`pack_codes`]). The integer sum is exact and converted to f32 once, then
/// multiplied once by the column's scale (after a row scale of exactly 1.0, which changes no bit):
/// bitwise what the ONNX graph `Mul(Cast<f32>(MatMulInteger(x, W, x_zero, 0)), scale)` computes,
/// then the bias, the activation and the residual as [`Epilogue`] says. So a scale that is the
/// product of the activations' and the weights' scales is the caller's to multiply (once per
/// column, [`I8Weights::with_scales`]), as the graph does.
///
/// Rows whose `k` is not a multiple of [`GROUP`] are copied into a buffer kept per thread, padded
/// with zero bytes (which the zero codes padding the weights make add nothing; the zero point is
/// taken off the real codes' sums only). Every kernel takes these operands exactly except the
/// AVX2 `vpmaddubsw` one, whose i16 pair sums would saturate at 255 x -128 x 2: on AVX2 this entry
/// point runs an exact variant that widens both operands to i16 and sums pairs with `vpmaddwd`.
/// Parallel on the current rayon pool as [`gemm_i8`] is.
pub fn gemm_u8(x: &[u8], rows: usize, x_zero: u8, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    gemm_u8_with(I8Kernel::best(), x, rows, x_zero, w, epi, out)
}

/// [`gemm_u8`] with the given kernel (tests and benches compare them).
pub fn gemm_u8_with(
    kernel: I8Kernel,
    x: &[u8],
    rows: usize,
    x_zero: u8,
    w: I8Weights,
    epi: Epilogue,
    out: &mut [f32],
) {
    let k = w.k();
    assert_eq!(
        Some(x.len()),
        rows.checked_mul(k),
        "gemm_u8: x is not [rows, k = {k}]"
    );
    let stride = k.div_ceil(GROUP) * GROUP;
    let operands = |codes| Rows {
        codes,
        rows,
        stride,
        scales: None,
        zero: x_zero as i32,
        full_range: true,
    };
    if stride == k {
        return gemm_rows(kernel, &operands(x), w, epi, out);
    }
    thread_local! {
        static PADDED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // Taken out rather than borrowed, as in `linear_i8`: a pool thread waiting inside this call
    // may run another call's `gemm_u8`.
    let mut padded = PADDED.take();
    padded.clear();
    padded.resize(rows * stride, 0);
    for (to, from) in padded.chunks_exact_mut(stride).zip(x.chunks_exact(k)) {
        to[..k].copy_from_slice(from);
    }
    gemm_rows(kernel, &operands(&padded), w, epi, out);
    PADDED.set(padded);
}

/// The activations of a product as the kernels read them.
struct Rows<'a> {
    /// `rows * stride` bytes.
    codes: &'a [u8],
    rows: usize,
    /// Bytes per row: `k` rounded up to whole groups.
    stride: usize,
    /// One per row; `None`: 1.0 for every row.
    scales: Option<&'a [f32]>,
    /// The code of 0, taken off every code: `zero * col_sums` off the sums.
    zero: i32,
    /// Codes may take any u8 value and weights -128, so only kernels exact over the whole u8 x i8
    /// range may run (not AVX2's `vpmaddubsw`).
    full_range: bool,
}

/// Row scales of 1.0 for the rows of a chunk whose activations have none.
static ONES: [f32; CHUNK_ROWS] = [1.0; CHUNK_ROWS];

/// The product of `x` and `w` into `out` (`[rows, n]`), on the pool when it is large enough.
fn gemm_rows(kernel: I8Kernel, x: &Rows, w: I8Weights, epi: Epilogue, out: &mut [f32]) {
    let (rows, k, n) = (x.rows, w.k(), w.n());
    assert_eq!(
        x.stride,
        k.div_ceil(GROUP) * GROUP,
        "int8 product: rows and weights differ in k"
    );
    assert_eq!(x.codes.len(), rows * x.stride, "int8 product: rows");
    if let Some(scales) = x.scales {
        assert_eq!(scales.len(), rows, "int8 product: one scale per row");
    }
    assert_eq!(out.len(), rows * n, "int8 product: out is not [rows, n]");
    if let Some(bias) = epi.bias {
        assert_eq!(bias.len(), n, "int8 product: one bias per output column");
    }
    if rows == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(COLS);
    let chunks = rows.div_ceil(CHUNK_ROWS);
    let base = SharedPtr(out.as_mut_ptr());
    // Tasks are (panel, row chunk) pairs, panel-major: the pool hands each thread runs of whole
    // panels, so each core's cache holds only its share of the weights (with two threads at 128
    // rows, chunk-major order was up to 8% slower; on one thread the orders tie), and tasks of at
    // most `CHUNK_ROWS` rows of one panel balance any shape.
    let task = |t: usize| {
        let (p, c) = (t / chunks, t % chunks);
        let r = c * CHUNK_ROWS;
        // SAFETY: rows `r..r + m` and the columns of panel `p` lie within `out`, which holds
        // `rows * n` values (asserted above) and stays borrowed mutably for the whole call;
        // tasks write disjoint (panel, chunk) blocks, so nothing else touches this one.
        unsafe { chunk(kernel, x, w, epi, p, r, CHUNK_ROWS.min(rows - r), &base, n) };
    };
    let tasks = chunks * panels;
    let threads = crate::threads::available();
    if threads > 1 && tasks > 1 && rows.saturating_mul(n).saturating_mul(k) >= PARALLEL_MACS {
        // Tasks of at least about `PARALLEL_MACS / 8` multiply-adds, so that one-row products
        // are not split into panels too small to be worth a hand-over.
        let task_macs = CHUNK_ROWS.min(rows) * COLS * k.max(1);
        let min = (PARALLEL_MACS / 8).div_ceil(task_macs);
        (0..tasks).into_par_iter().with_min_len(min).for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Rows `r..r + m` of panel `p`'s columns of `out` (row-major, `n` wide, at `base`).
///
/// # Safety
/// Those rows and columns lie within the output at `base`, and nothing else reads or writes them
/// during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn chunk(
    kernel: I8Kernel,
    x: &Rows,
    w: I8Weights,
    epi: Epilogue,
    p: usize,
    r: usize,
    m: usize,
    base: &SharedPtr,
    n: usize,
) {
    let c0 = p * COLS;
    let width = COLS.min(n - c0);
    let stride = x.stride;
    let panel_len = stride / GROUP * COLS * GROUP;
    let bias = epi.bias.map(|b| &b[c0..c0 + width]);
    let mut block = Block {
        x: &x.codes[r * stride..(r + m) * stride],
        stride,
        x_scales: x.scales.map_or(&ONES[..m], |s| &s[r..r + m]),
        x_zero: x.zero,
        full_range: x.full_range,
        panel: &w.data()[p * panel_len..(p + 1) * panel_len],
        w_scales: &w.scales()[c0..c0 + width],
        col_sums: &w.col_sums()[c0..c0 + width],
        bias,
        relu: false,
        accumulate: epi.accumulate,
    };
    let dst = base.get().add(r * n + c0);
    match epi.activation {
        None | Some(Activation::Relu) => {
            block.relu = epi.activation.is_some();
            // SAFETY: the caller hands this call rows `r..r + m`, columns `c0..c0 + width` of
            // the output, `n` apart.
            unsafe { run(kernel, &block, dst, n) }
        }
        Some(act) if !epi.accumulate => {
            // GELU in place on the finished rows, with the vectorised activation; the bias goes
            // with it.
            block.bias = None;
            // SAFETY: as above.
            unsafe { run(kernel, &block, dst, n) };
            for i in 0..m {
                // SAFETY: row `r + i`, columns `c0..c0 + width` of the output, which the caller
                // hands to this call alone.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n), width) };
                bias_act_rows(act, o, bias);
            }
        }
        Some(act) => {
            // GELU before the residual is added: on a tile of its own.
            block.bias = None;
            block.accumulate = false;
            let mut tile = [0.0f32; CHUNK_ROWS * COLS];
            // SAFETY: `tile` holds `m <= CHUNK_ROWS` rows of `COLS >= width` values.
            unsafe { run(kernel, &block, tile.as_mut_ptr(), COLS) };
            for (i, row) in tile.chunks_exact_mut(COLS).take(m).enumerate() {
                let row = &mut row[..width];
                bias_act_rows(act, row, bias);
                // SAFETY: as above.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n), width) };
                o.iter_mut().zip(&*row).for_each(|(o, v)| *o += v);
            }
        }
    }
}

/// What a kernel computes: the products of a block of rows with one panel, and how it stores them.
struct Block<'a> {
    /// The rows' codes, `stride` apart (`m * stride` bytes).
    x: &'a [u8],
    /// Bytes per row: `k` rounded up to whole groups.
    stride: usize,
    /// One per row (`m`).
    x_scales: &'a [f32],
    /// The code of 0 in `x`: the kernels take `x_zero * col_sums` off their sums (the AVX2
    /// `vpmaddubsw` one, which runs only on rows offset by 128, takes the offset off the codes).
    x_zero: i32,
    /// Whether `x` may hold any byte and the weights -128 ([`Rows::full_range`]).
    full_range: bool,
    /// The panel's codes, `stride / GROUP` groups of `COLS * GROUP` bytes.
    panel: &'a [i8],
    /// One per real column of the panel (`width`, 1 to `COLS`).
    w_scales: &'a [f32],
    col_sums: &'a [i32],
    bias: Option<&'a [f32]>,
    /// `max(v, 0)` after the bias.
    relu: bool,
    /// Add onto the output instead of overwriting it.
    accumulate: bool,
}

impl Block<'_> {
    /// Checks that every slice holds what the fields say, so kernels may read them unchecked;
    /// returns the rows, the groups and the real columns.
    fn shape(&self) -> (usize, usize, usize) {
        let m = self.x_scales.len();
        let width = self.w_scales.len();
        assert!(
            self.stride.is_multiple_of(GROUP),
            "int8 kernel: rows of whole groups"
        );
        assert_eq!(self.x.len(), m * self.stride, "int8 kernel: rows");
        let groups = self.stride / GROUP;
        assert_eq!(
            self.panel.len(),
            groups * COLS * GROUP,
            "int8 kernel: panel"
        );
        assert!((1..=COLS).contains(&width), "int8 kernel: 1 to 64 columns");
        assert_eq!(self.col_sums.len(), width, "int8 kernel: column sums");
        if let Some(b) = self.bias {
            assert_eq!(b.len(), width, "int8 kernel: bias");
        }
        (m, groups, width)
    }
}

/// Runs `kernel` on `block`, storing into `dst`, rows `dst_stride` apart.
///
/// # Safety
/// `dst` addresses `m` rows of the block's `width` values, `dst_stride` apart, that nothing else
/// reads or writes during the call.
unsafe fn run(kernel: I8Kernel, block: &Block, dst: *mut f32, dst_stride: usize) {
    match kernel.0 {
        // SAFETY (all arms): an `I8Kernel` is made only by `kernels`, after detecting the
        // features its kernel is compiled for; `dst` is as the caller promises.
        #[cfg(target_arch = "x86_64")]
        Kind::Amx => unsafe { amx::block(block, dst, dst_stride) },
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512Vnni => unsafe { avx512::block(block, dst, dst_stride) },
        #[cfg(target_arch = "x86_64")]
        Kind::AvxVnni => unsafe { ymm::block_avx_vnni(block, dst, dst_stride) },
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512VnniYmm => unsafe { ymm::block_avx512_vnni(block, dst, dst_stride) },
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 if block.full_range => unsafe { ymm::block_avx2_wide(block, dst, dst_stride) },
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => unsafe { ymm::block_avx2(block, dst, dst_stride) },
        Kind::Portable => unsafe { portable::block(block, dst, dst_stride) },
    }
}
