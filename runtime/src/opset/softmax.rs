//! Softmax and LogSoftmax along an axis (or, as before opset 13, over all axes from it).

use ndarray::ArrayD;

use super::in_place::InPlace;
use super::norm_axis;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorView};

/// The input's buffer takes the result when the rows are the last axis (or all axes from `axis`).
pub(super) const IN_PLACE: &[usize] = &[0];

/// Softmax (or log-softmax) along `axis`; with `coerce_2d` along all axes from `axis` on.
pub fn softmax(x: &TensorView, axis: i64, coerce_2d: bool, log: bool) -> Result<Tensor> {
    let x = x.f32()?;
    let rank = x.ndim();
    if rank == 0 {
        return Err(Error::invalid("Softmax of a scalar"));
    }
    let ax = norm_axis(axis, rank)?;
    let run = |data: &mut [f32], width: usize| {
        if log {
            fff_ops::softmax::log_softmax_rows(data, width)
        } else {
            fff_ops::softmax::softmax_rows(data, width)
        }
    };
    if coerce_2d || ax == rank - 1 {
        let mut out = x.as_standard_layout().into_owned();
        let width: usize = x.shape()[ax..].iter().product();
        run(out.as_slice_mut().expect("standard layout"), width);
        return Ok(Tensor::F32(out));
    }
    // Move the axis last, compute over rows, move it back.
    let mut moved = x.view();
    moved.swap_axes(ax, rank - 1);
    let mut out = moved.as_standard_layout().into_owned();
    let width = out.shape()[rank - 1];
    run(out.as_slice_mut().expect("standard layout"), width);
    out.swap_axes(ax, rank - 1);
    Ok(Tensor::F32(out.as_standard_layout().into_owned()))
}

/// Softmax (or log-softmax) written over `a` (standard layout), when its rows are contiguous.
pub(super) fn in_place(
    mut a: ArrayD<f32>,
    axis: i64,
    coerce_2d: bool,
    log: bool,
) -> Result<InPlace> {
    let rank = a.ndim();
    let ax = norm_axis(axis, rank)?;
    if !(coerce_2d || ax + 1 == rank) {
        return Ok(InPlace::Declined(Tensor::F32(a)));
    }
    let width: usize = a.shape()[ax..].iter().product();
    let data = a.as_slice_mut().expect("standard layout");
    if log {
        fff_ops::softmax::log_softmax_rows(data, width);
    } else {
        fff_ops::softmax::softmax_rows(data, width);
    }
    Ok(InPlace::Done(Tensor::F32(a)))
}
