//! Usage statistics of FastFeedForward nodes (`fff_runtime::fff_stats`, `fffrun --fff-stats`): the
//! counts cover every row once per tree, observing a run leaves its outputs unchanged, and models
//! without feedforward blocks are told so (a dense feedforward counts: it is the op at depth 0). (Which leaf a row reaches is checked against the reference kernel in
//! `fff_ops::fff`.)
//!
//! The CLI part runs the binaries from `target/<profile>/`: `cargo build --workspace --bins` first.

mod common;

use std::process::Command;

use common::{bin, compile, random_inputs};
use fff_models::fixtures;
use fff_models::onnx::{Elem, OnnxBuilder, D};
use fff_runtime::fff_stats::run_with_fff_usage;
use fff_runtime::Tensor;

#[test]
fn counts_cover_every_row_and_leave_outputs_unchanged() {
    for name in ["fff-encoder-tiny", "fff-encoder-2trees", "fff-layer-gather"] {
        let model = compile(&fixtures::get(name).onnx);
        let inputs = random_inputs(&model, 2, 5, 3);
        let want = model.run(inputs.clone()).unwrap();
        let (got, usage) = run_with_fff_usage(&model, inputs).unwrap();
        assert!(!usage.is_empty(), "{name}: no FFF node counted");
        for ((_, g), (_, w)) in got.iter().zip(&want) {
            let (Tensor::F32(g), Tensor::F32(w)) = (g, w) else {
                panic!("float outputs")
            };
            assert_eq!(g, w, "{name}: observing changed the outputs");
        }
        for u in &usage {
            assert!(
                u.rows > 0 && u.rows % 10 == 0,
                "{name}/{}: {} rows of 2x5 tokens",
                u.node,
                u.rows
            );
            assert_eq!(u.leaf_rows.len(), u.trees);
            for counts in &u.leaf_rows {
                assert_eq!(counts.len(), 1 << u.depth);
                assert_eq!(counts.iter().sum::<u64>(), u.rows, "{name}/{}", u.node);
            }
            let s = u.summary();
            assert_eq!(s.neurons_per_row, u.trees * (u.depth + 1));
            assert!(s.leaves_reached >= u.trees && s.leaves_reached <= s.leaves);
            assert!(s.leaf_entropy_bits >= 0.0 && s.leaf_entropy_bits <= u.depth as f64 + 1e-9);
            assert!(s.busiest_leaf_share > 0.0 && s.busiest_leaf_share <= 1.0);
        }
    }
}

#[test]
fn fffrun_prints_one_line_per_fff_node_and_refuses_models_without() {
    let dir = std::env::temp_dir().join(format!("fff-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A model with no feedforward block at all: y = relu(x).
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::N(2)]);
    let y = m.node("Relu", &[&x], vec![]);
    m.rename(&y, "y");
    m.output("y", Elem::Float, &[D::N(2)]);
    let relu_onnx = dir.join("relu.onnx");
    std::fs::write(&relu_onnx, m.to_bytes()).unwrap();
    let relu_input = dir.join("relu.json");
    std::fs::write(&relu_input, r#"{"x": [1.0, -1.0]}"#).unwrap();
    let encoder = fixtures::get("fff-encoder-tiny");
    for (onnx, input, fff_nodes) in [
        (encoder.onnx, encoder.input, true),
        (relu_onnx, relu_input, false),
    ] {
        let plan = dir.join(onnx.with_extension("fff").file_name().unwrap());
        let compiled = Command::new(bin("fffc"))
            .args([
                "compile".as_ref(),
                onnx.as_os_str(),
                "-o".as_ref(),
                plan.as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(compiled.status.success());
        let out = Command::new(bin("fffrun"))
            .args([plan.as_os_str(), input.as_os_str(), "--fff-stats".as_ref()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if fff_nodes {
            assert!(out.status.success(), "{stderr}");
            let lines: Vec<serde_json::Value> = stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert!(!lines.is_empty());
            for l in &lines {
                assert!(l["rows"].as_u64().unwrap() > 0, "{l}");
                assert!(l["leaves_reached"].as_u64() <= l["leaves"].as_u64(), "{l}");
            }
        } else {
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr.contains("no FastFeedForward nodes"), "{stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
