//! Python arguments to the Rust options they stand for: pooling and quantisation names, and lists of
//! texts.

use fff_compiler::{CompileError, Quantize};
use fff_runtime::text::Pooling;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::fff_error;

/// `"cls"`, `"mean"`, `"max"` or `"none"`; another name is an `fff.Error` listing these.
pub fn pooling(name: Option<&str>) -> PyResult<Option<Pooling>> {
    name.map(|n| n.parse::<Pooling>().map_err(fff_error))
        .transpose()
}

/// `"int8"`, `"bf16"` or `"f32"` (`fffc compile --quantize`); `None` is f32.
pub fn quantize(name: Option<&str>) -> PyResult<Quantize> {
    match name {
        None | Some("f32") => Ok(Quantize::F32),
        Some("int8") => Ok(Quantize::Int8),
        Some("bf16") => Ok(Quantize::Bf16),
        Some(other) => Err(fff_error(CompileError::Option(format!(
            "unknown quantize '{other}'; expected one of int8, bf16, f32"
        )))),
    }
}

/// The texts of a list (any iterable) of `str` or UTF-8 `bytes`. One `str` is refused rather than
/// read as a list of characters.
pub fn texts(texts: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if texts.is_instance_of::<PyString>() || texts.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "texts must be a list of str or bytes, not one text: wrap it in a list",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in texts.try_iter()?.enumerate() {
        let item = item?;
        if let Ok(bytes) = item.cast::<PyBytes>() {
            let text = std::str::from_utf8(bytes.as_bytes()).map_err(|e| {
                fff_error(fff_runtime::Error::input(format!(
                    "text {i} is not valid UTF-8: {e}"
                )))
            })?;
            out.push(text.to_owned());
        } else if item.is_instance_of::<PyString>() {
            out.push(item.extract::<String>()?);
        } else {
            return Err(PyTypeError::new_err(format!(
                "text {i} is {}, not str or bytes",
                item.get_type().name()?
            )));
        }
    }
    Ok(out)
}
