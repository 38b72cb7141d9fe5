//! `fffc compile --weights bf16`: conditional FastFeedForward layers store bfloat16 weights, and the
//! plan computes exactly what the same model with its weights rounded to bfloat16 computes in tract.

mod common;

use std::process::Command;

use common::{bin, max_abs_diff_to, random_inputs, tract_run};
use fff_compiler::Weights;
use fff_models::builders::{ff_layer_model, Defects, Ff};
use fff_models::onnx::round_initializers_to_bf16;
use fff_runtime::{DType, Model};

fn is_fff_weight(name: &str) -> bool {
    name.ends_with("linear_in.weight") || name.ends_with("linear_out.weight")
}

/// Compiles ONNX bytes with bf16 weights and loads the plan.
fn compile_bf16(bytes: &[u8]) -> Model {
    let options = fff_compiler::Options {
        weights: Weights::Bf16,
        ..Default::default()
    };
    let g = fff_compiler::compile_bytes(bytes, &options).unwrap();
    let (graph, weights) = fff_compiler::plan_writer::to_plan(&g).unwrap();
    Model::from_bytes(&fff_runtime::plan::encode(&graph, &weights)).unwrap()
}

#[test]
fn tree_layers_match_the_model_with_rounded_weights() {
    let dir = std::env::temp_dir().join(format!("fff-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A deep tree (the tree kernel) at an odd width, a forest shallow enough to run as a masked GEMM
    // at 160 rows (bf16 all the same: storage does not depend on the kernel), and a dense layer,
    // whose weights stay float32.
    for (d, trees, depth, narrowed) in [
        (37, 1, 6, true),
        (64, 2, 6, true),
        (32, 16, 1, true),
        (32, 24, 0, false),
    ] {
        let name = format!("fff-{trees}x{depth}-d{d}");
        let onnx = ff_layer_model(d, Ff::Fff { trees, depth }, 11, Defects::default());
        // The reference: the weights rounded as the plan stores them (or left as they are).
        let reference = dir.join(format!("{name}-reference.onnx"));
        let rounded = round_initializers_to_bf16(&onnx, is_fff_weight);
        std::fs::write(&reference, if narrowed { rounded } else { onnx.clone() }).unwrap();
        let model = compile_bf16(&onnx);
        let bf16_constants = model
            .graph()
            .constants
            .iter()
            .filter(|c| c.dtype == DType::BF16)
            .count();
        assert_eq!(bf16_constants, if narrowed { 2 } else { 0 }, "{name}");
        for (batch, seq, seed) in [(1, 1, 3), (2, 9, 4), (4, 40, 5)] {
            let inputs = random_inputs(&model, batch, seq, seed);
            let want = tract_run(&reference, &inputs);
            let got = model.run(inputs).unwrap();
            let diff = max_abs_diff_to(&name, &got[0].1, &want[0]);
            assert!(diff < 1e-4, "{name} at {batch}x{seq}: max abs diff {diff}");
        }
    }
}

#[test]
fn fffc_writes_smaller_plans_with_bf16_weights() {
    let dir = std::env::temp_dir().join(format!("fff-bf16-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("layer.onnx");
    std::fs::write(
        &onnx,
        ff_layer_model(64, Ff::Fff { trees: 1, depth: 7 }, 3, Defects::default()),
    )
    .unwrap();
    let mut sizes = Vec::new();
    for weights in ["f32", "bf16"] {
        let plan = dir.join(format!("layer-{weights}.fff"));
        let out = Command::new(bin("fffc"))
            .args([
                "compile",
                onnx.to_str().unwrap(),
                "-o",
                plan.to_str().unwrap(),
            ])
            .args(["--weights", weights])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sizes.push(std::fs::metadata(&plan).unwrap().len());
    }
    // Two [255, 64] weight matrices lose two bytes per element.
    assert!(sizes[0] - sizes[1] >= 2 * 255 * 64 * 2 - 256, "{sizes:?}");
    let out = Command::new(bin("fffc"))
        .args(["compile", onnx.to_str().unwrap(), "--weights", "f16"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("f16"));
}
