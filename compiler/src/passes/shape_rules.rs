//! Per-op rules for output facts from input facts, used by the shape inference pass. A rule states what
//! it can prove and leaves the rest unknown; a definite contradiction (two fixed sizes that cannot
//! broadcast, an axis out of range) is an error.

use fff_runtime::op::{Op, UnaryOp};
use fff_runtime::DType;

use crate::ir::{Dim, Fact};

type Facts<'a> = &'a [Option<&'a Fact>];

fn get<'a>(ins: Facts<'a>, i: usize) -> Option<&'a Fact> {
    ins.get(i).copied().flatten()
}

fn shape_of(ins: Facts, i: usize) -> Option<Vec<Dim>> {
    get(ins, i).and_then(|f| f.shape.clone())
}

fn value_of(ins: Facts, i: usize) -> Option<Vec<Dim>> {
    get(ins, i).and_then(|f| f.value.clone())
}

fn dtype_of(ins: Facts, i: usize) -> Option<DType> {
    get(ins, i).and_then(|f| f.dtype)
}

fn axis(a: i64, rank: usize) -> Result<usize, String> {
    fff_runtime::eval::norm_axis(a, rank).map_err(|e| e.to_string())
}

pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let rank = a.len().max(b.len());
    let one = Dim::Known(1);
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                &a[i + a.len() - rank]
            } else {
                &one
            };
            let db = if i + b.len() >= rank {
                &b[i + b.len() - rank]
            } else {
                &one
            };
            Dim::broadcast(da, db)
        })
        .collect()
}

fn fact(dtype: Option<DType>, shape: Option<Vec<Dim>>) -> Fact {
    Fact {
        dtype,
        shape,
        value: None,
    }
}

/// Constant integer list of input `i`, where known.
fn ints(ins: Facts, i: usize) -> Option<Vec<i64>> {
    get(ins, i).and_then(Fact::known_value)
}

/// Element-wise arithmetic on symbolic values (shape computations), where both sides are known.
fn value_arith(op: fff_runtime::op::BinaryOp, a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    use fff_runtime::op::BinaryOp::*;
    let n = a.len().max(b.len());
    if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let x = &a[if a.len() == 1 { 0 } else { i }];
                let y = &b[if b.len() == 1 { 0 } else { i }];
                match (x.known(), y.known(), op) {
                    (Some(p), Some(q), Add) => Dim::Known(p.wrapping_add(q)),
                    (Some(p), Some(q), Sub) => Dim::Known(p.wrapping_sub(q)),
                    (Some(p), Some(q), Mul) => Dim::Known(p.wrapping_mul(q)),
                    (Some(p), Some(q), Div) if q != 0 => Dim::Known(p.wrapping_div(q)),
                    (_, Some(1), Mul | Div) | (_, Some(0), Add | Sub) => x.clone(),
                    (Some(1), _, Mul) | (Some(0), _, Add) => y.clone(),
                    _ => Dim::Unknown,
                }
            })
            .collect(),
    )
}

/// The output facts of `op` given its input facts, one per output.
pub fn infer(op: &Op, ins: Facts, n_outputs: usize) -> Result<Vec<Fact>, String> {
    let dt0 = dtype_of(ins, 0);
    let s0 = shape_of(ins, 0);
    let same = || vec![fact(dt0, s0.clone())];
    let out = match op {
        Op::Identity => vec![get(ins, 0).cloned().unwrap_or_else(Fact::unknown)],
        Op::Unary(u) => {
            let dt = if matches!(u, UnaryOp::IsNaN | UnaryOp::IsInf | UnaryOp::Not) {
                Some(DType::Bool)
            } else {
                dt0
            };
            vec![fact(dt, s0)]
        }
        Op::Binary(b) => {
            let shape = match (s0, shape_of(ins, 1)) {
                (Some(a), Some(c)) => Some(broadcast(&a, &c)?),
                _ => None,
            };
            let dt = if b.is_comparison() || b.is_logical() {
                Some(DType::Bool)
            } else {
                dt0
            };
            let value = match (value_of(ins, 0), value_of(ins, 1)) {
                (Some(a), Some(c)) if !b.is_comparison() && !b.is_logical() => {
                    value_arith(*b, &a, &c)
                }
                _ => None,
            };
            vec![Fact {
                dtype: dt,
                shape,
                value,
            }]
        }
        Op::Where => {
            let shape = match (s0, shape_of(ins, 1), shape_of(ins, 2)) {
                (Some(a), Some(b), Some(c)) => Some(broadcast(&broadcast(&a, &b)?, &c)?),
                _ => None,
            };
            vec![fact(dtype_of(ins, 1), shape)]
        }
        Op::Clip
        | Op::CumSum { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::LayerNorm { .. } => same(),
        Op::Cast { to } => {
            let value = value_of(ins, 0).filter(|_| matches!(to, DType::I64 | DType::I32));
            vec![Fact {
                dtype: Some(*to),
                shape: s0,
                value,
            }]
        }
        Op::Shape { start, end } => match s0 {
            Some(s) => {
                let r = s.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (a, b) = (clamp(*start), clamp(end.unwrap_or(r)));
                let v: Vec<Dim> = if a < b { s[a..b].to_vec() } else { vec![] };
                vec![Fact {
                    dtype: Some(DType::I64),
                    shape: Some(vec![Dim::Known(v.len() as i64)]),
                    value: Some(v),
                }]
            }
            None => vec![fact(Some(DType::I64), Some(vec![Dim::Unknown]))],
        },
        Op::Size => {
            let v = s0.map(|s| vec![Dim::product(&s)]);
            vec![Fact {
                dtype: Some(DType::I64),
                shape: Some(vec![]),
                value: v,
            }]
        }
        Op::Reshape { allowzero } => vec![fact(
            dt0,
            reshape(s0.as_deref(), value_of(ins, 1), *allowzero),
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
        Op::Einsum { equation } => {
            let shapes: Option<Vec<Vec<Dim>>> = (0..ins.len()).map(|i| shape_of(ins, i)).collect();
            let shape = match shapes {
                Some(ss) => {
                    let ranks: Vec<usize> = ss.iter().map(Vec::len).collect();
                    let p = fff_runtime::eval::einsum::parse(equation, &ranks)
                        .map_err(|e| e.to_string())?;
                    // Each output axis is its label's axes broadcast together.
                    let dim = |l: &fff_runtime::eval::einsum::Label| {
                        let mut d = Dim::Known(1);
                        for (s, ls) in ss.iter().zip(&p.inputs) {
                            for (x, m) in s.iter().zip(ls) {
                                if m == l {
                                    d = Dim::broadcast(&d, x)?;
                                }
                            }
                        }
                        Ok::<Dim, String>(d)
                    };
                    Some(p.output.iter().map(dim).collect::<Result<_, _>>()?)
                }
                None => None,
            };
            vec![fact(Some(DType::F32), shape)]
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
        Op::Slice => slice(ins)?,
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
        Op::ScatterElements { .. } | Op::ScatterNd { .. } => same(),
        Op::ConstantOfShape { value } => {
            let shape = value_of(ins, 0).or_else(|| {
                get(ins, 0)
                    .and_then(|f| f.known_shape())
                    .map(|s| vec![Dim::Unknown; s.first().copied().unwrap_or(0)])
            });
            vec![fact(Some(value.dtype()), shape)]
        }
        Op::Range => vec![fact(dt0, Some(vec![Dim::Unknown]))],
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
        Op::MatMul => vec![fact(dt0, matmul(s0, shape_of(ins, 1))?)],
        Op::Gemm {
            trans_a, trans_b, ..
        } => {
            let m = s0
                .as_ref()
                .and_then(|s| s.get(if *trans_a { 1 } else { 0 }).cloned());
            let n = shape_of(ins, 1).and_then(|s| s.get(if *trans_b { 0 } else { 1 }).cloned());
            vec![fact(
                dt0,
                Some(vec![m.unwrap_or(Dim::Unknown), n.unwrap_or(Dim::Unknown)]),
            )]
        }
        Op::Linear | Op::PackedLinear { .. } => {
            let n = match op {
                Op::PackedLinear { n } => Dim::Known(*n as i64),
                _ => shape_of(ins, 1)
                    .and_then(|s| s.get(1).cloned())
                    .unwrap_or(Dim::Unknown),
            };
            let product = s0.map(|mut s| {
                if let Some(last) = s.last_mut() {
                    *last = n;
                }
                s
            });
            // A residual is added with broadcasting.
            let shape = match (product, ins.get(3).copied().flatten()) {
                (product, None) => product,
                (Some(p), Some(_)) => match shape_of(ins, 3) {
                    Some(r) => Some(broadcast(&p, &r)?),
                    None => None,
                },
                (None, Some(_)) => None,
            };
            vec![fact(dt0, shape)]
        }
        Op::Attention {
            q_perm,
            k_perm,
            v_perm,
            ..
        } => {
            // Each operand read as [b, h, s, d]; the output is [b, sq, h, dv], batch and heads
            // broadcast across the three.
            let bhsd = |i: usize, perm: &[usize; 4]| {
                shape_of(ins, i)
                    .filter(|s| s.len() == 4)
                    .map(|s| perm.map(|p| s[p].clone()))
            };
            let shape = match (bhsd(0, q_perm), bhsd(1, k_perm), bhsd(2, v_perm)) {
                (Some(q), Some(k), Some(v)) => {
                    let b = Dim::broadcast(&Dim::broadcast(&q[0], &k[0])?, &v[0])?;
                    let h = Dim::broadcast(&Dim::broadcast(&q[1], &k[1])?, &v[1])?;
                    Some(vec![b, q[2].clone(), h, v[3].clone()])
                }
                _ => None,
            };
            vec![fact(dt0, shape)]
        }
        Op::FastFeedForward { .. } => {
            // W_out is [nodes, d_out], or at depth 0 possibly panels [d_out / 64, nodes, 64].
            let d_out = match shape_of(ins, 3).as_deref() {
                Some([_, d]) => d.clone(),
                Some([Dim::Known(p), _, Dim::Known(c)]) => {
                    p.checked_mul(*c).map_or(Dim::Unknown, Dim::Known)
                }
                _ => Dim::Unknown,
            };
            let shape = s0.map(|mut s| {
                if let Some(last) = s.last_mut() {
                    *last = d_out;
                }
                s
            });
            vec![fact(dt0, shape)]
        }
    };
    Ok(out)
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

fn reshape(input: Option<&[Dim]>, target: Option<Vec<Dim>>, allowzero: bool) -> Option<Vec<Dim>> {
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

fn matmul(a: Option<Vec<Dim>>, b: Option<Vec<Dim>>) -> Result<Option<Vec<Dim>>, String> {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => (a, b),
        _ => return Ok(None),
    };
    let a2 = if a.len() == 1 {
        vec![Dim::Known(1), a[0].clone()]
    } else {
        a.clone()
    };
    let b2 = if b.len() == 1 {
        vec![b[0].clone(), Dim::Known(1)]
    } else {
        b.clone()
    };
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
        if x != y {
            return Err(format!("MatMul inner dimensions {x} and {y} differ"));
        }
    }
    let mut out = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    Ok(Some(out))
}

fn slice(ins: Facts) -> Result<Vec<Fact>, String> {
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
