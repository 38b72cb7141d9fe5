//! A minimal ONNX graph builder over the protobuf types: inputs, initializers, nodes with attributes,
//! outputs, encoded to bytes. Enough to write any test or benchmark model by hand.

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// An attribute value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
    Tensor(Box<TensorProto>),
}

/// A dimension of a graph input or output.
pub enum D {
    N(i64),
    S(&'static str),
}

pub struct OnnxBuilder {
    graph: GraphProto,
    opsets: Vec<(String, i64)>,
    counter: usize,
}

impl OnnxBuilder {
    /// A model importing the default domain at `opset`.
    pub fn new(opset: i64) -> OnnxBuilder {
        OnnxBuilder {
            graph: GraphProto {
                name: "g".into(),
                ..Default::default()
            },
            opsets: vec![(String::new(), opset)],
            counter: 0,
        }
    }

    /// The default domain's opset.
    pub fn opset(&self) -> i64 {
        self.opsets[0].1
    }

    pub fn with_domain(mut self, domain: &str, version: i64) -> Self {
        self.opsets.push((domain.to_string(), version));
        self
    }

    fn value_info(name: &str, elem: DataType, dims: &[D]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| tensor_shape_proto::Dimension {
                value: Some(match d {
                    D::N(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                    D::S(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
                }),
                ..Default::default()
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn input(&mut self, name: &str, elem: DataType, dims: &[D]) -> String {
        self.graph.input.push(Self::value_info(name, elem, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem: DataType, dims: &[D]) {
        self.graph.output.push(Self::value_info(name, elem, dims));
    }

    /// `name`, or `name_N` if an initializer already has that name.
    fn fresh(&mut self, name: &str) -> String {
        if !self.graph.initializer.iter().any(|t| t.name == name) {
            return name.to_string();
        }
        self.counter += 1;
        format!("{name}_{}", self.counter)
    }

    /// A float32 initializer; returns its name (made unique if taken).
    pub fn weight(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> String {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            data.len(),
            "initializer '{name}' size"
        );
        let name = self.fresh(name);
        self.graph.initializer.push(tensor_f32(&name, dims, data));
        name
    }

    /// An int64 initializer; returns its name (made unique if taken).
    pub fn ints(&mut self, name: &str, dims: &[i64], data: Vec<i64>) -> String {
        let name = self.fresh(name);
        self.graph.initializer.push(tensor_i64(&name, dims, data));
        name
    }

    /// An initializer of any type, built by the caller (e.g. uint8 weights of a quantised model);
    /// returns its name (made unique if taken).
    pub fn initializer(&mut self, mut t: TensorProto) -> String {
        t.name = self.fresh(&t.name);
        let name = t.name.clone();
        self.graph.initializer.push(t);
        name
    }

    /// A node of the default domain with one output, whose name is returned.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node_in("", op, inputs, attrs, 1).remove(0)
    }

    /// A node of any domain with `n_out` outputs.
    pub fn node_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        n_out: usize,
    ) -> Vec<String> {
        self.counter += 1;
        let name = format!("{op}_{}", self.counter);
        let outputs: Vec<String> = (0..n_out).map(|i| format!("{name}_out{i}")).collect();
        let attribute = attrs.into_iter().map(|(k, v)| attr(k, v)).collect();
        self.graph.node.push(NodeProto {
            name,
            op_type: op.into(),
            domain: domain.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            attribute,
            ..Default::default()
        });
        outputs
    }

    /// Renames the value `from` (a node output) to `to`, e.g. to name a graph output.
    pub fn rename(&mut self, from: &str, to: &str) {
        for n in &mut self.graph.node {
            for o in n.output.iter_mut().chain(n.input.iter_mut()) {
                if o == from {
                    *o = to.to_string();
                }
            }
        }
    }

    pub fn build(self) -> ModelProto {
        ModelProto {
            ir_version: 8,
            producer_name: "fff-models".into(),
            opset_import: self
                .opsets
                .into_iter()
                .map(|(domain, version)| OperatorSetIdProto { domain, version })
                .collect(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }

    pub fn to_bytes(self) -> Vec<u8> {
        self.build().encode_to_vec()
    }
}

pub fn tensor_f32(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub fn tensor_i64(name: &str, dims: &[i64], data: Vec<i64>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        int64_data: data,
        ..Default::default()
    }
}

fn attr(name: &str, v: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.into(),
        ..Default::default()
    };
    match v {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = i;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v;
        }
        Attr::Float(f) => {
            a.r#type = AttributeType::Float as i32;
            a.f = f;
        }
        Attr::Str(s) => {
            a.r#type = AttributeType::String as i32;
            a.s = s.as_bytes().to_vec();
        }
        Attr::Tensor(t) => {
            a.r#type = AttributeType::Tensor as i32;
            a.t = Some(*t);
        }
    }
    a
}

pub use tract_onnx::pb::tensor_proto::DataType as Elem;

/// The model with every float initializer that `pick` selects (by name) rounded to the nearest
/// bfloat16 value (ties to even), still stored as float32: the reference that a plan with bf16 weights
/// must reproduce exactly.
pub fn round_initializers_to_bf16(onnx: &[u8], pick: impl Fn(&str) -> bool) -> Vec<u8> {
    let mut model = ModelProto::decode(onnx).expect("a model this crate wrote");
    let round = |v: f32| {
        let b = v.to_bits();
        let lsb = (b >> 16) & 1;
        f32::from_bits(((b + 0x7fff + lsb) >> 16) << 16)
    };
    let graph = model.graph.as_mut().expect("the model has a graph");
    for t in graph.initializer.iter_mut() {
        if t.data_type != DataType::Float as i32 || !pick(&t.name) {
            continue;
        }
        if !t.raw_data.is_empty() {
            let values: Vec<u8> = t
                .raw_data
                .chunks_exact(4)
                .flat_map(|c| round(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
                .collect();
            t.raw_data = values;
        }
        for v in t.float_data.iter_mut() {
            *v = round(*v);
        }
    }
    model.encode_to_vec()
}
