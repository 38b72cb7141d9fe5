//! Instruction sets and the run-time choice between them. Kernels are written once as
//! `#[inline(always)]` bodies over plain slices, generic over the element type of the weights they
//! read; thin wrappers compile that body with each instruction set's target features, and
//! [`Isa::best`] picks the widest the CPU has, once. Nothing is compiled with `target-cpu=native`, so
//! the binaries run on any x86-64 or aarch64 machine.
//!
//! A file per instruction set holds its [`Vector`] implementation and its `Lanes` trait: how each
//! element type's lanes are loaded and widened there.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod portable;
mod portable_fma;
mod vector;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Avx512;
pub use dispatch::Isa;
pub(crate) use dispatch::{on_best_isa, on_isa, Body, Kind};
pub(crate) use portable::Portable;
#[cfg(target_arch = "aarch64")]
pub(crate) use portable_fma::PortableFma;
pub(crate) use vector::{Init, Picked, Store, Vector};

/// What every instruction set needs of an element type: how to load and widen its lanes. A bound of
/// [`crate::element::Element`], implemented by the instruction sets' files.
#[cfg(target_arch = "x86_64")]
pub trait Lanes: portable_fma::Lanes + avx2::Lanes + avx512::Lanes {}
#[cfg(target_arch = "x86_64")]
impl<T: portable_fma::Lanes + avx2::Lanes + avx512::Lanes> Lanes for T {}

/// What every instruction set needs of an element type: how to load and widen its lanes.
#[cfg(not(target_arch = "x86_64"))]
pub trait Lanes: portable_fma::Lanes {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: portable_fma::Lanes> Lanes for T {}

/// Orders earlier streaming stores before later stores, so another thread that learns of them sees
/// the data.
#[inline]
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SFENCE is part of the x86-64 baseline (SSE) and touches no memory.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
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
pub(crate) fn prefetch<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<{ std::arch::x86_64::_MM_HINT_T0 }, T>(s);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

/// Like [`prefetch`], but into L2 only, so that what L1 holds stays there: for data needed soon,
/// though not by the loop that asks.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(s: &[T]) {
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

/// Asks for the line of row `p` eight lines past element `i` into L1, for a dot product that walks
/// several rows at once: the hardware prefetchers follow few such streams. Only large calls ask for
/// it: rows that stay in L2 from one call to the next gain nothing.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead(p: *const f32, i: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch never faults, whatever the address (computed with wrapping arithmetic and
    // never dereferenced); SSE is part of the x86-64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + 128).cast::<i8>()) };
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
