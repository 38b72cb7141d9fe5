//! Reuse of f32 buffers across ops and calls. The executor gives every freed value's buffer to the
//! model's [`Recycler`] (and [`crate::Model::recycle`] gives back outputs a caller is done with); the
//! ops that write large f32 results take their buffer from it. A run with the shapes of an earlier one
//! then finds every buffer it needs already allocated and touched: no page faults, no allocator traffic.
//! Buffers are matched by exact length, which is what repeated shapes produce. Only values made by ops
//! that take their buffer here are given back ([`Op::takes_buffers`], each op module stating its own): a buffer kept for a length nobody
//! asks for would only grow the spares, and starve the allocator that serves the other ops.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use ndarray::{s, Array1, ArrayD, IxDyn};

use crate::tensor::Tensor;

/// Spare bytes a model keeps at most; past this the spares are dropped (shapes keep changing).
const LIMIT_BYTES: usize = 1 << 30;

/// Spare f32 buffers, by length: a short list searched in order (a model's values have a few distinct
/// lengths, and a one-row call is over in microseconds, so hashing would cost more than the search).
#[derive(Debug, Default)]
pub struct Recycler {
    free: Vec<(usize, Vec<Vec<f32>>)>,
    bytes: usize,
}

impl Recycler {
    fn put(&mut self, v: Vec<f32>) {
        let bytes = v.capacity() * std::mem::size_of::<f32>();
        if v.is_empty() || bytes > LIMIT_BYTES {
            return;
        }
        if self.bytes + bytes > LIMIT_BYTES {
            self.free.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
        match self.free.iter_mut().find(|(len, _)| *len == v.len()) {
            Some((_, spares)) => spares.push(v),
            None => self.free.push((v.len(), vec![v])),
        }
    }

    fn take(&mut self, len: usize) -> Option<Vec<f32>> {
        let (_, spares) = self.free.iter_mut().find(|(l, _)| *l == len)?;
        let v = spares.pop()?;
        self.bytes -= v.capacity() * std::mem::size_of::<f32>();
        Some(v)
    }

    /// Spare bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

thread_local! {
    /// The recycler of the run executing on this thread, if any.
    static CURRENT: RefCell<Option<Arc<Mutex<Recycler>>>> = const { RefCell::new(None) };
}

/// Runs `f` with `recycler` serving this thread's buffer requests (the previous one is restored after).
pub(crate) fn with_recycler<R>(recycler: &Arc<Mutex<Recycler>>, f: impl FnOnce() -> R) -> R {
    /// Restores the previous recycler however `f` ends, unwinding included.
    struct Restore(Option<Arc<Mutex<Recycler>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(Some(recycler.clone()))));
    f()
}

fn take(len: usize) -> Option<Vec<f32>> {
    CURRENT.with(|c| {
        let current = c.borrow();
        let mut r = current.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        r.take(len)
    })
}

/// A buffer of `len` zeros: a spare one when the current run has one of that length.
pub fn zeroed(len: usize) -> Vec<f32> {
    match take(len) {
        Some(mut v) => {
            v.fill(0.0);
            v
        }
        None => fresh(len),
    }
}

/// A buffer of `len` elements holding whatever an earlier user left: for callers that write every
/// element before reading any.
pub fn for_overwrite(len: usize) -> Vec<f32> {
    take(len).unwrap_or_else(|| fresh(len))
}

/// Elements a line-aligned buffer may start into its allocation (a cache line less one element).
const LINE_PAD: usize = 64 / std::mem::size_of::<f32>() - 1;

/// An array of `shape` holding whatever an earlier user left (for ops that write every element),
/// whose first element starts a cache line when the array is large. Allocators start large blocks
/// just past a header, so rows of a whole number of lines would otherwise all straddle lines, and
/// FastFeedForward's streaming stores, which write whole lines around the caches, could not be used.
/// The buffer comes back to the recycler with the few elements before the line.
pub fn line_aligned_for_overwrite(shape: &[usize]) -> ArrayD<f32> {
    let len = shape.iter().product::<usize>();
    if !is_large(len) {
        return crate::tensor::from_vec(IxDyn(shape), for_overwrite(len));
    }
    let v = for_overwrite(len + LINE_PAD);
    // `align_offset` may decline (usize::MAX); the array then simply starts unaligned.
    let at = v.as_ptr().align_offset(64).min(LINE_PAD);
    Array1::from_vec(v)
        .slice_move(s![at..at + len])
        .into_shape_with_order(IxDyn(shape))
        .expect("a contiguous array of the same length")
}

/// Buffers from this many bytes on are backed by huge pages where the system grants them.
const HUGE_FROM_BYTES: usize = 4 << 20;

/// Whether `len` floats are enough for huge pages.
fn is_large(len: usize) -> bool {
    len.saturating_mul(std::mem::size_of::<f32>()) >= HUGE_FROM_BYTES
}

/// A new buffer of `len` zeros. A large one is backed by huge pages where the system offers them on
/// request (Linux transparent huge pages in `madvise` mode): kernels that visit rows scattered over
/// tens of MiB, as FastFeedForward's buckets do, otherwise miss the TLB on nearly every row (at 16384
/// rows of width 768 the FFF layer took 2.2 µs per row on 4 KiB pages and 1.6 µs on huge ones).
pub fn fresh(len: usize) -> Vec<f32> {
    if !is_large(len) {
        return vec![0.0; len];
    }
    let mut v: Vec<f32> = Vec::with_capacity(len);
    advise_huge_pages(v.as_mut_ptr().cast(), len * std::mem::size_of::<f32>());
    // Written only after the advice, so that the first touch faults huge pages in.
    v.resize(len, 0.0);
    v
}

/// `v` itself when small, else its values copied into a [`fresh`] buffer.
pub fn into_fresh(v: Vec<f32>) -> Vec<f32> {
    if !is_large(v.len()) {
        return v;
    }
    let mut f = fresh(v.len());
    f.copy_from_slice(&v);
    f
}

/// Asks the system to back the whole 2 MiB pages inside `bytes` bytes at `ptr` with huge pages.
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies inside an allocation this thread owns and has not yet written;
        // MADV_HUGEPAGE changes no contents or protections, only how later faults are served, and a
        // refusal (huge pages disabled) leaves ordinary pages, so the result is deliberately ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _bytes: usize) {}

/// Gives a tensor's buffer to `recycler` when it is an f32 array that owns all of it.
pub(crate) fn recycle_into(recycler: &Mutex<Recycler>, t: Tensor) {
    let Tensor::F32(a) = t else {
        return;
    };
    if let Some(v) = whole_vec(a) {
        recycler.lock().unwrap_or_else(|e| e.into_inner()).put(v);
    }
}

/// The array's buffer, if the array is its contents in standard order (but for the padding of a
/// [`line_aligned_for_overwrite`] buffer).
fn whole_vec(a: ArrayD<f32>) -> Option<Vec<f32>> {
    if !a.is_standard_layout() {
        return None;
    }
    let len = a.len();
    let (v, offset) = a.into_raw_vec_and_offset();
    (offset.unwrap_or(0) <= LINE_PAD && v.len() - len <= LINE_PAD).then_some(v)
}

#[cfg(test)]
mod tests {
    use ndarray::IxDyn;

    use super::*;

    #[test]
    fn fresh_buffers_are_zeroed_and_keep_values_moved_in() {
        for len in [
            0,
            5,
            HUGE_FROM_BYTES / 4 - 1,
            HUGE_FROM_BYTES / 4 + 3 * (1 << 18) + 7,
        ] {
            let v = fresh(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(into_fresh(values.clone()), values);
        }
    }

    #[test]
    fn freed_buffers_come_back_zeroed_or_as_they_were() {
        let r = Arc::new(Mutex::new(Recycler::default()));
        let t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0; 6]).unwrap());
        recycle_into(&r, t);
        assert_eq!(r.lock().unwrap().bytes(), 24);
        with_recycler(&r, || {
            assert_eq!(zeroed(6), vec![0.0; 6]);
            assert_eq!(r.lock().unwrap().bytes(), 0);
            // None of that length left: a fresh one.
            assert_eq!(for_overwrite(6), vec![0.0; 6]);
        });
        recycle_into(&r, Tensor::F32(ArrayD::from_elem(IxDyn(&[4]), 2.0)));
        with_recycler(&r, || assert_eq!(for_overwrite(4), vec![2.0; 4]));
        // Outside a run nothing is shared.
        recycle_into(&r, Tensor::F32(ArrayD::from_elem(IxDyn(&[4]), 2.0)));
        assert_eq!(for_overwrite(4), vec![0.0; 4]);
        // A view into part of a buffer is not recycled.
        let sliced = ArrayD::from_elem(IxDyn(&[40, 2]), 1.0f32);
        let sliced = sliced.slice_move(ndarray::s![10.., ..]).into_dyn();
        recycle_into(&r, Tensor::F32(sliced));
        assert_eq!(r.lock().unwrap().bytes(), 16);
    }

    #[test]
    fn large_line_aligned_buffers_start_a_line_and_are_recycled() {
        let r = Arc::new(Mutex::new(Recycler::default()));
        let shape = [3, HUGE_FROM_BYTES / 4 / 3 + 16];
        let len = shape[0] * shape[1];
        for _ in 0..2 {
            let a = with_recycler(&r, || line_aligned_for_overwrite(&shape));
            assert_eq!(a.shape(), shape);
            assert!(a.is_standard_layout());
            assert_eq!(a.as_ptr() as usize % 64, 0);
            recycle_into(&r, Tensor::F32(a));
            assert_eq!(r.lock().unwrap().bytes(), (len + LINE_PAD) * 4);
        }
        // Small ones are plain buffers.
        let a = line_aligned_for_overwrite(&[2, 3]);
        assert_eq!((a.shape(), a.len()), (&[2, 3][..], 6));
    }
}
