//! Multi-head attention, `softmax(scale * Q K' + Mask) V`, written by the compiler's `attention` pass.

use fff_ops::attention::{AttentionShape, Mask, Strided};
use ndarray::{CowArray, IxDyn};

use super::broadcast_shapes;
use super::fact::{dtype_of, fact, shape_of, Dim, Facts, Inferred};
use super::util::contiguous;
use crate::buffers;
use crate::error::{Error, Result};
use crate::tensor::{from_vec, Tensor, TensorView};

/// The input slots of [`super::Op::Attention`].
pub struct Attention;

impl Attention {
    pub const Q: usize = 0;
    pub const K: usize = 1;
    pub const V: usize = 2;
    /// Added to the scores, broadcast to `[b, h, sq, sk]`.
    pub const MASK: usize = 3;
    pub(super) const REQUIRED: &'static [usize] = &[Self::Q, Self::K, Self::V];
    pub(super) const INPUTS: usize = 4;
}

/// The output is written into a buffer from the recycler.
pub(super) const TAKES_BUFFERS: bool = true;

/// Whether `perm` reorders the 4 axes of an operand.
fn is_permutation(perm: &[usize; 4]) -> bool {
    let mut seen = [false; 4];
    perm.iter()
        .all(|&p| p < 4 && !std::mem::replace(&mut seen[p], true))
}

/// The plan form: each operand's permutation reorders 4 axes.
pub(super) fn validate(perms: [&[usize; 4]; 3]) -> std::result::Result<(), String> {
    match perms.iter().find(|p| !is_permutation(p)) {
        Some(p) => Err(format!("Attention permutation {p:?} is not one of 4 axes")),
        None => Ok(()),
    }
}

/// Multi-head attention; see [`super::Op::Attention`]. `operands` are Q, K and V, each with the
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
    // Q's length and V's width set the size: it may outgrow all three.
    super::util::check_alloc(&out_shape, crate::DType::F32)?;
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

/// The shape rule of Attention.
pub(super) fn infer([q_perm, k_perm, v_perm]: [&[usize; 4]; 3], ins: Facts) -> Inferred {
    let dt0 = dtype_of(ins, Attention::Q);
    // Each operand read as [b, h, s, d]; the output is [b, sq, h, dv], batch and heads
    // broadcast across the three.
    let bhsd = |i: usize, perm: &[usize; 4]| {
        shape_of(ins, i)
            .filter(|s| s.len() == 4)
            .map(|s| perm.map(|p| s[p].clone()))
    };
    let shape = match (
        bhsd(Attention::Q, q_perm),
        bhsd(Attention::K, k_perm),
        bhsd(Attention::V, v_perm),
    ) {
        (Some(q), Some(k), Some(v)) => {
            let b = Dim::broadcast(&Dim::broadcast(&q[0], &k[0])?, &v[0])?;
            let h = Dim::broadcast(&Dim::broadcast(&q[1], &k[1])?, &v[1])?;
            Some(vec![b, q[2].clone(), h, v[3].clone()])
        }
        _ => None,
    };
    Ok(vec![fact(dt0, shape)])
}
