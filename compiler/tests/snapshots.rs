//! The compiled graph of every fixture, as `fffc compile --dump` prints it, kept as a reviewed snapshot:
//! any change in what the compiler produces shows up here.

use fff_models::fixtures;

#[test]
fn compiled_graphs_of_fixtures() {
    for &name in fixtures::ALL {
        let g = fff_compiler::compile_path(
            &fixtures::get(name).onnx,
            &fff_compiler::Options::default(),
        )
        .unwrap();
        insta::assert_snapshot!(name, fff_compiler::dump::dump(&g));
    }
}

/// The models quantised before import: where each product became an IntegerLinear and what stayed.
#[test]
fn compiled_graphs_of_quantised_fixtures() {
    for &name in fixtures::QUANTISED {
        let g = fff_compiler::compile_path(
            &fixtures::get(name).onnx,
            &fff_compiler::Options::default(),
        )
        .unwrap();
        insta::assert_snapshot!(name, fff_compiler::dump::dump(&g));
    }
}

/// A dense encoder compiled with `--panel-cols 16`: every packed weight of the snapshot above, as
/// panels 16 columns wide.
#[test]
fn compiled_graph_with_16_column_panels() {
    let name = "dense-encoder-tiny";
    let options = fff_compiler::Options {
        panel_cols: 16,
        ..Default::default()
    };
    let g = fff_compiler::compile_path(&fixtures::get(name).onnx, &options).unwrap();
    insta::assert_snapshot!("dense-encoder-tiny-panels-16", fff_compiler::dump::dump(&g));
}
