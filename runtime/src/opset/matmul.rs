//! MatMul (numpy semantics) and Gemm, on the GEMM kernel of `fff_ops`.

use fff_ops::matmul::{gemm as gemm_kernel, MatRef};
use ndarray::{ArrayViewD, IxDyn};

use super::fact::{broadcast, dtype_of, fact, shape_of, Dim, Facts, Inferred};
use super::util::{check_alloc, contiguous};
use super::{broadcast_shapes, Op};
use crate::buffers;
use crate::error::{Error, Result};
use crate::tensor::{from_vec, DType, Tensor, TensorView};

/// Both write their result into a buffer from the recycler.
pub(super) const TAKES_BUFFERS: bool = true;

/// Two numpy-matmul operands as matrices over a common batch: rank-1 operands promoted (A to a row,
/// B to a column), the inner dims checked, the batch dims broadcast.
pub(super) struct Batched<'a, T> {
    /// A with rank-1 promoted; [`Batched::broadcast`] gives it over the batch.
    a: ArrayViewD<'a, T>,
    b: ArrayViewD<'a, T>,
    pub batch: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// The result's shape: the batch, then `m` and `n` unless that operand was rank 1.
    pub shape: Vec<usize>,
}

impl<'a, T> Batched<'a, T> {
    /// `op` names the op in errors; the result of `out` elements is checked against the memory budget.
    pub(super) fn new(
        op: &str,
        a: ArrayViewD<'a, T>,
        b: ArrayViewD<'a, T>,
        out: DType,
    ) -> Result<Self> {
        if a.ndim() == 0 || b.ndim() == 0 {
            return Err(Error::invalid(format!("{op} of a scalar")));
        }
        let (a_vec, b_vec) = (a.ndim() == 1, b.ndim() == 1);
        let (a_shape, b_shape) = (a.shape().to_vec(), b.shape().to_vec());
        let a2 = if a_vec {
            a.insert_axis(ndarray::Axis(0))
        } else {
            a
        };
        let b2 = if b_vec {
            b.insert_axis(ndarray::Axis(1))
        } else {
            b
        };
        let (ar, br) = (a2.ndim(), b2.ndim());
        let (m, k) = (a2.shape()[ar - 2], a2.shape()[ar - 1]);
        let (k2, n) = (b2.shape()[br - 2], b2.shape()[br - 1]);
        if k != k2 {
            return Err(Error::invalid(format!(
                "{op} of {a_shape:?} and {b_shape:?}: inner dims differ"
            )));
        }
        let batch = broadcast_shapes(&a2.shape()[..ar - 2], &b2.shape()[..br - 2])?;
        let mut full = batch.clone();
        full.extend([m, n]);
        check_alloc(&full, out)?;
        let mut shape = batch.clone();
        if !a_vec {
            shape.push(m);
        }
        if !b_vec {
            shape.push(n);
        }
        Ok(Batched {
            a: a2,
            b: b2,
            batch,
            m,
            k,
            n,
            shape,
        })
    }

    /// A as `[batch.., m, k]` and B as `[batch.., k, n]`, broadcast (stride 0) where they lack the
    /// batch.
    pub(super) fn broadcast(&self) -> (ArrayViewD<'_, T>, ArrayViewD<'_, T>) {
        let (batch, m, k, n) = (&self.batch[..], self.m, self.k, self.n);
        let a = self.a.broadcast(IxDyn(&[batch, &[m, k]].concat()));
        let b = self.b.broadcast(IxDyn(&[batch, &[k, n]].concat()));
        (
            a.expect("broadcastable by construction"),
            b.expect("broadcastable by construction"),
        )
    }
}

pub fn matmul(a: &TensorView, b: &TensorView) -> Result<Tensor> {
    let (a, b) = (a.f32()?, b.f32()?);
    let (a, b) = (contiguous(a), contiguous(b));
    let mm = Batched::new("MatMul", a.view(), b.view(), DType::F32)?;
    let (a_b, b_b) = mm.broadcast();
    let (batch, m, k, n) = (&mm.batch, mm.m, mm.k, mm.n);
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
    Ok(Tensor::F32(from_vec(IxDyn(&mm.shape), out)))
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
    check_alloc(&[m, n], DType::F32)?;
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

/// The shape rule of MatMul and Gemm.
pub(super) fn infer(op: &Op, ins: Facts) -> Inferred {
    let dt0 = dtype_of(ins, 0);
    let s0 = shape_of(ins, 0);
    Ok(match op {
        Op::MatMul => vec![fact(dt0, matmul_shape(s0, shape_of(ins, 1))?)],
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
        other => return Err(format!("{} is not MatMul or Gemm", other.name())),
    })
}

pub(super) fn matmul_shape(
    a: Option<Vec<Dim>>,
    b: Option<Vec<Dim>>,
) -> Result<Option<Vec<Dim>>, String> {
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
