//! MatMulInteger: `Y = (A - a_zero_point)(B - b_zero_point)` on uint8/int8 operands, summed in int32
//! with numpy's matmul rules (rank-1 operands promoted, batch axes broadcast). ONNX says the sums "may
//! overflow" 32 bits; they wrap here, never panic. This is the plain evaluator, the fallback for
//! products the compiler's lowering does not move onto the int8 kernels.
//!
//! Zero points, as ONNX defines them: A's is a scalar, a vector of one per row (`[M]`), or `[..., M,
//! 1]` broadcasting against A; B's is a scalar, one per column (`[N]`), or `[..., 1, N]`.

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::broadcast_shapes;
use super::elementwise::zip_broadcast;
use super::fact::{dtype_of, fact, shape_of, Facts, Inferred};
use super::matmul::Batched;
use super::util::check_alloc;
use crate::error::{Error, Result};
use crate::tensor::{from_vec, DType, Tensor, TensorView};

/// The input slots of [`super::Op::MatMulInteger`].
pub struct MatMulInteger;

impl MatMulInteger {
    pub const A: usize = 0;
    pub const B: usize = 1;
    pub const A_ZERO: usize = 2;
    pub const B_ZERO: usize = 3;
    pub(super) const REQUIRED: &'static [usize] = &[Self::A, Self::B];
    pub(super) const INPUTS: usize = 4;
}

/// Which operand a zero point belongs to, for its shape rule and messages.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    A,
    B,
}

/// An operand widened to i32 with its zero point subtracted.
fn centred(x: &TensorView, zp: Option<&TensorView>, side: Side) -> Result<ArrayD<i32>> {
    let name = if side == Side::A { "A" } else { "B" };
    check_alloc(x.shape(), DType::I32)?;
    let wide = widen(x).ok_or_else(|| {
        Error::invalid(format!(
            "MatMulInteger takes {name} of uint8 or int8, not {}",
            x.dtype()
        ))
    })?;
    let Some(zp) = zp else { return Ok(wide) };
    if zp.dtype() != x.dtype() {
        return Err(Error::invalid(format!(
            "MatMulInteger's {name} zero point is {}, not {name}'s {}",
            zp.dtype(),
            x.dtype()
        )));
    }
    let z = widen(zp).expect("the same dtype as x");
    let z = zero_point_shape(z, x.shape(), side)?;
    zip_broadcast(&wide.view(), &z.view(), |p: i32, q: i32| p - q)
}

fn widen(x: &TensorView) -> Option<ArrayD<i32>> {
    match x {
        TensorView::U8(a) => Some(a.mapv(i32::from)),
        TensorView::I8(a) => Some(a.mapv(i32::from)),
        _ => None,
    }
}

/// The zero point reshaped to broadcast against its operand of `shape`, or why it cannot.
fn zero_point_shape(z: ArrayD<i32>, shape: &[usize], side: Side) -> Result<ArrayD<i32>> {
    let name = if side == Side::A { "A" } else { "B" };
    let bad = || {
        Error::invalid(format!(
            "MatMulInteger's {name} zero point of shape {:?} fits neither per tensor nor per {} of {name} {shape:?}",
            z.shape(),
            if side == Side::A { "row" } else { "column" }
        ))
    };
    if z.len() == 1 && z.ndim() <= 1 {
        return Ok(z.into_shape_with_order(IxDyn(&[])).expect("one element"));
    }
    let r = shape.len();
    if z.ndim() == 1 {
        return match side {
            Side::A if r >= 2 && z.len() == shape[r - 2] => Ok(z
                .into_shape_with_order(IxDyn(&[shape[r - 2], 1]))
                .expect("same length")),
            Side::B if r >= 2 && z.len() == shape[r - 1] => Ok(z),
            _ => Err(bad()),
        };
    }
    let zr = z.ndim();
    let unit_axis = match side {
        Side::A => z.shape()[zr - 1],
        Side::B => z.shape()[zr - 2],
    };
    if unit_axis != 1 || broadcast_shapes(shape, z.shape()).ok().as_deref() != Some(shape) {
        return Err(bad());
    }
    Ok(z)
}

/// MatMulInteger's evaluation.
pub fn matmul_integer(
    a: &TensorView,
    b: &TensorView,
    a_zero: Option<&TensorView>,
    b_zero: Option<&TensorView>,
) -> Result<Tensor> {
    let a = centred(a, a_zero, Side::A)?;
    let b = centred(b, b_zero, Side::B)?;
    matmul_i32(a.view(), b.view()).map(Tensor::I32)
}

/// numpy matmul of i32 arrays with wrapping sums, in i-k-j order over contiguous rows.
fn matmul_i32(a: ArrayViewD<i32>, b: ArrayViewD<i32>) -> Result<ArrayD<i32>> {
    let mm = Batched::new("MatMulInteger", a, b, DType::I32)?;
    let (a_b, b_b) = mm.broadcast();
    let (batch, m, k, n) = (&mm.batch, mm.m, mm.k, mm.n);
    let nb: usize = batch.iter().product();
    let mut out = vec![0i32; nb * m * n];
    let mut a_mat = vec![0i32; m * k];
    let mut b_mat = vec![0i32; k * n];
    let mut index = vec![0usize; batch.len()];
    for t in 0..nb {
        // The matrices of batch `t`, copied contiguous (they may be broadcast or strided).
        copy_matrix(&a_b, &index, &mut a_mat);
        copy_matrix(&b_b, &index, &mut b_mat);
        let y = &mut out[t * m * n..(t + 1) * m * n];
        for (y_row, a_row) in y
            .chunks_exact_mut(n.max(1))
            .zip(a_mat.chunks_exact(k.max(1)))
        {
            for (&av, b_row) in a_row.iter().zip(b_mat.chunks_exact(n.max(1))) {
                if av == 0 {
                    continue;
                }
                for (yv, &bv) in y_row.iter_mut().zip(b_row) {
                    *yv = yv.wrapping_add(av.wrapping_mul(bv));
                }
            }
        }
        // The next batch index, last axis fastest.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < batch[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(from_vec(IxDyn(&mm.shape), out))
}

/// Copies the matrix at batch `index` of `v` into `out`, in standard order.
fn copy_matrix(v: &ArrayViewD<i32>, index: &[usize], out: &mut [i32]) {
    let mut s = v.view();
    for &i in index {
        s = s.index_axis_move(ndarray::Axis(0), i);
    }
    out.iter_mut().zip(s.iter()).for_each(|(d, s)| *d = *s);
}

pub(super) fn infer(ins: Facts) -> Inferred {
    for (slot, zero, name) in [
        (MatMulInteger::A, MatMulInteger::A_ZERO, "A"),
        (MatMulInteger::B, MatMulInteger::B_ZERO, "B"),
    ] {
        let dt = dtype_of(ins, slot);
        if let Some(d) = dt.filter(|d| !d.is_quantised()) {
            return Err(format!(
                "MatMulInteger takes {name} of uint8 or int8, not {d}"
            ));
        }
        if let (Some(d), Some(z)) = (dt, dtype_of(ins, zero)) {
            if d != z {
                return Err(format!(
                    "MatMulInteger's {name} zero point is {z}, not {name}'s {d}"
                ));
            }
        }
    }
    let shape = super::matmul::matmul_shape(
        shape_of(ins, MatMulInteger::A),
        shape_of(ins, MatMulInteger::B),
    )?;
    Ok(vec![fact(Some(DType::I32), shape)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u8s(shape: &[usize], v: &[u8]) -> Tensor {
        Tensor::U8(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    /// A batched product with per-row and per-column zero points against sums written out by hand.
    #[test]
    fn batched_products_with_row_and_column_zero_points() {
        let a = u8s(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let b = u8s(&[3, 2], &[1, 0, 0, 1, 2, 2]);
        let azp = u8s(&[2], &[1, 2]);
        let bzp = u8s(&[2], &[0, 1]);
        let y = matmul_integer(&a.view(), &b.view(), Some(&azp.view()), Some(&bzp.view())).unwrap();
        let (av, bv) = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 0, 0, 1, 2, 2]);
        let mut want = vec![];
        for t in 0..2 {
            for i in 0..2 {
                for j in 0..2 {
                    let mut s = 0i32;
                    for p in 0..3 {
                        s += (av[t * 6 + i * 3 + p] - [1, 2][i]) * (bv[p * 2 + j] - [0, 1][j]);
                    }
                    want.push(s);
                }
            }
        }
        assert_eq!(
            y.view().i32().unwrap().iter().copied().collect::<Vec<_>>(),
            want
        );
        assert_eq!(y.shape(), &[2, 2, 2]);
    }

    #[test]
    fn zero_points_of_the_wrong_shape_or_type_are_refused() {
        let a = u8s(&[2, 3], &[0; 6]);
        let b = u8s(&[3, 4], &[0; 12]);
        for (azp, bzp) in [
            (Some(u8s(&[3], &[0; 3])), None),
            (None, Some(u8s(&[3], &[0; 3]))),
            (Some(u8s(&[2, 3], &[0; 6])), None),
        ] {
            let r = matmul_integer(
                &a.view(),
                &b.view(),
                azp.as_ref().map(|t| t.view()).as_ref(),
                bzp.as_ref().map(|t| t.view()).as_ref(),
            );
            assert!(r.is_err(), "{r:?}");
        }
        let i8zp = Tensor::I8(ArrayD::zeros(IxDyn(&[])));
        assert!(matmul_integer(&a.view(), &b.view(), Some(&i8zp.view()), None).is_err());
    }
}
