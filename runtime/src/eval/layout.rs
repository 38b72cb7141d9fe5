//! Ops that move or create data without arithmetic: Shape, Reshape, Flatten, Squeeze, Unsqueeze,
//! Transpose, Concat, Split, Slice, Expand, Tile, ConstantOfShape, Range.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::{broadcast_shapes, check_alloc, dims_from_ints, norm_axis};
use crate::error::{Error, Result};
use crate::map_tensor;
use crate::op::{Op, Scalar};
use crate::tensor::{DType, Tensor, TensorView};

/// Clamps an ONNX `Shape` start/end into `0..=rank`.
fn clamp_bound(v: i64, rank: usize) -> usize {
    let r = rank as i64;
    (if v < 0 { v + r } else { v }).clamp(0, r) as usize
}

pub fn shape(x: &TensorView, start: i64, end: Option<i64>) -> Tensor {
    let dims = x.shape();
    let s = clamp_bound(start, dims.len());
    let e = clamp_bound(end.unwrap_or(dims.len() as i64), dims.len());
    let v = if s < e {
        dims[s..e].iter().map(|&d| d as i64).collect()
    } else {
        vec![]
    };
    Tensor::vec_i64(v)
}

/// The target shape of `Reshape`: `0` copies the input's dim (unless `allowzero`), `-1` is inferred.
pub fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                Error::invalid(format!(
                    "Reshape copies dim {i} of a rank-{} input",
                    input.len()
                ))
            })?),
            d if d >= 0 => out.push(d as usize),
            _ => {
                return Err(Error::invalid(format!(
                    "Reshape to {spec:?} is not a valid shape"
                )))
            }
        }
    }
    let total = crate::tensor::checked_len(input)?;
    let known = crate::tensor::checked_len(&out)?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(Error::invalid(format!(
                "cannot reshape {input:?} into {spec:?}"
            )));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(Error::invalid(format!(
            "cannot reshape {input:?} ({total} elements) into {spec:?}"
        )));
    }
    Ok(out)
}

fn to_shape<T: Clone>(a: &ArrayViewD<T>, shape: &[usize]) -> ArrayD<T> {
    let v: Vec<T> = a.iter().cloned().collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("element count checked by the caller")
}

pub fn reshape(x: &TensorView, spec: &TensorView, allowzero: bool) -> Result<Tensor> {
    let target = reshape_target(x.shape(), &spec.ints()?, allowzero)?;
    Ok(map_tensor!(x, TensorView, a => to_shape(a, &target)))
}

pub fn flatten(x: &TensorView, axis: i64) -> Result<Tensor> {
    let target = flatten_target(x.shape(), axis)?;
    Ok(map_tensor!(x, TensorView, t => to_shape(t, &target)))
}

fn flatten_target(dims: &[usize], axis: i64) -> Result<Vec<usize>> {
    let r = dims.len() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&a) {
        return Err(Error::invalid(format!(
            "Flatten axis {axis} is out of range for rank {r}"
        )));
    }
    let outer: usize = dims[..a as usize].iter().product();
    let inner: usize = dims[a as usize..].iter().product();
    Ok(vec![outer, inner])
}

fn axes_list(axes: &TensorView, rank: usize) -> Result<Vec<usize>> {
    let mut v = axes
        .ints()?
        .into_iter()
        .map(|a| norm_axis(a, rank))
        .collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    if v.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid("axes repeat an axis"));
    }
    Ok(v)
}

pub fn squeeze(x: &TensorView, axes: Option<&TensorView>) -> Result<Tensor> {
    let target = squeeze_target(x.shape(), axes)?;
    Ok(map_tensor!(x, TensorView, a => to_shape(a, &target)))
}

fn squeeze_target(dims: &[usize], axes: Option<&TensorView>) -> Result<Vec<usize>> {
    let remove = match axes {
        Some(a) => {
            let v = axes_list(a, dims.len())?;
            if let Some(&bad) = v.iter().find(|&&a| dims[a] != 1) {
                return Err(Error::invalid(format!(
                    "cannot squeeze axis {bad} of shape {dims:?}"
                )));
            }
            v
        }
        None => (0..dims.len()).filter(|&a| dims[a] == 1).collect(),
    };
    let out: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !remove.contains(i))
        .map(|(_, &d)| d)
        .collect();
    Ok(out)
}

pub fn unsqueeze(x: &TensorView, axes: &TensorView) -> Result<Tensor> {
    let target = unsqueeze_target(x.shape(), axes)?;
    Ok(map_tensor!(x, TensorView, a => to_shape(a, &target)))
}

fn unsqueeze_target(dims: &[usize], axes: &TensorView) -> Result<Vec<usize>> {
    let rank = dims.len() + axes.len();
    let add = axes_list(axes, rank)?;
    let mut src = dims.iter();
    let out: Vec<usize> = (0..rank)
        .map(|i| {
            if add.contains(&i) {
                1
            } else {
                *src.next().unwrap()
            }
        })
        .collect();
    Ok(out)
}

/// The output shape of an op that keeps its input's elements in order and changes only the shape
/// (Identity, Reshape, Flatten, Squeeze, Unsqueeze), so that it can reuse the input's buffer; `None` for
/// every other op. `inputs[1..]` are the op's other inputs (input 0 may be absent).
pub fn reshape_only_target(
    op: &Op,
    x: &[usize],
    inputs: &[Option<TensorView>],
) -> Result<Option<Vec<usize>>> {
    let arg = |i: usize| {
        inputs
            .get(i)
            .and_then(|v| v.as_ref())
            .ok_or_else(|| Error::invalid(format!("required input {i} is missing")))
    };
    Ok(Some(match op {
        Op::Identity => x.to_vec(),
        Op::Reshape { allowzero } => reshape_target(x, &arg(1)?.ints()?, *allowzero)?,
        Op::Flatten { axis } => flatten_target(x, *axis)?,
        Op::Squeeze => squeeze_target(x, inputs.get(1).and_then(|v| v.as_ref()))?,
        Op::Unsqueeze => unsqueeze_target(x, arg(1)?)?,
        _ => return Ok(None),
    }))
}

pub fn transpose(x: &TensorView, perm: Option<&[i64]>) -> Result<Tensor> {
    let rank = x.rank();
    let perm: Vec<usize> = match perm {
        Some(p) => p
            .iter()
            .map(|&a| norm_axis(a, rank))
            .collect::<Result<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return Err(Error::invalid(format!(
            "{perm:?} is not a permutation of {rank} axes"
        )));
    }
    Ok(map_tensor!(x, TensorView, a => permuted(a, &perm)))
}

/// `a` with its axes permuted, in standard layout: row-major inputs go through the run-copying kernel.
fn permuted<T: Copy>(a: &ArrayViewD<T>, perm: &[usize]) -> ArrayD<T> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| a.shape()[p]).collect();
    match a.as_slice() {
        Some(src) => {
            let mut out = Vec::new();
            fff_ops::permute::permute(src, a.shape(), perm, &mut out);
            ArrayD::from_shape_vec(IxDyn(&out_shape), out)
                .expect("a permutation keeps the element count")
        }
        None => a
            .clone()
            .permuted_axes(IxDyn(perm))
            .as_standard_layout()
            .into_owned(),
    }
}

pub fn concat(inputs: &[&TensorView], axis: i64) -> Result<Tensor> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid("Concat of no inputs"))?;
    let rank = first.rank();
    let ax = norm_axis(axis, rank.max(1))?;
    for t in inputs {
        if t.dtype() != first.dtype() || t.rank() != rank {
            return Err(Error::invalid(format!(
                "Concat of {} {:?} and {} {:?}",
                first.dtype(),
                first.shape(),
                t.dtype(),
                t.shape()
            )));
        }
        let same = (0..rank).all(|i| i == ax || t.shape()[i] == first.shape()[i]);
        if !same {
            return Err(Error::invalid(format!(
                "Concat along {ax} of {:?} and {:?}",
                first.shape(),
                t.shape()
            )));
        }
    }
    macro_rules! cat {
        ($variant:ident) => {{
            let views: Vec<_> = inputs
                .iter()
                .map(|t| match t {
                    TensorView::$variant(a) => a.view(),
                    _ => unreachable!("dtypes checked equal above"),
                })
                .collect();
            Tensor::$variant(
                ndarray::concatenate(Axis(ax), &views)
                    .map_err(|e| Error::invalid(e.to_string()))?,
            )
        }};
    }
    Ok(match first {
        TensorView::F32(_) => cat!(F32),
        TensorView::I64(_) => cat!(I64),
        TensorView::I32(_) => cat!(I32),
        TensorView::Bool(_) => cat!(Bool),
        TensorView::BF16(_) => cat!(BF16),
    })
}

pub fn split(
    x: &TensorView,
    sizes: Option<&TensorView>,
    axis: i64,
    n: usize,
) -> Result<Vec<Tensor>> {
    let ax = norm_axis(axis, x.rank())?;
    let dim = x.shape()[ax];
    let sizes: Vec<usize> = match sizes {
        Some(s) => dims_from_ints(&s.ints()?, "Split sizes")?,
        None => {
            if n == 0 {
                return Err(Error::invalid("Split into zero outputs"));
            }
            let chunk = dim.div_ceil(n);
            (0..n)
                .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != dim {
        return Err(Error::invalid(format!(
            "Split sizes {sizes:?} do not add up to {dim}"
        )));
    }
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for s in sizes {
        let sl = Slice::from(start..start + s);
        out.push(map_tensor!(x, TensorView, a => a.slice_axis(Axis(ax), sl).to_owned()));
        start += s;
    }
    Ok(out)
}

pub fn slice(
    x: &TensorView,
    starts: &TensorView,
    ends: &TensorView,
    axes: Option<&TensorView>,
    steps: Option<&TensorView>,
) -> Result<Tensor> {
    let dims = x.shape().to_vec();
    let starts = starts.ints()?;
    let ends = ends.ints()?;
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .ints()?
            .into_iter()
            .map(|v| norm_axis(v, dims.len()))
            .collect::<Result<_>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = match steps {
        Some(s) => s.ints()?,
        None => vec![1; starts.len()],
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(Error::invalid(
            "Slice starts, ends, axes and steps differ in length",
        ));
    }
    let mut slices = vec![Slice::from(..); dims.len()];
    for i in 0..starts.len() {
        let (ax, step) = (axes[i], steps[i]);
        if ax >= dims.len() {
            return Err(Error::invalid(format!("Slice axis {ax} is out of range")));
        }
        let d = dims[ax] as i64;
        let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        slices[ax] = match step {
            0 => return Err(Error::invalid("Slice step is 0")),
            s if s > 0 => {
                let st = norm(starts[i]).clamp(0, d);
                let en = norm(ends[i]).clamp(0, d).max(st);
                Slice::new(st as isize, Some(en as isize), s as isize)
            }
            s => {
                // Python order: from start down to end (exclusive); ndarray wants the ascending range.
                let st = norm(starts[i]).clamp(-1, d - 1);
                let en = norm(ends[i]).clamp(-1, d - 1);
                let (lo, hi) = (en + 1, (st + 1).max(en + 1));
                Slice::new(lo as isize, Some(hi as isize), s as isize)
            }
        };
    }
    Ok(map_tensor!(x, TensorView, a => {
        let mut v = a.view();
        for (ax, sl) in slices.iter().enumerate() {
            v.slice_axis_inplace(Axis(ax), *sl);
        }
        v.to_owned()
    }))
}

pub fn expand(x: &TensorView, shape: &TensorView) -> Result<Tensor> {
    let target = dims_from_ints(&shape.ints()?, "Expand shape")?;
    let out = broadcast_shapes(x.shape(), &target)?;
    check_alloc(&out, x.dtype())?;
    Ok(
        map_tensor!(x, TensorView, a => a.broadcast(IxDyn(&out)).expect("broadcastable by construction").to_owned()),
    )
}

pub fn tile(x: &TensorView, repeats: &TensorView) -> Result<Tensor> {
    let reps = dims_from_ints(&repeats.ints()?, "Tile repeats")?;
    if reps.len() != x.rank() {
        return Err(Error::invalid(format!(
            "Tile repeats {reps:?} for rank {}",
            x.rank()
        )));
    }
    let out: Vec<usize> = x
        .shape()
        .iter()
        .zip(&reps)
        .map(|(d, r)| d.saturating_mul(*r))
        .collect();
    check_alloc(&out, x.dtype())?;
    let dims = x.shape().to_vec();
    Ok(
        map_tensor!(x, TensorView, a => ArrayD::from_shape_fn(IxDyn(&out), |idx| {
            let src: Vec<usize> = (0..dims.len()).map(|i| idx[i] % dims[i]).collect();
            a[IxDyn(&src)]
        })),
    )
}

pub fn constant_of_shape(shape: &TensorView, value: Scalar) -> Result<Tensor> {
    let dims = dims_from_ints(&shape.ints()?, "ConstantOfShape shape")?;
    let dtype = match value {
        Scalar::F32Bits(_) => DType::F32,
        Scalar::I64(_) => DType::I64,
        Scalar::I32(_) => DType::I32,
        Scalar::Bool(_) => DType::Bool,
    };
    check_alloc(&dims, dtype)?;
    let s = IxDyn(&dims);
    Ok(match value {
        Scalar::F32Bits(b) => Tensor::F32(ArrayD::from_elem(s, f32::from_bits(b))),
        Scalar::I64(v) => Tensor::I64(ArrayD::from_elem(s, v)),
        Scalar::I32(v) => Tensor::I32(ArrayD::from_elem(s, v)),
        Scalar::Bool(v) => Tensor::Bool(ArrayD::from_elem(s, v)),
    })
}

pub fn range(start: &TensorView, limit: &TensorView, delta: &TensorView) -> Result<Tensor> {
    if start.dtype() != limit.dtype() || start.dtype() != delta.dtype() {
        return Err(Error::invalid("Range inputs differ in type"));
    }
    let (s, l, d) = (
        start.scalar_f64()?,
        limit.scalar_f64()?,
        delta.scalar_f64()?,
    );
    if d == 0.0 || !d.is_finite() || !s.is_finite() || !l.is_finite() {
        return Err(Error::invalid(format!(
            "Range({s}, {l}, {d}) is not finite"
        )));
    }
    // Saturates for counts past usize, which check_alloc then refuses.
    let n = ((l - s) / d).ceil().max(0.0) as usize;
    check_alloc(&[n], start.dtype()).map_err(|e| Error::TooLarge(format!("Range: {e}")))?;
    Ok(match start {
        TensorView::F32(_) => {
            let (s, d) = (s as f32, d as f32);
            Tensor::F32(ArrayD::from_shape_fn(IxDyn(&[n]), |i| s + i[0] as f32 * d))
        }
        TensorView::I64(_) => {
            let (s, d) = (s as i64, d as i64);
            Tensor::I64(ArrayD::from_shape_fn(IxDyn(&[n]), |i| s + i[0] as i64 * d))
        }
        TensorView::I32(_) => {
            let (s, d) = (s as i32, d as i32);
            Tensor::I32(ArrayD::from_shape_fn(IxDyn(&[n]), |i| s + i[0] as i32 * d))
        }
        TensorView::Bool(_) | TensorView::BF16(_) => {
            return Err(Error::invalid(format!(
                "Range does not take {}",
                start.dtype()
            )))
        }
    })
}
