//! `fffc compile --quantize int8|bf16`: every fixture stays within the stated tolerance of its reference
//! outputs (ONNX Runtime's at export, independent of fff), conditional layers keep float32 routing,
//! plans that hold int8 are format version 2 and are refused by what cannot read them, and bad
//! options and calibration files get clear errors.

mod common;

use std::process::Command;

use common::{bin, min_row_cosine, read_expected};
use fff_compiler::{Options, Quantize};
use fff_models::fixtures;
use fff_runtime::io::parse_inputs;
use fff_runtime::op::{FastFeedForward, Op};
use fff_runtime::{DType, Model, Tensor};

fn compile_with(onnx: &std::path::Path, quantize: Quantize) -> (Model, Vec<u8>) {
    let bytes = std::fs::read(onnx).unwrap();
    let options = Options {
        quantize,
        ..Default::default()
    };
    let plan = fff_compiler::compile_to_plan_bytes(&bytes, &options)
        .unwrap_or_else(|e| panic!("{}: {e}", onnx.display()));
    (Model::from_bytes(&plan).unwrap(), plan)
}

/// The tolerance each precision is held to on the fixtures (small random models, 32 to 64 wide, whose
/// products average fewer rounding errors than real models' do): the minimum row cosine against the
/// reference outputs, for rows of at least 8 values.
const MIN_COSINE: [(Quantize, f64); 2] = [(Quantize::Int8, 0.999), (Quantize::Bf16, 0.9999)];

/// Rows of fewer than 8 values (a classifier's logits) are held to this much less: one value's
/// error moves their cosine the most.
const SHORT_ROW_SLACK: f64 = 0.001;

#[test]
fn every_fixture_stays_close_to_its_reference_when_quantised() {
    for &name in fixtures::ALL {
        let f = fixtures::get(name);
        let expected = read_expected(&f.expected);
        let text = std::fs::read_to_string(&f.input).unwrap();
        for (quantize, min) in MIN_COSINE {
            let (model, _) = compile_with(&f.onnx, quantize);
            let (inputs, _) = parse_inputs(&text, model.inputs()).unwrap();
            let outputs = model.run(inputs).unwrap();
            for (out_name, shape, want) in &expected {
                let got = &outputs.iter().find(|(n, _)| n == out_name).unwrap().1;
                if !matches!(got, Tensor::F32(_)) {
                    continue;
                }
                let cos = min_row_cosine(got, shape, want);
                let min = if shape.last().is_some_and(|&d| d < 8) {
                    min - SHORT_ROW_SLACK
                } else {
                    min
                };
                assert!(
                    cos >= min,
                    "{name}/{out_name} under {quantize:?}: min row cosine {cos} < {min}"
                );
            }
        }
    }
}

#[test]
fn projections_are_quantised_and_conditional_layers_keep_float32_routing() {
    let f = fixtures::get("fff-encoder-tiny");
    for (quantize, dtype) in [(Quantize::Int8, DType::I8), (Quantize::Bf16, DType::BF16)] {
        let (model, plan) = compile_with(&f.onnx, quantize);
        let g = model.graph();
        let quantised = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::QuantLinear { .. }))
            .count();
        assert!(quantised > 0, "{quantize:?}: no QuantLinear");
        assert!(g.constants.iter().any(|c| c.dtype == dtype));
        for n in g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::FastFeedForward { depth, .. } if depth > 0))
        {
            let w_in = n.inputs[FastFeedForward::W_IN].unwrap();
            let c = g.constants.iter().find(|c| c.value == w_in).unwrap();
            assert_eq!(
                c.dtype,
                DType::F32,
                "{quantize:?}: routing weights of {}",
                n.name
            );
        }
        let version = u32::from_le_bytes(plan[8..12].try_into().unwrap());
        assert_eq!(version, 2, "{quantize:?}");
    }
    // Float32 plans stay version 1, which runtimes that predate quantisation read.
    let (_, plan) = compile_with(&f.onnx, Quantize::F32);
    assert_eq!(u32::from_le_bytes(plan[8..12].try_into().unwrap()), 1);
}

#[test]
fn plans_of_unknown_or_inconsistent_versions_are_refused() {
    let f = fixtures::get("dense-encoder-tiny");
    let (_, plan) = compile_with(&f.onnx, Quantize::Int8);
    let mut newer = plan.clone();
    newer[8..12].copy_from_slice(&3u32.to_le_bytes());
    let e = Model::from_bytes(&newer)
        .err()
        .expect("version 3 refused")
        .to_string();
    assert!(e.contains("format version 3"), "{e}");
    // A header that claims the old format over a graph that needs the new one is refused too.
    let mut older = plan;
    older[8..12].copy_from_slice(&1u32.to_le_bytes());
    let e = Model::from_bytes(&older)
        .err()
        .expect("inconsistent version refused")
        .to_string();
    assert!(e.contains("version 2"), "{e}");
}

fn fffc(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("fffc")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fffc_reports_the_cost_and_refuses_bad_quantisation_options() {
    let dir = std::env::temp_dir().join(format!("fff-quantize-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = fixtures::get("dense-encoder-tiny");
    let onnx = f.onnx.to_str().unwrap();
    let plan = dir.join("q.fff");
    let plan = plan.to_str().unwrap();

    let (ok, err) = fffc(&["compile", onnx, "-o", plan, "--quantize", "int4"]);
    assert!(!ok && err.contains("int4") && err.contains("int8"), "{err}");

    let (ok, err) = fffc(&[
        "compile",
        onnx,
        "-o",
        plan,
        "--quantize",
        "int8",
        "--explain",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("row cosine min"), "{err}");
    assert!(err.contains("kept float32"), "{err}");

    // Calibration on the fixture's own input, then on one that does not fit.
    let input = f.input.to_str().unwrap();
    let (ok, err) = fffc(&[
        "compile",
        onnx,
        "-o",
        plan,
        "--quantize",
        "int8",
        "--calibrate",
        input,
    ]);
    assert!(ok && err.contains(input), "{err}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"no_such_input": [[1, 2]]}"#).unwrap();
    let (ok, err) = fffc(&[
        "compile",
        onnx,
        "-o",
        plan,
        "--quantize",
        "int8",
        "--calibrate",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("do not fit the model"), "{err}");

    // A model with nothing to quantise says so and writes the float32 plan.
    let layer = dir.join("layer.onnx");
    std::fs::write(
        &layer,
        fff_models::builders::ff_layer_model(
            16,
            fff_models::builders::Ff::Fff { trees: 1, depth: 3 },
            5,
            Default::default(),
        ),
    )
    .unwrap();
    let (ok, err) = fffc(&[
        "compile",
        layer.to_str().unwrap(),
        "-o",
        plan,
        "--quantize",
        "int8",
    ]);
    assert!(ok && err.contains("nothing to quantise"), "{err}");
    let bytes = std::fs::read(plan).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);

    // --weights bf16 on a model without conditional layers does not pass silently.
    let (ok, err) = fffc(&["compile", onnx, "-o", plan, "--weights", "bf16"]);
    assert!(ok && err.contains("nothing was changed"), "{err}");
}

#[test]
fn the_cost_counts_the_rows_of_each_conditional_layer() {
    let f = fixtures::get("fff-encoder-tiny");
    let (reference, _) = compile_with(&f.onnx, Quantize::F32);
    let (quantized, _) = compile_with(&f.onnx, Quantize::Int8);
    let inputs = fff_compiler::quant_cost::probe_inputs(reference.graph());
    let cost = fff_compiler::quant_cost::measure(&reference, &quantized, &inputs).unwrap();
    let layers = reference
        .graph()
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::FastFeedForward { depth, .. } if depth > 0))
        .count();
    assert!(layers > 0);
    assert_eq!(cost.paths.len(), layers, "{cost:?}");
    // Batch 2 of sequence 32.
    assert!(cost
        .paths
        .iter()
        .all(|p| p.rows == 64 && p.changed <= p.rows));
    assert_eq!(cost.outputs.len(), 1);
    assert!(cost.outputs[0].min_cosine > 0.99, "{cost:?}");
}
