//! Ops that move data without arithmetic: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat,
//! Split, Slice, Expand, Tile. Those that only change the shape (and Identity) reuse their input's
//! buffer when they are its last reader.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::fact::{
    axis, broadcast, dtype_of, fact, get, ints, shape_of, value_of, Dim, Fact, Facts, Inferred,
};
use super::util::{check_alloc, dims_from_ints};
use super::{broadcast_shapes, norm_axis, Op};
use crate::error::{Error, Result};
use crate::map_tensor;
use crate::tensor::{Tensor, TensorView};

/// The input whose buffer a shape-only op (see [`reshape_only_target`]) keeps as its output.
pub(super) const RESHAPE_IN_PLACE: &[usize] = &[0];

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
    if rank > 0 {
        let mut out = first.shape().to_vec();
        out[ax] = inputs
            .iter()
            .fold(0usize, |n, t| n.saturating_add(t.shape()[ax]));
        check_alloc(&out, first.dtype())?;
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
        TensorView::I8(_) => cat!(I8),
        TensorView::U8(_) => cat!(U8),
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

/// The shape rule of the layout ops.
pub(super) fn infer(op: &Op, ins: Facts, n_outputs: usize) -> Inferred {
    let dt0 = dtype_of(ins, 0);
    let s0 = shape_of(ins, 0);
    Ok(match op {
        Op::Reshape { allowzero } => vec![fact(
            dt0,
            reshape_fact(s0.as_deref(), value_of(ins, 1), *allowzero),
        )],
        Op::Flatten { axis: a } => {
            let shape = s0.map(|s| {
                let r = s.len() as i64;
                let k = (if *a < 0 { a + r } else { *a }).clamp(0, r) as usize;
                vec![Dim::product(&s[..k]), Dim::product(&s[k..])]
            });
            vec![fact(dt0, shape)]
        }
        Op::Squeeze => {
            let shape = match (s0, ints(ins, 1), get(ins, 1)) {
                (Some(s), Some(axes), _) => {
                    let axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| axis(a, s.len()))
                        .collect::<Result<_, _>>()?;
                    Some(
                        s.iter()
                            .enumerate()
                            .filter(|(i, _)| !axes.contains(i))
                            .map(|(_, d)| d.clone())
                            .collect::<Vec<Dim>>(),
                    )
                }
                (Some(s), _, None) if s.iter().all(|d| d.known().is_some()) => {
                    Some(s.into_iter().filter(|d| *d != Dim::Known(1)).collect())
                }
                _ => None,
            };
            let value = value_of(ins, 0)
                .filter(|v| v.len() == 1 && shape.as_ref().is_some_and(|s| s.is_empty()));
            vec![Fact {
                dtype: dt0,
                shape,
                value,
            }]
        }
        Op::Unsqueeze => {
            let shape = match (s0, ints(ins, 1)) {
                (Some(s), Some(axes)) => {
                    let rank = s.len() + axes.len();
                    let axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| axis(a, rank))
                        .collect::<Result<_, _>>()?;
                    let mut src = s.into_iter();
                    Some(
                        (0..rank)
                            .map(|i| {
                                if axes.contains(&i) {
                                    Dim::Known(1)
                                } else {
                                    src.next().unwrap_or(Dim::Unknown)
                                }
                            })
                            .collect::<Vec<Dim>>(),
                    )
                }
                _ => None,
            };
            let value = value_of(ins, 0).filter(|_| shape.as_ref().is_some_and(|s| s.len() <= 1));
            vec![Fact {
                dtype: dt0,
                shape,
                value,
            }]
        }
        Op::Transpose { perm } => {
            let shape = s0.map(|s| match perm {
                Some(p) => p
                    .iter()
                    .map(|&a| axis(a, s.len()).map(|a| s[a].clone()))
                    .collect::<Result<Vec<_>, _>>(),
                None => Ok(s.iter().rev().cloned().collect()),
            });
            vec![fact(dt0, shape.transpose()?)]
        }
        Op::Concat { axis: a } => {
            let shapes: Option<Vec<Vec<Dim>>> = (0..ins.len()).map(|i| shape_of(ins, i)).collect();
            let shape = match shapes {
                Some(ss) if !ss.is_empty() => {
                    let r = ss[0].len();
                    let k = axis(*a, r.max(1))?;
                    let mut out = ss[0].clone();
                    if k < r {
                        let sum: Option<i64> =
                            ss.iter().map(|s| s.get(k).and_then(Dim::known)).sum();
                        out[k] = sum.map_or(Dim::Unknown, Dim::Known);
                    }
                    Some(out)
                }
                _ => None,
            };
            let values: Option<Vec<Vec<Dim>>> = (0..ins.len()).map(|i| value_of(ins, i)).collect();
            let value = values
                .map(|vs| vs.concat())
                .filter(|_| shape.as_ref().is_some_and(|s| s.len() == 1));
            vec![Fact {
                dtype: dt0,
                shape,
                value,
            }]
        }
        Op::Split { axis: a, .. } => {
            let sizes = ints(ins, 1);
            (0..n_outputs)
                .map(|i| {
                    let shape = s0.as_ref().and_then(|s| {
                        let k = axis(*a, s.len()).ok()?;
                        let mut out = s.clone();
                        out[k] = match (&sizes, s[k].known()) {
                            (Some(sz), _) => sz.get(i).map_or(Dim::Unknown, |&v| Dim::Known(v)),
                            (None, Some(d)) => {
                                let chunk = (d as usize).div_ceil(n_outputs.max(1));
                                Dim::Known(chunk.min((d as usize).saturating_sub(i * chunk)) as i64)
                            }
                            _ => Dim::Unknown,
                        };
                        Some(out)
                    });
                    fact(dt0, shape)
                })
                .collect()
        }
        Op::Slice => slice_fact(ins)?,
        Op::Expand => {
            let shape = match (s0, value_of(ins, 1)) {
                (Some(s), Some(v)) => Some(broadcast(&s, &v)?),
                (_, _) => get(ins, 1)
                    .and_then(|f| f.known_shape())
                    .map(|s| vec![Dim::Unknown; s.first().copied().unwrap_or(0)]),
            };
            vec![fact(dt0, shape)]
        }
        Op::Tile => {
            let shape = match (s0, ints(ins, 1)) {
                (Some(s), Some(r)) if r.len() == s.len() => Some(
                    s.iter()
                        .zip(&r)
                        .map(|(d, &k)| match (d.known(), k) {
                            (_, 1) => d.clone(),
                            (Some(x), k) => Dim::Known(x * k),
                            _ => Dim::Unknown,
                        })
                        .collect(),
                ),
                (Some(s), _) => Some(vec![Dim::Unknown; s.len()]),
                _ => None,
            };
            vec![fact(dt0, shape)]
        }
        other => return Err(format!("{} is not one of the layout ops", other.name())),
    })
}

fn reshape_fact(
    input: Option<&[Dim]>,
    target: Option<Vec<Dim>>,
    allowzero: bool,
) -> Option<Vec<Dim>> {
    let target = target?;
    let mut out: Vec<Dim> = target
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Known(0) if !allowzero => input
                .and_then(|s| s.get(i).cloned())
                .unwrap_or(Dim::Unknown),
            other => other.clone(),
        })
        .collect();
    if let Some(pos) = out.iter().position(|d| *d == Dim::Known(-1)) {
        let total = input.map(Dim::product).and_then(|d| d.known());
        let rest: Option<i64> = out
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pos)
            .map(|(_, d)| d.known())
            .product();
        out[pos] = match (total, rest) {
            (Some(t), Some(r)) if r > 0 && t % r == 0 => Dim::Known(t / r),
            _ => reshape_by_cancelling(input, &out, pos).unwrap_or(Dim::Unknown),
        };
    }
    Some(out)
}

/// `-1` in a reshape whose other dims are the input's dims but one: the remaining input dim.
fn reshape_by_cancelling(input: Option<&[Dim]>, out: &[Dim], pos: usize) -> Option<Dim> {
    let mut remaining: Vec<Dim> = input?.to_vec();
    let mut known_other = 1i64;
    for (i, d) in out.iter().enumerate() {
        if i == pos {
            continue;
        }
        if let Some(j) = remaining.iter().position(|r| r == d) {
            remaining.remove(j);
        } else {
            known_other *= d.known()?;
        }
    }
    let known_rest: i64 = remaining.iter().filter_map(Dim::known).product();
    let syms: Vec<&Dim> = remaining.iter().filter(|d| d.known().is_none()).collect();
    match syms.as_slice() {
        [] if known_other > 0 && known_rest % known_other == 0 => {
            Some(Dim::Known(known_rest / known_other))
        }
        [s] if known_other == known_rest => Some((*s).clone()),
        _ => None,
    }
}

fn slice_fact(ins: Facts) -> Result<Vec<Fact>, String> {
    let dt0 = dtype_of(ins, 0);
    let s0 = shape_of(ins, 0);
    let (starts, ends) = match (ints(ins, 1), ints(ins, 2)) {
        (Some(s), Some(e)) => (s, e),
        _ => return Ok(vec![fact(dt0, s0.map(|s| vec![Dim::Unknown; s.len()]))]),
    };
    let Some(s) = s0 else {
        return Ok(vec![fact(dt0, None)]);
    };
    let axes = match get(ins, 3) {
        Some(_) => match ints(ins, 3) {
            Some(a) => a
                .iter()
                .map(|&a| axis(a, s.len()))
                .collect::<Result<Vec<_>, _>>()?,
            None => return Ok(vec![fact(dt0, Some(vec![Dim::Unknown; s.len()]))]),
        },
        None => (0..starts.len()).collect(),
    };
    let steps = match get(ins, 4) {
        Some(_) => match ints(ins, 4) {
            Some(st) => st,
            None => return Ok(vec![fact(dt0, Some(vec![Dim::Unknown; s.len()]))]),
        },
        None => vec![1; starts.len()],
    };
    if axes.len() != starts.len() || ends.len() != starts.len() || steps.len() != starts.len() {
        return Err("Slice starts, ends, axes and steps differ in length".into());
    }
    let mut out = s.clone();
    let mut picks: Vec<Option<(usize, usize, i64)>> = vec![None; s.len()];
    for i in 0..starts.len() {
        let (ax, st, en, step) = (axes[i], starts[i], ends[i], steps[i]);
        out[ax] = match s[ax].known() {
            Some(d) => {
                let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
                let n = if step > 0 {
                    let (a, b) = (norm(st).clamp(0, d), norm(en).clamp(0, d));
                    picks[ax] = Some((a as usize, b.max(a) as usize, step));
                    ((b - a).max(0) as u64).div_ceil(step as u64) as i64
                } else if step < 0 {
                    let (a, b) = (norm(st).clamp(-1, d - 1), norm(en).clamp(-1, d - 1));
                    ((a - b).max(0) as u64).div_ceil(step.unsigned_abs()) as i64
                } else {
                    return Err("Slice step is 0".into());
                };
                Dim::Known(n)
            }
            // The whole axis of a symbolic dimension: `x[0:]` or `x[:INT_MAX]`.
            None if st == 0 && step == 1 && en >= i32::MAX as i64 => s[ax].clone(),
            None => Dim::Unknown,
        };
    }
    let value = match (value_of(ins, 0), picks.first().copied().flatten()) {
        (Some(v), Some((a, b, step))) if s.len() == 1 => Some(
            v[a.min(v.len())..b.min(v.len())]
                .iter()
                .step_by(step as usize)
                .cloned()
                .collect(),
        ),
        _ => None,
    };
    Ok(vec![Fact {
        dtype: dt0,
        shape: Some(out),
        value,
    }])
}
