//! ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd over a set of axes, and ArgMax.

use ndarray::{ArrayD, ArrayViewD, Axis};

use serde::{Deserialize, Serialize};

use super::fact::{axis, dtype_of, fact, get, ints, shape_of, Dim, Facts, Inferred};
use super::util::check_alloc;
use super::{norm_axis, Op};
use crate::error::{Error, Result};
use crate::tensor::DType;
use crate::tensor::{Tensor, TensorView};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
}

pub fn reduce(
    op: ReduceOp,
    x: &TensorView,
    axes: Option<&TensorView>,
    keepdims: bool,
    noop_with_empty_axes: bool,
) -> Result<Tensor> {
    let rank = x.rank();
    let mut axes: Vec<usize> = match axes {
        Some(a) if !a.is_empty() => a
            .ints()?
            .into_iter()
            .map(|v| norm_axis(v, rank))
            .collect::<Result<_>>()?,
        _ if noop_with_empty_axes => return Ok(x.to_owned()),
        _ => (0..rank).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    if matches!(op, ReduceOp::Max | ReduceOp::Min) && axes.iter().any(|&a| x.shape()[a] == 0) {
        return Err(Error::invalid("ReduceMax/ReduceMin over an empty axis"));
    }
    macro_rules! go {
        ($a:expr, $variant:ident, $t:ty, $zero:expr, $one:expr, $count:expr) => {{
            let mut out: ArrayD<$t> = $a.to_owned();
            let mut count: usize = 1;
            for &ax in axes.iter().rev() {
                count *= out.shape()[ax];
                out = match op {
                    ReduceOp::Sum | ReduceOp::Mean => {
                        out.fold_axis(Axis(ax), $zero, |&acc, &v| acc + v)
                    }
                    ReduceOp::Prod => out.fold_axis(Axis(ax), $one, |&acc, &v| acc * v),
                    ReduceOp::Max => out.map_axis(Axis(ax), |l| {
                        l.iter()
                            .copied()
                            .fold(l[0], |m, v| if v > m { v } else { m })
                    }),
                    ReduceOp::Min => out.map_axis(Axis(ax), |l| {
                        l.iter()
                            .copied()
                            .fold(l[0], |m, v| if v < m { v } else { m })
                    }),
                };
                if keepdims {
                    out.insert_axis_inplace(Axis(ax));
                }
            }
            if op == ReduceOp::Mean {
                let c: $t = $count(count);
                out.mapv_inplace(|v| v / c);
            }
            Tensor::$variant(out)
        }};
    }
    Ok(match x {
        TensorView::F32(a) => go!(a, F32, f32, 0.0, 1.0, |c: usize| c as f32),
        TensorView::I64(a) => go!(a, I64, i64, 0, 1, |c: usize| (c as i64).max(1)),
        TensorView::I32(a) => go!(a, I32, i32, 0, 1, |c: usize| (c as i32).max(1)),
        TensorView::Bool(_) | TensorView::BF16(_) | TensorView::I8(_) | TensorView::U8(_) => {
            return Err(Error::invalid(format!(
                "Reduce{op:?} does not take {}",
                x.dtype()
            )))
        }
    })
}

pub fn argmax(x: &TensorView, axis: i64, keepdims: bool, select_last: bool) -> Result<Tensor> {
    let ax = norm_axis(axis, x.rank())?;
    if x.shape()[ax] == 0 {
        return Err(Error::invalid("ArgMax over an empty axis"));
    }
    // int64 indices of narrower elements (bool, say) may outgrow the input.
    let mut out_shape = x.shape().to_vec();
    out_shape[ax] = 1;
    check_alloc(&out_shape, DType::I64)?;
    fn go<T: PartialOrd + Copy>(a: &ArrayViewD<T>, ax: usize, last: bool) -> ArrayD<i64> {
        a.map_axis(Axis(ax), |lane| {
            let mut best = 0;
            for (i, v) in lane.iter().enumerate() {
                if *v > lane[best] || (last && *v == lane[best]) {
                    best = i;
                }
            }
            best as i64
        })
    }
    let mut out = match x {
        TensorView::F32(a) => go(a, ax, select_last),
        TensorView::I64(a) => go(a, ax, select_last),
        TensorView::I32(a) => go(a, ax, select_last),
        TensorView::Bool(a) => go(a, ax, select_last),
        TensorView::BF16(_) => return Err(Error::invalid("ArgMax does not take bfloat16")),
        TensorView::I8(a) => go(a, ax, select_last),
        TensorView::U8(a) => go(a, ax, select_last),
    };
    if keepdims {
        out.insert_axis_inplace(Axis(ax));
    }
    Ok(Tensor::I64(out))
}

/// The shape rule of the reductions.
pub(super) fn infer(op: &Op, ins: Facts) -> Inferred {
    let dt0 = dtype_of(ins, 0);
    let s0 = shape_of(ins, 0);
    Ok(match op {
        Op::Reduce {
            keepdims,
            noop_with_empty_axes,
            ..
        } => {
            let shape = match (s0, ints(ins, 1), get(ins, 1)) {
                (Some(s), Some(axes), _) if !axes.is_empty() => {
                    let axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| axis(a, s.len()))
                        .collect::<Result<_, _>>()?;
                    Some(reduce_shape(&s, &axes, *keepdims))
                }
                (Some(s), _, None) if !noop_with_empty_axes => Some(reduce_shape(
                    &s,
                    &(0..s.len()).collect::<Vec<_>>(),
                    *keepdims,
                )),
                (Some(s), _, None) => Some(s),
                _ => None,
            };
            vec![fact(dt0, shape)]
        }
        Op::ArgMax {
            axis: a, keepdims, ..
        } => {
            let shape = s0
                .map(|s| axis(*a, s.len()).map(|k| reduce_shape(&s, &[k], *keepdims)))
                .transpose()?;
            vec![fact(Some(DType::I64), shape)]
        }
        other => return Err(format!("{} is not one of the reductions", other.name())),
    })
}

fn reduce_shape(s: &[Dim], axes: &[usize], keepdims: bool) -> Vec<Dim> {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect()
}
