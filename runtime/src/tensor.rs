//! Tensors as the runtime sees them: one closed set of element types, owned arrays for computed values
//! and borrowed views for inputs to an op (weights are views into the memory-mapped plan).

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Element types the runtime computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I64,
    I32,
    Bool,
    /// bfloat16: only as reduced-precision weights of FastFeedForward (`fffc compile --weights
    /// bf16`); no op computes in it.
    BF16,
    /// int8: quantised weights (`fffc compile --quantize int8`) and the values of imported quantised
    /// models (QuantizeLinear, MatMulInteger, ...); data-movement ops carry it, float maths refuses it.
    I8,
    /// uint8: the values of imported quantised models (ONNX Runtime's activations), as `I8`.
    U8,
}

pub use fff_ops::element::Bf16;

impl DType {
    /// Bytes per element in a plan file (bool takes one byte, 0 or 1).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
            DType::Bool => 1,
            DType::BF16 => 2,
            DType::I8 | DType::U8 => 1,
        }
    }

    /// The name ONNX and users know: `float32`, `int64`, `int32`, `bool`, `uint8`, ...
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::Bool => "bool",
            DType::BF16 => "bfloat16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
        }
    }

    /// The element type of an ONNX `TensorProto.DataType` code, if the runtime supports it.
    pub fn from_onnx(code: i32) -> Option<DType> {
        match code {
            1 => Some(DType::F32),
            2 => Some(DType::U8),
            3 => Some(DType::I8),
            6 => Some(DType::I32),
            7 => Some(DType::I64),
            9 => Some(DType::Bool),
            _ => None,
        }
    }

    pub fn is_float(self) -> bool {
        self == DType::F32
    }

    /// The 8-bit integer types of quantised values, which float maths refuses.
    pub fn is_quantised(self) -> bool {
        matches!(self, DType::I8 | DType::U8)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An owned tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    Bool(ArrayD<bool>),
    BF16(ArrayD<Bf16>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
}

/// A borrowed tensor.
#[derive(Clone, Debug)]
pub enum TensorView<'a> {
    F32(ArrayViewD<'a, f32>),
    I64(ArrayViewD<'a, i64>),
    I32(ArrayViewD<'a, i32>),
    Bool(ArrayViewD<'a, bool>),
    BF16(ArrayViewD<'a, Bf16>),
    I8(ArrayViewD<'a, i8>),
    U8(ArrayViewD<'a, u8>),
}

/// Applies the same generic expression to whichever variant a tensor or view holds.
#[macro_export]
macro_rules! dispatch {
    ($value:expr, $enum:ident, $a:ident => $body:expr) => {
        match $value {
            $enum::F32($a) => $body,
            $enum::I64($a) => $body,
            $enum::I32($a) => $body,
            $enum::Bool($a) => $body,
            $enum::BF16($a) => $body,
            $enum::I8($a) => $body,
            $enum::U8($a) => $body,
        }
    };
}

/// Like [`dispatch!`], but wraps the result back into the same variant of `Tensor`.
#[macro_export]
macro_rules! map_tensor {
    ($value:expr, $enum:ident, $a:ident => $body:expr) => {
        match $value {
            $enum::F32($a) => $crate::tensor::Tensor::F32($body),
            $enum::I64($a) => $crate::tensor::Tensor::I64($body),
            $enum::I32($a) => $crate::tensor::Tensor::I32($body),
            $enum::Bool($a) => $crate::tensor::Tensor::Bool($body),
            $enum::BF16($a) => $crate::tensor::Tensor::BF16($body),
            $enum::I8($a) => $crate::tensor::Tensor::I8($body),
            $enum::U8($a) => $crate::tensor::Tensor::U8($body),
        }
    };
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::I64(_) => DType::I64,
            Tensor::I32(_) => DType::I32,
            Tensor::Bool(_) => DType::Bool,
            Tensor::BF16(_) => DType::BF16,
            Tensor::I8(_) => DType::I8,
            Tensor::U8(_) => DType::U8,
        }
    }

    pub fn shape(&self) -> &[usize] {
        dispatch!(self, Tensor, a => a.shape())
    }

    pub fn len(&self) -> usize {
        dispatch!(self, Tensor, a => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn view(&self) -> TensorView<'_> {
        match self {
            Tensor::F32(a) => TensorView::F32(a.view()),
            Tensor::I64(a) => TensorView::I64(a.view()),
            Tensor::I32(a) => TensorView::I32(a.view()),
            Tensor::Bool(a) => TensorView::Bool(a.view()),
            Tensor::BF16(a) => TensorView::BF16(a.view()),
            Tensor::I8(a) => TensorView::I8(a.view()),
            Tensor::U8(a) => TensorView::U8(a.view()),
        }
    }

    /// A tensor of the given type and shape filled with zeros (false for bool).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let s = IxDyn(shape);
        match dtype {
            DType::F32 => Tensor::F32(ArrayD::zeros(s)),
            DType::I64 => Tensor::I64(ArrayD::zeros(s)),
            DType::I32 => Tensor::I32(ArrayD::zeros(s)),
            DType::Bool => Tensor::Bool(ArrayD::from_elem(s, false)),
            DType::BF16 => Tensor::BF16(ArrayD::from_elem(s, Bf16(0))),
            DType::I8 => Tensor::I8(ArrayD::zeros(s)),
            DType::U8 => Tensor::U8(ArrayD::zeros(s)),
        }
    }

    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::F32(ArrayD::from_elem(IxDyn(&[]), v))
    }

    pub fn scalar_i64(v: i64) -> Tensor {
        Tensor::I64(ArrayD::from_elem(IxDyn(&[]), v))
    }

    /// A 1-D int64 tensor.
    pub fn vec_i64(v: Vec<i64>) -> Tensor {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D shape matches length"))
    }

    /// The raw little-endian bytes of the elements in logical (row-major) order.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Tensor::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Tensor::I64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Tensor::I32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Tensor::Bool(a) => a.iter().map(|&v| v as u8).collect(),
            Tensor::BF16(a) => a.iter().flat_map(|v| v.0.to_le_bytes()).collect(),
            Tensor::I8(a) => a.iter().map(|&v| v as u8).collect(),
            Tensor::U8(a) => a.iter().copied().collect(),
        }
    }

    /// FNV-1a over the elements' little-endian bytes in logical order: the same for equal tensors on
    /// every machine, computed without copying.
    pub fn content_hash(&self) -> u64 {
        fn feed(h: u64, bytes: &[u8]) -> u64 {
            bytes
                .iter()
                .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
        }
        let h = 0xcbf2_9ce4_8422_2325;
        match self {
            Tensor::F32(a) => a.iter().fold(h, |h, v| feed(h, &v.to_le_bytes())),
            Tensor::I64(a) => a.iter().fold(h, |h, v| feed(h, &v.to_le_bytes())),
            Tensor::I32(a) => a.iter().fold(h, |h, v| feed(h, &v.to_le_bytes())),
            Tensor::Bool(a) => a.iter().fold(h, |h, &v| feed(h, &[v as u8])),
            Tensor::BF16(a) => a.iter().fold(h, |h, v| feed(h, &v.0.to_le_bytes())),
            Tensor::I8(a) => a.iter().fold(h, |h, &v| feed(h, &[v as u8])),
            Tensor::U8(a) => a.iter().fold(h, |h, &v| feed(h, &[v])),
        }
    }

    /// Rebuilds a tensor from little-endian bytes, checking that the byte count fits the shape.
    pub fn from_le_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        let n = checked_len(shape)?;
        if n.checked_mul(dtype.size()) != Some(bytes.len()) {
            return Err(Error::invalid(format!(
                "{} bytes do not hold a {dtype} tensor of shape {shape:?}",
                bytes.len()
            )));
        }
        let s = IxDyn(shape);
        let t = match dtype {
            DType::F32 => Tensor::F32(from_vec(
                s,
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )),
            DType::I64 => Tensor::I64(from_vec(
                s,
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )),
            DType::I32 => Tensor::I32(from_vec(
                s,
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )),
            DType::Bool => {
                if let Some(b) = bytes.iter().find(|&&b| b > 1) {
                    return Err(Error::invalid(format!(
                        "bool tensor holds the byte {b}, not 0 or 1"
                    )));
                }
                Tensor::Bool(from_vec(s, bytes.iter().map(|&b| b == 1).collect()))
            }
            DType::BF16 => Tensor::BF16(from_vec(
                s,
                bytes
                    .chunks_exact(2)
                    .map(|c| Bf16(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            )),
            DType::I8 => Tensor::I8(from_vec(s, bytes.iter().map(|&b| b as i8).collect())),
            DType::U8 => Tensor::U8(from_vec(s, bytes.to_vec())),
        };
        Ok(t)
    }
}

/// An array from values whose count the caller has already checked against the shape.
pub(crate) fn from_vec<T>(shape: IxDyn, v: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(shape, v).expect("length checked against the shape")
}

/// The element count of a shape, or an error where it overflows.
///
/// Also refuses shapes whose non-zero dimensions multiply past `isize::MAX`, even with a zero among
/// them: no array can have such a shape, empty or not.
pub fn checked_len(shape: &[usize]) -> Result<usize> {
    let too_many = || Error::invalid(format!("shape {shape:?} has too many elements"));
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| isize::try_from(n).is_ok())
        .ok_or_else(too_many)?;
    Ok(if shape.contains(&0) { 0 } else { nonzero })
}

impl<'a> TensorView<'a> {
    /// The same view, borrowed for as long as `self` is.
    pub fn reborrow(&self) -> TensorView<'_> {
        match self {
            TensorView::F32(a) => TensorView::F32(a.view()),
            TensorView::I64(a) => TensorView::I64(a.view()),
            TensorView::I32(a) => TensorView::I32(a.view()),
            TensorView::Bool(a) => TensorView::Bool(a.view()),
            TensorView::BF16(a) => TensorView::BF16(a.view()),
            TensorView::I8(a) => TensorView::I8(a.view()),
            TensorView::U8(a) => TensorView::U8(a.view()),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            TensorView::F32(_) => DType::F32,
            TensorView::I64(_) => DType::I64,
            TensorView::I32(_) => DType::I32,
            TensorView::Bool(_) => DType::Bool,
            TensorView::BF16(_) => DType::BF16,
            TensorView::I8(_) => DType::I8,
            TensorView::U8(_) => DType::U8,
        }
    }

    pub fn shape(&self) -> &[usize] {
        dispatch!(self, TensorView, a => a.shape())
    }

    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    pub fn len(&self) -> usize {
        dispatch!(self, TensorView, a => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_owned(&self) -> Tensor {
        map_tensor!(self, TensorView, a => a.to_owned())
    }

    pub fn f32(&self) -> Result<&ArrayViewD<'a, f32>> {
        match self {
            TensorView::F32(a) => Ok(a),
            other => Err(Error::dtype("float32", other.dtype())),
        }
    }

    pub fn bf16(&self) -> Result<&ArrayViewD<'a, Bf16>> {
        match self {
            TensorView::BF16(a) => Ok(a),
            other => Err(Error::dtype("bfloat16", other.dtype())),
        }
    }

    pub fn i8(&self) -> Result<&ArrayViewD<'a, i8>> {
        match self {
            TensorView::I8(a) => Ok(a),
            other => Err(Error::dtype("int8", other.dtype())),
        }
    }

    pub fn u8(&self) -> Result<&ArrayViewD<'a, u8>> {
        match self {
            TensorView::U8(a) => Ok(a),
            other => Err(Error::dtype("uint8", other.dtype())),
        }
    }

    pub fn i32(&self) -> Result<&ArrayViewD<'a, i32>> {
        match self {
            TensorView::I32(a) => Ok(a),
            other => Err(Error::dtype("int32", other.dtype())),
        }
    }

    pub fn bool(&self) -> Result<&ArrayViewD<'a, bool>> {
        match self {
            TensorView::Bool(a) => Ok(a),
            other => Err(Error::dtype("bool", other.dtype())),
        }
    }

    /// The elements of an integer tensor (int64 or int32) widened to i64, in logical order.
    pub fn ints(&self) -> Result<Vec<i64>> {
        match self {
            TensorView::I64(a) => Ok(a.iter().copied().collect()),
            TensorView::I32(a) => Ok(a.iter().map(|&v| v as i64).collect()),
            other => Err(Error::dtype("an integer type", other.dtype())),
        }
    }

    /// The single element of a one-element numeric tensor, as f64.
    pub fn scalar_f64(&self) -> Result<f64> {
        if self.len() != 1 {
            return Err(Error::invalid(format!(
                "expected one element, got shape {:?}",
                self.shape()
            )));
        }
        Ok(match self {
            TensorView::F32(a) => *a.iter().next().unwrap() as f64,
            TensorView::I64(a) => *a.iter().next().unwrap() as f64,
            TensorView::I32(a) => *a.iter().next().unwrap() as f64,
            TensorView::Bool(a) => *a.iter().next().unwrap() as u8 as f64,
            TensorView::BF16(a) => a.iter().next().unwrap().to_f32() as f64,
            TensorView::I8(a) => *a.iter().next().unwrap() as f64,
            TensorView::U8(a) => *a.iter().next().unwrap() as f64,
        })
    }
}
