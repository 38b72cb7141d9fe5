//! `fff.Model`: a loaded plan, run on NumPy arrays or on texts. One model serves any number of Python
//! threads at once: the runtime's `Model` is `Send + Sync`, and each call lets go of the GIL while it
//! computes.

use std::path::PathBuf;

use fff_runtime::model::Options;
use fff_runtime::plan::Dim;
use fff_runtime::text::EmbedOptions;
use fff_runtime::Model;
use numpy::IntoPyArray;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyString};

use crate::arrays::{hold, to_numpy, Held};
use crate::{fff_error, options};

/// A compiled plan loaded for running: `fff.Model(path, threads=None)`.
#[pyclass(name = "Model", module = "fff", frozen)]
pub struct PyModel {
    model: Model,
    path: PathBuf,
}

/// A plan shape as Python sees it: ints for fixed dimensions, names for symbolic ones, None for the
/// output dimensions the compiler could not tell (`?` in the plan).
fn shape_list<'py>(py: Python<'py>, shape: &[Dim]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for d in shape {
        match d {
            Dim::Fixed(n) => list.append(n)?,
            Dim::Sym(s) if s == "?" => list.append(py.None())?,
            Dim::Sym(s) => list.append(s)?,
        }
    }
    Ok(list)
}

impl PyModel {
    fn embed_options(
        &self,
        pooling: Option<&str>,
        normalize: Option<bool>,
        max_length: Option<usize>,
    ) -> PyResult<EmbedOptions> {
        Ok(EmbedOptions {
            pooling: options::pooling(pooling)?,
            normalize,
            max_length,
            ..EmbedOptions::default()
        })
    }
}

#[pymethods]
impl PyModel {
    /// Loads a plan file (`fff.compile` or `fffc compile` writes them), memory-mapped. `threads` is
    /// the number of threads the model's kernels use (at most 1024); `None` or 0 means one per core.
    #[new]
    #[pyo3(signature = (path, threads = None))]
    fn new(py: Python<'_>, path: PathBuf, threads: Option<usize>) -> PyResult<PyModel> {
        let options = Options {
            threads: threads.unwrap_or(0),
            ..Options::default()
        };
        let model = py
            .detach(|| Model::load_with(&path, options))
            .map_err(fff_error)?;
        Ok(PyModel { model, path })
    }

    /// Runs the model on `{input name: array}` (a dict or another mapping) and returns `{output name: array}` in the plan's order.
    ///
    /// An array of the input's dtype that is C-contiguous is read in place, without a copy. Others are
    /// converted first: any integer array to the input's integer type (every value must fit, else
    /// `fff.Error` names the input and the value), any float array (float64, float16) to float32,
    /// bool to bool; a non-contiguous array is copied. A float array for an integer input, or an
    /// integer array for a float input, is refused with `fff.Error` naming the input, its dtype and
    /// the dtype expected. Values that are not arrays go through `numpy.asarray`. The outputs are
    /// NumPy arrays that own the buffers the run wrote (no copy).
    fn run<'py>(&self, inputs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let py = inputs.py();
        let items = inputs
            .cast::<PyMapping>()
            .map_err(|_| PyTypeError::new_err("inputs must be a dict of input name to array"))?
            .items()?;
        let specs = self.model.inputs();
        let mut held: Vec<(String, Held<'py>)> = Vec::with_capacity(items.len());
        for item in items.iter() {
            let (key, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract()?;
            let name: String = key
                .extract()
                .map_err(|_| PyTypeError::new_err("input names must be str"))?;
            let expected = specs.iter().find(|s| s.name == name).map(|s| s.dtype);
            let array = hold(&name, &value, expected)?;
            held.push((name, array));
        }
        let views: Vec<_> = held.iter().map(|(n, h)| (n.as_str(), h.view())).collect();
        let model = &self.model;
        let outputs = py
            .detach(|| model.run_borrowed(&views))
            .map_err(fff_error)?;
        drop(views);
        drop(held);
        let dict = PyDict::new(py);
        for (name, tensor) in outputs {
            dict.set_item(name, to_numpy(py, tensor))?;
        }
        Ok(dict)
    }

    /// One vector per text: float32 `[len(texts), width]`. The texts (str, or bytes in UTF-8) are
    /// tokenised with the plan's tokenizer as one batch, run, and their token vectors pooled:
    /// `pooling` is "cls", "mean", "max" or "none" (for models whose output is one vector per text
    /// already); `normalize` makes every vector of length 1; `max_length` truncates texts to that many
    /// tokens. `None` takes the plan's default (`fff.compile(..., pooling=, normalize=,
    /// max_length=)`, or a sentence-transformers folder's settings).
    #[pyo3(signature = (texts, pooling = None, normalize = None, max_length = None))]
    fn embed<'py>(
        &self,
        texts: &Bound<'py, PyAny>,
        pooling: Option<&str>,
        normalize: Option<bool>,
        max_length: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = texts.py();
        let texts = options::texts(texts)?;
        let options = self.embed_options(pooling, normalize, max_length)?;
        let model = &self.model;
        let vectors = py
            .detach(|| {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                model.embed(&refs, &options)
            })
            .map_err(fff_error)?;
        Ok(vectors.into_pyarray(py).into_any())
    }

    /// The model inputs for `texts` as `embed` makes them: `{input name: array}` in the inputs'
    /// dtypes, padded to the longest text and truncated to `max_length` tokens (the plan's limit by
    /// default). `m.run(m.tokenize(texts))` runs them.
    #[pyo3(signature = (texts, max_length = None))]
    fn tokenize<'py>(
        &self,
        texts: &Bound<'py, PyAny>,
        max_length: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = texts.py();
        let texts = options::texts(texts)?;
        let options = self.embed_options(None, None, max_length)?;
        let model = &self.model;
        let inputs = py
            .detach(|| {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let tokens = model.tokenize(&refs, &options)?;
                model.token_inputs(&tokens, &options)
            })
            .map_err(fff_error)?;
        let dict = PyDict::new(py);
        for (name, tensor) in inputs {
            dict.set_item(name, to_numpy(py, tensor))?;
        }
        Ok(dict)
    }

    /// The model's inputs: `[{"name", "dtype", "shape"}]`, dtype a NumPy name ("int64", "float32",
    /// ...), shape a list of ints (fixed sizes) and strs (symbolic sizes such as "batch").
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for spec in self.model.inputs() {
            let d = PyDict::new(py);
            d.set_item("name", &spec.name)?;
            d.set_item("dtype", spec.dtype.name())?;
            d.set_item("shape", shape_list(py, &spec.shape)?)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// The model's outputs, as `inputs`; "dtype" and "shape" are None where the plan does not record
    /// them (plans written by older compilers, or shapes inference could not tell).
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for out in &self.model.graph().outputs {
            let d = PyDict::new(py);
            d.set_item("name", &out.name)?;
            d.set_item("dtype", out.dtype.map(|t| t.name()))?;
            match &out.shape {
                Some(s) => d.set_item("shape", shape_list(py, s)?)?,
                None => d.set_item("shape", py.None())?,
            }
            list.append(d)?;
        }
        Ok(list)
    }

    /// The plan's text section, or None when it was compiled without a tokenizer: `{"source",
    /// "max_length", "model_limit", "pooling", "normalize", "roles"}`, roles mapping "ids", "mask",
    /// "type_ids" and "positions" to input names (None for a role no input takes).
    #[getter]
    fn text<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(text) = self.model.text_config() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("source", &text.source)?;
        d.set_item("max_length", text.max_length)?;
        d.set_item("model_limit", text.model_limit)?;
        d.set_item("pooling", text.pooling.map(|p| p.name()))?;
        d.set_item("normalize", text.normalize)?;
        let roles = PyDict::new(py);
        roles.set_item("ids", &text.roles.ids)?;
        roles.set_item("mask", &text.roles.mask)?;
        roles.set_item("type_ids", &text.roles.type_ids)?;
        roles.set_item("positions", &text.roles.positions)?;
        d.set_item("roles", roles)?;
        Ok(Some(d))
    }

    /// The number of threads the model's kernels use.
    #[getter]
    fn threads(&self) -> usize {
        self.model.threads()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let path = PyString::new(py, &self.path.to_string_lossy()).repr()?;
        Ok(format!(
            "fff.Model({path}, threads={})",
            self.model.threads()
        ))
    }
}
