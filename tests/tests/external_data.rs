//! Models whose weights live in an external data file, as exporters write large models (every
//! initializer in one file, each at its own offset): compiled through the library and through `fffc`,
//! they must give the fixture's expected outputs; a missing file, a range past its end and a path
//! outside the model's folder must give errors naming the tensor.
//!
//! The CLI part runs the binaries from `target/<profile>/`: `cargo build --workspace --bins` first.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, max_abs_diff, read_expected};
use fff_models::fixtures;
use fff_runtime::Model;
use prost::Message;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

/// A folder for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fff-external-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entry(key: &str, value: impl ToString) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.to_string(),
    }
}

/// `model` with every initializer's raw bytes moved to `data_file` (in `dir`), 64-byte aligned after a
/// few bytes of padding, as `onnx.save_model(..., save_as_external_data=True)` lays them out; the
/// model is written to `dir/model.onnx`. Returns how many tensors moved.
fn externalise(model: &ModelProto, dir: &Path, data_file: &str) -> usize {
    let mut m = model.clone();
    let mut data = vec![7u8; 5];
    let mut moved = 0;
    for t in &mut m.graph.as_mut().unwrap().initializer {
        if t.raw_data.is_empty() {
            continue;
        }
        data.resize(data.len().next_multiple_of(64), 0);
        t.external_data = vec![
            entry("location", data_file),
            entry("offset", data.len()),
            entry("length", t.raw_data.len()),
        ];
        data.extend_from_slice(&t.raw_data);
        t.raw_data.clear();
        t.data_location = Some(1);
        moved += 1;
    }
    std::fs::write(dir.join(data_file), &data).unwrap();
    std::fs::write(dir.join("model.onnx"), m.encode_to_vec()).unwrap();
    moved
}

fn check_outputs(name: &'static str, model: &Model) {
    let f = fixtures::get(name);
    let text = std::fs::read_to_string(&f.input).unwrap();
    let (inputs, _) = fff_runtime::io::parse_inputs(&text, model.inputs()).unwrap();
    let outputs = model.run(inputs).unwrap();
    for (out_name, shape, want) in read_expected(&f.expected) {
        let (_, got) = outputs.iter().find(|(n, _)| *n == out_name).unwrap();
        let d = max_abs_diff(&out_name, got, &shape, &want);
        assert!(d < 1e-4, "{name} {out_name}: max abs diff {d}");
    }
}

#[test]
fn weights_in_one_external_file_compile_and_match_the_references() {
    for name in ["bert-tiny", "fff-encoder-tiny"] {
        let scratch = Scratch::new(name);
        let model = ModelProto::decode(&*std::fs::read(fixtures::get(name).onnx).unwrap()).unwrap();
        let moved = externalise(&model, &scratch.0, "model.onnx_data");
        assert!(moved > 10, "{name}: only {moved} initializers moved");
        let onnx = scratch.0.join("model.onnx");

        // The library, from the path (external files resolve against the model's folder).
        let g = fff_compiler::compile_path(&onnx, &fff_compiler::Options::default()).unwrap();
        let (graph, weights) = fff_compiler::plan_writer::to_plan(&g).unwrap();
        let plan = fff_runtime::plan::encode(&graph, &weights);
        check_outputs(name, &Model::from_bytes(&plan).unwrap());

        // fffc, run from another folder.
        let plan_path = scratch.0.join("model.fff");
        let status = Command::new(bin("fffc"))
            .current_dir(std::env::temp_dir())
            .args([
                "compile".as_ref(),
                onnx.as_os_str(),
                "-o".as_ref(),
                plan_path.as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        check_outputs(name, &Model::load(&plan_path).unwrap());
    }
}

#[test]
fn bad_external_data_is_named() {
    let name = "fff-layer-customop";
    let model = ModelProto::decode(&*std::fs::read(fixtures::get(name).onnx).unwrap()).unwrap();
    let scratch = Scratch::new("bad");
    externalise(&model, &scratch.0, "w.bin");
    let onnx = scratch.0.join("model.onnx");
    let compile_error = || {
        fff_compiler::compile_path(&onnx, &fff_compiler::Options::default())
            .unwrap_err()
            .to_string()
    };

    let data = std::fs::read(scratch.0.join("w.bin")).unwrap();
    std::fs::write(scratch.0.join("w.bin"), &data[..data.len() - 4]).unwrap();
    let msg = compile_error();
    assert!(
        msg.contains("external data range lies outside") && msg.contains("w.bin"),
        "{msg}"
    );

    std::fs::remove_file(scratch.0.join("w.bin")).unwrap();
    let msg = compile_error();
    assert!(
        msg.contains("cannot read") && msg.contains("w.bin"),
        "{msg}"
    );

    let mut m = ModelProto::decode(&*std::fs::read(&onnx).unwrap()).unwrap();
    let t = m
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.data_location == Some(1))
        .unwrap();
    t.external_data[0] = entry("location", "../w.bin");
    let tensor = t.name.clone();
    std::fs::write(&onnx, m.encode_to_vec()).unwrap();
    let msg = compile_error();
    assert!(
        msg.contains("outside the model's folder") && msg.contains(&tensor),
        "{msg}"
    );
}
