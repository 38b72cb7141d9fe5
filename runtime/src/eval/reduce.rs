//! ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd over a set of axes.

use ndarray::{ArrayD, Axis};

use super::norm_axis;
use crate::error::{Error, Result};
use crate::op::ReduceOp;
use crate::tensor::{Tensor, TensorView};

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
        TensorView::Bool(_) | TensorView::BF16(_) => {
            return Err(Error::invalid(format!(
                "Reduce{op:?} does not take {}",
                x.dtype()
            )))
        }
    })
}
