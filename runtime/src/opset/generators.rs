//! Ops that make new data from shapes or scalars: Shape, Size, ConstantOfShape, Range.

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::fact::{dtype_of, fact, get, shape_of, value_of, Dim, Fact, Facts, Inferred};
use super::util::{check_alloc, dims_from_ints};
use super::Op;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorView};

/// A scalar held by an op attribute. Floats are kept as their bit pattern so that infinities and NaN
/// survive the plan's JSON encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scalar {
    F32Bits(u32),
    I64(i64),
    I32(i32),
    Bool(bool),
}

impl Scalar {
    pub fn f32(v: f32) -> Scalar {
        Scalar::F32Bits(v.to_bits())
    }

    pub fn dtype(self) -> DType {
        match self {
            Scalar::F32Bits(_) => DType::F32,
            Scalar::I64(_) => DType::I64,
            Scalar::I32(_) => DType::I32,
            Scalar::Bool(_) => DType::Bool,
        }
    }
}

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
        TensorView::Bool(_) | TensorView::BF16(_) | TensorView::I8(_) | TensorView::U8(_) => {
            return Err(Error::invalid(format!(
                "Range does not take {}",
                start.dtype()
            )))
        }
    })
}

/// The shape rule of the generators.
pub(super) fn infer(op: &Op, ins: Facts) -> Inferred {
    let s0 = shape_of(ins, 0);
    Ok(match op {
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
        Op::ConstantOfShape { value } => {
            let shape = value_of(ins, 0).or_else(|| {
                get(ins, 0)
                    .and_then(|f| f.known_shape())
                    .map(|s| vec![Dim::Unknown; s.first().copied().unwrap_or(0)])
            });
            vec![fact(Some(value.dtype()), shape)]
        }
        Op::Range => vec![fact(dtype_of(ins, 0), Some(vec![Dim::Unknown]))],
        other => return Err(format!("{} is not a generator", other.name())),
    })
}
