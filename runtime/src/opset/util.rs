//! Helpers the op modules share: input accessors, axes, broadcasting and allocation checks.

use std::borrow::Cow;

use ndarray::{ArrayViewD, CowArray, IxDyn};

use crate::error::{Error, Result};
use crate::tensor::{DType, TensorView};

/// The most elements one op may create; a shape input asking for more is an error, not an abort.
pub const MAX_ELEMENTS: usize = 1 << 34;

thread_local! {
    /// The element limit in force on this thread (see [`with_element_limit`]).
    static ELEMENT_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_ELEMENTS) };
}

/// Runs `f` with the ops it evaluates on this thread allowed at most `limit` elements (and never more
/// than [`MAX_ELEMENTS`]) where data sets a size: Expand, Tile, ConstantOfShape and Range then fail
/// with [`Error::TooLarge`]. The compiler folds constants and probes rewrites under a small limit, so a
/// model that asks for a huge tensor is left to fail when it runs instead of when it compiles.
pub fn with_element_limit<R>(limit: usize, f: impl FnOnce() -> R) -> R {
    /// Restores the previous limit however `f` ends.
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            ELEMENT_LIMIT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(ELEMENT_LIMIT.with(|l| l.replace(limit.min(MAX_ELEMENTS))));
    f()
}

/// The required input `i`.
pub(super) fn input<'a, 'b>(
    inputs: &'b [Option<TensorView<'a>>],
    i: usize,
) -> Result<&'b TensorView<'a>> {
    inputs
        .get(i)
        .and_then(|v| v.as_ref())
        .ok_or_else(|| Error::invalid(format!("required input {i} is missing")))
}

/// The optional input `i`: absent when out of range or empty-named.
pub(super) fn optional<'a, 'b>(
    inputs: &'b [Option<TensorView<'a>>],
    i: usize,
) -> Option<&'b TensorView<'a>> {
    inputs.get(i).and_then(|v| v.as_ref())
}

/// Resolves a possibly negative axis against `rank` (`-1` is the last axis).
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(Error::invalid(format!(
            "axis {axis} is out of range for rank {rank}"
        )))
    }
}

/// The shape two shapes broadcast to under numpy rules.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::invalid(format!(
                    "shapes {a:?} and {b:?} do not broadcast"
                )))
            }
        };
    }
    Ok(out)
}

/// Allocations from this many bytes on are also reserved once before they are made: the budget
/// bounds what a call holds, this checks that the system will really give it (it refuses where an
/// address-space limit or strict overcommit is in force). Smaller ones are not worth the round trip.
const RESERVE_FROM_BYTES: usize = 16 << 20;

/// Checks, before an op allocates an output of `shape` and `dtype` whose size its inputs' shapes or
/// data set (and which may therefore outgrow them), that it is not absurdly large (the element limit
/// of [`with_element_limit`]), that it fits the memory budget of the call ([`crate::budget`]), and,
/// for large ones, that this machine can allocate it: a failed allocation would abort the process
/// instead of returning an error. Costs two thread-local reads for the sizes of everyday ops.
pub(super) fn check_alloc(shape: &[usize], dtype: DType) -> Result<()> {
    check_alloc_bytes(shape, dtype.size(), dtype.name())
}

/// [`check_alloc`] for elements of `size` bytes, named `type_name` in messages.
pub(super) fn check_alloc_bytes(shape: &[usize], size: usize, type_name: &str) -> Result<()> {
    let limit = ELEMENT_LIMIT.with(std::cell::Cell::get);
    let bytes = crate::tensor::checked_len(shape)
        .ok()
        .filter(|&n| n <= limit)
        .and_then(|n| n.checked_mul(size));
    let Some(b) = bytes else {
        return Err(Error::TooLarge(format!(
            "shape {shape:?} is too large to allocate"
        )));
    };
    crate::budget::check(b, || format!("shape {shape:?} of {type_name}"))?;
    if b >= RESERVE_FROM_BYTES && Vec::<u8>::new().try_reserve_exact(b).is_err() {
        return Err(Error::TooLarge(format!(
            "shape {shape:?} of {type_name} needs {}, more than can be allocated",
            crate::budget::bytes_text(b)
        )));
    }
    Ok(())
}

/// Converts non-negative dims given as i64 into usize.
pub(super) fn dims_from_ints(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::invalid(format!("{what} has a negative dimension {d}")))
        })
        .collect()
}

/// The view in row-major order: borrowed as it is when it already is (weights, fresh outputs), copied
/// only when it is strided.
pub(super) fn contiguous<'a>(a: &'a ArrayViewD<'_, f32>) -> CowArray<'a, f32, IxDyn> {
    a.as_standard_layout()
}

/// `a`'s elements in standard order as a slice: borrowed where they already are (weights, and most
/// values), copied otherwise. Cheaper than [`contiguous`] when only the slice is wanted, as on every
/// FastFeedForward call.
pub(super) fn standard_slice<'a, T: Clone>(a: &'a ArrayViewD<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().cloned().collect()),
    }
}
