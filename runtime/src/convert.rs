//! Conversions between tensors and the arrays and vectors a caller holds: `From` into a tensor for
//! every element type the runtime computes with, `TryFrom` back out (an error, not a panic, when the
//! element type differs).

use ndarray::{Array, ArrayD, ArrayView, ArrayViewD, Dimension, IxDyn};

use crate::error::{Error, Result};
use crate::tensor::{checked_len, Bf16, DType, Tensor, TensorView};

/// An element type a tensor can hold, tied to its variants.
pub trait Element: Clone + 'static {
    const DTYPE: DType;
    fn wrap(a: ArrayD<Self>) -> Tensor;
    fn wrap_view(a: ArrayViewD<'_, Self>) -> TensorView<'_>;
    fn unwrap(t: Tensor) -> std::result::Result<ArrayD<Self>, Tensor>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;

            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$variant(a)
            }

            fn wrap_view(a: ArrayViewD<'_, Self>) -> TensorView<'_> {
                TensorView::$variant(a)
            }

            fn unwrap(t: Tensor) -> std::result::Result<ArrayD<Self>, Tensor> {
                match t {
                    Tensor::$variant(a) => Ok(a),
                    other => Err(other),
                }
            }
        }

        impl<D: Dimension> From<Array<$t, D>> for Tensor {
            fn from(a: Array<$t, D>) -> Tensor {
                Tensor::$variant(a.into_dyn())
            }
        }

        impl<'a, D: Dimension> From<ArrayView<'a, $t, D>> for TensorView<'a> {
            fn from(a: ArrayView<'a, $t, D>) -> TensorView<'a> {
                TensorView::$variant(a.into_dyn())
            }
        }

        /// A 1-D tensor.
        impl From<Vec<$t>> for Tensor {
            fn from(v: Vec<$t>) -> Tensor {
                Tensor::$variant(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"))
            }
        }

        impl TryFrom<Tensor> for ArrayD<$t> {
            type Error = Error;

            fn try_from(t: Tensor) -> Result<ArrayD<$t>> {
                <$t as Element>::unwrap(t).map_err(|t| mismatch(DType::$variant, t.dtype()))
            }
        }

        /// The elements in logical (row-major) order, whatever the tensor's shape.
        impl TryFrom<Tensor> for Vec<$t> {
            type Error = Error;

            fn try_from(t: Tensor) -> Result<Vec<$t>> {
                let a = ArrayD::<$t>::try_from(t)?;
                Ok(if a.is_standard_layout() {
                    a.into_raw_vec_and_offset().0
                } else {
                    a.iter().cloned().collect()
                })
            }
        }

        impl<'a> TryFrom<TensorView<'a>> for ArrayViewD<'a, $t> {
            type Error = Error;

            fn try_from(t: TensorView<'a>) -> Result<ArrayViewD<'a, $t>> {
                match t {
                    TensorView::$variant(a) => Ok(a),
                    other => Err(mismatch(DType::$variant, other.dtype())),
                }
            }
        }
    };
}

element!(f32, F32);
element!(i64, I64);
element!(i32, I32);
element!(bool, Bool);
element!(Bf16, BF16);
element!(u8, U8);
element!(i8, I8);

fn mismatch(wanted: DType, got: DType) -> Error {
    Error::invalid(format!("the tensor holds {got}, not {wanted}"))
}

impl Tensor {
    /// A tensor of `shape` from its elements in row-major order; an error when their count differs
    /// from the shape's.
    pub fn from_shape_vec<T: Element>(shape: &[usize], v: Vec<T>) -> Result<Tensor> {
        let n = checked_len(shape)?;
        if n != v.len() {
            return Err(Error::invalid(format!(
                "shape {shape:?} holds {n} elements, given {}",
                v.len()
            )));
        }
        let a =
            ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| Error::invalid(e.to_string()))?;
        Ok(T::wrap(a))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{array, Array2};

    use super::*;

    #[test]
    fn arrays_and_vecs_round_trip() {
        let t: Tensor = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into();
        assert_eq!((t.dtype(), t.shape()), (DType::F32, &[2usize, 3][..]));
        let v: Vec<f32> = t.clone().try_into().unwrap();
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let a: ArrayD<f32> = t.try_into().unwrap();
        assert_eq!(a, array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn());

        let ids: Tensor = vec![7i64, 8, 9].into();
        assert_eq!((ids.dtype(), ids.shape()), (DType::I64, &[3usize][..]));
        let mask: Tensor = vec![true, false].into();
        assert_eq!(mask.dtype(), DType::Bool);
    }

    #[test]
    fn transposed_arrays_flatten_in_logical_order() {
        let a: Array2<i32> = array![[1, 2], [3, 4]].reversed_axes();
        let v: Vec<i32> = Tensor::from(a).try_into().unwrap();
        assert_eq!(v, [1, 3, 2, 4]);
    }

    #[test]
    fn wrong_element_type_is_an_error() {
        let t: Tensor = vec![1i64, 2].into();
        let err = Vec::<f32>::try_from(t).unwrap_err().to_string();
        assert!(err.contains("int64") && err.contains("float32"), "{err}");
        let a = array![1.0f32];
        let view = TensorView::from(a.view());
        assert!(ArrayViewD::<i64>::try_from(view).is_err());
    }

    #[test]
    fn from_shape_vec_checks_the_count() {
        let t = Tensor::from_shape_vec(&[2, 2], vec![1i64, 2, 3, 4]).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        let err = Tensor::from_shape_vec(&[2, 3], vec![1.0f32; 4]).unwrap_err();
        assert!(err.to_string().contains("6 elements"), "{err}");
        assert!(Tensor::from_shape_vec(&[usize::MAX, 2], Vec::<f32>::new()).is_err());
    }
}
