//! A run's inputs: checked against the plan's declared names, dtypes and shapes (each symbolic
//! dimension bound to one size across all inputs), then placed where the executor reads them.
//!
//! Models have a few inputs, so lists searched in order beat hashing here (this runs on every call),
//! and nothing is allocated for up to four inputs.

use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::model::shape_text;
use crate::plan::{Dim, PlanInput};
use crate::tensor::{DType, Tensor, TensorView};

/// The inputs of one run, by name.
pub(crate) enum RunInputs<'b, 'v> {
    /// Tensors the run takes over: an op may compute into an input's buffer once nothing else reads it.
    Owned(Vec<(String, Tensor)>),
    /// Views the run reads where they are; an op that could have reused an input's buffer writes a new
    /// one instead.
    Borrowed(&'b [(&'b str, TensorView<'v>)]),
}

/// Inputs given borrowed, with the value each binds.
pub(crate) type BorrowedInputs<'b> = SmallVec<[(usize, TensorView<'b>); 4]>;

/// Name, dtype and shape of one given input.
type Given<'a> = (&'a str, DType, &'a [usize]);

impl RunInputs<'_, '_> {
    /// The elements of all inputs.
    pub fn elements(&self) -> usize {
        match self {
            RunInputs::Owned(v) => v.iter().map(|(_, t)| t.len()).sum(),
            RunInputs::Borrowed(v) => v.iter().map(|(_, t)| t.len()).sum(),
        }
    }

    fn given(&self) -> SmallVec<[Given<'_>; 4]> {
        match self {
            RunInputs::Owned(v) => v
                .iter()
                .map(|(n, t)| (n.as_str(), t.dtype(), t.shape()))
                .collect(),
            RunInputs::Borrowed(v) => v.iter().map(|(n, t)| (*n, t.dtype(), t.shape())).collect(),
        }
    }
}

/// Checks `inputs` against `specs`; owned inputs go into their values' `slots`, borrowed ones are
/// returned. On an error nothing is placed.
pub(crate) fn bind<'b>(
    specs: &[PlanInput],
    inputs: RunInputs<'b, '_>,
    slots: &mut [Option<Tensor>],
) -> Result<BorrowedInputs<'b>> {
    // For each given input, the value it binds.
    let values: SmallVec<[usize; 4]> = {
        let given = inputs.given();
        let at = check(specs, &given)?;
        let mut values: SmallVec<[usize; 4]> = SmallVec::from_elem(0, given.len());
        for (spec, &i) in specs.iter().zip(&at) {
            values[i] = spec.value;
        }
        values
    };
    Ok(match inputs {
        RunInputs::Owned(v) => {
            for ((_, t), &value) in v.into_iter().zip(&values) {
                slots[value] = Some(t);
            }
            SmallVec::new()
        }
        RunInputs::Borrowed(v) => v
            .iter()
            .zip(&values)
            .map(|((_, t), &value)| (value, t.reborrow()))
            .collect(),
    })
}

/// For each spec, the index of the given input that binds it; an error names the first problem.
fn check(specs: &[PlanInput], given: &[Given]) -> Result<SmallVec<[usize; 4]>> {
    for (i, (name, ..)) in given.iter().enumerate() {
        if given[..i].iter().any(|(earlier, ..)| earlier == name) {
            return Err(Error::input(format!("input '{name}' is given twice")));
        }
    }
    let mut at: SmallVec<[usize; 4]> = SmallVec::new();
    for (k, spec) in specs.iter().enumerate() {
        let i = given
            .iter()
            .position(|(name, ..)| *name == spec.name)
            .ok_or_else(|| {
                Error::input(format!(
                    "missing input '{}' ({} {})",
                    spec.name,
                    spec.dtype,
                    shape_text(&spec.shape)
                ))
            })?;
        let (_, dtype, dims) = given[i];
        if dtype != spec.dtype {
            return Err(Error::input(format!(
                "input '{}' is {dtype}, the model expects {}",
                spec.name, spec.dtype
            )));
        }
        if dims.len() != spec.shape.len() {
            return Err(Error::input(format!(
                "input '{}' has rank {} (shape {dims:?}), the model expects rank {} {}",
                spec.name,
                dims.len(),
                spec.shape.len(),
                shape_text(&spec.shape)
            )));
        }
        for (axis, (d, want)) in dims.iter().zip(&spec.shape).enumerate() {
            match want {
                Dim::Fixed(w) if w != d => {
                    return Err(Error::input(format!(
                        "input '{}' axis {axis} is {d}, the model expects {w} {}",
                        spec.name,
                        shape_text(&spec.shape)
                    )))
                }
                Dim::Sym(s) => match bound_before(s, specs, &at, given, k, &dims[..axis]) {
                    Some((bound, by)) if bound != *d => {
                        return Err(Error::input(format!(
                        "input '{}' axis {axis} ({s}) is {d}, but input '{by}' set {s} = {bound}",
                        spec.name
                    )))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        at.push(i);
    }
    if let Some((extra, ..)) = (0..given.len()).find(|i| !at.contains(i)).map(|i| given[i]) {
        let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::input(format!(
            "unknown input '{extra}'; the model's inputs are {known:?}"
        )));
    }
    Ok(at)
}

/// The size that symbol `s` was first given, and by which input: among the specs before spec `k`
/// (bound to `given[at[..]]`), then among the axes `earlier` of spec `k`, being checked.
fn bound_before<'a>(
    s: &str,
    specs: &'a [PlanInput],
    at: &[usize],
    given: &[Given],
    k: usize,
    earlier: &[usize],
) -> Option<(usize, &'a str)> {
    let sym_axis = |shape: &[Dim]| {
        shape
            .iter()
            .position(|d| matches!(d, Dim::Sym(n) if n == s))
    };
    for (done, &i) in specs[..k].iter().zip(at) {
        if let Some(axis) = sym_axis(&done.shape) {
            return Some((given[i].2[axis], &done.name));
        }
    }
    let spec = &specs[k];
    sym_axis(&spec.shape[..earlier.len()]).map(|axis| (earlier[axis], spec.name.as_str()))
}
