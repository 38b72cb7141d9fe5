//! Ops that address elements by index: Gather, GatherElements, GatherND, ScatterElements, ScatterND,
//! CumSum.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};

use serde::{Deserialize, Serialize};

use super::fact::{axis, dtype_of, fact, ints, shape_of, value_of, Fact, Facts, Inferred};
use super::util::check_alloc;
use super::{norm_axis, Op};
use crate::error::{Error, Result};
use crate::map_tensor;
use crate::tensor::{from_vec, Tensor, TensorView};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

/// Resolves a possibly negative index into `0..dim`.
fn resolve(i: i64, dim: usize) -> Result<usize> {
    let r = if i < 0 { i + dim as i64 } else { i };
    if (0..dim as i64).contains(&r) {
        Ok(r as usize)
    } else {
        Err(Error::invalid(format!(
            "index {i} is out of range for a dimension of {dim}"
        )))
    }
}

pub fn gather(data: &TensorView, indices: &TensorView, axis: i64) -> Result<Tensor> {
    let ax = norm_axis(axis, data.rank())?;
    let dims = data.shape();
    let idx: Vec<usize> = indices
        .ints()?
        .into_iter()
        .map(|i| resolve(i, dims[ax]))
        .collect::<Result<_>>()?;
    let mut out_shape = dims[..ax].to_vec();
    out_shape.extend_from_slice(indices.shape());
    out_shape.extend_from_slice(&dims[ax + 1..]);
    check_alloc(&out_shape, data.dtype())?;
    fn go<T: Clone>(a: &ArrayViewD<T>, ax: usize, idx: &[usize], out_shape: &[usize]) -> ArrayD<T> {
        let outer: usize = a.shape()[..ax].iter().product();
        let inner: usize = a.shape()[ax + 1..].iter().product();
        let dim = a.shape()[ax];
        let std = a.as_standard_layout();
        let flat = std.as_slice().expect("standard layout is contiguous");
        let mut v = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in idx {
                let start = (o * dim + i) * inner;
                v.extend_from_slice(&flat[start..start + inner]);
            }
        }
        from_vec(IxDyn(out_shape), v)
    }
    Ok(map_tensor!(data, TensorView, a => go(a, ax, &idx, &out_shape)))
}

pub fn gather_elements(data: &TensorView, indices: &TensorView, axis: i64) -> Result<Tensor> {
    let ax = norm_axis(axis, data.rank())?;
    if indices.rank() != data.rank() {
        return Err(Error::invalid(
            "GatherElements indices differ in rank from data",
        ));
    }
    let dims = data.shape().to_vec();
    let ish = indices.shape().to_vec();
    if (0..dims.len()).any(|d| d != ax && ish[d] > dims[d]) {
        return Err(Error::invalid(format!(
            "GatherElements indices {ish:?} exceed data {dims:?}"
        )));
    }
    check_alloc(&ish, data.dtype())?;
    let idx = indices.ints()?;
    let resolved: Vec<usize> = idx
        .iter()
        .map(|&i| resolve(i, dims[ax]))
        .collect::<Result<_>>()?;
    let idx_arr =
        ArrayD::from_shape_vec(IxDyn(&ish), resolved).expect("from the indices' own shape");
    Ok(
        map_tensor!(data, TensorView, a => ArrayD::from_shape_fn(IxDyn(&ish), |pos| {
            let mut p = pos.clone();
            p[ax] = idx_arr[&pos];
            a[p]
        })),
    )
}

pub fn gather_nd(data: &TensorView, indices: &TensorView, batch_dims: i64) -> Result<Tensor> {
    let b = usize::try_from(batch_dims)
        .map_err(|_| Error::invalid("GatherND batch_dims is negative"))?;
    let dims = data.shape().to_vec();
    let ish = indices.shape().to_vec();
    let q = ish.len();
    if q == 0 || b >= q || b > dims.len() || dims[..b] != ish[..b] {
        return Err(Error::invalid(format!(
            "GatherND of {dims:?} with indices {ish:?}"
        )));
    }
    let k = ish[q - 1];
    if b + k > dims.len() {
        return Err(Error::invalid(format!(
            "GatherND index depth {k} exceeds data rank {}",
            dims.len()
        )));
    }
    let mut out_shape = ish[..q - 1].to_vec();
    out_shape.extend_from_slice(&dims[b + k..]);
    check_alloc(&out_shape, data.dtype())?;
    let idx = indices.ints()?;
    let inner: usize = dims[b + k..].iter().product();
    let tuples = idx.len() / k.max(1);
    let per_batch = tuples / ish[..b].iter().product::<usize>().max(1);
    // Flat element offset of each gathered slice.
    let strides: Vec<usize> = (0..dims.len())
        .map(|d| dims[d + 1..].iter().product())
        .collect();
    let mut offsets = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let batch = t / per_batch.max(1);
        let mut off = 0;
        let mut rem = batch;
        for d in (0..b).rev() {
            off += (rem % dims[d]) * strides[d];
            rem /= dims[d];
        }
        for j in 0..k {
            off += resolve(idx[t * k + j], dims[b + j])? * strides[b + j];
        }
        offsets.push(off);
    }
    fn go<T: Clone>(
        a: &ArrayViewD<T>,
        offsets: &[usize],
        inner: usize,
        out: &[usize],
    ) -> ArrayD<T> {
        let std = a.as_standard_layout();
        let flat = std.as_slice().expect("standard layout is contiguous");
        let v = offsets
            .iter()
            .flat_map(|&o| flat[o..o + inner].iter().cloned())
            .collect();
        from_vec(IxDyn(out), v)
    }
    Ok(map_tensor!(data, TensorView, a => go(a, &offsets, inner, &out_shape)))
}

/// ScatterND: a copy of `data` with the slices that `indices` address (its last axis, `k` long, indexes
/// `data`'s first `k` axes) replaced by, or reduced with, the matching slices of `updates`
/// (`indices.shape[..-1] ++ data.shape[k..]`). Slices are written in index order, so with no reduction
/// a slice addressed twice ends with the later update.
pub fn scatter_nd(
    data: &TensorView,
    indices: &TensorView,
    updates: &TensorView,
    reduction: ScatterReduction,
) -> Result<Tensor> {
    let dims = data.shape().to_vec();
    let ish = indices.shape().to_vec();
    let k = ish.last().copied().unwrap_or(0);
    let mut want = ish[..ish.len().saturating_sub(1)].to_vec();
    if let Some(rest) = dims.get(k..) {
        want.extend_from_slice(rest);
    }
    if ish.is_empty() || dims.is_empty() || k > dims.len() || updates.shape() != want.as_slice() {
        return Err(Error::invalid(format!(
            "ScatterND of {dims:?} with indices {ish:?} and updates {:?}",
            updates.shape()
        )));
    }
    if data.dtype() != updates.dtype() {
        return Err(Error::invalid("ScatterND updates differ in type from data"));
    }
    let idx = indices.ints()?;
    let inner: usize = dims[k..].iter().product();
    let strides: Vec<usize> = (0..dims.len())
        .map(|d| dims[d + 1..].iter().product())
        .collect();
    // An empty index (k = 0) addresses the whole of `data`, once per tuple.
    let offsets: Vec<usize> = if k == 0 {
        vec![0; ish[..ish.len() - 1].iter().product()]
    } else {
        idx.chunks(k)
            .map(|t| {
                t.iter().enumerate().try_fold(0, |off, (j, &i)| {
                    Ok(off + resolve(i, dims[j])? * strides[j])
                })
            })
            .collect::<Result<_>>()?
    };
    fn go<T: Clone>(
        a: &ArrayViewD<T>,
        u: &ArrayViewD<T>,
        offsets: &[usize],
        inner: usize,
        reduce: impl Fn(&T, &T) -> T,
    ) -> ArrayD<T> {
        let mut out = a.as_standard_layout().into_owned();
        let flat = out.as_slice_mut().expect("standard layout is contiguous");
        let u = u.as_standard_layout();
        let upd = u.as_slice().expect("standard layout is contiguous");
        for (t, &o) in offsets.iter().enumerate() {
            for (x, y) in flat[o..o + inner]
                .iter_mut()
                .zip(&upd[t * inner..(t + 1) * inner])
            {
                *x = reduce(x, y);
            }
        }
        out
    }
    macro_rules! scatter {
        ($a:expr, $u:expr, $variant:ident, $add:expr, $mul:expr, $max:expr, $min:expr) => {
            Tensor::$variant(match reduction {
                ScatterReduction::None => go($a, $u, &offsets, inner, |_, y| y.clone()),
                ScatterReduction::Add => go($a, $u, &offsets, inner, $add),
                ScatterReduction::Mul => go($a, $u, &offsets, inner, $mul),
                ScatterReduction::Max => go($a, $u, &offsets, inner, $max),
                ScatterReduction::Min => go($a, $u, &offsets, inner, $min),
            })
        };
    }
    Ok(match (data, updates) {
        (TensorView::F32(a), TensorView::F32(u)) => scatter!(
            a,
            u,
            F32,
            |x: &f32, y: &f32| x + y,
            |x: &f32, y: &f32| x * y,
            |x: &f32, y: &f32| x.max(*y),
            |x: &f32, y: &f32| x.min(*y)
        ),
        (TensorView::I64(a), TensorView::I64(u)) => scatter!(
            a,
            u,
            I64,
            |x: &i64, y: &i64| x.wrapping_add(*y),
            |x: &i64, y: &i64| x.wrapping_mul(*y),
            |x: &i64, y: &i64| *x.max(y),
            |x: &i64, y: &i64| *x.min(y)
        ),
        (TensorView::I32(a), TensorView::I32(u)) => scatter!(
            a,
            u,
            I32,
            |x: &i32, y: &i32| x.wrapping_add(*y),
            |x: &i32, y: &i32| x.wrapping_mul(*y),
            |x: &i32, y: &i32| *x.max(y),
            |x: &i32, y: &i32| *x.min(y)
        ),
        (TensorView::Bool(a), TensorView::Bool(u)) => scatter!(
            a,
            u,
            Bool,
            |x: &bool, y: &bool| *x || *y,
            |x: &bool, y: &bool| *x && *y,
            |x: &bool, y: &bool| *x || *y,
            |x: &bool, y: &bool| *x && *y
        ),
        (TensorView::BF16(_), TensorView::BF16(_)) => {
            return Err(Error::invalid("ScatterND does not take bfloat16"))
        }
        _ => unreachable!("dtypes checked equal above"),
    })
}

pub fn scatter_elements(
    data: &TensorView,
    indices: &TensorView,
    updates: &TensorView,
    axis: i64,
    reduction: ScatterReduction,
) -> Result<Tensor> {
    let ax = norm_axis(axis, data.rank())?;
    let dims = data.shape().to_vec();
    let ish = indices.shape().to_vec();
    if ish != updates.shape()
        || ish.len() != dims.len()
        || (0..dims.len()).any(|d| d != ax && ish[d] > dims[d])
    {
        return Err(Error::invalid(format!(
            "ScatterElements of {dims:?} with indices {ish:?} and updates {:?}",
            updates.shape()
        )));
    }
    if data.dtype() != updates.dtype() {
        return Err(Error::invalid(
            "ScatterElements updates differ in type from data",
        ));
    }
    let idx: Vec<usize> = indices
        .ints()?
        .into_iter()
        .map(|i| resolve(i, dims[ax]))
        .collect::<Result<_>>()?;
    macro_rules! go {
        ($a:expr, $u:expr, $variant:ident, $add:expr, $mul:expr, $max:expr, $min:expr) => {{
            let mut out = $a.to_owned();
            for ((pos, &i), u) in ndarray::indices(IxDyn(&ish))
                .into_iter()
                .zip(&idx)
                .zip($u.iter())
            {
                let mut p = pos.clone();
                p[ax] = i;
                let cur = out[&p];
                out[&p] = match reduction {
                    ScatterReduction::None => *u,
                    ScatterReduction::Add => $add(cur, *u),
                    ScatterReduction::Mul => $mul(cur, *u),
                    ScatterReduction::Max => $max(cur, *u),
                    ScatterReduction::Min => $min(cur, *u),
                };
            }
            Tensor::$variant(out)
        }};
    }
    Ok(match (data, updates) {
        (TensorView::F32(a), TensorView::F32(u)) => {
            go!(
                a,
                u,
                F32,
                |p: f32, q| p + q,
                |p: f32, q| p * q,
                f32::max,
                f32::min
            )
        }
        (TensorView::I64(a), TensorView::I64(u)) => go!(
            a,
            u,
            I64,
            |p: i64, q| p.wrapping_add(q),
            |p: i64, q| p.wrapping_mul(q),
            |p: i64, q| p.max(q),
            |p: i64, q| p.min(q)
        ),
        (TensorView::I32(a), TensorView::I32(u)) => go!(
            a,
            u,
            I32,
            |p: i32, q| p.wrapping_add(q),
            |p: i32, q| p.wrapping_mul(q),
            |p: i32, q| p.max(q),
            |p: i32, q| p.min(q)
        ),
        (TensorView::Bool(a), TensorView::Bool(u)) => {
            go!(
                a,
                u,
                Bool,
                |p: bool, q| p || q,
                |p: bool, q| p && q,
                |p: bool, q| p || q,
                |p: bool, q| p && q
            )
        }
        (TensorView::BF16(_), TensorView::BF16(_)) => {
            return Err(Error::invalid("ScatterElements does not take bfloat16"))
        }
        _ => unreachable!("dtypes checked equal above"),
    })
}

pub fn cumsum(x: &TensorView, axis: &TensorView, exclusive: bool, reverse: bool) -> Result<Tensor> {
    let ax = norm_axis(axis.scalar_f64()? as i64, x.rank())?;
    macro_rules! go {
        ($a:expr, $variant:ident, $zero:expr) => {{
            let mut out = $a.to_owned();
            for mut lane in out.lanes_mut(Axis(ax)) {
                let n = lane.len();
                let mut acc = $zero;
                for k in 0..n {
                    let i = if reverse { n - 1 - k } else { k };
                    let v = lane[i];
                    if exclusive {
                        lane[i] = acc;
                        acc += v;
                    } else {
                        acc += v;
                        lane[i] = acc;
                    }
                }
            }
            Tensor::$variant(out)
        }};
    }
    Ok(match x {
        TensorView::F32(a) => go!(a, F32, 0.0f32),
        TensorView::I64(a) => go!(a, I64, 0i64),
        TensorView::I32(a) => go!(a, I32, 0i32),
        TensorView::Bool(_) | TensorView::BF16(_) | TensorView::I8(_) | TensorView::U8(_) => {
            return Err(Error::invalid(format!(
                "CumSum does not take {}",
                x.dtype()
            )))
        }
    })
}

/// The shape rule of the index ops.
pub(super) fn infer(op: &Op, ins: Facts) -> Inferred {
    let dt0 = dtype_of(ins, 0);
    let s0 = shape_of(ins, 0);
    Ok(match op {
        Op::Gather { axis: a } => {
            let idx_shape = shape_of(ins, 1);
            let shape = match (&s0, &idx_shape) {
                (Some(s), Some(is)) => {
                    let k = axis(*a, s.len())?;
                    Some([&s[..k], &is[..], &s[k + 1..]].concat())
                }
                _ => None,
            };
            // Gathering from a known shape vector (e.g. Shape -> Gather) keeps the symbolic value.
            let value = match (value_of(ins, 0), ints(ins, 1)) {
                (Some(v), Some(idx)) if *a == 0 => idx
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + v.len() as i64 } else { i };
                        v.get(usize::try_from(j).ok()?).cloned()
                    })
                    .collect(),
                _ => None,
            };
            vec![Fact {
                dtype: dt0,
                shape,
                value,
            }]
        }
        Op::GatherElements { .. } => vec![fact(dt0, shape_of(ins, 1))],
        Op::GatherNd { batch_dims } => {
            let shape = match (&s0, shape_of(ins, 1)) {
                (Some(s), Some(is)) if !is.is_empty() => is[is.len() - 1].known().map(|k| {
                    let b = *batch_dims as usize + k as usize;
                    [&is[..is.len() - 1], s.get(b..).unwrap_or(&[])].concat()
                }),
                _ => None,
            };
            vec![fact(dt0, shape)]
        }
        Op::ScatterElements { .. } | Op::ScatterNd { .. } | Op::CumSum { .. } => {
            vec![fact(dt0, s0)]
        }
        other => return Err(format!("{} is not one of the index ops", other.name())),
    })
}
