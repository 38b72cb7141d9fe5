//! Weights packed into column panels at compile time (`pack-weights`): projections whose width is not a
//! multiple of the panel (the last panel padded) and dense feedforward layers whose sizes are (or whose
//! neurons are padded to a multiple of the panel with zero neurons), at row
//! counts below and above the GEMM's row block, agree with tract on the original graph; layers that do
//! not qualify keep their weights as they are and still agree. Projections written as `Gemm` or as a
//! `MatMul` without bias are packed too. Each model also runs with its panels repacked at load to 16
//! columns and to one.

mod common;

use common::first_output_agrees_with_tract;
use fff_compiler::ir::Graph;
use fff_models::builders::{encoder_model, EncoderConfig, Ff};
use fff_runtime::model::Options;
use fff_runtime::op::Op;
use fff_runtime::Model;

/// The ranks of W_in of every FastFeedForward node, and the `n` of every PackedLinear node.
fn packing_of(g: &Graph) -> (Vec<usize>, Vec<usize>) {
    let (mut ff_ranks, mut packed) = (vec![], vec![]);
    for n in g.topo_order() {
        match g.op(n) {
            Some(Op::FastFeedForward { .. }) => {
                let w_in = g.inputs_of(n)[1].expect("W_in");
                ff_ranks.push(g.const_value(w_in).expect("constant W_in").shape().len());
            }
            Some(Op::PackedLinear { n }) => packed.push(*n),
            Some(Op::Linear) => panic!("a Linear was left unpacked"),
            _ => {}
        }
    }
    packed.sort();
    (ff_ranks, packed)
}

fn agrees_with_tract(name: &str, config: &EncoderConfig, want: (Vec<usize>, Vec<usize>)) {
    model_agrees_with_tract(name, encoder_model(config), want);
}

fn model_agrees_with_tract(name: &str, bytes: Vec<u8>, want: (Vec<usize>, Vec<usize>)) {
    let g = fff_compiler::compile_bytes(&bytes, &fff_compiler::Options::default()).unwrap();
    assert_eq!(packing_of(&g), want, "{name}");
    let dir = std::env::temp_dir().join(format!("fff-packed-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, &bytes).unwrap();
    let plan =
        fff_compiler::compile_to_plan_bytes(&bytes, &fff_compiler::Options::default()).unwrap();
    let model = Model::from_bytes(&plan).unwrap();
    // 3 rows, and 99: two whole row blocks of 48 and a partial one.
    first_output_agrees_with_tract(name, &model, &path, &[(1, 3, 31), (3, 33, 32)]);
    // Loaded from a file, the panels repacked at load (and their mapped pages released) to the width
    // of CPUs without AVX-512, and to the narrowest.
    let plan_path = dir.join(format!("{name}.fff"));
    std::fs::write(&plan_path, &plan).unwrap();
    for panel_cols in [16, 1] {
        let options = Options {
            threads: 1,
            panel_cols,
            ..Default::default()
        };
        let model = Model::load_with(&plan_path, options).unwrap();
        first_output_agrees_with_tract(name, &model, &path, &[(1, 3, 31), (3, 33, 32)]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn projections_padded_to_whole_panels_agree_with_tract() {
    // Hidden 500: the projections are packed into 8 panels, the last 12 columns zeros; so is the
    // feedforward's output, whose 512 columns a slice cuts back to 500.
    let config = EncoderConfig {
        vocab: 100,
        max_positions: 40,
        hidden: 500,
        heads: 4,
        layers: vec![Ff::Dense { width: 192 }],
        seed: 11,
    };
    // Q, K, V, the attention output and the feedforward's two projections, if left as Linear,
    // would fail `packing_of`; the feedforward is one op with weights in panels (rank 3).
    agrees_with_tract("hidden-500", &config, (vec![3], vec![500, 500, 500, 500]));
}

#[test]
fn dense_feedforward_in_panels_agrees_with_tract() {
    let config = EncoderConfig {
        vocab: 100,
        max_positions: 40,
        hidden: 192,
        heads: 3,
        layers: vec![Ff::Dense { width: 320 }, Ff::Fff { trees: 2, depth: 2 }],
        seed: 12,
    };
    // The dense layer's weights become panels (rank 3); the FFF layer's stay node-major.
    agrees_with_tract("hidden-192", &config, (vec![3, 2], vec![192; 8]));
}

#[test]
fn dense_feedforward_padded_to_whole_panels_agrees_with_tract() {
    // 300 neurons: padded with 20 zero neurons to 5 panels of 64, their bias padded too; 100 neurons
    // would need 28 (more than 1/8), so that layer keeps its weights as rows.
    let config = EncoderConfig {
        vocab: 100,
        max_positions: 40,
        hidden: 192,
        heads: 3,
        layers: vec![Ff::Dense { width: 300 }, Ff::Dense { width: 100 }],
        seed: 14,
    };
    let g = fff_compiler::compile_bytes(&encoder_model(&config), &fff_compiler::Options::default())
        .unwrap();
    let trees: Vec<usize> = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match g.op(n) {
            Some(Op::FastFeedForward { trees, .. }) => Some(*trees),
            _ => None,
        })
        .collect();
    assert_eq!(trees, [320, 100]);
    agrees_with_tract("dense-300", &config, (vec![3, 2], vec![192; 8]));
}

/// `Tanh(Gemm(X, W, C))` with W transposed and beta 0.5 on a bias `[1, n]` (a pooler as older
/// exporters write it), and `X + MatMul(X, V)` without bias: both become packed projections.
#[test]
fn gemm_and_bias_free_projections_agree_with_tract() {
    use fff_models::onnx::{Attr, Elem, OnnxBuilder, D};
    use fff_models::rng::Rng;
    let (d, n) = (128i64, 500i64);
    let mut rng = Rng::new(13);
    let mut b = OnnxBuilder::new(13);
    let x = b.input("x", Elem::Float, &[D::S("batch"), D::N(d)]);
    let v = b.weight("v", &[d, d], rng.vec((d * d) as usize, 0.2));
    let p = b.node("MatMul", &[&x, &v], vec![]);
    let r = b.node("Add", &[&x, &p], vec![]);
    let w = b.weight("w", &[n, d], rng.vec((n * d) as usize, 0.2));
    let c = b.weight("c", &[1, n], rng.vec(n as usize, 0.5));
    let y = b.node(
        "Gemm",
        &[&r, &w, &c],
        vec![("transB", Attr::Int(1)), ("beta", Attr::Float(0.5))],
    );
    let y = b.node("Tanh", &[&y], vec![]);
    b.rename(&y, "y");
    b.output("y", Elem::Float, &[D::S("batch"), D::N(n)]);
    model_agrees_with_tract("gemm-pooler", b.to_bytes(), (vec![], vec![128, 500]));
}
