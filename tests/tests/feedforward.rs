//! Feedforward blocks become one FastFeedForward op: exactly the blocks each fixture has, blocks of any
//! size built by the models crate (checked against tract on the original graph), and a broken block is
//! left alone with the reason given.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{bin, compile, first_output_agrees_with_tract};
use fff_models::builders::{
    encoder_model, ff_layer_model, ff_layer_model_at, Defects, EncoderConfig, Ff,
};
use fff_models::fixtures;

/// Runs a command that must succeed.
fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fff-ff-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (trees, depth, d_in, d_out) of one FastFeedForward op.
type Layer = (u64, u64, u64, u64);

/// Every FastFeedForward op in the plan, as `fffc inspect --json` lists them.
fn fff_layers_of(onnx: &std::path::Path, dir: &std::path::Path) -> Vec<Layer> {
    let plan = dir.join(format!(
        "{}.fff",
        onnx.file_stem().unwrap().to_string_lossy()
    ));
    run_ok(
        Command::new(bin("fffc"))
            .arg("compile")
            .arg(onnx)
            .arg("-o")
            .arg(&plan),
    );
    let out = run_ok(
        Command::new(bin("fffc"))
            .arg("inspect")
            .arg(&plan)
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut layers: Vec<_> = v["fff_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let f = |k: &str| {
                l[k].as_u64()
                    .unwrap_or_else(|| panic!("fff_layers entry without {k}: {l}"))
            };
            (f("trees"), f("depth"), f("d_in"), f("d_out"))
        })
        .collect();
    layers.sort();
    layers
}

#[test]
fn fixtures_rewrite_exactly_their_feedforward_blocks() {
    let dir = scratch("fixtures");
    let dense = vec![(256, 0, 64, 64); 2];
    let small = vec![(128, 0, 32, 32); 2];
    let expected: &[(&str, Vec<Layer>)] = &[
        ("bert-tiny", dense.clone()),
        ("bert-tiny-dynamo", dense.clone()),
        ("dense-encoder-tiny", dense),
        ("fff-encoder-tiny", vec![(1, 3, 64, 64); 2]),
        ("fff-encoder-tiny-dynamo", vec![(1, 3, 64, 64); 2]),
        ("fff-encoder-2trees", vec![(2, 2, 64, 64); 2]),
        ("fff-layer-gather", vec![(1, 4, 64, 64)]),
        ("fff-layer-customop", vec![(2, 3, 64, 64)]),
        ("hf-bert-op11", small.clone()),
        ("hf-bert-gelu-tanh", small.clone()),
        ("hf-bert-gelu-tanh-dynamo", small.clone()),
        ("hf-bert-sdpa", small.clone()),
        ("hf-bert-relu-cls", small.clone()),
        ("hf-bert-odd-mlm", vec![(100, 0, 36, 36); 2]),
        ("hf-roberta", small.clone()),
        ("hf-distilbert", small.clone()),
        ("hf-albert", small.clone()),
        ("hf-deberta-v2", small.clone()),
        ("hf-mpnet", small),
        ("ufb-layer-levels", vec![(1, 4, 64, 64)]),
        ("ufb-layer-levels-dynamo", vec![(1, 4, 64, 64)]),
        ("ufb-forest-einsum", vec![(4, 3, 64, 64)]),
        ("ufb-forest-indexed", vec![(3, 2, 64, 64)]),
        ("ufb-forest-indexed-dynamo", vec![(3, 2, 64, 64)]),
    ];
    assert_eq!(expected.len(), fixtures::ALL.len());
    for (name, want) in expected {
        assert_eq!(
            &fff_layers_of(&fixtures::get(name).onnx, &dir),
            want,
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Compiles the model, checks which blocks were rewritten, and compares with tract on the original
/// graph at two shapes.
fn check_model(name: &str, bytes: Vec<u8>, want_layers: &[(usize, usize)]) -> String {
    let dir = scratch(name);
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, &bytes).unwrap();
    let g = fff_compiler::compile_bytes(&bytes, &fff_compiler::Options::default()).unwrap();
    let got: Vec<(usize, usize)> = g
        .report
        .rewritten
        .iter()
        .map(|r| (r.trees, r.depth))
        .collect();
    assert_eq!(
        got, want_layers,
        "{name}: rewritten blocks; refused: {:?}",
        g.report.refused
    );
    let model = compile(&path);
    first_output_agrees_with_tract(name, &model, &path, &[(1, 3, 21), (2, 7, 22)]);
    let _ = std::fs::remove_dir_all(dir);
    g.report
        .rewritten
        .iter()
        .map(|r| format!("{r}\n"))
        .collect()
}

#[test]
fn ultrafastbert_1x11_layer_is_rewritten_and_agrees_with_tract() {
    let report = check_model(
        "fff-1x11",
        ff_layer_model(
            768,
            Ff::Fff {
                trees: 1,
                depth: 11,
            },
            1,
            Defects::default(),
        ),
        &[(1, 11)],
    );
    assert!(
        report.contains("FFF 1x11, 768 -> 768, 12 of 4095 neurons per row"),
        "{report}"
    );
}

#[test]
fn bert_base_dense_feedforward_is_rewritten_and_agrees_with_tract() {
    let report = check_model(
        "dense-3072",
        ff_layer_model(768, Ff::Dense { width: 3072 }, 2, Defects::default()),
        &[(3072, 0)],
    );
    assert!(report.contains("dense 3072, 768 -> 768"), "{report}");
}

#[test]
fn forests_of_several_shapes_are_rewritten() {
    for (d, trees, depth) in [(32, 2, 2), (48, 4, 1), (24, 3, 4), (16, 1, 0)] {
        let name = format!("fff-{d}-{trees}x{depth}");
        check_model(
            &name,
            ff_layer_model(d, Ff::Fff { trees, depth }, 3, Defects::default()),
            &[(trees, depth)],
        );
    }
}

#[test]
fn the_masking_form_is_rewritten_at_every_opset() {
    for opset in [11, 13, 17, 18] {
        let name = format!("fff-opset{opset}");
        check_model(
            &name,
            ff_layer_model_at(
                opset,
                32,
                Ff::Fff { trees: 2, depth: 3 },
                6,
                Defects::default(),
            ),
            &[(2, 3)],
        );
    }
}

#[test]
fn encoder_with_dense_and_fff_layers_has_each_block_rewritten() {
    let config = EncoderConfig {
        vocab: 100,
        max_positions: 16,
        hidden: 64,
        heads: 4,
        layers: vec![
            Ff::Dense { width: 128 },
            Ff::Fff { trees: 2, depth: 3 },
            Ff::Fff { trees: 1, depth: 4 },
        ],
        seed: 4,
    };
    check_model(
        "encoder-mixed",
        encoder_model(&config),
        &[(128, 0), (2, 3), (1, 4)],
    );
}

#[test]
fn a_block_with_altered_index_arithmetic_is_left_alone_and_explained() {
    let bytes = ff_layer_model(
        32,
        Ff::Fff { trees: 1, depth: 3 },
        5,
        Defects {
            flip_level: Some(1),
        },
    );
    // Nothing is rewritten, and the model still computes what the original graph computes.
    check_model("broken", bytes.clone(), &[]);
    let dir = scratch("broken-cli");
    let path = dir.join("broken.onnx");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(bin("fffc"))
        .arg("compile")
        .arg(&path)
        .arg("-o")
        .arg(dir.join("broken.fff"))
        .arg("--explain")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("ff 0:"), "{stderr}");
    assert!(
        stderr.contains("not rewritten") && stderr.contains("no FastFeedForward op reproduces it"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A dense block written with `Gemm` on flattened rows and ReLU, as older exporters write `nn.Linear`.
#[test]
fn gemm_relu_block_on_flattened_rows_is_rewritten() {
    use fff_models::onnx::{Attr, Elem, OnnxBuilder, D};
    use fff_models::rng::Rng;
    let (d, w) = (24, 40);
    let mut rng = Rng::new(9);
    let mut b = OnnxBuilder::new(11);
    let x = b.input("x", Elem::Float, &[D::S("batch"), D::S("seq"), D::N(d)]);
    let flat = b.ints("flat", &[2], vec![-1, d]);
    let x2 = b.node("Reshape", &[&x, &flat], vec![]);
    let w1 = b.weight("w1", &[w, d], rng.vec((w * d) as usize, 0.3));
    let b1 = b.weight("b1", &[w], rng.vec(w as usize, 0.1));
    let w2 = b.weight("w2", &[d, w], rng.vec((w * d) as usize, 0.3));
    let b2 = b.weight("b2", &[d], rng.vec(d as usize, 0.1));
    let h = b.node("Gemm", &[&x2, &w1, &b1], vec![("transB", Attr::Int(1))]);
    let h = b.node("Relu", &[&h], vec![]);
    let y = b.node("Gemm", &[&h, &w2, &b2], vec![("transB", Attr::Int(1))]);
    let shape = b.node("Shape", &[&x], vec![]);
    let y = b.node("Reshape", &[&y, &shape], vec![]);
    b.rename(&y, "y");
    b.output("y", Elem::Float, &[D::S("batch"), D::S("seq"), D::N(d)]);
    let report = check_model("gemm-relu", b.to_bytes(), &[(w as usize, 0)]);
    assert!(report.contains("dense 40, 24 -> 24"), "{report}");
}
