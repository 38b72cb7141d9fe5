//! The quantisation ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
//! QLinearMatMul, and ONNX Runtime's MatMulIntegerToFloat and DynamicQuantizeMatMul), each as a
//! single-node ONNX model compiled and run through the libraries, against the ONNX specification's
//! own examples (its backend test cases) and values worked out by hand: rounding ties to even,
//! saturation at both ends, zero points at the ends of their ranges. Then the bad inputs: each
//! refused with an error naming the node, at compile time where the model tells, at run time
//! otherwise, and through `fffc compile`.

mod common;

use std::process::Command;

use fff_models::onnx::{tensor_f32, Attr, Elem, OnnxBuilder, D};
use fff_runtime::{DType, Model, Tensor};
use ndarray::{ArrayD, IxDyn};
use tract_onnx::pb::TensorProto;

fn proto(name: &str, elem: Elem, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: elem as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn u8_init(name: &str, dims: &[i64], v: &[u8]) -> TensorProto {
    proto(name, Elem::Uint8, dims, v.to_vec())
}

fn i8_init(name: &str, dims: &[i64], v: &[i8]) -> TensorProto {
    proto(name, Elem::Int8, dims, v.iter().map(|&x| x as u8).collect())
}

fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    tensor_f32(name, dims, v.to_vec())
}

fn f32_in(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn u8_in(shape: &[usize], v: &[u8]) -> Tensor {
    Tensor::U8(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn i8_in(shape: &[usize], v: &[i8]) -> Tensor {
    Tensor::I8(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn elem_of(t: &Tensor) -> Elem {
    match t.dtype() {
        DType::F32 => Elem::Float,
        DType::U8 => Elem::Uint8,
        DType::I8 => Elem::Int8,
        DType::I32 => Elem::Int32,
        DType::I64 => Elem::Int64,
        other => panic!("no test input of {other}"),
    }
}

/// One node and what it reads: graph inputs (with the values to run on), initializers, attributes.
struct Single {
    opset: i64,
    domain: &'static str,
    op: &'static str,
    /// The node's inputs by name, in order ("" for an absent optional one).
    ins: Vec<&'static str>,
    attrs: Vec<(&'static str, Attr)>,
    inputs: Vec<(&'static str, Tensor)>,
    inits: Vec<TensorProto>,
    outputs: usize,
}

impl Single {
    fn new(op: &'static str, ins: &[&'static str]) -> Single {
        Single {
            opset: 21,
            domain: "",
            op,
            ins: ins.to_vec(),
            attrs: vec![],
            inputs: vec![],
            inits: vec![],
            outputs: 1,
        }
    }

    fn opset(mut self, opset: i64) -> Self {
        self.opset = opset;
        self
    }

    fn microsoft(mut self) -> Self {
        self.domain = "com.microsoft";
        self
    }

    fn attr(mut self, name: &'static str, a: Attr) -> Self {
        self.attrs.push((name, a));
        self
    }

    fn input(mut self, name: &'static str, t: Tensor) -> Self {
        self.inputs.push((name, t));
        self
    }

    fn init(mut self, t: TensorProto) -> Self {
        self.inits.push(t);
        self
    }

    fn outputs(mut self, n: usize) -> Self {
        self.outputs = n;
        self
    }

    /// The ONNX bytes and the node's name.
    fn bytes(&self) -> (Vec<u8>, String) {
        let mut b = OnnxBuilder::new(self.opset);
        if !self.domain.is_empty() {
            b = b.with_domain(self.domain, 1);
        }
        for (name, t) in &self.inputs {
            let dims: Vec<D> = t.shape().iter().map(|&d| D::N(d as i64)).collect();
            b.input(name, elem_of(t), &dims);
        }
        for t in &self.inits {
            b.initializer(t.clone());
        }
        let attrs = self
            .attrs
            .iter()
            .map(|(k, a)| {
                let a = match a {
                    Attr::Int(i) => Attr::Int(*i),
                    Attr::Ints(v) => Attr::Ints(v.clone()),
                    Attr::Float(f) => Attr::Float(*f),
                    Attr::Str(s) => Attr::Str(s),
                    Attr::Tensor(t) => Attr::Tensor(t.clone()),
                };
                (*k, a)
            })
            .collect();
        let outs = b.node_in(self.domain, self.op, &self.ins, attrs, self.outputs);
        let node = outs[0].trim_end_matches("_out0").to_string();
        for (i, o) in outs.iter().enumerate() {
            let name = format!("y{i}");
            b.rename(o, &name);
            b.output(&name, Elem::Float, &[]);
        }
        (b.to_bytes(), node)
    }

    /// Compiles and runs the model; any error as its message.
    fn run(&self) -> Result<Vec<Tensor>, String> {
        let (bytes, _) = self.bytes();
        let plan = fff_compiler::compile_to_plan_bytes(&bytes, &fff_compiler::Options::default())
            .map_err(|e| e.to_string())?;
        let model = Model::from_bytes(&plan).map_err(|e| e.to_string())?;
        let inputs: Vec<(String, Tensor)> = self
            .inputs
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        let outs = model.run(inputs).map_err(|e| e.to_string())?;
        Ok(outs.into_iter().map(|(_, t)| t).collect())
    }

    fn output(&self) -> Tensor {
        let (_, node) = self.bytes();
        self.run()
            .unwrap_or_else(|e| panic!("{} ({node}): {e}", self.op))
            .remove(0)
    }

    /// Requires an error (from compiling or running) that names the node and mentions `parts`.
    fn refused(&self, parts: &[&str]) -> String {
        let (_, node) = self.bytes();
        let err = match self.run() {
            Ok(outs) => panic!("{node} should fail ({parts:?}), gave {outs:?}"),
            Err(e) => e,
        };
        assert!(err.contains(&node), "the error does not name {node}: {err}");
        for p in parts {
            assert!(err.contains(p), "the error does not mention '{p}': {err}");
        }
        err
    }
}

/// The elements of `t`, which must hold `T`.
fn values<T>(t: &Tensor) -> Vec<T>
where
    Vec<T>: TryFrom<Tensor, Error = fff_runtime::Error>,
{
    Vec::try_from(t.clone()).unwrap_or_else(|e| panic!("{e}"))
}

fn quantize(x: Tensor, scale: TensorProto, zp: Option<TensorProto>) -> Single {
    let ins: &[&str] = if zp.is_some() {
        &["x", "scale", "zp"]
    } else {
        &["x", "scale"]
    };
    let mut s = Single::new("QuantizeLinear", ins).input("x", x).init(scale);
    if let Some(zp) = zp {
        s = s.init(zp);
    }
    s
}

fn dequantize(x: Tensor, scale: TensorProto, zp: Option<TensorProto>) -> Single {
    let mut s = quantize(x, scale, zp);
    s.op = "DequantizeLinear";
    s
}

// ---- QuantizeLinear ----

/// The spec's `quantizelinear` case, at every opset the importer takes it.
#[test]
fn quantize_linear_per_tensor() {
    for opset in [10, 13, 19, 21] {
        let y = quantize(
            f32_in(&[6], &[0.0, 2.0, 3.0, 1000.0, -254.0, -1000.0]),
            f32_init("scale", &[], &[2.0]),
            Some(u8_init("zp", &[], &[128])),
        )
        .opset(opset)
        .output();
        assert_eq!(
            values::<u8>(&y),
            [128, 129, 130, 255, 1, 0],
            "opset {opset}"
        );
    }
}

/// Halves round to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2), then the zero point,
/// then saturation at both ends, for zero points at the ends of uint8 and int8.
#[test]
fn quantize_linear_rounds_ties_to_even_and_saturates() {
    let x = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 300.0, -300.0];
    let run_u8 = |zp: u8| {
        values::<u8>(
            &quantize(
                f32_in(&[8], &x),
                f32_init("scale", &[], &[1.0]),
                Some(u8_init("zp", &[], &[zp])),
            )
            .output(),
        )
    };
    assert_eq!(run_u8(0), [0, 2, 2, 0, 0, 0, 255, 0]);
    assert_eq!(run_u8(255), [255, 255, 255, 255, 253, 253, 255, 0]);
    let run_i8 = |zp: i8| {
        values::<i8>(
            &quantize(
                f32_in(&[8], &x),
                f32_init("scale", &[], &[1.0]),
                Some(i8_init("zp", &[], &[zp])),
            )
            .output(),
        )
    };
    assert_eq!(run_i8(0), [0, 2, 2, 0, -2, -2, 127, -128]);
    assert_eq!(
        run_i8(-128),
        [-128, -126, -126, -128, -128, -128, 127, -128]
    );
    assert_eq!(run_i8(127), [127, 127, 127, 127, 125, 125, 127, -128]);
    // No zero point: uint8 with zero point 0; output_dtype int8 picks int8.
    let y = quantize(f32_in(&[8], &x), f32_init("scale", &[], &[1.0]), None).output();
    assert_eq!(values::<u8>(&y), [0, 2, 2, 0, 0, 0, 255, 0]);
    let y = quantize(f32_in(&[8], &x), f32_init("scale", &[], &[1.0]), None)
        .attr("output_dtype", Attr::Int(Elem::Int8 as i64))
        .output();
    assert_eq!(values::<i8>(&y), [0, 2, 2, 0, -2, -2, 127, -128]);
}

/// The spec's `quantizelinear_axis` case: one scale and zero point per channel (axis 1).
#[test]
fn quantize_linear_per_axis() {
    let x = [
        -162.0, 10.0, -100.0, 232.0, -20.0, -50.0, -76.0, 0.0, 0.0, 252.0, 32.0, -44.0, 245.0,
        -485.0, -960.0, -270.0, -375.0, -470.0,
    ];
    let want = [
        3, 89, 34, 200, 74, 59, 5, 24, 24, 87, 32, 13, 245, 99, 4, 142, 121, 102,
    ];
    for (opset, axis) in [(13, None), (21, Some(1)), (21, Some(-3))] {
        let mut s = quantize(
            f32_in(&[1, 3, 3, 2], &x),
            f32_init("scale", &[3], &[2.0, 4.0, 5.0]),
            Some(u8_init("zp", &[3], &[84, 24, 196])),
        )
        .opset(opset);
        if let Some(a) = axis {
            s = s.attr("axis", Attr::Int(a));
        }
        assert_eq!(
            values::<u8>(&s.output()),
            want,
            "opset {opset}, axis {axis:?}"
        );
    }
}

/// Blocked quantisation (opset 21): the spec's `quantizelinear_blocked_asymmetric` shape, and a
/// last block that is partial (5 columns in blocks of 2: 3 scales per row).
#[test]
fn quantize_linear_blocked() {
    let y = quantize(
        f32_in(
            &[3, 4],
            &[
                6.0, 12.0, 50.0, 5.0, 1.0, 8.0, 4.0, 5.0, 0.0, 20.0, 10.0, 4.0,
            ],
        ),
        f32_init("scale", &[3, 2], &[1.5, 2.5, 3.0, 4.9, 5.1, 6.9]),
        Some(u8_init("zp", &[3, 2], &[0, 1, 1, 0, 2, 3])),
    )
    .attr("axis", Attr::Int(1))
    .attr("block_size", Attr::Int(2))
    .output();
    assert_eq!(values::<u8>(&y), [4, 8, 21, 3, 1, 4, 1, 1, 2, 6, 4, 4]);

    let y = quantize(
        f32_in(
            &[2, 5],
            &[1.0, 2.0, 3.0, 4.0, 5.0, -1.0, -2.0, -3.0, -4.0, -5.0],
        ),
        f32_init("scale", &[2, 3], &[1.0, 2.0, 4.0, 1.0, 2.0, 4.0]),
        Some(i8_init("zp", &[2, 3], &[0, 0, 0, 0, 0, 0])),
    )
    .attr("block_size", Attr::Int(2))
    .output();
    // 5 / 4 = 1.25 -> 1; -3 / 2 = -1.5 -> -2; -5 / 4 = -1.25 -> -1.
    assert_eq!(values::<i8>(&y), [1, 2, 2, 2, 1, -1, -2, -2, -2, -1]);
}

// ---- DequantizeLinear ----

#[test]
fn dequantize_linear_per_tensor() {
    for opset in [10, 13, 19, 21] {
        let y = dequantize(
            u8_in(&[4], &[0, 3, 128, 255]),
            f32_init("scale", &[], &[2.0]),
            Some(u8_init("zp", &[], &[128])),
        )
        .opset(opset)
        .output();
        assert_eq!(
            values::<f32>(&y),
            [-256.0, -250.0, 0.0, 254.0],
            "opset {opset}"
        );
    }
    // int8 with zero points at both ends of the range; int32 with none.
    for (zp, want) in [(-128i8, [0.0, 255.0, 128.0]), (127, [-255.0, 0.0, -127.0])] {
        let y = dequantize(
            i8_in(&[3], &[-128, 127, 0]),
            f32_init("scale", &[], &[1.0]),
            Some(i8_init("zp", &[], &[zp])),
        )
        .output();
        assert_eq!(values::<f32>(&y), want, "zero point {zp}");
    }
    let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1000, 0, 7]).unwrap());
    let y = dequantize(x, f32_init("scale", &[], &[0.5]), None).output();
    assert_eq!(values::<f32>(&y), [-500.0, 0.0, 3.5]);
}

/// The spec's `dequantizelinear_axis` case (the inverse of `quantizelinear_axis`).
#[test]
fn dequantize_linear_per_axis() {
    let x = [
        3, 89, 34, 200, 74, 59, 5, 24, 24, 87, 32, 13, 245, 99, 4, 142, 121, 102,
    ];
    let want = [
        -162.0, 10.0, -100.0, 232.0, -20.0, -50.0, -76.0, 0.0, 0.0, 252.0, 32.0, -44.0, 245.0,
        -485.0, -960.0, -270.0, -375.0, -470.0,
    ];
    let y = dequantize(
        u8_in(&[1, 3, 3, 2], &x),
        f32_init("scale", &[3], &[2.0, 4.0, 5.0]),
        Some(u8_init("zp", &[3], &[84, 24, 196])),
    )
    .opset(13)
    .output();
    assert_eq!(values::<f32>(&y), want);
}

/// Blocked dequantisation, whole blocks and a partial last block, as the ONNX reference's tests.
#[test]
fn dequantize_linear_blocked() {
    let x: Vec<u8> = (0..12).collect();
    let y = dequantize(
        u8_in(&[3, 4], &x),
        f32_init("scale", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        Some(u8_init("zp", &[3, 2], &[0; 6])),
    )
    .attr("axis", Attr::Int(1))
    .attr("block_size", Attr::Int(2))
    .output();
    let want = [0, 1, 4, 6, 12, 15, 24, 28, 40, 45, 60, 66].map(|v| v as f32);
    assert_eq!(values::<f32>(&y), want);

    let x: Vec<u8> = (0..24).collect();
    let y = dequantize(
        u8_in(&[3, 8], &x),
        f32_init(
            "scale",
            &[3, 3],
            &[2.0, 1.0, 3.0, 2.0, 1.0, 3.0, 2.0, 1.0, 3.0],
        ),
        None,
    )
    .attr("block_size", Attr::Int(3))
    .output();
    let want = [
        0, 2, 4, 3, 4, 5, 18, 21, 16, 18, 20, 11, 12, 13, 42, 45, 32, 34, 36, 19, 20, 21, 66, 69,
    ]
    .map(|v| v as f32);
    assert_eq!(values::<f32>(&y), want);
}

// ---- DynamicQuantizeLinear ----

fn dynamic(shape: &[usize], x: &[f32]) -> (Vec<u8>, f32, u8) {
    let outs = Single::new("DynamicQuantizeLinear", &["x"])
        .opset(11)
        .input("x", f32_in(shape, x))
        .outputs(3)
        .run()
        .unwrap();
    (
        values::<u8>(&outs[0]),
        values::<f32>(&outs[1])[0],
        values::<u8>(&outs[2])[0],
    )
}

/// The spec's three `dynamicquantizelinear` cases, and an all-zero input.
#[test]
fn dynamic_quantize_linear() {
    let (y, scale, zp) = dynamic(&[6], &[0.0, 2.0, -3.0, -2.5, 1.34, 0.5]);
    assert_eq!(
        (y.as_slice(), scale, zp),
        (&[153, 255, 0, 26, 221, 179][..], 0.019607844, 153)
    );

    let (y, scale, zp) = dynamic(&[6], &[-1.0, -2.1, -1.3, -2.5, -3.34, -4.0]);
    assert_eq!(
        (y.as_slice(), scale, zp),
        (&[191, 121, 172, 96, 42, 0][..], 0.015686275, 255)
    );

    let x = [
        1.0, 2.1, 1.3, 2.5, 3.34, 4.0, 1.5, 2.6, 3.9, 4.0, 3.0, 2.345,
    ];
    let (y, scale, zp) = dynamic(&[3, 4], &x);
    let want = [64, 134, 83, 159, 213, 255, 96, 166, 249, 255, 191, 149];
    assert_eq!((y.as_slice(), scale, zp), (&want[..], 0.015686275, 0));

    // All zeros: the range is empty; scale 1 and zero point 0, as the ONNX reference defines.
    assert_eq!(dynamic(&[3], &[0.0; 3]), (vec![0, 0, 0], 1.0, 0));
}

// ---- MatMulInteger, QLinearMatMul and the com.microsoft forms ----

/// The spec's `matmulinteger` case, and per-row / per-column zero points.
#[test]
fn matmul_integer() {
    let a = [11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0];
    let b = [1, 4, 2, 5, 3, 6];
    let y = Single::new("MatMulInteger", &["a", "b", "azp", "bzp"])
        .opset(10)
        .input("a", u8_in(&[4, 3], &a))
        .input("b", u8_in(&[3, 2], &b))
        .init(u8_init("azp", &[], &[12]))
        .init(u8_init("bzp", &[], &[0]))
        .output();
    assert_eq!(
        values::<i32>(&y),
        [-38, -83, -44, -98, -50, -113, -56, -128]
    );

    // Per row of A ([M]) and per column of B ([N]), int8 B: worked out by hand.
    let y = Single::new("MatMulInteger", &["a", "b", "azp", "bzp"])
        .input("a", u8_in(&[2, 2], &[255, 0, 1, 2]))
        .input("b", i8_in(&[2, 2], &[-128, 127, 1, -1]))
        .init(u8_init("azp", &[2], &[255, 1]))
        .init(i8_init("bzp", &[2], &[0, 127]))
        .output();
    // Row 0: (0, -255); row 1: (0, 1). Column 0: (-128, 1); column 1: (0, -128).
    assert_eq!(values::<i32>(&y), [-255, 32640, 1, -128]);
}

fn qlinear_matmul(a_shape: &[usize], a: Vec<u8>, b_shape: &[usize], b: Vec<u8>) -> Vec<u8> {
    let y = Single::new(
        "QLinearMatMul",
        &["a", "as", "azp", "b", "bs", "bzp", "ys", "yzp"],
    )
    .input("a", u8_in(a_shape, &a))
    .input("b", u8_in(b_shape, &b))
    .init(f32_init("as", &[], &[0.0066]))
    .init(u8_init("azp", &[], &[113]))
    .init(f32_init("bs", &[], &[0.00705]))
    .init(u8_init("bzp", &[], &[114]))
    .init(f32_init("ys", &[], &[0.0107]))
    .init(u8_init("yzp", &[], &[118]))
    .output();
    values::<u8>(&y)
}

/// The spec's `qlinearmatmul_2D` and `_3D` cases (uint8), through the QDQ decomposition.
#[test]
fn qlinear_matmul_2d_and_3d() {
    let a = vec![208, 236, 0, 238, 3, 214, 255, 29];
    let b = vec![152, 51, 244, 60, 26, 255, 0, 127, 246, 127, 254, 247];
    let want = [168, 115, 255, 1, 66, 151];
    assert_eq!(qlinear_matmul(&[2, 4], a.clone(), &[4, 3], b.clone()), want);
    let a3 = [a.clone(), a].concat();
    let b3 = [b.clone(), b].concat();
    assert_eq!(
        qlinear_matmul(&[2, 2, 4], a3, &[2, 4, 3], b3),
        [want, want].concat()
    );
}

/// MatMulIntegerToFloat and DynamicQuantizeMatMul against the same product computed here in f64
/// from the integer codes: `(A - a_zp)(B - b_zp) * a_scale * b_scale + bias`.
#[test]
fn microsoft_integer_to_float_forms() {
    let a = [3u8, 200, 17, 90, 0, 255];
    let b = [-5i8, 7, 127, -128, 0, 33];
    let (a_zp, b_zp) = (128u8, [1i8, -2]);
    let (a_scale, b_scale) = (0.02f32, [0.5f32, 0.25]);
    let bias = [1.0f32, -1.0];
    let y = Single::new(
        "MatMulIntegerToFloat",
        &["a", "b", "as", "bs", "azp", "bzp", "bias"],
    )
    .microsoft()
    .input("a", u8_in(&[2, 3], &a))
    .init(i8_init("b", &[3, 2], &b))
    .init(f32_init("as", &[], &[a_scale]))
    .init(f32_init("bs", &[2], &b_scale))
    .init(u8_init("azp", &[], &[a_zp]))
    .init(i8_init("bzp", &[2], &b_zp))
    .init(f32_init("bias", &[2], &bias))
    .output();
    let mut want = vec![];
    for i in 0..2 {
        for j in 0..2 {
            let s: i64 = (0..3)
                .map(|p| {
                    (a[i * 3 + p] as i64 - a_zp as i64) * (b[p * 2 + j] as i64 - b_zp[j] as i64)
                })
                .sum();
            want.push(s as f64 * a_scale as f64 * b_scale[j] as f64 + bias[j] as f64);
        }
    }
    for (g, w) in values::<f32>(&y).iter().zip(&want) {
        assert!(
            (*g as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
            "{g} vs {w}"
        );
    }

    // DynamicQuantizeMatMul quantises A as DynamicQuantizeLinear does (spec case 1's values: scale
    // 5/255, zero point 153, codes below), then the same product.
    let x = [0.0f32, 2.0, -3.0, -2.5, 1.34, 0.5];
    let codes = [153i64, 255, 0, 26, 221, 179];
    let y = Single::new("DynamicQuantizeMatMul", &["a", "b", "bs", "bzp"])
        .microsoft()
        .input("a", f32_in(&[2, 3], &x))
        .init(i8_init("b", &[3, 2], &b))
        .init(f32_init("bs", &[2], &b_scale))
        .init(i8_init("bzp", &[2], &b_zp))
        .output();
    let a_scale = 5.0f64 / 255.0;
    let mut want = vec![];
    for i in 0..2 {
        for j in 0..2 {
            let s: i64 = (0..3)
                .map(|p| (codes[i * 3 + p] - 153) * (b[p * 2 + j] as i64 - b_zp[j] as i64))
                .sum();
            want.push(s as f64 * a_scale * b_scale[j] as f64);
        }
    }
    for (g, w) in values::<f32>(&y).iter().zip(&want) {
        assert!(
            (*g as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
            "{g} vs {w}"
        );
    }
}

// ---- data movement and casts on the 8-bit types ----

/// uint8 and int8 values move through Transpose, Reshape, Gather, Concat, Slice, Unsqueeze,
/// Flatten, Expand, Split, Identity and Shape unchanged, and Cast converts to and from them: float toward zero then saturating, NaN to
/// 0, integers saturating.
#[test]
fn data_movement_and_casts_on_8_bit_values() {
    let x = u8_in(&[2, 3], &[0, 1, 2, 253, 254, 255]);
    let t = Single::new("Transpose", &["x"])
        .input("x", x.clone())
        .output();
    assert_eq!(values::<u8>(&t), [0, 253, 1, 254, 2, 255]);
    let c = Single::new("Concat", &["x", "x"])
        .attr("axis", Attr::Int(0))
        .input("x", x.clone())
        .output();
    assert_eq!(
        values::<u8>(&c),
        [0, 1, 2, 253, 254, 255, 0, 1, 2, 253, 254, 255]
    );
    let mut g = Single::new("Gather", &["x", "idx"]).input("x", x.clone());
    g.inits
        .push(fff_models::onnx::tensor_i64("idx", &[2], vec![1, 0]));
    assert_eq!(values::<u8>(&g.output()), [253, 254, 255, 0, 1, 2]);
    let mut r = Single::new("Reshape", &["x", "shape"]).input("x", x.clone());
    r.inits
        .push(fff_models::onnx::tensor_i64("shape", &[1], vec![6]));
    assert_eq!(r.output().shape(), &[6]);
    let f = Single::new("Flatten", &["x"])
        .attr("axis", Attr::Int(0))
        .input("x", i8_in(&[2, 2], &[-128, -1, 0, 127]))
        .output();
    assert_eq!(values::<i8>(&f), [-128, -1, 0, 127]);
    let mut s = Single::new("Slice", &["x", "st", "en"]).input("x", x.clone());
    s.inits
        .push(fff_models::onnx::tensor_i64("st", &[1], vec![1]));
    s.inits
        .push(fff_models::onnx::tensor_i64("en", &[1], vec![2]));
    assert_eq!(values::<u8>(&s.output()), [253, 254, 255]);
    let mut u = Single::new("Unsqueeze", &["x", "ax"]).input("x", x.clone());
    u.inits
        .push(fff_models::onnx::tensor_i64("ax", &[1], vec![0]));
    assert_eq!(u.output().shape(), &[1, 2, 3]);
    let mut e = Single::new("Expand", &["x", "shape"]).input("x", i8_in(&[1, 2], &[-7, 7]));
    e.inits
        .push(fff_models::onnx::tensor_i64("shape", &[2], vec![2, 2]));
    assert_eq!(values::<i8>(&e.output()), [-7, 7, -7, 7]);
    let split = Single::new("Split", &["x"])
        .opset(18)
        .attr("axis", Attr::Int(1))
        .attr("num_outputs", Attr::Int(3))
        .input("x", x.clone())
        .outputs(3)
        .run()
        .unwrap();
    assert_eq!(values::<u8>(&split[2]), [2, 255]);
    let id = Single::new("Identity", &["x"])
        .input("x", x.clone())
        .output();
    assert_eq!(id, x);
    let shape = Single::new("Shape", &["x"]).input("x", x.clone()).output();
    assert_eq!(shape, Tensor::vec_i64(vec![2, 3]));

    let cast = |x: Tensor, to: Elem| {
        Single::new("Cast", &["x"])
            .attr("to", Attr::Int(to as i64))
            .input("x", x)
            .output()
    };
    let floats = f32_in(&[7], &[-1.9, 1.9, 255.7, 300.0, -300.0, f32::NAN, 127.9]);
    assert_eq!(
        values::<u8>(&cast(floats.clone(), Elem::Uint8)),
        [0, 1, 255, 255, 0, 0, 127]
    );
    assert_eq!(
        values::<i8>(&cast(floats, Elem::Int8)),
        [-1, 1, 127, 127, -128, 0, 127]
    );
    let ints =
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[4]), vec![-1000, -1, 200, 1000]).unwrap());
    assert_eq!(
        values::<u8>(&cast(ints.clone(), Elem::Uint8)),
        [0, 0, 200, 255]
    );
    assert_eq!(values::<i8>(&cast(ints, Elem::Int8)), [-128, -1, 127, 127]);
    assert_eq!(
        values::<f32>(&cast(i8_in(&[2], &[-128, 127]), Elem::Float)),
        [-128.0, 127.0]
    );
    assert_eq!(
        values::<u8>(&cast(i8_in(&[2], &[-5, 5]), Elem::Uint8)),
        [0, 5]
    );
    assert_eq!(
        values::<i8>(&cast(u8_in(&[2], &[200, 5]), Elem::Int8)),
        [127, 5]
    );
}

// ---- bad inputs ----

/// Constant scales that are zero, negative or not finite are refused at compile time, naming the node.
#[test]
fn bad_constant_scales_are_refused_naming_the_node() {
    for s in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        quantize(
            f32_in(&[2], &[1.0, 2.0]),
            f32_init("scale", &[], &[s]),
            None,
        )
        .refused(&["QuantizeLinear", "scale"]);
        dequantize(u8_in(&[2], &[1, 2]), f32_init("scale", &[], &[s]), None)
            .refused(&["DequantizeLinear", "scale"]);
    }
    Single::new(
        "QLinearMatMul",
        &["a", "as", "azp", "b", "bs", "bzp", "ys", "yzp"],
    )
    .input("a", u8_in(&[1, 1], &[1]))
    .input("b", u8_in(&[1, 1], &[1]))
    .init(f32_init("as", &[], &[1.0]))
    .init(u8_init("azp", &[], &[0]))
    .init(f32_init("bs", &[], &[1.0]))
    .init(u8_init("bzp", &[], &[0]))
    .init(f32_init("ys", &[], &[0.0]))
    .init(u8_init("yzp", &[], &[0]))
    .refused(&["y_scale"]);
}

/// Zero points of the wrong type or shape, scales that do not fit x per axis or per block.
#[test]
fn zero_points_and_scale_shapes_that_do_not_fit_are_refused() {
    // A DequantizeLinear zero point of another type than x.
    dequantize(
        u8_in(&[2], &[1, 2]),
        f32_init("scale", &[], &[1.0]),
        Some(i8_init("zp", &[], &[0])),
    )
    .refused(&["zero point"]);
    // A zero point whose shape is not the scale's.
    quantize(
        f32_in(&[2, 2], &[1.0; 4]),
        f32_init("scale", &[], &[1.0]),
        Some(u8_init("zp", &[2], &[0, 0])),
    )
    .refused(&["zero point", "shape"]);
    // A per-axis scale whose length is not x's dimension on the axis.
    quantize(
        f32_in(&[2, 3], &[1.0; 6]),
        f32_init("scale", &[2], &[1.0, 1.0]),
        None,
    )
    .refused(&["per-axis", "3"]);
    // Blocks of 2 over 5 columns need 3 scales: 2 and 5 are refused, 3 is taken (above).
    for n in [2, 5] {
        quantize(
            f32_in(&[2, 5], &[1.0; 10]),
            f32_init("scale", &[2, n], &vec![1.0; 2 * n as usize]),
            None,
        )
        .attr("block_size", Attr::Int(2))
        .refused(&["3 scales"]);
    }
    // A block size with a scale of another rank than x.
    dequantize(
        u8_in(&[2, 4], &[0; 8]),
        f32_init("scale", &[2], &[1.0, 1.0]),
        None,
    )
    .attr("block_size", Attr::Int(2))
    .refused(&["rank"]);
    // An int32 x with a zero point other than 0.
    let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1, 2]).unwrap());
    let mut s = dequantize(x, f32_init("scale", &[], &[1.0]), None);
    s.ins.push("zp");
    s.inits
        .push(proto("zp", Elem::Int32, &[], 5i32.to_le_bytes().to_vec()));
    s.refused(&["int32", "zero point"]);
    // MatMulInteger's zero point of another type than its operand.
    Single::new("MatMulInteger", &["a", "b", "azp"])
        .input("a", u8_in(&[1, 1], &[1]))
        .input("b", u8_in(&[1, 1], &[1]))
        .init(i8_init("azp", &[], &[0]))
        .refused(&["zero point"]);
}

/// Types fff does not quantise with are refused by name: an int16 zero point, float8 and int4
/// output types.
#[test]
fn unsupported_quantised_types_are_refused_by_name() {
    let mut s = quantize(
        f32_in(&[2], &[1.0, 2.0]),
        f32_init("scale", &[], &[1.0]),
        None,
    );
    s.ins.push("zp");
    s.inits.push(proto("zp", Elem::Int16, &[], vec![0, 0]));
    s.refused(&["int16"]);
    for (code, name) in [(17, "float8"), (22, "int4"), (5, "int16")] {
        quantize(
            f32_in(&[2], &[1.0, 2.0]),
            f32_init("scale", &[], &[1.0]),
            None,
        )
        .attr("output_dtype", Attr::Int(code))
        .refused(&[name]);
    }
}

/// Float-only ops refuse quantised operands at compile time (the node and the type named), and
/// evaluators refuse them at run time too.
#[test]
fn float_ops_refuse_quantised_operands() {
    Single::new("MatMul", &["a", "b"])
        .input("a", u8_in(&[1, 2], &[1, 2]))
        .input("b", u8_in(&[2, 1], &[1, 2]))
        .refused(&["MatMul", "uint8"]);
    Single::new("Add", &["a", "b"])
        .input("a", i8_in(&[2], &[1, 2]))
        .input("b", i8_in(&[2], &[1, 2]))
        .refused(&["Add", "int8"]);
    Single::new("Softmax", &["a"])
        .input("a", u8_in(&[2], &[1, 2]))
        .refused(&["Softmax", "uint8"]);
    Single::new("Exp", &["a"])
        .input("a", u8_in(&[2], &[1, 2]))
        .refused(&["Exp", "uint8"]);
    // Comparisons take them.
    let eq = Single::new("Equal", &["a", "b"])
        .input("a", u8_in(&[2], &[1, 2]))
        .input("b", u8_in(&[2], &[1, 3]))
        .output();
    assert_eq!(
        eq,
        Tensor::Bool(ArrayD::from_shape_vec(IxDyn(&[2]), vec![true, false]).unwrap())
    );
    // The evaluator refuses on its own (as for a plan written by hand).
    let a = u8_in(&[1, 1], &[1]);
    let r = fff_runtime::opset::eval(
        &fff_runtime::op::Op::MatMul,
        &[Some(a.view()), Some(a.view())],
        1,
    );
    assert!(r.is_err(), "{r:?}");
}

/// A scale computed at run time (here a model input) is checked by the evaluator: the error names
/// the node.
#[test]
fn bad_run_time_scales_are_refused_naming_the_node() {
    for s in [0.0, -2.0, f32::NAN] {
        Single::new("QuantizeLinear", &["x", "scale"])
            .input("x", f32_in(&[2], &[1.0, 2.0]))
            .input("scale", f32_in(&[], &[s]))
            .refused(&["QuantizeLinear", "scale"]);
    }
    Single::new("DequantizeLinear", &["x", "scale"])
        .input("x", u8_in(&[2, 3], &[0; 6]))
        .input("scale", f32_in(&[2], &[1.0, 1.0]))
        .refused(&["per-axis"]);
    let err = Single::new("DynamicQuantizeLinear", &["x"])
        .input("x", f32_in(&[2], &[1.0, f32::NAN]))
        .outputs(3)
        .refused(&["NaN"]);
    assert!(!err.contains("panicked"), "{err}");
}

/// `fffc compile` of a model with a bad constant scale exits with 1 and an `error:` line naming the
/// node.
#[test]
fn fffc_refuses_a_bad_scale_naming_the_node() {
    let (bytes, node) = quantize(
        f32_in(&[2], &[1.0, 2.0]),
        f32_init("scale", &[], &[0.0]),
        None,
    )
    .bytes();
    let dir = std::env::temp_dir().join(format!("fff-quant-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("bad_scale.onnx");
    let plan = dir.join("bad_scale.fff");
    std::fs::write(&onnx, bytes).unwrap();
    let out = Command::new(common::bin("fffc"))
        .args([
            std::ffi::OsStr::new("compile"),
            onnx.as_os_str(),
            std::ffi::OsStr::new("-o"),
            plan.as_os_str(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(stderr.contains(&node), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!plan.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plan with quantised values is format version 2; a float plan stays version 1.
#[test]
fn quantised_plans_are_version_2() {
    let version = |s: &Single| {
        let (bytes, _) = s.bytes();
        let plan =
            fff_compiler::compile_to_plan_bytes(&bytes, &fff_compiler::Options::default()).unwrap();
        u32::from_le_bytes(plan[8..12].try_into().unwrap())
    };
    let q = quantize(
        f32_in(&[2], &[1.0, 2.0]),
        f32_init("scale", &[], &[1.0]),
        None,
    );
    assert_eq!(version(&q), 2);
    let f = Single::new("Relu", &["x"]).input("x", f32_in(&[2], &[1.0, 2.0]));
    assert_eq!(version(&f), 1);
}

/// Constant int8 weights behind a DequantizeLinear are dequantised once, at compile time, when the
/// product they feed has float activations (the `integer-products` rewrite takes them when the
/// activations are quantised too), and the product is right.
#[test]
fn integer_weights_of_float_products_are_dequantised_once() {
    let w = [-3i8, 5, 127, -128, 0, 1];
    let scale = [0.5f32, 0.25];
    let build = |consumer: &'static str| {
        let mut b = OnnxBuilder::new(21);
        let x = b.input("x", Elem::Float, &[D::N(2), D::N(3)]);
        let wq = b.initializer(i8_init("w", &[3, 2], &w));
        let s = b.initializer(f32_init("s", &[2], &scale));
        let wf = b.node("DequantizeLinear", &[&wq, &s], vec![("axis", Attr::Int(1))]);
        let y = if consumer == "MatMul" {
            b.node("MatMul", &[&x, &wf], vec![])
        } else {
            let xt = b.node("Transpose", &[&x], vec![]);
            b.node("Add", &[&xt, &wf], vec![])
        };
        b.rename(&y, "y");
        b.output("y", Elem::Float, &[]);
        b.to_bytes()
    };
    let ops = |bytes: &[u8]| -> Vec<String> {
        let g = fff_compiler::compile_bytes(bytes, &fff_compiler::Options::default()).unwrap();
        g.topo_order()
            .into_iter()
            .filter_map(|n| g.op(n).map(|op| op.name()))
            .collect()
    };
    let matmul = build("MatMul");
    assert!(
        !ops(&matmul).contains(&"DequantizeLinear".to_string()),
        "{:?}",
        ops(&matmul)
    );
    assert!(!ops(&build("Add")).contains(&"DequantizeLinear".to_string()));

    let plan =
        fff_compiler::compile_to_plan_bytes(&matmul, &fff_compiler::Options::default()).unwrap();
    let model = Model::from_bytes(&plan).unwrap();
    let x = [1.0f32, -2.0, 0.5, 3.0, 0.0, -1.0];
    let y = model
        .run(vec![("x".to_string(), f32_in(&[2, 3], &x))])
        .unwrap()
        .remove(0)
        .1;
    let mut want = vec![];
    for i in 0..2 {
        for j in 0..2 {
            want.push(
                (0..3)
                    .map(|p| x[i * 3 + p] * w[p * 2 + j] as f32 * scale[j])
                    .sum::<f32>(),
            );
        }
    }
    assert_eq!(values::<f32>(&y), want);
}
