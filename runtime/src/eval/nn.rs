//! The compute ops: MatMul, Gemm, Softmax, LayerNorm, FastFeedForward. Each calls a kernel in `fff_ops`
//! on contiguous slices.

use fff_ops::activation::Activation;
use fff_ops::attention::{AttentionShape, Mask, Strided};
use fff_ops::fff::{fff_dense_panels, fff_forward, Branch, FffLayer, FffShape, FffWeights};
use fff_ops::matmul::{gemm as gemm_kernel, MatRef};
use fff_ops::panels::{gemm_panels, panel_count_of, Panels, MAX_PANEL_COLS, PANEL_COLS};
use std::borrow::Cow;

use ndarray::{ArrayD, ArrayViewD, CowArray, Dimension, IxDyn};

use super::{broadcast_shapes, elementwise, norm_axis};
use crate::buffers;
use crate::error::{Error, Result};
use crate::op::{BinaryOp, FffActivation, FffBranch, Op};
use crate::tensor::{from_vec, Tensor, TensorView};

/// The view in row-major order: borrowed as it is when it already is (weights, fresh outputs), copied
/// only when it is strided.
fn contiguous<'a>(a: &'a ArrayViewD<'_, f32>) -> CowArray<'a, f32, IxDyn> {
    a.as_standard_layout()
}

/// `a`'s elements in standard order as a slice: borrowed where they already are (weights, and most
/// values), copied otherwise. Cheaper than [`contiguous`] when only the slice is wanted, as on every
/// FastFeedForward call.
fn standard_slice<'a, T: Clone>(a: &'a ArrayViewD<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().cloned().collect()),
    }
}

pub fn matmul(a: &TensorView, b: &TensorView) -> Result<Tensor> {
    let (a, b) = (a.f32()?, b.f32()?);
    let (a, b) = (contiguous(a), contiguous(b));
    // Rank-1 operands are promoted to matrices and the added axis removed afterwards (numpy rules).
    let a_vec = a.ndim() == 1;
    let b_vec = b.ndim() == 1;
    let a2 = if a_vec {
        a.view().insert_axis(ndarray::Axis(0))
    } else {
        a.view()
    };
    let b2 = if b_vec {
        b.view().insert_axis(ndarray::Axis(1))
    } else {
        b.view()
    };
    if a2.ndim() < 2 || b2.ndim() < 2 {
        return Err(Error::invalid("MatMul of a scalar"));
    }
    let (ar, br) = (a2.ndim(), b2.ndim());
    let (m, k) = (a2.shape()[ar - 2], a2.shape()[ar - 1]);
    let (k2, n) = (b2.shape()[br - 2], b2.shape()[br - 1]);
    if k != k2 {
        return Err(Error::invalid(format!(
            "MatMul of {:?} and {:?}: inner dims differ",
            a.shape(),
            b.shape()
        )));
    }
    let batch = broadcast_shapes(&a2.shape()[..ar - 2], &b2.shape()[..br - 2])?;
    let a_b = a2
        .broadcast(IxDyn(&[&batch[..], &[m, k]].concat()))
        .expect("broadcastable by construction");
    let b_b = b2
        .broadcast(IxDyn(&[&batch[..], &[k, n]].concat()))
        .expect("broadcastable by construction");
    let nb: usize = batch.iter().product();
    let mut out = buffers::zeroed(nb * m * n);
    let a_flat = a.as_slice().expect("contiguous");
    let b_flat = b.as_slice().expect("contiguous");
    // Offsets of each batch's matrix, derived from the broadcast strides (0 where broadcast).
    let offset = |strides: &[isize], idx: usize| -> usize {
        let mut rem = idx;
        let mut off = 0isize;
        for d in (0..batch.len()).rev() {
            off += (rem % batch[d]) as isize * strides[d];
            rem /= batch[d];
        }
        off as usize
    };
    let (sa, sb) = (a_b.strides().to_vec(), b_b.strides().to_vec());
    for i in 0..nb {
        let ao = offset(&sa, i);
        let bo = offset(&sb, i);
        let am = MatRef::row_major(&a_flat[ao..ao + m * k], m, k);
        let bm = MatRef::row_major(&b_flat[bo..bo + k * n], k, n);
        gemm_kernel(am, bm, &mut out[i * m * n..(i + 1) * m * n], 1.0, 0.0);
    }
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    Ok(Tensor::F32(from_vec(IxDyn(&shape), out)))
}

pub fn gemm(
    a: &TensorView,
    b: &TensorView,
    c: Option<&TensorView>,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor> {
    let (a, b) = (contiguous(a.f32()?), contiguous(b.f32()?));
    if a.ndim() != 2 || b.ndim() != 2 {
        return Err(Error::invalid(format!(
            "Gemm of {:?} and {:?}: operands must be 2-D",
            a.shape(),
            b.shape()
        )));
    }
    let am = MatRef::row_major(
        a.as_slice().expect("contiguous"),
        a.shape()[0],
        a.shape()[1],
    );
    let bm = MatRef::row_major(
        b.as_slice().expect("contiguous"),
        b.shape()[0],
        b.shape()[1],
    );
    let am = if trans_a { am.t() } else { am };
    let bm = if trans_b { bm.t() } else { bm };
    if am.cols != bm.rows {
        return Err(Error::invalid(format!(
            "Gemm of {:?} and {:?}: inner dims differ",
            a.shape(),
            b.shape()
        )));
    }
    let (m, n) = (am.rows, bm.cols);
    let mut out = match c {
        Some(c) if beta != 0.0 => {
            let c = c.f32()?;
            let cb = c.broadcast(IxDyn(&[m, n])).ok_or_else(|| {
                Error::invalid(format!(
                    "Gemm C {:?} does not broadcast to [{m}, {n}]",
                    c.shape()
                ))
            })?;
            cb.iter().copied().collect()
        }
        _ => buffers::zeroed(m * n),
    };
    let beta = if c.is_some() { beta } else { 0.0 };
    gemm_kernel(am, bm, &mut out, alpha, beta);
    Ok(Tensor::F32(from_vec(IxDyn(&[m, n]), out)))
}

/// The weights of a [`crate::op::Op::Linear`] (`[k, n]`) or [`crate::op::Op::PackedLinear`] (column
/// panels).
#[derive(Clone, Copy)]
pub enum LinearWeights<'v, 'a> {
    Rows(&'v TensorView<'a>),
    Panels { w: &'v TensorView<'a>, n: usize },
}

impl<'v, 'a> LinearWeights<'v, 'a> {
    /// The weights input `w` of `op`, a Linear or PackedLinear.
    pub fn of(op: &Op, w: &'v TensorView<'a>) -> Self {
        match op {
            Op::PackedLinear { n } => LinearWeights::Panels { w, n: *n },
            _ => LinearWeights::Rows(w),
        }
    }

    /// `(k, n)`, when the weights have a shape these ops accept.
    fn dims(&self) -> Option<(usize, usize)> {
        match *self {
            LinearWeights::Rows(w) => match w.shape() {
                &[k, n] => Some((k, n)),
                _ => None,
            },
            LinearWeights::Panels { w, n } => match w.shape() {
                &[p, k, c] if (1..=MAX_PANEL_COLS).contains(&c) && p == panel_count_of(n, c) => {
                    Some((k, n))
                }
                _ => None,
            },
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            LinearWeights::Rows(w) | LinearWeights::Panels { w, .. } => w.shape(),
        }
    }
}

/// `X W + B + R`; see [`crate::op::Op::Linear`].
pub fn linear(
    x: &TensorView,
    w: LinearWeights,
    bias: Option<&TensorView>,
    residual: Option<&TensorView>,
) -> Result<Tensor> {
    let shape = linear_shape(x, w)?;
    if let Some(r) = residual {
        if r.shape() == shape.as_slice() {
            let mut out = buffers::for_overwrite(r.len());
            out.copy_from_slice(contiguous(r.f32()?).as_slice().expect("contiguous"));
            linear_accumulate(x, w, bias, true, &mut out)?;
            return Ok(Tensor::F32(from_vec(IxDyn(&shape), out)));
        }
        // R broadcasts (or the product does): the product first, then the Add it stands for.
        let product = linear(x, w, bias, None)?;
        return elementwise::binary(BinaryOp::Add, &product.view(), r);
    }
    let n = *shape.last().expect("rank checked");
    // Written whole: the bias rows, or the product with beta 0, or zeros when k is 0.
    let mut out = buffers::for_overwrite(shape.iter().product::<usize>());
    if n > 0 {
        linear_accumulate(x, w, bias, false, &mut out)?;
    }
    Ok(Tensor::F32(from_vec(IxDyn(&shape), out)))
}

/// [`linear`] accumulated onto the residual's own buffer (standard layout); `false`, leaving it
/// untouched, unless the residual has the product's shape.
pub fn linear_into_residual(
    x: &TensorView,
    w: LinearWeights,
    bias: Option<&TensorView>,
    residual: &mut ArrayD<f32>,
) -> Result<bool> {
    let shape = linear_shape(x, w)?;
    if residual.shape() != shape.as_slice() {
        return Ok(false);
    }
    let out = residual.as_slice_mut().expect("standard layout");
    linear_accumulate(x, w, bias, true, out)?;
    Ok(true)
}

/// The output shape of `X [..., k] W [k, n]`.
fn linear_shape(x: &TensorView, w: LinearWeights) -> Result<Vec<usize>> {
    match (x.shape().last(), w.dims()) {
        (Some(&k), Some((wk, n))) if wk == k => {
            let mut shape = x.shape().to_vec();
            *shape.last_mut().expect("rank checked") = n;
            if k == 0 {
                // Empty weights do not bound `n`: the plan may ask for any output width.
                super::check_alloc(&shape, crate::DType::F32)?;
            }
            Ok(shape)
        }
        _ => Err(Error::invalid(match w {
            LinearWeights::Rows(_) => format!(
                "Linear of {:?} and {:?}: wants X [..., k] and W [k, n]",
                x.shape(),
                w.shape()
            ),
            LinearWeights::Panels { n, .. } => format!(
                "PackedLinear of {:?} and {:?}: wants X [..., k] and W [{}, k, {PANEL_COLS}] (or panels of 1 to {MAX_PANEL_COLS} columns) for {n} outputs",
                x.shape(),
                w.shape(),
                panel_count_of(n, PANEL_COLS)
            ),
        })),
    }
}

/// `out = X W + B (+ out, when `accumulate`)`, `out` of X W's shape: the bias is added into `out`
/// first, so that the GEMM writes the sum in one pass.
fn linear_accumulate(
    x: &TensorView,
    w: LinearWeights,
    bias: Option<&TensorView>,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    let (k, n) = w.dims().expect("checked by linear_shape");
    let x = contiguous(x.f32()?);
    let rows = x.len() / k.max(1);
    if let Some(b) = bias {
        let b = contiguous(b.f32()?);
        if b.len() != n {
            return Err(Error::invalid(format!(
                "Linear bias {:?} does not match {n} outputs",
                b.shape()
            )));
        }
        let b = b.as_slice().expect("contiguous");
        for row in out.chunks_exact_mut(n.max(1)) {
            if accumulate {
                row.iter_mut().zip(b).for_each(|(o, &c)| *o += c);
            } else {
                row.copy_from_slice(b);
            }
        }
    }
    let beta = if accumulate || bias.is_some() {
        1.0
    } else {
        0.0
    };
    let x = x.as_slice().expect("contiguous");
    match w {
        _ if k == 0 => {
            if beta == 0.0 {
                out.fill(0.0);
            }
        }
        LinearWeights::Rows(w) => {
            let w = contiguous(w.f32()?);
            gemm_kernel(
                MatRef::row_major(x, rows, k),
                MatRef::row_major(w.as_slice().expect("contiguous"), k, n),
                out,
                1.0,
                beta,
            );
        }
        LinearWeights::Panels { w, .. } => {
            // Panels as the plan stores them, or as the model repacked them at load.
            let cols = w.shape()[2];
            let w = contiguous(w.f32()?);
            let panels = Panels::new(w.as_slice().expect("contiguous"), k, n, cols)
                .expect("shape checked by linear_shape");
            gemm_panels(x, rows, panels, out, beta);
        }
    }
    Ok(())
}

/// Multi-head attention; see [`crate::op::Op::Attention`]. `operands` are Q, K and V, each with the
/// permutation that reads it as `[b, h, s, d]`.
pub fn attention(
    operands: [(&TensorView, &[usize; 4]); 3],
    mask: Option<&TensorView>,
    scale: f32,
    nan_to_zero: bool,
) -> Result<Tensor> {
    let mut arrays = Vec::with_capacity(3);
    for (t, perm) in operands {
        let a = contiguous(t.f32()?);
        let mut seen = [false; 4];
        if a.ndim() != 4
            || perm
                .iter()
                .any(|&p| p > 3 || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(format!(
                "Attention operand {:?} with permutation {perm:?}: wants rank 4 and a permutation of 4 axes",
                a.shape()
            )));
        }
        let dims: [usize; 4] = std::array::from_fn(|i| a.shape()[perm[i]]);
        let strides: [usize; 4] = std::array::from_fn(|i| a.strides()[perm[i]] as usize);
        arrays.push((a, dims, strides));
    }
    let [q, k, v] = [0, 1, 2].map(|i| arrays[i].1);
    let batch = broadcast_shapes(&broadcast_shapes(&[q[0]], &[k[0]])?, &[v[0]])?[0];
    let heads = broadcast_shapes(&broadcast_shapes(&[q[1]], &[k[1]])?, &[v[1]])?[0];
    if q[3] != k[3] || k[2] != v[2] {
        return Err(Error::invalid(format!(
            "Attention of Q {q:?}, K {k:?}, V {v:?} (as [b, h, s, d]): head widths of Q and K or lengths of K and V differ"
        )));
    }
    let shape = AttentionShape {
        batch,
        q_len: q[2],
        kv_len: k[2],
        heads,
        d_qk: q[3],
        d_v: v[3],
    };
    // Batch and head axes of size 1 repeat.
    fn strided<'a>(
        (a, dims, strides): &'a (CowArray<f32, IxDyn>, [usize; 4], [usize; 4]),
    ) -> Strided<'a> {
        let mut st = *strides;
        for axis in 0..2 {
            if dims[axis] == 1 {
                st[axis] = 0;
            }
        }
        Strided {
            data: a.as_slice().expect("contiguous"),
            strides: st,
        }
    }
    let scores = [shape.batch, shape.heads, shape.q_len, shape.kv_len];
    let mask = mask
        .map(|m| {
            let m = m.f32()?;
            if m.ndim() > 4 || broadcast_shapes(m.shape(), &scores)? != scores {
                return Err(Error::invalid(format!(
                    "Attention mask {:?} does not broadcast to {scores:?}",
                    m.shape()
                )));
            }
            Ok(contiguous(m))
        })
        .transpose()?;
    let mask_ref = mask.as_ref().map(|m| {
        // Strides of the mask read as [b, h, sq, sk]: leading axes it lacks and axes of size 1 repeat.
        let dims = m.shape();
        let pad = 4 - dims.len();
        let mut strides = [0usize; 4];
        let mut step = 1;
        for axis in (0..4).rev() {
            let d = if axis < pad { 1 } else { dims[axis - pad] };
            strides[axis] = if d == 1 { 0 } else { step };
            step *= d;
        }
        Mask {
            data: m.as_slice().expect("contiguous"),
            strides,
        }
    });
    let out_shape = [shape.batch, shape.q_len, shape.heads, shape.d_v];
    let mut out = buffers::zeroed(out_shape.iter().product());
    fff_ops::attention::attention(
        shape,
        strided(&arrays[0]),
        strided(&arrays[1]),
        strided(&arrays[2]),
        mask_ref,
        scale,
        nan_to_zero,
        &mut out,
    );
    Ok(Tensor::F32(from_vec(IxDyn(&out_shape), out)))
}

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

pub fn layer_norm(
    x: &TensorView,
    scale: &TensorView,
    bias: Option<&TensorView>,
    axis: i64,
    eps: f32,
) -> Result<Tensor> {
    let x = x.f32()?;
    let (width, scale, bias) = layer_norm_params(x.shape(), scale, bias, axis)?;
    let input = x.as_standard_layout();
    // Written whole: the kernel copies the input in first.
    let mut out = from_vec(x.raw_dim(), buffers::for_overwrite(x.len()));
    fff_ops::norm::layer_norm(
        input.as_slice().expect("standard layout"),
        width,
        &scale,
        bias.as_deref(),
        eps,
        out.as_slice_mut().expect("fresh array"),
    );
    Ok(Tensor::F32(out))
}

/// [`layer_norm`] written over `x` (standard layout).
pub fn layer_norm_in_place(
    x: &mut ArrayD<f32>,
    scale: &TensorView,
    bias: Option<&TensorView>,
    axis: i64,
    eps: f32,
) -> Result<()> {
    let (width, scale, bias) = layer_norm_params(x.shape(), scale, bias, axis)?;
    let data = x.as_slice_mut().expect("standard layout");
    fff_ops::norm::layer_norm_in_place(data, width, &scale, bias.as_deref(), eps);
    Ok(())
}

/// The row width of a LayerNorm over `axis..` of `shape`, and its scale and bias expanded to a row.
#[allow(clippy::type_complexity)]
fn layer_norm_params(
    shape: &[usize],
    scale: &TensorView,
    bias: Option<&TensorView>,
    axis: i64,
) -> Result<(usize, Vec<f32>, Option<Vec<f32>>)> {
    let ax = norm_axis(axis, shape.len())?;
    let norm_shape = &shape[ax..];
    let width: usize = norm_shape.iter().product();
    let expand = |t: &ArrayViewD<f32>, what: &str| -> Result<Vec<f32>> {
        t.broadcast(IxDyn(norm_shape))
            .map(|b| b.iter().copied().collect())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "LayerNorm {what} {:?} does not fit {norm_shape:?}",
                    t.shape()
                ))
            })
    };
    let scale = expand(scale.f32()?, "scale")?;
    let bias = bias
        .map(|b| b.f32().and_then(|b| expand(b, "bias")))
        .transpose()?;
    Ok((width, scale, bias))
}

#[allow(clippy::too_many_arguments)]
pub fn fast_feed_forward(
    x: &TensorView,
    w_in: &TensorView,
    b_in: Option<&TensorView>,
    w_out: &TensorView,
    b_out: Option<&TensorView>,
    depth: usize,
    trees: usize,
    activation: FffActivation,
    branch: FffBranch,
) -> Result<Tensor> {
    let x = x.f32()?;
    // Rank 3: the column panels the compiler packs depth 0's weights into (see Op::FastFeedForward).
    let panels = w_in.rank() == 3 && w_out.rank() == 3;
    if x.ndim() == 0
        || !(panels || (w_in.rank() == 2 && w_out.rank() == 2))
        || (panels && depth != 0)
        || depth >= 40
    {
        return Err(Error::invalid(
            "FastFeedForward needs X [..., d_in], W_in and W_out 2-D (or as panels at depth 0), depth < 40",
        ));
    }
    let d_in = x.shape()[x.ndim() - 1];
    let d_out = match *w_out.shape() {
        [p, _, c] if panels => p.checked_mul(c).ok_or_else(|| {
            Error::invalid(format!(
                "FastFeedForward W_out {:?} is too large",
                w_out.shape()
            ))
        })?,
        [_, d] => d,
        _ => unreachable!("ranks checked above"),
    };
    let shape = FffShape {
        d_in,
        d_out,
        depth,
        trees,
    };
    let total = shape.total_nodes();
    // Panels as the plan stores them, or as the model repacked them at load.
    let c = if panels { w_in.shape()[2] } else { 0 };
    let (want_in, want_out): (&[usize], &[usize]) = if panels {
        (&[total / c.max(1), d_in, c], &[d_out / c.max(1), total, c])
    } else {
        (&[total, d_in], &[total, d_out])
    };
    let whole_panels = (1..=MAX_PANEL_COLS).contains(&c) && total.is_multiple_of(c);
    if (panels && !whole_panels) || w_in.shape() != want_in || w_out.shape() != want_out {
        return Err(Error::invalid(format!(
            "FastFeedForward with {trees} trees of depth {depth} wants W_in {want_in:?} and W_out {want_out:?}, got {:?} and {:?}",
            w_in.shape(),
            w_out.shape()
        )));
    }
    let b_in = b_in.map(|b| b.f32()).transpose()?.map(standard_slice);
    let b_out = b_out.map(|b| b.f32()).transpose()?.map(standard_slice);
    if b_in.as_ref().is_some_and(|b| b.len() != total)
        || b_out.as_ref().is_some_and(|b| b.len() != d_out)
    {
        return Err(Error::invalid(
            "FastFeedForward biases do not match the weights",
        ));
    }
    let x_rows = standard_slice(x);
    let mut out_shape = x.raw_dim();
    out_shape[x.ndim() - 1] = d_out;
    if total == 0 {
        // Empty weights do not bound `d_out`: the plan may ask for any output width.
        super::check_alloc(out_shape.slice(), crate::DType::F32)?;
    }
    let rows: usize = x.shape()[..x.ndim() - 1].iter().product();
    // Every kernel writes every output element.
    let mut out = buffers::line_aligned_for_overwrite(out_shape.slice());
    let act = match activation {
        FffActivation::Gelu => Activation::GeluErf,
        FffActivation::GeluTanh => Activation::GeluTanh,
        FffActivation::Relu => Activation::Relu,
    };
    let br = match branch {
        FffBranch::Gt => Branch::Greater,
        FffBranch::Ge => Branch::GreaterOrEqual,
    };
    let (b_in, b_out) = (b_in.as_deref(), b_out.as_deref());
    let (x, out_rows) = (&x_rows[..], out.as_slice_mut().expect("fresh"));
    match (w_in, w_out) {
        (TensorView::F32(w_in), TensorView::F32(w_out)) => {
            let (wi, wo) = (standard_slice(w_in), standard_slice(w_out));
            let w = FffWeights {
                w_in: &wi,
                b_in,
                w_out: &wo,
                b_out,
            };
            let layer = FffLayer {
                shape,
                act,
                branch: br,
                w,
            };
            if panels {
                fff_dense_panels(&layer, c, x, rows, out_rows);
            } else {
                fff_forward(&layer, x, rows, out_rows);
            }
        }
        (TensorView::BF16(_), TensorView::BF16(_)) if panels => {
            return Err(Error::invalid(
                "FastFeedForward weights as panels are float32 only",
            ))
        }
        (TensorView::BF16(w_in), TensorView::BF16(w_out)) => {
            let (wi, wo) = (standard_slice(w_in), standard_slice(w_out));
            let w = FffWeights {
                w_in: &wi,
                b_in,
                w_out: &wo,
                b_out,
            };
            let layer = FffLayer {
                shape,
                act,
                branch: br,
                w,
            };
            fff_forward(&layer, x, rows, out_rows);
        }
        (a, b) => {
            return Err(Error::invalid(format!(
                "FastFeedForward weights are {} and {}: both float32 or both bfloat16",
                a.dtype(),
                b.dtype()
            )))
        }
    }
    Ok(Tensor::F32(out))
}
