//! Inputs and outputs as JSON, in two forms:
//!
//! - **Plain**: `{"x": [[1.0, 2.0], [3.0, 4.0]], "mask": [true, false]}`, one nested list per tensor (a
//!   bare number or boolean for a rank-0 tensor). The shape is the nesting; the element type is the one
//!   the model declares for the input.
//! - **V2**: an [Open Inference Protocol v2](https://github.com/kserve/open-inference-protocol) request,
//!   `{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}`,
//!   with `data` flat or nested (row-major either way). Keys other than `inputs` (`id`, `parameters`,
//!   `outputs`, ...) are ignored.
//!
//! Outputs are written in the form the inputs came in ([`write_outputs`]). JSON has no NaN or infinity:
//! such float32 elements are written as `null`, and a `null` float32 input element is read as NaN.
//! Float32 elements are written with the fewest digits that read back to the same `f32`.
//!
//! Parsing builds tensors of the declared element types; whether every input is present and has the
//! declared rank and sizes is checked by [`Model::run`](crate::Model::run).

use std::io::Write;

use ndarray::IxDyn;
use serde_json::{Number, Value};

use crate::error::{Error, Result};
use crate::plan::PlanInput;
use crate::tensor::{checked_len, from_vec, Bf16, DType, Tensor};

/// Which JSON form a request came in, and so which form the response takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonStyle {
    /// `{"name": nested list, ...}`.
    Plain,
    /// Open Inference Protocol v2: `{"inputs": [{"name", "shape", "datatype", "data"}, ...]}`.
    V2,
}

mod form;
mod plain_stream;
mod text_request;
mod v2_stream;

pub use text_request::{looks_like_text_request, parse_text_request};

/// Parses a JSON request into named tensors typed as `specs` (the model's inputs) declare, and reports
/// which form it was in. Fails on malformed JSON, an input the model does not have, ragged lists,
/// elements that do not fit the declared type, and (v2) a datatype other than the declared one or a
/// `data` length other than the product of `shape`. Plain-form inputs are read straight into typed
/// buffers (see [`read_inputs_file`]).
pub fn parse_inputs(text: &str, specs: &[PlanInput]) -> Result<(Vec<(String, Tensor)>, JsonStyle)> {
    parse_with(|| Ok(serde_json::Deserializer::from_str(text)), specs)
}

/// [`parse_inputs`] on a JSON file, read as a stream (twice: once to tell the form, once to read it).
/// Tensors are read straight into buffers of their element type, so a request takes about the memory
/// of its tensors (a buffer grows by doubling, fallibly: one that cannot grow is an error, not an
/// abort); only a v2 entry whose `data` comes before its `name` or `datatype` is read as a JSON tree.
pub fn read_inputs_file(
    path: &std::path::Path,
    specs: &[PlanInput],
) -> Result<(Vec<(String, Tensor)>, JsonStyle)> {
    let open = || {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("cannot read input file {}", path.display()), e))?;
        Ok(serde_json::Deserializer::from_reader(
            std::io::BufReader::with_capacity(1 << 16, file),
        ))
    };
    parse_with(open, specs)
}

/// Reads a request from the deserializers `open` makes, each over the same text.
fn parse_with<'de, R: serde_json::de::Read<'de>>(
    open: impl Fn() -> Result<serde_json::Deserializer<R>>,
    specs: &[PlanInput],
) -> Result<(Vec<(String, Tensor)>, JsonStyle)> {
    match form::detect(&mut open()?, specs)? {
        form::Form::NotObject(kind) => Err(Error::input(format!(
            "the input JSON is {kind}; expected an object mapping input names to nested lists, or an Open \
             Inference Protocol v2 request {{\"inputs\": [...]}}"
        ))),
        form::Form::Plain => Ok((plain_stream::read(&mut open()?, specs)?, JsonStyle::Plain)),
        form::Form::V2 => Ok((v2_stream::read(&mut open()?, specs)?, JsonStyle::V2)),
    }
}

/// A JSON syntax error, or the I/O error under it.
fn json_error(e: serde_json::Error) -> Error {
    if e.is_io() {
        Error::io("cannot read the JSON", e.into())
    } else {
        Error::input(format!("malformed JSON: {e}"))
    }
}

fn find_spec<'a>(name: &str, specs: &'a [PlanInput]) -> Result<&'a PlanInput> {
    specs.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        Error::input(format!(
            "unknown input '{name}'; the model's inputs are {known:?}"
        ))
    })
}

/// The checks of a v2 entry before its data, in the order of their messages: its name, the input it
/// names, datatype, and shape; returns the name, the input, the shape and its element count. `data`
/// must be present.
fn v2_header<'s>(
    position: usize,
    entry: &Value,
    specs: &'s [PlanInput],
) -> Result<(String, &'s PlanInput, Vec<usize>, usize)> {
    let field = |key: &str| {
        entry
            .get(key)
            .ok_or_else(|| Error::input(format!("inputs[{position}] has no \"{key}\"")))
    };
    let name = field("name")?
        .as_str()
        .ok_or_else(|| Error::input(format!("inputs[{position}].name is not a string")))?
        .to_string();
    let spec = find_spec(&name, specs)?;

    let datatype = field("datatype")?
        .as_str()
        .ok_or_else(|| Error::input(format!("input '{name}': \"datatype\" is not a string")))?;
    let want = v2_datatype(spec.dtype);
    if datatype != want {
        let supported = if [DType::F32, DType::I64, DType::I32, DType::Bool]
            .iter()
            .any(|&d| v2_datatype(d) == datatype)
        {
            ""
        } else {
            " (not a datatype fff supports)"
        };
        return Err(Error::input(format!(
            "input '{name}' is {datatype}{supported}, the model expects {} ({want})",
            spec.dtype
        )));
    }

    let shape_value = field("shape")?;
    let shape: Vec<usize> = shape_value
        .as_array()
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        })
        .ok_or_else(|| {
            Error::input(format!(
                "input '{name}': \"shape\" is {shape_value}, not a list of non-negative integers"
            ))
        })?;
    let count = checked_len(&shape)
        .map_err(|_| Error::input(format!("input '{name}': shape {shape:?} is too large")))?;

    if entry.get("data").is_none() {
        return Err(Error::input(format!("inputs[{position}] has no \"data\"")));
    }
    Ok((name, spec, shape, count))
}

/// A v2 request entry: `{"name", "shape", "datatype", "data"}`.
fn parse_v2_entry(position: usize, entry: &Value, specs: &[PlanInput]) -> Result<(String, Tensor)> {
    let (name, spec, shape, count) = v2_header(position, entry, specs)?;
    let data = entry
        .get("data")
        .ok_or_else(|| Error::input(format!("inputs[{position}] has no \"data\"")))?;
    let mut leaves = Vec::new();
    flatten(data, &mut leaves);
    if leaves.len() != count {
        return Err(Error::input(format!(
            "input '{name}' has {} data elements, but its shape {shape:?} holds {count}",
            leaves.len()
        )));
    }
    let tensor = build(&name, spec.dtype, &shape, &leaves, |i| {
        format!(" data[{i}]")
    })?;
    Ok((name, tensor))
}

/// Appends the non-list values of a (possibly nested) list in order; a non-list is one leaf.
fn flatten<'v>(value: &'v Value, out: &mut Vec<&'v Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        leaf => out.push(leaf),
    }
}

/// The v2 name of an element type.
fn v2_datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::Bool => "BOOL",
        DType::BF16 => "BF16",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
    }
}

/// A tensor from leaves whose count matches `shape`; `at(i)` names leaf `i` in error messages (` element
/// [1, 0]`, or nothing for a scalar).
fn build(
    name: &str,
    dtype: DType,
    shape: &[usize],
    leaves: &[&Value],
    at: impl Fn(usize) -> String,
) -> Result<Tensor> {
    fn convert<T>(leaves: &[&Value], f: impl Fn(usize, &Value) -> Result<T>) -> Result<Vec<T>> {
        leaves.iter().enumerate().map(|(i, v)| f(i, v)).collect()
    }
    let bad = |i: usize, v: &Value, why: &str| {
        Error::input(format!(
            "input '{name}'{} is {}{why}; the model expects {dtype}",
            at(i),
            describe(v)
        ))
    };
    let s = IxDyn(shape);
    let tensor = match dtype {
        DType::F32 => Tensor::F32(from_vec(
            s,
            convert(leaves, |i, v| match v {
                Value::Null => Ok(f32::NAN),
                Value::Number(n) => {
                    let x = n.as_f64().ok_or_else(|| bad(i, v, ""))? as f32;
                    if x.is_infinite() {
                        return Err(bad(i, v, ", out of float32 range"));
                    }
                    Ok(x)
                }
                _ => Err(bad(i, v, "")),
            })?,
        )),
        DType::I64 => Tensor::I64(from_vec(
            s,
            convert(leaves, |i, v| match v {
                Value::Number(n) => integer(n).map_err(|why| bad(i, v, why)),
                _ => Err(bad(i, v, "")),
            })?,
        )),
        DType::I32 => Tensor::I32(from_vec(
            s,
            convert(leaves, |i, v| match v {
                Value::Number(n) => {
                    let x = integer(n).map_err(|why| bad(i, v, why))?;
                    i32::try_from(x).map_err(|_| bad(i, v, ", out of int32 range"))
                }
                _ => Err(bad(i, v, "")),
            })?,
        )),
        DType::Bool => Tensor::Bool(from_vec(
            s,
            convert(leaves, |i, v| match v {
                Value::Bool(b) => Ok(*b),
                Value::Number(n) => match integer(n) {
                    Ok(0) => Ok(false),
                    Ok(1) => Ok(true),
                    _ => Err(bad(i, v, ", not true, false, 0 or 1")),
                },
                _ => Err(bad(i, v, "")),
            })?,
        )),
        DType::BF16 => Tensor::BF16(from_vec(
            s,
            convert(leaves, |i, v| match v {
                Value::Null => Ok(Bf16::from_f32(f32::NAN)),
                Value::Number(n) => Ok(Bf16::from_f32(
                    n.as_f64().ok_or_else(|| bad(i, v, ""))? as f32
                )),
                _ => Err(bad(i, v, "")),
            })?,
        )),
        DType::I8 => Tensor::I8(from_vec(
            s,
            convert(leaves, |i, v| match v {
                Value::Number(n) => {
                    let x = integer(n).map_err(|why| bad(i, v, why))?;
                    i8::try_from(x).map_err(|_| bad(i, v, ", out of int8 range"))
                }
                _ => Err(bad(i, v, "")),
            })?,
        )),
        DType::U8 => Tensor::U8(from_vec(
            s,
            convert(leaves, |i, v| match v {
                Value::Number(n) => {
                    let x = integer(n).map_err(|why| bad(i, v, why))?;
                    u8::try_from(x).map_err(|_| bad(i, v, ", out of uint8 range"))
                }
                _ => Err(bad(i, v, "")),
            })?,
        )),
    };
    Ok(tensor)
}

/// A JSON number as an i64 if it is an integer: written as one, or as a float with no fractional part
/// (`3.0`, `1e3`) small enough (at most 2^53 in magnitude) that the float holds it exactly. The error
/// says why not, for a message.
fn integer(n: &Number) -> Result<i64, &'static str> {
    if let Some(x) = n.as_i64() {
        return Ok(x);
    }
    if n.is_u64() {
        return Err(", out of int64 range");
    }
    let f = n.as_f64().ok_or("")?;
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.fract() != 0.0 {
        Err(", not an integer")
    } else if f.abs() > EXACT {
        Err(", a float too large to be an exact integer")
    } else {
        Ok(f as i64)
    }
}

/// `[1, 0, 2]`.
fn format_index(index: &[usize]) -> String {
    format!("{index:?}")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value for an error message: the literal for scalars, the kind for anything bigger.
fn describe(v: &Value) -> String {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::String(s) if s.len() <= 20 => format!("the string {v}"),
        other => kind(other).to_string(),
    }
}

/// Writes outputs as JSON in `style`, keeping their order: plain `{"name": nested list, ...}` (a bare
/// scalar for rank 0), or a v2 response `{"outputs": [{"name", "shape", "datatype", "data"}, ...]}` with
/// flat `data`. Float32 NaN and infinities are written as `null`. The text is compact, on one line.
pub fn write_outputs(outputs: &[(String, Tensor)], style: JsonStyle) -> String {
    let mut out = Vec::new();
    match style {
        JsonStyle::Plain => {
            out.push(b'{');
            for (i, (name, t)) in outputs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(&mut out, name);
                out.push(b':');
                let mut elements = Elements::new(t);
                write_nested(&mut out, t.shape(), &mut elements);
            }
            out.push(b'}');
        }
        JsonStyle::V2 => {
            out.extend_from_slice(b"{\"outputs\":[");
            for (i, (name, t)) in outputs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"name\":");
                write_string(&mut out, name);
                out.extend_from_slice(b",\"shape\":");
                write_list(&mut out, t.shape().len(), |out, i| {
                    write_int(out, t.shape()[i])
                });
                out.extend_from_slice(b",\"datatype\":\"");
                out.extend_from_slice(v2_datatype(t.dtype()).as_bytes());
                out.extend_from_slice(b"\",\"data\":");
                let mut elements = Elements::new(t);
                write_list(&mut out, t.len(), |out, _| elements.write_next(out));
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
    }
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// The elements of a tensor in row-major order, each written as a JSON value.
enum Elements<'a> {
    F32(ndarray::iter::Iter<'a, f32, IxDyn>),
    I64(ndarray::iter::Iter<'a, i64, IxDyn>),
    I32(ndarray::iter::Iter<'a, i32, IxDyn>),
    Bool(ndarray::iter::Iter<'a, bool, IxDyn>),
    BF16(ndarray::iter::Iter<'a, Bf16, IxDyn>),
    I8(ndarray::iter::Iter<'a, i8, IxDyn>),
    U8(ndarray::iter::Iter<'a, u8, IxDyn>),
}

impl<'a> Elements<'a> {
    fn new(t: &'a Tensor) -> Elements<'a> {
        match t {
            Tensor::F32(a) => Elements::F32(a.iter()),
            Tensor::I64(a) => Elements::I64(a.iter()),
            Tensor::I32(a) => Elements::I32(a.iter()),
            Tensor::Bool(a) => Elements::Bool(a.iter()),
            Tensor::BF16(a) => Elements::BF16(a.iter()),
            Tensor::I8(a) => Elements::I8(a.iter()),
            Tensor::U8(a) => Elements::U8(a.iter()),
        }
    }

    fn write_next(&mut self, out: &mut Vec<u8>) {
        match self {
            Elements::F32(_) | Elements::BF16(_) => {
                let x = match self {
                    Elements::F32(it) => *it.next().expect("element count matches the shape"),
                    Elements::BF16(it) => it.next().expect("element count matches").to_f32(),
                    _ => unreachable!("matched above"),
                };
                if x.is_finite() {
                    // serde_json writes the shortest text that reads back as the same f32 (`0.1`, `1.0`).
                    serde_json::to_writer(&mut *out, &x).expect("writing to a Vec cannot fail");
                } else {
                    out.extend_from_slice(b"null");
                }
            }
            Elements::I64(it) => {
                write_int(out, *it.next().expect("element count matches the shape"))
            }
            Elements::I32(it) => {
                write_int(out, *it.next().expect("element count matches the shape"))
            }
            Elements::I8(it) => {
                write_int(out, *it.next().expect("element count matches the shape"))
            }
            Elements::U8(it) => {
                write_int(out, *it.next().expect("element count matches the shape"))
            }
            Elements::Bool(it) => {
                let b = *it.next().expect("element count matches the shape");
                out.extend_from_slice(if b { b"true" } else { b"false" });
            }
        }
    }
}

/// Writes the elements as lists nested as `shape` says (a bare element for rank 0).
fn write_nested(out: &mut Vec<u8>, shape: &[usize], elements: &mut Elements) {
    match shape.split_first() {
        None => elements.write_next(out),
        Some((&n, inner)) => write_list(out, n, |out, _| write_nested(out, inner, elements)),
    }
}

fn write_list(out: &mut Vec<u8>, n: usize, mut item: impl FnMut(&mut Vec<u8>, usize)) {
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        item(out, i);
    }
    out.push(b']');
}

fn write_int(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    write!(out, "{v}").expect("writing to a Vec cannot fail");
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Dim;
    use ndarray::{arr0, arr1, arr2, ArrayD};

    fn spec(name: &str, dtype: DType, shape: &[&str]) -> PlanInput {
        let shape = shape
            .iter()
            .map(|d| {
                d.parse()
                    .map(Dim::Fixed)
                    .unwrap_or_else(|_| Dim::Sym(d.to_string()))
            })
            .collect();
        PlanInput {
            name: name.to_string(),
            dtype,
            shape,
            value: 0,
        }
    }

    fn specs() -> Vec<PlanInput> {
        vec![
            spec("x", DType::F32, &["batch", "2"]),
            spec("ids", DType::I64, &["batch"]),
            spec("pos", DType::I32, &["batch"]),
            spec("mask", DType::Bool, &["batch"]),
            spec("scale", DType::F32, &[]),
        ]
    }

    fn sorted(mut v: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn input_error(text: &str) -> String {
        match parse_inputs(text, &specs()) {
            Err(Error::Input(msg)) => msg,
            Err(other) => panic!("expected an input error, got {other:?}"),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn plain_inputs_take_dtype_from_the_model_and_shape_from_the_nesting() {
        let text = r#"{"x": [[1.5, -2], [0.1, 3e2]], "ids": [7, -9007199254740993, 2.0],
                       "pos": [2147483647, -2147483648], "mask": [true, 0, 1], "scale": 0.25}"#;
        let (tensors, style) = parse_inputs(text, &specs()).unwrap();
        assert_eq!(style, JsonStyle::Plain);
        let expected = vec![
            (
                "ids".to_string(),
                Tensor::I64(arr1(&[7, -9007199254740993, 2]).into_dyn()),
            ),
            (
                "mask".to_string(),
                Tensor::Bool(arr1(&[true, false, true]).into_dyn()),
            ),
            (
                "pos".to_string(),
                Tensor::I32(arr1(&[2147483647, -2147483648]).into_dyn()),
            ),
            ("scale".to_string(), Tensor::F32(arr0(0.25).into_dyn())),
            (
                "x".to_string(),
                Tensor::F32(arr2(&[[1.5, -2.0], [0.1, 300.0]]).into_dyn()),
            ),
        ];
        assert_eq!(sorted(tensors), expected);
    }

    #[test]
    fn plain_outputs_keep_their_order_and_nesting() {
        let outputs = vec![
            (
                "y".to_string(),
                Tensor::F32(arr2(&[[1.0, 0.1], [-2.5, 1e-7]]).into_dyn()),
            ),
            (
                "n".to_string(),
                Tensor::I64(arr1(&[-3, 9223372036854775807]).into_dyn()),
            ),
            ("s".to_string(), Tensor::I32(arr0(4).into_dyn())),
            (
                "b".to_string(),
                Tensor::Bool(arr1(&[false, true]).into_dyn()),
            ),
            ("e".to_string(), Tensor::F32(ArrayD::zeros(IxDyn(&[2, 0])))),
            (
                "bad".to_string(),
                Tensor::F32(arr1(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]).into_dyn()),
            ),
            (
                "quote\"d".to_string(),
                Tensor::F32(arr1(&[16777216.0, 3.4028235e38]).into_dyn()),
            ),
        ];
        let text = write_outputs(&outputs, JsonStyle::Plain);
        assert_eq!(
            text,
            r#"{"y":[[1.0,0.1],[-2.5,1e-7]],"n":[-3,9223372036854775807],"s":4,"b":[false,true],"e":[[],[]],"bad":[null,null,null],"quote\"d":[16777216.0,3.4028235e+38]}"#
        );
    }

    #[test]
    fn plain_round_trip() {
        let specs = specs();
        let text = r#"{"x":[[1.0,0.1],[0.3333333,-7e-12]],"ids":[1,-2],"mask":[true,false],"pos":[5,6],"scale":2.5}"#;
        let (tensors, style) = parse_inputs(text, &specs).unwrap();
        // Written back in the order of the (alphabetical) parse, so compare against that order.
        assert_eq!(
            write_outputs(&tensors, style),
            r#"{"ids":[1,-2],"mask":[true,false],"pos":[5,6],"scale":2.5,"x":[[1.0,0.1],[0.3333333,-7e-12]]}"#
        );
    }

    #[test]
    fn null_float_reads_as_nan() {
        let (tensors, _) = parse_inputs(r#"{"scale": null}"#, &specs()).unwrap();
        let Tensor::F32(a) = &tensors[0].1 else {
            panic!("expected float32")
        };
        assert!(a.iter().next().unwrap().is_nan());
    }

    #[test]
    fn v2_round_trip() {
        let text = r#"{"id": "42", "parameters": {}, "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, -0.1, 4]},
            {"name": "mask", "shape": [3], "datatype": "BOOL", "data": [true, false, 1]},
            {"name": "scale", "shape": [], "datatype": "FP32", "data": [0.5]},
            {"name": "ids", "shape": [1], "datatype": "INT64", "data": [-4]}
        ], "outputs": [{"name": "ignored"}]}"#;
        let (tensors, style) = parse_inputs(text, &specs()).unwrap();
        assert_eq!(style, JsonStyle::V2);
        let expected = vec![
            (
                "x".to_string(),
                Tensor::F32(arr2(&[[1.0, 2.5], [-0.1, 4.0]]).into_dyn()),
            ),
            (
                "mask".to_string(),
                Tensor::Bool(arr1(&[true, false, true]).into_dyn()),
            ),
            ("scale".to_string(), Tensor::F32(arr0(0.5).into_dyn())),
            ("ids".to_string(), Tensor::I64(arr1(&[-4]).into_dyn())),
        ];
        assert_eq!(tensors, expected);
        assert_eq!(
            write_outputs(&tensors, style),
            concat!(
                r#"{"outputs":["#,
                r#"{"name":"x","shape":[2,2],"datatype":"FP32","data":[1.0,2.5,-0.1,4.0]},"#,
                r#"{"name":"mask","shape":[3],"datatype":"BOOL","data":[true,false,true]},"#,
                r#"{"name":"scale","shape":[],"datatype":"FP32","data":[0.5]},"#,
                r#"{"name":"ids","shape":[1],"datatype":"INT64","data":[-4]}"#,
                r#"]}"#
            )
        );
    }

    #[test]
    fn v2_nested_data_is_flattened() {
        let text = r#"{"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32",
                                   "data": [[1, 2], [3, 4], [5, 6]]},
                                  {"name": "pos", "shape": [2], "datatype": "INT32", "data": [[7], [8]]}]}"#;
        let (tensors, style) = parse_inputs(text, &specs()).unwrap();
        assert_eq!(style, JsonStyle::V2);
        let expected = vec![
            (
                "x".to_string(),
                Tensor::F32(arr2(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_dyn()),
            ),
            ("pos".to_string(), Tensor::I32(arr1(&[7, 8]).into_dyn())),
        ];
        assert_eq!(tensors, expected);
    }

    #[test]
    fn v2_fields_in_any_order_read_alike() {
        let typed = r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [[1, null]]}]}"#;
        let tree = r#"{"inputs": [{"data": [[1, null]], "shape": [1, 2], "datatype": "FP32", "name": "x"}]}"#;
        let (a, _) = parse_inputs(typed, &specs()).unwrap();
        let (b, _) = parse_inputs(tree, &specs()).unwrap();
        assert_eq!(
            write_outputs(&a, JsonStyle::V2),
            write_outputs(&b, JsonStyle::V2)
        );
        assert_eq!(
            input_error(
                r#"{"inputs": [{"data": [1, "a"], "name": "ids", "datatype": "INT64", "shape": [2]}]}"#
            ),
            input_error(
                r#"{"inputs": [{"name": "ids", "datatype": "INT64", "shape": [2], "data": [1, "a"]}]}"#
            ),
        );
    }

    #[test]
    fn v2_outputs_write_i32_and_nan() {
        let outputs = vec![
            (
                "p".to_string(),
                Tensor::I32(arr2(&[[1, 2], [3, -4]]).into_dyn()),
            ),
            ("f".to_string(), Tensor::F32(arr0(f32::NAN).into_dyn())),
        ];
        assert_eq!(
            write_outputs(&outputs, JsonStyle::V2),
            r#"{"outputs":[{"name":"p","shape":[2,2],"datatype":"INT32","data":[1,2,3,-4]},{"name":"f","shape":[],"datatype":"FP32","data":[null]}]}"#
        );
    }

    #[test]
    fn ragged_lists_are_rejected() {
        assert_eq!(
            input_error(r#"{"x": [[1, 2], [3]]}"#),
            "input 'x' is ragged: entry [1] is a list of 1 elements, but the first entries make it a list of 2 \
             elements (shape [2, 2])"
        );
        assert_eq!(
            input_error(r#"{"x": [[1, 2], 3]}"#),
            "input 'x' is ragged: entry [1] is a number, but the first entries make it a list of 2 elements \
             (shape [2, 2])"
        );
        assert_eq!(
            input_error(r#"{"x": [1, [2, 3]]}"#),
            "input 'x' is ragged: entry [1] is a list of 2 elements, but the first entries make it a single \
             element (shape [2])"
        );
    }

    #[test]
    fn floats_for_integers_are_rejected() {
        assert_eq!(
            input_error(r#"{"ids": [1, 2.5]}"#),
            "input 'ids' element [1] is 2.5, not an integer; the model expects int64"
        );
        assert_eq!(
            input_error(r#"{"pos": [[1], [2147483648]]}"#),
            "input 'pos' element [1, 0] is 2147483648, out of int32 range; the model expects int32"
        );
        assert_eq!(
            input_error(r#"{"ids": [9223372036854775808]}"#),
            "input 'ids' element [0] is 9223372036854775808, out of int64 range; the model expects int64"
        );
        assert_eq!(
            input_error(r#"{"ids": [1e17]}"#),
            "input 'ids' element [0] is 1e+17, a float too large to be an exact integer; the model expects int64"
        );
        assert_eq!(
            input_error(
                r#"{"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, 0.5]}]}"#
            ),
            "input 'ids' data[1] is 0.5, not an integer; the model expects int64"
        );
    }

    #[test]
    fn wrong_element_kinds_are_rejected() {
        assert_eq!(
            input_error(r#"{"x": [["a", 1]]}"#),
            "input 'x' element [0, 0] is the string \"a\"; the model expects float32"
        );
        assert_eq!(
            input_error(r#"{"mask": [2]}"#),
            "input 'mask' element [0] is 2, not true, false, 0 or 1; the model expects bool"
        );
        assert_eq!(
            input_error(r#"{"scale": 1e39}"#),
            "input 'scale' is 1e+39, out of float32 range; the model expects float32"
        );
        assert_eq!(
            input_error(r#"{"ids": true}"#),
            "input 'ids' is true; the model expects int64"
        );
        assert_eq!(
            input_error(r#"{"ids": [{}]}"#),
            "input 'ids' element [0] is an object; the model expects int64"
        );
    }

    #[test]
    fn unknown_inputs_are_named() {
        assert_eq!(
            input_error(r#"{"y": [1]}"#),
            r#"unknown input 'y'; the model's inputs are ["x", "ids", "pos", "mask", "scale"]"#
        );
        assert_eq!(
            input_error(
                r#"{"inputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1]}]}"#
            ),
            r#"unknown input 'y'; the model's inputs are ["x", "ids", "pos", "mask", "scale"]"#
        );
    }

    #[test]
    fn v2_datatype_must_match_the_model() {
        assert_eq!(
            input_error(
                r#"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}"#
            ),
            "input 'x' is INT64, the model expects float32 (FP32)"
        );
        assert_eq!(
            input_error(
                r#"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}"#
            ),
            "input 'x' is FP64 (not a datatype fff supports), the model expects float32 (FP32)"
        );
    }

    #[test]
    fn v2_data_count_must_match_the_shape() {
        assert_eq!(
            input_error(
                r#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}"#
            ),
            "input 'x' has 3 data elements, but its shape [2, 2] holds 4"
        );
        assert_eq!(
            input_error(
                r#"{"inputs": [{"name": "x", "shape": [2, -1], "datatype": "FP32", "data": [1]}]}"#
            ),
            "input 'x': \"shape\" is [2,-1], not a list of non-negative integers"
        );
        assert_eq!(
            input_error(r#"{"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}"#),
            "inputs[0] has no \"shape\""
        );
    }

    #[test]
    fn malformed_json_and_non_objects_are_rejected() {
        assert_eq!(
            input_error("{\"x\": [1, 2,\n ]}"),
            "malformed JSON: trailing comma at line 2 column 2"
        );
        assert_eq!(
            input_error("[1, 2]"),
            "the input JSON is a list; expected an object mapping input names to nested lists, or an Open \
             Inference Protocol v2 request {\"inputs\": [...]}"
        );
    }

    #[test]
    fn an_input_named_inputs_is_plain_when_not_a_list_of_objects() {
        let specs = vec![spec("inputs", DType::I64, &["n"])];
        let (tensors, style) = parse_inputs(r#"{"inputs": []}"#, &specs).unwrap();
        assert_eq!(style, JsonStyle::Plain);
        assert_eq!(
            tensors,
            vec![(
                "inputs".to_string(),
                Tensor::I64(ArrayD::zeros(IxDyn(&[0])))
            )]
        );
        let (_, style) = parse_inputs(r#"{"inputs": [1, 2]}"#, &specs).unwrap();
        assert_eq!(style, JsonStyle::Plain);
    }
}
