//! Helpers shared by the end-to-end tests: compiling fixtures, making inputs, and the independent
//! references (tract running the original ONNX graph, the fixtures' expected outputs).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fff_models::rng::Rng;
use fff_runtime::plan::Dim;
use fff_runtime::{DType, Model, Tensor};
use ndarray::{ArrayD, IxDyn};
use tract_onnx::prelude::*;

/// Compiles an ONNX file through the library and loads the plan from memory.
pub fn compile(onnx: &Path) -> Model {
    let bytes = std::fs::read(onnx).expect("fixture is readable");
    let plan = fff_compiler::compile_to_plan_bytes(&bytes, &fff_compiler::Options::default())
        .unwrap_or_else(|e| panic!("{}: {e}", onnx.display()));
    Model::from_bytes(&plan).expect("a freshly written plan loads")
}

/// Reads `{"name": nested list}` into flat f64 values and a shape per name.
pub fn read_expected(path: &Path) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let obj = v.as_object().expect("expected outputs are an object");
    obj.iter()
        .map(|(k, v)| {
            let mut shape = vec![];
            let mut cur = v;
            while let Some(a) = cur.as_array() {
                shape.push(a.len());
                match a.first() {
                    Some(x) => cur = x,
                    None => break,
                }
            }
            let mut flat = vec![];
            flatten(v, &mut flat);
            (k.clone(), shape, flat)
        })
        .collect()
}

fn flatten(v: &serde_json::Value, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        other => out.push(other.as_f64().unwrap_or(f64::NAN)),
    }
}

/// Largest absolute difference; panics with context when shapes differ.
pub fn max_abs_diff(what: &str, got: &Tensor, want_shape: &[usize], want: &[f64]) -> f64 {
    assert_eq!(got.shape(), want_shape, "{what}: shape");
    let Tensor::F32(a) = got else {
        panic!("{what}: expected float32 output, got {}", got.dtype())
    };
    a.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// [`max_abs_diff`] against a float32 output of tract.
pub fn max_abs_diff_to(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    let Tensor::F32(w) = want else {
        panic!("{what}: expected a float32 reference, got {}", want.dtype())
    };
    let wv: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    max_abs_diff(what, got, w.shape(), &wv)
}

/// Runs `model` and tract on the ONNX file `onnx` on random inputs at each `(batch, seq, seed)`, and
/// asserts that the first outputs agree within 1e-4.
pub fn first_output_agrees_with_tract(
    name: &str,
    model: &Model,
    onnx: &Path,
    cases: &[(usize, usize, u64)],
) {
    for &(batch, seq, seed) in cases {
        let inputs = random_inputs(model, batch, seq, seed);
        let want = tract_run(onnx, &inputs);
        let out = model.run(inputs).unwrap();
        let d = max_abs_diff_to(name, &out[0].1, &want[0]);
        assert!(d < 1e-4, "{name} at {batch}x{seq}: max abs diff {d}");
    }
}

/// Random inputs for a model at a given batch and sequence length. Token ids stay below `vocab`;
/// attention masks have padding at the end of every second row; token types are 0 or 1.
pub fn random_inputs(model: &Model, batch: usize, seq: usize, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = Rng::new(seed);
    model
        .inputs()
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Sym(s) if s == "batch" => batch,
                    Dim::Sym(_) => seq,
                })
                .collect();
            let n: usize = shape.iter().product();
            let t = match spec.dtype {
                DType::F32 => Tensor::F32(
                    ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|_| rng.normal()).collect())
                        .unwrap(),
                ),
                DType::I64 if spec.name.contains("mask") => {
                    let cols = shape[shape.len() - 1];
                    let v = (0..n)
                        .map(|i| i64::from(!((i / cols) % 2 == 1 && i % cols >= cols.div_ceil(2))))
                        .collect();
                    Tensor::I64(ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap())
                }
                DType::I64 if spec.name.contains("type") => Tensor::I64(
                    ArrayD::from_shape_vec(
                        IxDyn(&shape),
                        (0..n).map(|_| rng.below(2) as i64).collect(),
                    )
                    .unwrap(),
                ),
                DType::I64 => Tensor::I64(
                    ArrayD::from_shape_vec(
                        IxDyn(&shape),
                        (0..n).map(|_| rng.below(100) as i64).collect(),
                    )
                    .unwrap(),
                ),
                other => panic!("no random inputs of {other}"),
            };
            (spec.name.clone(), t)
        })
        .collect()
}

/// Runs the ONNX file with tract (an independent implementation) on the given inputs, in the order of
/// the model's inputs; returns the outputs in the model's output order.
pub fn tract_run(onnx: &Path, inputs: &[(String, Tensor)]) -> Vec<Tensor> {
    let mut model = tract_onnx::onnx()
        .model_for_path(onnx)
        .expect("tract reads the model");
    let mut values = TVec::new();
    for (i, (_, t)) in inputs.iter().enumerate() {
        let tv: TValue = match t {
            Tensor::F32(a) => {
                tract_ndarray::ArrayD::from_shape_vec(a.shape(), a.iter().copied().collect())
                    .unwrap()
                    .into_tvalue()
            }
            Tensor::I64(a) => {
                tract_ndarray::ArrayD::from_shape_vec(a.shape(), a.iter().copied().collect())
                    .unwrap()
                    .into_tvalue()
            }
            other => panic!("no tract input of {}", other.dtype()),
        };
        let fact = InferenceFact::dt_shape(tv.datum_type(), tv.shape());
        model = model.with_input_fact(i, fact).unwrap();
        values.push(tv);
    }
    let runnable = model
        .into_optimized()
        .expect("tract optimises")
        .into_runnable()
        .expect("tract plans");
    let out = runnable.run(values).expect("tract runs");
    out.iter()
        .map(|v| {
            let a = v.to_plain_array_view::<f32>().expect("float outputs");
            Tensor::F32(
                ArrayD::from_shape_vec(IxDyn(a.shape()), a.iter().copied().collect()).unwrap(),
            )
        })
        .collect()
}

/// The path of a workspace binary, next to this test's `deps/` folder in `target/<profile>/`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins --tests` first (the README's test command does this)",
        path.display()
    );
    path
}

/// The smallest cosine similarity between rows (the last axis) of `got` and the reference.
pub fn min_row_cosine(got: &Tensor, shape: &[usize], want: &[f64]) -> f64 {
    assert_eq!(got.shape(), shape);
    let Tensor::F32(a) = got else {
        panic!("float32 output expected")
    };
    let d = *shape.last().unwrap();
    let got: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    got.chunks(d)
        .zip(want.chunks(d))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f64 = x.iter().map(|p| p * p).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|q| q * q).sum::<f64>().sqrt();
            if nx == 0.0 && ny == 0.0 {
                1.0
            } else {
                dot / (nx * ny)
            }
        })
        .fold(1.0, f64::min)
}
