//! Forms of BERT-family ops that the fixtures do not show (older opsets' attribute forms, decomposed
//! LayerNorm and GELU, the opset-20 `Gelu` op, assorted element-wise ops), each built as a small ONNX
//! model and checked against tract running the same model.

mod common;

use common::{compile, max_abs_diff_to, random_inputs, tract_run};
use fff_models::onnx::{Attr, Elem, OnnxBuilder, D};

/// Compiles the model with fff and compares it with tract on the same model at two shapes.
fn check_against_tract(name: &str, bytes: Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("fff-opsets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, bytes).unwrap();
    let model = compile(&path);
    for (batch, seq, seed) in [(1, 3, 7), (2, 6, 8)] {
        let inputs = random_inputs(&model, batch, seq, seed);
        let want = tract_run(&path, &inputs);
        let got = model.run(inputs).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: output count");
        for ((out, g), w) in got.iter().zip(&want) {
            let d = max_abs_diff_to(&format!("{name}/{out}"), g, w);
            assert!(d < 1e-4, "{name}/{out} at {batch}x{seq}: max abs diff {d}");
        }
    }
}

/// A model with input `x` float [batch, seq, 8] and output `y` produced by `body`.
fn model(opset: i64, body: impl FnOnce(&mut OnnxBuilder, &str) -> String) -> Vec<u8> {
    let mut b = OnnxBuilder::new(opset);
    let x = b.input("x", Elem::Float, &[D::S("batch"), D::S("seq"), D::N(8)]);
    let y = body(&mut b, &x);
    b.rename(&y, "y");
    b.output("y", Elem::Float, &[D::S("batch"), D::S("seq"), D::N(8)]);
    b.to_bytes()
}

fn scalar(b: &mut OnnxBuilder, name: &str, v: f32) -> String {
    b.weight(name, &[], vec![v])
}

#[test]
fn decomposed_layer_norm_with_attribute_axes() {
    for opset in [11, 13, 17, 18] {
        let bytes = model(opset, |b, x| {
            // ReduceMean takes its axes as an attribute before opset 18 and as an input from 18 on.
            let reduce_mean = |b: &mut OnnxBuilder, v: &str| {
                if opset >= 18 {
                    let ax = b.ints(&format!("axes_{v}"), &[1], vec![-1]);
                    b.node("ReduceMean", &[v, &ax], vec![])
                } else {
                    b.node("ReduceMean", &[v], vec![("axes", Attr::Ints(vec![-1]))])
                }
            };
            let mean = reduce_mean(b, x);
            let centred = b.node("Sub", &[x, &mean], vec![]);
            let two = scalar(b, "two", 2.0);
            let sq = b.node("Pow", &[&centred, &two], vec![]);
            let var = reduce_mean(b, &sq);
            let eps = scalar(b, "eps", 1e-5);
            let ve = b.node("Add", &[&var, &eps], vec![]);
            let sd = b.node("Sqrt", &[&ve], vec![]);
            let norm = b.node("Div", &[&centred, &sd], vec![]);
            let gamma = b.weight(
                "gamma",
                &[8],
                (0..8).map(|i| 1.0 + i as f32 * 0.1).collect(),
            );
            let beta = b.weight("beta", &[8], (0..8).map(|i| i as f32 * 0.01).collect());
            let scaled = b.node("Mul", &[&norm, &gamma], vec![]);
            b.node("Add", &[&scaled, &beta], vec![])
        });
        assert_eq!(
            op_names(&bytes),
            ["LayerNorm"],
            "opset {opset}: fused into one op"
        );
        check_against_tract(&format!("layernorm-opset{opset}"), bytes);
    }
}

/// The op names of the compiled graph, in order.
fn op_names(onnx: &[u8]) -> Vec<String> {
    let g = fff_compiler::compile_bytes(onnx, &fff_compiler::Options::default()).unwrap();
    g.topo_order()
        .into_iter()
        .filter_map(|n| g.op(n).map(|op| op.name()))
        .collect()
}

/// The HF-BERT spelling (`Mul(d, d)`, the scale on the left, epsilon on the left of the Add), without a
/// bias, and a form that must stay as it is because the centred value is also read elsewhere.
#[test]
fn decomposed_layer_norm_variants() {
    let fused = model(13, |b, x| {
        let ax = || vec![("axes", Attr::Ints(vec![2]))];
        let mean = b.node("ReduceMean", &[x], ax());
        let centred = b.node("Sub", &[x, &mean], vec![]);
        let sq = b.node("Mul", &[&centred, &centred], vec![]);
        let var = b.node("ReduceMean", &[&sq], ax());
        let eps = scalar(b, "eps", 1e-12);
        let ve = b.node("Add", &[&eps, &var], vec![]);
        let sd = b.node("Sqrt", &[&ve], vec![]);
        let norm = b.node("Div", &[&centred, &sd], vec![]);
        let gamma = b.weight(
            "gamma",
            &[1, 1, 8],
            (0..8).map(|i| 0.5 + i as f32 * 0.2).collect(),
        );
        b.node("Mul", &[&gamma, &norm], vec![])
    });
    assert_eq!(op_names(&fused), ["LayerNorm"]);
    check_against_tract("layernorm-hf", fused);
    let kept = model(13, |b, x| {
        let ax = || vec![("axes", Attr::Ints(vec![-1]))];
        let mean = b.node("ReduceMean", &[x], ax());
        let centred = b.node("Sub", &[x, &mean], vec![]);
        let two = scalar(b, "two", 2.0);
        let sq = b.node("Pow", &[&centred, &two], vec![]);
        let var = b.node("ReduceMean", &[&sq], ax());
        let eps = scalar(b, "eps", 1e-5);
        let ve = b.node("Add", &[&var, &eps], vec![]);
        let sd = b.node("Sqrt", &[&ve], vec![]);
        let norm = b.node("Div", &[&centred, &sd], vec![]);
        b.node("Add", &[&norm, &centred], vec![])
    });
    assert!(!op_names(&kept).iter().any(|n| n == "LayerNorm"));
    check_against_tract("layernorm-kept", kept);
}

fn gelu_tanh_decomposed(b: &mut OnnxBuilder, x: &str) -> String {
    let three = scalar(b, "three", 3.0);
    let cube = b.node("Pow", &[x, &three], vec![]);
    let c = scalar(b, "c", 0.044715);
    let t = b.node("Mul", &[&cube, &c], vec![]);
    let inner = b.node("Add", &[x, &t], vec![]);
    let k = scalar(b, "k", (2.0 / std::f32::consts::PI).sqrt());
    let scaled = b.node("Mul", &[&inner, &k], vec![]);
    let th = b.node("Tanh", &[&scaled], vec![]);
    let one = scalar(b, "one", 1.0);
    let p = b.node("Add", &[&th, &one], vec![]);
    let half = scalar(b, "half", 0.5);
    let hx = b.node("Mul", &[x, &half], vec![]);
    b.node("Mul", &[&hx, &p], vec![])
}

#[test]
fn gelu_tanh_form() {
    check_against_tract("gelu-tanh", model(13, gelu_tanh_decomposed));
}

/// The opset-20 `Gelu` op, against tract running the same GELU written out (erf and tanh forms).
#[test]
fn gelu_op_of_opset_20_matches_its_decomposition() {
    let erf_form = |b: &mut OnnxBuilder, x: &str| {
        let s = scalar(b, "sqrt2", std::f32::consts::SQRT_2);
        let d = b.node("Div", &[x, &s], vec![]);
        let e = b.node("Erf", &[&d], vec![]);
        let one = scalar(b, "one", 1.0);
        let p = b.node("Add", &[&e, &one], vec![]);
        let half = scalar(b, "half", 0.5);
        let hx = b.node("Mul", &[x, &half], vec![]);
        b.node("Mul", &[&hx, &p], vec![])
    };
    for (approx, reference) in [
        ("none", model(13, erf_form)),
        ("tanh", model(13, gelu_tanh_decomposed)),
    ] {
        let dir = std::env::temp_dir().join(format!("fff-gelu20-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (op_path, ref_path) = (
            dir.join(format!("gelu-{approx}.onnx")),
            dir.join(format!("ref-{approx}.onnx")),
        );
        std::fs::write(
            &op_path,
            model(20, |b, x| {
                b.node("Gelu", &[x], vec![("approximate", Attr::Str(approx))])
            }),
        )
        .unwrap();
        std::fs::write(&ref_path, reference).unwrap();
        let m = compile(&op_path);
        let inputs = random_inputs(&m, 2, 5, 11);
        let want = tract_run(&ref_path, &inputs);
        let got = m.run(inputs).unwrap();
        let d = max_abs_diff_to("gelu", &got[0].1, &want[0]);
        assert!(d < 1e-5, "Gelu approximate={approx}: max abs diff {d}");
    }
}

#[test]
fn squeeze_unsqueeze_split_in_attribute_and_input_forms() {
    for opset in [11, 13, 18] {
        let bytes = model(opset, |b, x| {
            let s = if opset >= 13 {
                let ax = b.ints("ax", &[1], vec![1]);
                let u = b.node("Unsqueeze", &[x, &ax], vec![]);
                b.node("Squeeze", &[&u, &ax], vec![])
            } else {
                let u = b.node("Unsqueeze", &[x], vec![("axes", Attr::Ints(vec![1]))]);
                b.node("Squeeze", &[&u], vec![("axes", Attr::Ints(vec![1]))])
            };
            let parts = match opset {
                11 => b.node_in(
                    "",
                    "Split",
                    &[&s],
                    vec![("axis", Attr::Int(-1)), ("split", Attr::Ints(vec![3, 5]))],
                    2,
                ),
                13 => {
                    let sizes = b.ints("sizes", &[2], vec![3, 5]);
                    b.node_in("", "Split", &[&s, &sizes], vec![("axis", Attr::Int(-1))], 2)
                }
                _ => b.node_in(
                    "",
                    "Split",
                    &[&s],
                    vec![("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(2))],
                    2,
                ),
            };
            let back = b.node(
                "Concat",
                &[&parts[1], &parts[0]],
                vec![("axis", Attr::Int(-1))],
            );
            b.node("Neg", &[&back], vec![])
        });
        check_against_tract(&format!("squeeze-split-opset{opset}"), bytes);
    }
}

#[test]
fn softmax_before_and_after_opset_13() {
    for opset in [11, 13] {
        for axis in [1, -1] {
            let bytes = model(opset, |b, x| {
                b.node("Softmax", &[x], vec![("axis", Attr::Int(axis))])
            });
            check_against_tract(&format!("softmax-opset{opset}-axis{axis}"), bytes);
        }
    }
}

#[test]
fn assorted_elementwise_and_reduction_ops() {
    for opset in [11, 13, 17] {
        let bytes = model(opset, |b, x| {
            let lo = scalar(b, "lo", -0.5);
            let hi = scalar(b, "hi", 0.75);
            let clipped = b.node("Clip", &[x, &lo, &hi], vec![]);
            let abs = b.node("Abs", &[x], vec![]);
            let lg = b.node("Log", &[&abs], vec![]);
            let ex = b.node("Exp", &[&clipped], vec![]);
            let sg = b.node("Sigmoid", &[&lg], vec![]);
            let rl = b.node("Relu", &[x], vec![]);
            let mn = b.node("Min", &[&sg, &rl, &ex], vec![]);
            let less = b.node("Less", &[x, &clipped], vec![]);
            let le = b.node("LessOrEqual", &[&clipped, x], vec![]);
            let not = b.node("Not", &[&less], vec![]);
            let both = b.node("And", &[&not, &le], vec![]);
            let picked = b.node("Where", &[&both, &mn, &ex], vec![]);
            let sum = if opset >= 13 {
                let ax = b.ints("sum_axes", &[1], vec![-1]);
                b.node(
                    "ReduceSum",
                    &[&picked, &ax],
                    vec![("keepdims", Attr::Int(1))],
                )
            } else {
                b.node(
                    "ReduceSum",
                    &[&picked],
                    vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
                )
            };
            let mx = b.node("Max", &[&picked, &sum], vec![]);
            b.node("Neg", &[&mx], vec![])
        });
        check_against_tract(&format!("assorted-opset{opset}"), bytes);
    }
}

/// Projections with a bias and a residual, as the linear and residual passes fuse them: the residual
/// of the sum's shape (the input itself, read again afterwards), a broadcast residual, a residual on
/// the left of the Add, and a product that another node also reads (left unfused).
#[test]
fn projections_with_residuals() {
    let w = |b: &mut OnnxBuilder, name: &str, seed: usize| {
        let data = (0..64)
            .map(|i| ((i * 37 + seed) % 17) as f32 * 0.05 - 0.4)
            .collect();
        b.weight(name, &[8, 8], data)
    };
    let bytes = model(17, |b, x| {
        let (w1, w2, w3, w4) = (w(b, "w1", 1), w(b, "w2", 2), w(b, "w3", 3), w(b, "w4", 4));
        let bias = b.weight("bias", &[8], (0..8).map(|i| i as f32 * 0.1).collect());
        let row = b.weight(
            "row",
            &[1, 1, 8],
            (0..8).map(|i| 0.5 - i as f32 * 0.1).collect(),
        );
        // Residual of the same shape: x, which the last Add reads again.
        let p1 = b.node("MatMul", &[x, &w1], vec![]);
        let l1 = b.node("Add", &[&p1, &bias], vec![]);
        let r1 = b.node("Add", &[&l1, x], vec![]);
        // A broadcast residual.
        let p2 = b.node("MatMul", &[&r1, &w2], vec![]);
        let l2 = b.node("Add", &[&bias, &p2], vec![]);
        let r2 = b.node("Add", &[&l2, &row], vec![]);
        // The residual on the left, the product without bias.
        let p3 = b.node("MatMul", &[&r2, &w3], vec![]);
        let r3 = b.node("Add", &[&r1, &p3], vec![]);
        // A biased product read twice.
        let p4 = b.node("MatMul", &[&r3, &w4], vec![]);
        let l4 = b.node("Add", &[&p4, &bias], vec![]);
        let r4 = b.node("Add", &[&l4, &r3], vec![]);
        let twice = b.node("Mul", &[&l4, &r4], vec![]);
        b.node("Add", &[&twice, x], vec![])
    });
    check_against_tract("projections-with-residuals", bytes);
}

/// GELU in the erf form outside a feedforward block, in the groupings exporters write, becomes one
/// `Gelu` op; with a wrong constant it stays as it is.
#[test]
fn decomposed_gelu_forms() {
    // (x / sqrt2 or x * 1/sqrt2, grouping, the half) for each form.
    let forms: [(bool, u8, f32); 4] = [
        (true, 0, 0.5),
        (false, 1, 0.5),
        (true, 2, 0.5),
        (true, 0, 0.6),
    ];
    for (i, &(divide, grouping, half)) in forms.iter().enumerate() {
        let bytes = model(13, |b, x| {
            let inner = if divide {
                let c = scalar(b, "sqrt2", std::f32::consts::SQRT_2);
                b.node("Div", &[x, &c], vec![])
            } else {
                let c = scalar(b, "inv_sqrt2", std::f32::consts::FRAC_1_SQRT_2);
                b.node("Mul", &[&c, x], vec![])
            };
            let e = b.node("Erf", &[&inner], vec![]);
            let one = scalar(b, "one", 1.0);
            let a = b.node("Add", &[&one, &e], vec![]);
            let h = scalar(b, "half", half);
            match grouping {
                // Mul(Mul(x, 0.5), a), as Hugging Face writes it.
                0 => {
                    let hx = b.node("Mul", &[x, &h], vec![]);
                    b.node("Mul", &[&hx, &a], vec![])
                }
                // Mul(Mul(x, a), 0.5), as TorchScript exports torch.nn.functional.gelu.
                1 => {
                    let xa = b.node("Mul", &[x, &a], vec![]);
                    b.node("Mul", &[&xa, &h], vec![])
                }
                // Mul(x, Mul(a, 0.5)).
                _ => {
                    let ah = b.node("Mul", &[&a, &h], vec![]);
                    b.node("Mul", &[x, &ah], vec![])
                }
            }
        });
        let fused = op_names(&bytes) == ["Gelu"];
        assert_eq!(fused, half == 0.5, "form {i}: {:?}", op_names(&bytes));
        check_against_tract(&format!("gelu-form{i}"), bytes);
    }
}

/// Slice before opset 10 takes starts, ends and axes as attributes (and has no steps); from opset 10
/// they are inputs. Both forms, with negative and clamped bounds, against tract.
#[test]
fn slice_in_attribute_and_input_forms() {
    for opset in [9, 11] {
        let bytes = model(opset, |b, x| {
            // The last axis split in two overlapping slices, joined back to 8 features.
            let slice = |b: &mut OnnxBuilder, starts: i64, ends: i64, tag: &str| {
                if opset < 10 {
                    b.node(
                        "Slice",
                        &[x],
                        vec![
                            ("starts", Attr::Ints(vec![starts])),
                            ("ends", Attr::Ints(vec![ends])),
                            // Slice-1 takes no negative axes.
                            ("axes", Attr::Ints(vec![2])),
                        ],
                    )
                } else {
                    let s = b.ints(&format!("starts_{tag}"), &[1], vec![starts]);
                    let e = b.ints(&format!("ends_{tag}"), &[1], vec![ends]);
                    let a = b.ints(&format!("axes_{tag}"), &[1], vec![-1]);
                    b.node("Slice", &[x, &s, &e, &a], vec![])
                }
            };
            let head = slice(b, 0, 5, "head");
            let tail = slice(b, -3, i64::MAX, "tail");
            let joined = b.node("Concat", &[&tail, &head], vec![("axis", Attr::Int(-1))]);
            b.node("Neg", &[&joined], vec![])
        });
        check_against_tract(&format!("slice-opset{opset}"), bytes);
    }
}
