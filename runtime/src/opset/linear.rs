//! Linear and PackedLinear: a projection `X W + B` with a residual `R` added, written by the compiler's
//! `linear` pass; PackedLinear stores W as column panels (the `pack-weights` lowering).

use fff_ops::matmul::{gemm as gemm_kernel, MatRef};
use fff_ops::panels::{gemm_panels, panel_count_of, Panels, MAX_PANEL_COLS, PANEL_COLS};
use ndarray::{ArrayD, IxDyn};

use super::elementwise;
use super::fact::{broadcast, dtype_of, fact, shape_of, Dim, Facts, Inferred};
use super::in_place::InPlace;
use super::util::{check_alloc, contiguous};
use super::{BinaryOp, Op};
use crate::buffers;
use crate::error::{Error, Result};
use crate::tensor::{from_vec, Tensor, TensorView};

/// The input slots of [`Op::Linear`] and [`Op::PackedLinear`].
pub struct Linear;

impl Linear {
    pub const X: usize = 0;
    /// `[k, n]`, or for PackedLinear column panels `[ceil(n / c), k, c]`.
    pub const W: usize = 1;
    pub const B: usize = 2;
    /// The residual, added with broadcasting.
    pub const R: usize = 3;
    pub(super) const REQUIRED: &'static [usize] = &[Self::X, Self::W];
    pub(super) const INPUTS: usize = 4;
}

/// The output is written into a buffer from the recycler (or into the residual's, in place).
pub(super) const TAKES_BUFFERS: bool = true;

/// The residual's buffer takes the result: the product is accumulated onto it.
pub(super) const IN_PLACE: &[usize] = &[Linear::R];

/// The weights of a [`Op::Linear`] (`[k, n]`) or [`Op::PackedLinear`] (column
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

/// `X W + B + R`; see [`Op::Linear`].
pub fn linear(
    x: &TensorView,
    w: LinearWeights,
    bias: Option<&TensorView>,
    residual: Option<&TensorView>,
) -> Result<Tensor> {
    let shape = linear_shape(x, w)?;
    // Weights `[k, n]` with a small `k` and a large `n` make outputs wider than X.
    check_alloc(&shape, crate::DType::F32)?;
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

/// The shape rule of Linear and PackedLinear.
pub(super) fn infer(op: &Op, ins: Facts) -> Inferred {
    let dt0 = dtype_of(ins, Linear::X);
    let s0 = shape_of(ins, Linear::X);
    let n = match op {
        Op::PackedLinear { n } => Dim::Known(*n as i64),
        _ => shape_of(ins, Linear::W)
            .and_then(|s| s.get(1).cloned())
            .unwrap_or(Dim::Unknown),
    };
    Ok(vec![fact(dt0, projection_shape(ins, s0, n)?)])
}

/// The shape of a projection of X (`x`, `[..., k]`) to `n` columns with a residual added with
/// broadcasting: the shape rule every projection op shares (X in slot 0, R in slot 3).
pub(super) fn projection_shape(
    ins: Facts,
    x: Option<Vec<Dim>>,
    n: Dim,
) -> std::result::Result<Option<Vec<Dim>>, String> {
    let product = x.map(|mut s| {
        if let Some(last) = s.last_mut() {
            *last = n;
        }
        s
    });
    Ok(match (product, ins.get(Linear::R).copied().flatten()) {
        (product, None) => product,
        (Some(p), Some(_)) => match shape_of(ins, Linear::R) {
            Some(r) => Some(broadcast(&p, &r)?),
            None => None,
        },
        (None, Some(_)) => None,
    })
}

/// A projection's result `product + R` as a new tensor of `shape` (X's with its last dim the
/// outputs): `product(accumulate, out)` writes the product into `out`, or adds it when
/// `accumulate`. R of the result's shape is copied and accumulated onto in one pass; R that
/// broadcasts is added after, as the Add it stands for.
pub(super) fn with_residual(
    shape: Vec<usize>,
    residual: Option<&TensorView>,
    product: impl Fn(bool, &mut [f32]) -> Result<()>,
) -> Result<Tensor> {
    check_alloc(&shape, crate::tensor::DType::F32)?;
    match residual {
        Some(r) if r.shape() == shape.as_slice() => {
            let mut out = buffers::for_overwrite(r.len());
            out.copy_from_slice(contiguous(r.f32()?).as_slice().expect("contiguous"));
            product(true, &mut out)?;
            Ok(Tensor::F32(from_vec(IxDyn(&shape), out)))
        }
        _ => {
            let mut out = buffers::for_overwrite(shape.iter().product::<usize>());
            product(false, &mut out)?;
            let out = Tensor::F32(from_vec(IxDyn(&shape), out));
            match residual {
                Some(r) => elementwise::binary(BinaryOp::Add, &out.view(), r),
                None => Ok(out),
            }
        }
    }
}

/// The op with its residual given as `owned`: accumulated onto it when it has the result's shape.
pub(super) fn in_place(
    op: &Op,
    mut owned: ArrayD<f32>,
    inputs: &[Option<TensorView>],
) -> Result<InPlace> {
    let (Some(Some(x)), Some(Some(w))) = (inputs.get(Linear::X), inputs.get(Linear::W)) else {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    };
    let w = LinearWeights::of(op, w);
    let bias = inputs.get(Linear::B).and_then(|b| b.as_ref());
    Ok(if linear_into_residual(x, w, bias, &mut owned)? {
        InPlace::Done(Tensor::F32(owned))
    } else {
        InPlace::Declined(Tensor::F32(owned))
    })
}
