//! The Python package `fff`: compile ONNX models into plans, run plans on NumPy arrays, embed texts.
//!
//! A thin layer over `fff-compiler` and `fff-runtime`: arguments become the Rust options, NumPy arrays
//! become tensor views (read in place where they can be), and every Rust error becomes one Python
//! exception, `fff.Error`, whose message is the error's own text. The long calls (compile, run,
//! embed, tokenize) let go of the GIL, so Python threads run them on one model at once.

mod arrays;
mod compile;
mod model;
mod options;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    fff,
    Error,
    PyException,
    "An fff error: a model that does not compile, a plan that does not load, inputs the model does \
     not take. The message is the one `fffc` and `fffrun` print after `error: `."
);

/// The Python exception for any Rust error, with the error's Display text as its message.
pub(crate) fn fff_error(e: impl std::fmt::Display) -> PyErr {
    Error::new_err(e.to_string())
}

/// Compile BERT-like ONNX models into fff plans (`compile`), run them on NumPy arrays and embed texts
/// (`Model`); every failure raises `Error`.
#[pymodule]
fn fff(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add_class::<model::PyModel>()?;
    m.add_function(wrap_pyfunction!(compile::compile, m)?)?;
    Ok(())
}
