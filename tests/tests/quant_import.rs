//! Models quantised before import (ONNX Runtime's `quantize_dynamic`, `quantize_static` in QDQ form,
//! `QLinearMatMul`, ONNX Runtime's fused `MatMulIntegerToFloat`/`DynamicQuantizeMatMul`): each agrees
//! with ONNX Runtime's outputs on the same file, the integer products run as `IntegerLinear`, and
//! that lowering changes nothing in the dynamic form (bit for bit) and only float32 summation error in
//! QDQ, against the same graph evaluated op by op as the ONNX spec defines the ops.

mod common;

use std::process::Command;

use common::{bin, min_row_cosine, random_inputs, read_expected};
use fff_compiler::passes::{run_steps, Kind, Step, PIPELINE};
use fff_compiler::Options;
use fff_models::fixtures;
use fff_runtime::io::parse_inputs;
use fff_runtime::op::Op;
use fff_runtime::{Model, Tensor};

/// The smallest cosine between rows (the last axis) of `got` and `want`, and the largest difference.
fn agreement(got: &Tensor, want: &[f64]) -> (f64, f64) {
    let Tensor::F32(a) = got else {
        panic!("float32 output expected")
    };
    let max_abs = a
        .iter()
        .zip(want)
        .map(|(&x, y)| (x as f64 - y).abs())
        .fold(0.0, f64::max);
    (min_row_cosine(got, a.shape(), want), max_abs)
}

/// Plans compiled by the whole pipeline, or by the pipeline without `integer-products` (every
/// quantisation op then runs as the runtime evaluates it, op by op).
fn compile(name: &'static str, lowered: bool) -> Model {
    let onnx = fixtures::get(name).onnx;
    let mut g = fff_compiler::import::import_path(&onnx).unwrap();
    let steps: Vec<Step> = PIPELINE
        .iter()
        .filter(|s| lowered || s.name != "integer-products")
        .map(|s| Step {
            name: s.name,
            kind: match s.kind {
                Kind::Rewrite(run) => Kind::Rewrite(run),
                Kind::Lowering { run, enabled } => Kind::Lowering { run, enabled },
            },
        })
        .collect();
    run_steps(&steps, &mut g, &Options::default(), &mut |_, _| {}).unwrap();
    let (graph, weights) = fff_compiler::plan_writer::to_plan(&g).unwrap();
    Model::from_bytes(&fff_runtime::plan::encode(&graph, &weights)).unwrap()
}

fn integer_linears(m: &Model) -> usize {
    m.graph()
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::IntegerLinear { .. }))
        .count()
}

/// How many IntegerLinear ops each fixture's products become: every one with int8 weights of zero
/// point 0 (each encoder layer's six projections, and the pooler's where it has one); none where
/// the weights have zero points (uint8 weights, or QLinearMatMul's per-column zero points).
fn expected_lowered(name: &str) -> usize {
    match name {
        "dense-encoder-tiny-qdyn-u8" | "qlinear-matmul-mlp" | "qlinear-matmul-mlp-op21" => 0,
        // Dynamic quantisation also takes the pooler (and a classifier) whose Gemm QDQ leaves float.
        "bert-tiny-qdyn" | "bert-tiny-qdyn-pc" | "bert-tiny-qdyn-ortopt" => 13,
        "hf-bert-relu-cls-qdyn-ortopt" => 14,
        _ => 12,
    }
}

#[test]
fn quantised_fixtures_agree_with_onnx_runtime() {
    for &name in fixtures::QUANTISED {
        let f = fixtures::get(name);
        let model = compile(name, true);
        let lowered = integer_linears(&model);
        assert_eq!(lowered, expected_lowered(name), "{name}: IntegerLinear ops");
        let text = std::fs::read_to_string(&f.input).unwrap();
        let (inputs, _) = parse_inputs(&text, model.inputs()).unwrap();
        let outputs = model.run(inputs).unwrap();
        for (out, shape, want) in read_expected(&f.expected) {
            let got = &outputs.iter().find(|(n, _)| *n == out).unwrap().1;
            assert_eq!(got.shape(), shape.as_slice(), "{name}/{out}");
            let (cos, max_abs) = agreement(got, &want);
            eprintln!("{name}/{out}: min row cosine {cos:.7}, max abs {max_abs:.2e}");
            // Rows of 3 logits: one activation code rounded the other way moves them most.
            let floor = if *shape.last().unwrap() < 8 {
                0.999
            } else {
                0.9999
            };
            assert!(
                cos >= floor,
                "{name}/{out}: min row cosine {cos} (max abs {max_abs})"
            );
        }
    }
}

/// The lowering against the same graph evaluated op by op, at the fixture's input and at shapes
/// no fixture shows.
#[test]
fn integer_linear_computes_what_the_graph_does() {
    for &name in fixtures::QUANTISED {
        let (ops, lowered) = (compile(name, false), compile(name, true));
        assert_eq!(integer_linears(&ops), 0);
        let dynamic = !name.contains("qdq") && !name.contains("qlinear");
        let f = fixtures::get(name);
        let text = std::fs::read_to_string(&f.input).unwrap();
        let mut cases = vec![parse_inputs(&text, lowered.inputs()).unwrap().0];
        if !name.starts_with("qlinear") {
            cases.push(random_inputs(&lowered, 3, 11, 7));
        }
        for inputs in cases {
            let want = ops.run(inputs.clone()).unwrap();
            let got = lowered.run(inputs).unwrap();
            for ((out, w), (_, g)) in want.iter().zip(&got) {
                let (Tensor::F32(w), Tensor::F32(g)) = (w, g) else {
                    continue;
                };
                let peak = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = w
                    .iter()
                    .zip(g.iter())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                if dynamic {
                    assert!(
                        w.iter()
                            .zip(g.iter())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name}/{out}: differs by {worst:e}"
                    );
                } else {
                    // QDQ: float32 sums in another order can round an activation code the other
                    // way downstream; that moves an output by a quantisation step at most.
                    assert!(
                        worst <= 0.05 * peak.max(1.0),
                        "{name}/{out}: differs by {worst:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn fffc_says_what_each_product_became() {
    let dir = std::env::temp_dir().join(format!("fff-quant-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = dir.join("m.fff");
    let out = Command::new(bin("fffc"))
        .args(["compile", "--explain", "-o"])
        .arg(&plan)
        .arg(fixtures::get("dense-encoder-tiny-qdyn-u8").onnx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("not lowered:") && err.contains("uint8"),
        "{err}"
    );
    let out = Command::new(bin("fffc"))
        .args(["compile", "-o"])
        .arg(&plan)
        .arg(fixtures::get("bert-tiny-qdyn").onnx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("int8 0: ") && err.contains("became: IntegerLinear"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
