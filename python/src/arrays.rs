//! NumPy arrays to the runtime's tensor views and back.
//!
//! An input array of the model's dtype, C-contiguous and in native byte order, is read where it is:
//! the run gets a view of NumPy's buffer (held with a read borrow for the call). Every other input
//! is converted into an owned tensor first, when the conversion is lossless in kind:
//! - any integer array to the model's integer type, every value checked to fit;
//! - any float array (float16, float64, ...) to float32;
//! - a non-contiguous array (a transposed or strided view) to a contiguous copy of itself, and so
//!   an unaligned one (read from an odd offset of a buffer, a field of a structured array).
//!
//! Floats are never turned into integers nor integers into floats: that is an error naming the input,
//! its dtype and the model's. Outputs go to NumPy without a copy: each array takes over the buffer the
//! run wrote.

use fff_runtime::ndarray::{ArrayD, ArrayViewD};
use fff_runtime::{DType, Tensor, TensorView};
use numpy::{
    Element, IntoPyArray, PyArrayDescr, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods,
    PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::fff_error;

/// One run input, kept alive for the call: NumPy's own buffer (read in place), or a converted copy.
pub enum Held<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    I32(PyReadonlyArrayDyn<'py, i32>),
    Bool(PyReadonlyArrayDyn<'py, bool>),
    I8(PyReadonlyArrayDyn<'py, i8>),
    U8(PyReadonlyArrayDyn<'py, u8>),
    Owned(Tensor),
}

impl Held<'_> {
    pub fn view(&self) -> TensorView<'_> {
        match self {
            Held::F32(a) => TensorView::F32(a.as_array()),
            Held::I64(a) => TensorView::I64(a.as_array()),
            Held::I32(a) => TensorView::I32(a.as_array()),
            Held::Bool(a) => TensorView::Bool(a.as_array()),
            Held::I8(a) => TensorView::I8(a.as_array()),
            Held::U8(a) => TensorView::U8(a.as_array()),
            Held::Owned(t) => t.view(),
        }
    }
}

/// The most dimensions an input array may have: the most a NumPy array can be viewed with from Rust.
const MAX_RANK: usize = 32;

/// The runtime's element type that `dtype` is exactly (native byte order), if any.
fn runtime_dtype(dtype: &Bound<'_, PyArrayDescr>) -> Option<DType> {
    let py = dtype.py();
    let is = |other: Bound<'_, PyArrayDescr>| dtype.is_equiv_to(&other);
    [
        (numpy::dtype::<f32>(py), DType::F32),
        (numpy::dtype::<i64>(py), DType::I64),
        (numpy::dtype::<i32>(py), DType::I32),
        (numpy::dtype::<bool>(py), DType::Bool),
        (numpy::dtype::<i8>(py), DType::I8),
        (numpy::dtype::<u8>(py), DType::U8),
    ]
    .into_iter()
    .find_map(|(d, t)| is(d).then_some(t))
}

/// The NumPy name of a dtype (`float64`, `>i4`, ...), for messages.
fn dtype_name(dtype: &Bound<'_, PyArrayDescr>) -> String {
    dtype
        .getattr("name")
        .and_then(|n| n.extract::<String>())
        .unwrap_or_else(|_| dtype.to_string())
}

/// The array `value` is, or NumPy's `asarray` of it (lists, scalars, other array types).
fn as_ndarray<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    let array = match value.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            let numpy = value.py().import("numpy")?;
            numpy
                .call_method1("asarray", (value,))?
                .cast_into::<PyUntypedArray>()?
        }
    };
    // Big-endian arrays: to native order first (a copy), then as any other array.
    let array = if array.dtype().is_native_byteorder() == Some(false) {
        let native = array.dtype().call_method1("newbyteorder", ("=",))?;
        array
            .call_method1("astype", (native,))?
            .cast_into::<PyUntypedArray>()?
    } else {
        array
    };
    // A Rust view needs aligned elements and strides in whole elements; NumPy allows neither (a
    // buffer read at an odd offset, a field of a structured array). Such arrays are copied first.
    let itemsize = array.dtype().itemsize() as isize;
    let whole_strides = array.strides().iter().all(|s| s % itemsize.max(1) == 0);
    if !array.is_aligned() || !whole_strides {
        return Ok(array
            .call_method1("copy", ("C",))?
            .cast_into::<PyUntypedArray>()?);
    }
    Ok(array)
}

/// A read borrow of an array whose element type is `T`.
fn read<'py, T: Element>(
    array: &Bound<'py, PyUntypedArray>,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    array
        .cast::<PyArrayDyn<T>>()?
        .try_readonly()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot read the array: {e}")))
}

/// The array's buffer when it is C-contiguous, else a contiguous copy.
fn same_dtype<'py, T: Element + Clone>(
    array: &Bound<'py, PyUntypedArray>,
    wrap_borrowed: fn(PyReadonlyArrayDyn<'py, T>) -> Held<'py>,
    wrap_owned: fn(ArrayD<T>) -> Tensor,
) -> PyResult<Held<'py>> {
    let readonly = read::<T>(array)?;
    if array.is_c_contiguous() {
        return Ok(wrap_borrowed(readonly));
    }
    let copy = readonly.as_array().as_standard_layout().into_owned();
    Ok(Held::Owned(wrap_owned(copy)))
}

/// Every value of `view` as a `T`, or an error naming the input and the first value that does not fit.
fn narrow<S, T>(name: &str, view: ArrayViewD<'_, S>, target: DType) -> Result<ArrayD<T>, PyErr>
where
    S: Copy + std::fmt::Display,
    T: TryFrom<S>,
{
    let mut out = Vec::with_capacity(view.len());
    for &v in view.iter() {
        out.push(T::try_from(v).map_err(|_| {
            fff_error(fff_runtime::Error::input(format!(
                "input '{name}' holds {v}, which does not fit the model's {target}"
            )))
        })?);
    }
    ArrayD::from_shape_vec(view.raw_dim(), out).map_err(fff_error)
}

/// An integer array of element type `S` converted to the model's integer type `target`.
fn integers<S>(name: &str, array: &Bound<'_, PyUntypedArray>, target: DType) -> PyResult<Tensor>
where
    S: Element + Copy + std::fmt::Display,
    i64: TryFrom<S>,
    i32: TryFrom<S>,
    i8: TryFrom<S>,
    u8: TryFrom<S>,
{
    let readonly = read::<S>(array)?;
    let view = readonly.as_array();
    Ok(match target {
        DType::I64 => Tensor::I64(narrow(name, view, target)?),
        DType::I32 => Tensor::I32(narrow(name, view, target)?),
        DType::I8 => Tensor::I8(narrow(name, view, target)?),
        DType::U8 => Tensor::U8(narrow(name, view, target)?),
        other => {
            return Err(fff_error(fff_runtime::Error::Internal(format!(
                "integers are not converted to {other}"
            ))))
        }
    })
}

/// `value` as the input `name` of element type `expected` (the model's; `None` for a name the model
/// does not have, which then keeps its own type for the runtime to refuse by name).
pub fn hold<'py>(
    name: &str,
    value: &Bound<'py, PyAny>,
    expected: Option<DType>,
) -> PyResult<Held<'py>> {
    let array = as_ndarray(value)?;
    if array.ndim() > MAX_RANK {
        return Err(fff_error(fff_runtime::Error::input(format!(
            "input '{name}' has {} dimensions; at most {MAX_RANK} are read",
            array.ndim()
        ))));
    }
    let dtype = array.dtype();
    let own = runtime_dtype(&dtype);
    let target = match (expected, own) {
        (Some(e), _) => e,
        (None, Some(o)) => o,
        (None, None) => {
            return Err(fff_error(fff_runtime::Error::input(format!(
                "input '{name}' is {}, which no model takes",
                dtype_name(&dtype)
            ))))
        }
    };
    if own == Some(target) {
        match target {
            DType::F32 => return same_dtype(&array, Held::F32, Tensor::F32),
            DType::I64 => return same_dtype(&array, Held::I64, Tensor::I64),
            DType::I32 => return same_dtype(&array, Held::I32, Tensor::I32),
            DType::Bool => return same_dtype(&array, Held::Bool, Tensor::Bool),
            DType::I8 => return same_dtype(&array, Held::I8, Tensor::I8),
            DType::U8 => return same_dtype(&array, Held::U8, Tensor::U8),
            // NumPy has no bfloat16 (`runtime_dtype` never names it): the error below says so.
            DType::BF16 => {}
        }
    }
    let kind = dtype.kind();
    let integer_target = matches!(target, DType::I64 | DType::I32 | DType::I8 | DType::U8);
    if integer_target && (kind == b'i' || kind == b'u') {
        let py = array.py();
        macro_rules! from_source {
            ($($s:ty),*) => {
                $(if dtype.is_equiv_to(&numpy::dtype::<$s>(py)) {
                    return Ok(Held::Owned(integers::<$s>(name, &array, target)?));
                })*
            };
        }
        from_source!(i64, i32, i16, i8, u64, u32, u16, u8);
    }
    if target == DType::F32 && kind == b'f' {
        // float16, float64, longdouble: NumPy rounds to float32, C-contiguous.
        let kwargs = PyDict::new(array.py());
        kwargs.set_item("order", "C")?;
        let converted = array
            .call_method("astype", ("float32",), Some(&kwargs))?
            .cast_into::<PyUntypedArray>()?;
        return same_dtype(&converted, Held::F32, Tensor::F32);
    }
    Err(fff_error(fff_runtime::Error::input(format!(
        "input '{name}' is {}, the model expects {target}; {}",
        dtype_name(&dtype),
        "integer arrays convert to integer inputs and float arrays to float32 inputs, no other way"
    ))))
}

/// A tensor as a NumPy array that owns the tensor's buffer (no copy); bfloat16, which NumPy lacks,
/// is widened to float32.
pub fn to_numpy(py: Python<'_>, tensor: Tensor) -> Bound<'_, PyAny> {
    match tensor {
        Tensor::F32(a) => a.into_pyarray(py).into_any(),
        Tensor::I64(a) => a.into_pyarray(py).into_any(),
        Tensor::I32(a) => a.into_pyarray(py).into_any(),
        Tensor::Bool(a) => a.into_pyarray(py).into_any(),
        Tensor::I8(a) => a.into_pyarray(py).into_any(),
        Tensor::U8(a) => a.into_pyarray(py).into_any(),
        Tensor::BF16(a) => a.mapv(|v| v.to_f32()).into_pyarray(py).into_any(),
    }
}
