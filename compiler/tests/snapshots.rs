//! The compiled graph of every fixture, as `fffc compile --dump` prints it, kept as a reviewed snapshot:
//! any change in what the compiler produces shows up here.

use fff_models::fixtures;

#[test]
fn compiled_graphs_of_fixtures() {
    for &name in fixtures::ALL {
        let g = fff_compiler::compile_path(&fixtures::get(name).onnx, None).unwrap();
        insta::assert_snapshot!(name, fff_compiler::dump::dump(&g));
    }
}
