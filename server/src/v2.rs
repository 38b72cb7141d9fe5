//! Open Inference Protocol v2 (KServe's REST API) requests and responses, with the binary tensor
//! data extension: a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
//! little-endian bytes of the tensors that carry `parameters.binary_data_size`, in order.

use std::io::Write;

use fff_runtime::model::Model;
use fff_runtime::ndarray::{ArrayD, IxDyn};
use fff_runtime::plan::{Dim, PlanInput};
use fff_runtime::text::Pooling;
use fff_runtime::{DType, Tensor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A request the server refuses, with the message its `{"error": ...}` body carries (400).
pub type BadRequest = String;

/// The element types of the protocol this server reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    Bool,
    U8,
    U16,
    U32,
    I8,
    I16,
    I32,
    I64,
    F32,
    Bf16,
    Bytes,
}

impl WireType {
    pub fn parse(name: &str) -> Option<WireType> {
        Some(match name {
            "BOOL" => WireType::Bool,
            "UINT8" => WireType::U8,
            "UINT16" => WireType::U16,
            "UINT32" => WireType::U32,
            "INT8" => WireType::I8,
            "INT16" => WireType::I16,
            "INT32" => WireType::I32,
            "INT64" => WireType::I64,
            "FP32" => WireType::F32,
            "BF16" => WireType::Bf16,
            "BYTES" => WireType::Bytes,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            WireType::Bool => "BOOL",
            WireType::U8 => "UINT8",
            WireType::U16 => "UINT16",
            WireType::U32 => "UINT32",
            WireType::I8 => "INT8",
            WireType::I16 => "INT16",
            WireType::I32 => "INT32",
            WireType::I64 => "INT64",
            WireType::F32 => "FP32",
            WireType::Bf16 => "BF16",
            WireType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in binary data (BYTES elements have their own lengths).
    fn size(self) -> usize {
        match self {
            WireType::Bool | WireType::U8 | WireType::I8 => 1,
            WireType::U16 | WireType::I16 | WireType::Bf16 => 2,
            WireType::U32 | WireType::I32 | WireType::F32 => 4,
            WireType::I64 => 8,
            WireType::Bytes => 0,
        }
    }

    /// The range of values an integer type holds.
    fn range(self) -> (i64, i64) {
        match self {
            WireType::U8 => (0, u8::MAX as i64),
            WireType::U16 => (0, u16::MAX as i64),
            WireType::U32 => (0, u32::MAX as i64),
            WireType::I8 => (i8::MIN as i64, i8::MAX as i64),
            WireType::I16 => (i16::MIN as i64, i16::MAX as i64),
            WireType::I32 => (i32::MIN as i64, i32::MAX as i64),
            _ => (i64::MIN, i64::MAX),
        }
    }
}

/// The protocol's name for an element type.
pub fn datatype(dtype: DType) -> &'static str {
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

/// A shape as the protocol's metadata gives it: -1 for sizes fixed only at run time.
pub fn shape_json(shape: &[Dim]) -> Value {
    Value::Array(
        shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Value::from(*n),
                Dim::Sym(_) => Value::from(-1),
            })
            .collect(),
    )
}

/// A v2 request. Keys the protocol does not define (`model_name`, `model_version`, which KServe's
/// client sends) are ignored, as the protocol's extensions expect.
#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// What a request asks the model to compute.
pub enum Payload {
    /// Tensors, one per model input, in the model's input order.
    Tensors(Vec<(String, Tensor)>),
    /// Texts to embed (one BYTES input, for a plan with a tokenizer).
    Texts {
        texts: Vec<String>,
        pooling: Option<Pooling>,
        normalize: Option<bool>,
    },
}

/// A parsed inference request.
pub struct Request {
    pub id: Option<String>,
    pub payload: Payload,
    /// The outputs to answer with, by name, each with whether it is sent as binary data; `None`:
    /// every output, binary if `binary_default`.
    pub outputs: Option<Vec<(String, Option<bool>)>>,
    /// `parameters.binary_data_output` of the request.
    pub binary_default: bool,
}

fn param_bool(
    params: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<bool>, BadRequest> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "{at}parameters.{key} must be true or false, not {other}"
        )),
    }
}

/// Parses a request: `body` is the whole body; `header_len` the value of the
/// `Inference-Header-Content-Length` header, when the request has one.
pub fn parse(body: &[u8], header_len: Option<usize>, model: &Model) -> Result<Request, BadRequest> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: RequestJson =
        serde_json::from_slice(json).map_err(|e| format!("malformed request JSON: {e}"))?;
    let binary_default = param_bool(&req.parameters, "binary_data_output", "")?.unwrap_or(false);
    let specs = model.inputs();
    let has_text = model.text_config().is_some();
    let text_request = req.inputs.len() == 1 && req.inputs[0].datatype == "BYTES";

    // Each input's elements, as the wire gives them, with the binary part cut off in input order.
    let mut raw = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        let at = format!("input '{}': ", input.name);
        let wire = WireType::parse(&input.datatype)
            .ok_or_else(|| format!("{at}unsupported datatype '{}'", input.datatype))?;
        let shape: Vec<usize> = input.shape.iter().map(|&d| d as usize).collect();
        let count = fff_runtime::tensor::checked_len(&shape).map_err(|e| format!("{at}{e}"))?;
        let size = match input.parameters.get("binary_data_size") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| format!("{at}binary_data_size must be a byte count, not {v}"))?
                    as usize,
            ),
        };
        let values = match size {
            Some(n) => {
                if input.data.is_some() {
                    return Err(format!("{at}has both data and binary_data_size"));
                }
                if n > binary.len() {
                    return Err(format!(
                        "{at}binary_data_size is {n} but only {} bytes of binary data are left",
                        binary.len()
                    ));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                if wire != WireType::Bytes && Some(n) != count.checked_mul(wire.size()) {
                    return Err(format!(
                        "{at}binary_data_size is {n} bytes, but {} of shape {shape:?} takes {}",
                        input.datatype,
                        count * wire.size()
                    ));
                }
                Values::from_binary(wire, mine, count).map_err(|e| format!("{at}{e}"))?
            }
            None => {
                let data = input
                    .data
                    .as_ref()
                    .ok_or_else(|| format!("{at}has neither data nor binary_data_size"))?;
                let mut leaves = Vec::with_capacity(count);
                flatten(data, &mut leaves);
                if leaves.len() != count {
                    return Err(format!(
                        "{at}data has {} elements but shape {shape:?} holds {count}",
                        leaves.len()
                    ));
                }
                Values::from_json(wire, &leaves).map_err(|e| format!("{at}{e}"))?
            }
        };
        raw.push((input, wire, shape, values));
    }
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes of binary data follow the JSON that no input's binary_data_size claims",
            binary.len()
        ));
    }

    let outputs = match &req.outputs {
        None => None,
        Some(list) => {
            let names: Vec<String> = if text_request {
                vec!["embedding".to_string()]
            } else {
                model.output_names().iter().map(|s| s.to_string()).collect()
            };
            let mut chosen = Vec::new();
            for o in list {
                if !names.contains(&o.name) {
                    return Err(format!(
                        "the model has no output '{}' (its outputs: {})",
                        o.name,
                        names.join(", ")
                    ));
                }
                let at = format!("output '{}': ", o.name);
                chosen.push((
                    o.name.clone(),
                    param_bool(&o.parameters, "binary_data", &at)?,
                ));
            }
            Some(chosen)
        }
    };

    let payload = if text_request {
        if !has_text {
            return Err(
                "a BYTES input asks for text, but this model has no tokenizer: send token ids"
                    .to_string(),
            );
        }
        let (_, _, _, values) = raw.pop().expect("one input");
        let Values::Bytes(items) = values else {
            unreachable!("BYTES inputs give bytes")
        };
        let mut texts = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            texts.push(
                String::from_utf8(item)
                    .map_err(|e| format!("element {i} of the BYTES input is not UTF-8: {e}"))?,
            );
        }
        let pooling = match req.parameters.get("pooling") {
            None => None,
            Some(Value::String(s)) => Some(
                s.parse::<Pooling>()
                    .map_err(|e| format!("parameters.pooling: {e}"))?,
            ),
            Some(other) => return Err(format!("parameters.pooling must be a string, not {other}")),
        };
        let normalize = param_bool(&req.parameters, "normalize", "")?;
        Payload::Texts {
            texts,
            pooling,
            normalize,
        }
    } else {
        let mut tensors = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut found = raw.iter().filter(|(i, ..)| i.name == spec.name);
            let Some((_, wire, shape, values)) = found.next() else {
                return Err(format!(
                    "the request has no input '{}' ({} {})",
                    spec.name,
                    datatype(spec.dtype),
                    fff_runtime::model::shape_text(&spec.shape)
                ));
            };
            if found.next().is_some() {
                return Err(format!("the input '{}' is given twice", spec.name));
            }
            check_shape(spec, shape)?;
            let tensor = values
                .to_tensor(*wire, spec.dtype, shape)
                .map_err(|e| format!("input '{}': {e}", spec.name))?;
            tensors.push((spec.name.clone(), tensor));
        }
        if let Some((i, ..)) = raw
            .iter()
            .find(|(i, ..)| !specs.iter().any(|s| s.name == i.name))
        {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "the model has no input '{}' (its inputs: {})",
                i.name,
                names.join(", ")
            ));
        }
        Payload::Tensors(tensors)
    };
    Ok(Request {
        id: req.id,
        payload,
        outputs,
        binary_default,
    })
}

fn check_shape(spec: &PlanInput, shape: &[usize]) -> Result<(), BadRequest> {
    let fits = shape.len() == spec.shape.len()
        && spec.shape.iter().zip(shape).all(|(d, &n)| match d {
            Dim::Fixed(f) => *f == n,
            Dim::Sym(_) => true,
        });
    if fits {
        Ok(())
    } else {
        Err(format!(
            "input '{}' has shape {shape:?}; the model takes {}",
            spec.name,
            fff_runtime::model::shape_text(&spec.shape)
        ))
    }
}

/// The leaves of `data`, flat or nested lists, in row-major order.
fn flatten<'a>(data: &'a Value, out: &mut Vec<&'a Value>) {
    match data {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        leaf => out.push(leaf),
    }
}

/// A request input's elements before they take the model's element type.
enum Values {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    fn from_json(wire: WireType, leaves: &[&Value]) -> Result<Values, String> {
        let bad = |i: usize, v: &Value, what: &str| format!("element {i} is {v}, not {what}");
        Ok(match wire {
            WireType::F32 => Values::F32(
                leaves
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::Number(n) => n
                            .as_f64()
                            .map(|x| x as f32)
                            .ok_or_else(|| bad(i, v, "a number")),
                        Value::Null => Ok(f32::NAN),
                        _ => Err(bad(i, v, "a number")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            WireType::Bf16 => {
                return Err("BF16 is accepted only as binary data".to_string());
            }
            WireType::Bool => Values::Bool(
                leaves
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, v, "true or false")))
                    .collect::<Result<_, _>>()?,
            ),
            WireType::Bytes => Values::Bytes(
                leaves
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::String(s) => Ok(s.as_bytes().to_vec()),
                        _ => Err(bad(i, v, "a string")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                let (lo, hi) = wire.range();
                Values::Int(
                    leaves
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_i64()
                                .filter(|x| (lo..=hi).contains(x))
                                .ok_or_else(|| bad(i, v, "an integer in the datatype's range"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
        })
    }

    fn from_binary(wire: WireType, bytes: &[u8], count: usize) -> Result<Values, String> {
        Ok(match wire {
            WireType::F32 => Values::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            WireType::Bf16 => Values::Bf16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            WireType::Bool => {
                if let Some(b) = bytes.iter().find(|&&b| b > 1) {
                    return Err(format!("BOOL data holds the byte {b}, not 0 or 1"));
                }
                Values::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            WireType::Bytes => {
                let mut items = Vec::with_capacity(count);
                let mut rest = bytes;
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err("BYTES data ends inside an element's 4-byte length".into());
                    }
                    let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                    rest = &rest[4..];
                    if n > rest.len() {
                        return Err(format!(
                            "BYTES element {} says {n} bytes but only {} are left",
                            items.len(),
                            rest.len()
                        ));
                    }
                    items.push(rest[..n].to_vec());
                    rest = &rest[n..];
                }
                if items.len() != count {
                    return Err(format!(
                        "BYTES data holds {} elements but the shape holds {count}",
                        items.len()
                    ));
                }
                Values::Bytes(items)
            }
            WireType::U8 => Values::Int(bytes.iter().map(|&b| b as i64).collect()),
            WireType::I8 => Values::Int(bytes.iter().map(|&b| b as i8 as i64).collect()),
            WireType::U16 => Values::Int(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            ),
            WireType::I16 => Values::Int(
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            ),
            WireType::U32 => Values::Int(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            WireType::I32 => Values::Int(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            WireType::I64 => Values::Int(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
        })
    }

    /// The tensor of the model's element type `dtype`: integers of any width convert to the model's
    /// integer type when every value fits; other types must match.
    fn to_tensor(&self, wire: WireType, dtype: DType, shape: &[usize]) -> Result<Tensor, String> {
        fn array<T>(shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>, String> {
            ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| e.to_string())
        }
        Ok(match (self, dtype) {
            (Values::F32(v), DType::F32) => Tensor::F32(array(shape, v.clone())?),
            (Values::Bf16(v), DType::BF16) => Tensor::BF16(array(
                shape,
                v.iter().map(|&b| fff_runtime::tensor::Bf16(b)).collect(),
            )?),
            (Values::Bool(v), DType::Bool) => Tensor::Bool(array(shape, v.clone())?),
            (Values::Int(v), DType::I64) => Tensor::I64(array(shape, v.clone())?),
            (Values::Int(v), DType::I32) => Tensor::I32(array(shape, narrow(v)?)?),
            (Values::Int(v), DType::I8) => Tensor::I8(array(shape, narrow(v)?)?),
            (Values::Int(v), DType::U8) => Tensor::U8(array(shape, narrow(v)?)?),
            _ => {
                return Err(format!(
                    "datatype {} given where the model takes {}",
                    wire.name(),
                    datatype(dtype)
                ))
            }
        })
    }
}

/// Integers in a narrower type, each checked to fit.
fn narrow<T: TryFrom<i64> + std::fmt::Display>(v: &[i64]) -> Result<Vec<T>, String> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            T::try_from(x).map_err(|_| {
                format!(
                    "element {i} is {x}, which does not fit the model's {}",
                    std::any::type_name::<T>()
                )
            })
        })
        .collect()
}

/// A response: the body, and the length of its JSON part when binary data follows it.
pub struct Response {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

/// Writes the response for `outputs` (already filtered and ordered); `binary[i]` says whether
/// output `i` goes as binary data.
pub fn write_response(
    model_name: &str,
    id: Option<&str>,
    outputs: &[(String, Tensor)],
    binary: &[bool],
) -> Response {
    let mut json = Vec::with_capacity(256);
    json.extend_from_slice(b"{");
    if let Some(id) = id {
        json.extend_from_slice(b"\"id\":");
        serde_json::to_writer(&mut json, id).expect("writing to a Vec cannot fail");
        json.push(b',');
    }
    json.extend_from_slice(b"\"model_name\":");
    serde_json::to_writer(&mut json, model_name).expect("writing to a Vec cannot fail");
    json.extend_from_slice(b",\"model_version\":\"1\",\"outputs\":[");
    let mut tail = Vec::new();
    for (i, (name, t)) in outputs.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(b"{\"name\":");
        serde_json::to_writer(&mut json, name).expect("writing to a Vec cannot fail");
        write!(
            json,
            ",\"datatype\":\"{}\",\"shape\":[",
            datatype(t.dtype())
        )
        .unwrap();
        for (k, d) in t.shape().iter().enumerate() {
            if k > 0 {
                json.push(b',');
            }
            write!(json, "{d}").unwrap();
        }
        json.push(b']');
        if binary[i] {
            let bytes = t.to_le_bytes();
            write!(
                json,
                ",\"parameters\":{{\"binary_data_size\":{}}}}}",
                bytes.len()
            )
            .unwrap();
            tail.extend_from_slice(&bytes);
        } else {
            json.extend_from_slice(b",\"data\":");
            write_data(&mut json, t);
            json.push(b'}');
        }
    }
    json.extend_from_slice(b"]}");
    if binary.iter().any(|&b| b) {
        let json_len = json.len();
        json.extend_from_slice(&tail);
        Response {
            body: json,
            json_len: Some(json_len),
        }
    } else {
        Response {
            body: json,
            json_len: None,
        }
    }
}

/// A tensor's elements as one flat JSON list (NaN and infinities as `null`).
fn write_data(out: &mut Vec<u8>, t: &Tensor) {
    fn list<T>(
        out: &mut Vec<u8>,
        items: impl Iterator<Item = T>,
        mut f: impl FnMut(&mut Vec<u8>, T),
    ) {
        out.push(b'[');
        for (i, x) in items.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            f(out, x);
        }
        out.push(b']');
    }
    let float = |out: &mut Vec<u8>, x: f32| {
        if x.is_finite() {
            serde_json::to_writer(&mut *out, &x).expect("writing to a Vec cannot fail");
        } else {
            out.extend_from_slice(b"null");
        }
    };
    match t {
        Tensor::F32(a) => list(out, a.iter(), |o, &x| float(o, x)),
        Tensor::BF16(a) => list(out, a.iter(), |o, x| float(o, x.to_f32())),
        Tensor::I64(a) => list(out, a.iter(), |o, x| write!(o, "{x}").unwrap()),
        Tensor::I32(a) => list(out, a.iter(), |o, x| write!(o, "{x}").unwrap()),
        Tensor::I8(a) => list(out, a.iter(), |o, x| write!(o, "{x}").unwrap()),
        Tensor::U8(a) => list(out, a.iter(), |o, x| write!(o, "{x}").unwrap()),
        Tensor::Bool(a) => list(out, a.iter(), |o, &x| {
            o.extend_from_slice(if x { b"true" } else { b"false" })
        }),
    }
}
