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

// ---- external data through symlinks ----

/// The tensors of `fff-layer-customop` in `dir/w.bin`, read by `dir/model.onnx` at `location`.
#[cfg(unix)]
fn model_reading(dir: &Path, location: &str) -> PathBuf {
    let name = "fff-layer-customop";
    let model = ModelProto::decode(&*std::fs::read(fixtures::get(name).onnx).unwrap()).unwrap();
    externalise(&model, dir, "w.bin");
    let onnx = dir.join("model.onnx");
    let mut m = ModelProto::decode(&*std::fs::read(&onnx).unwrap()).unwrap();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        if let Some(e) = t.external_data.iter_mut().find(|e| e.key == "location") {
            e.value = location.into();
        }
    }
    std::fs::write(&onnx, m.encode_to_vec()).unwrap();
    onnx
}

#[cfg(unix)]
fn compile_error(onnx: &Path) -> String {
    fff_compiler::compile_path(onnx, &fff_compiler::Options::default())
        .unwrap_err()
        .to_string()
}

/// A symlink in the model's folder that leads out of it is refused, naming the location and where it
/// leads, through the library and `fffc`; data reached through links that stay inside is read.
#[cfg(unix)]
#[test]
fn symlinks_out_of_the_model_folder_are_refused() {
    use std::os::unix::fs::symlink;

    // The data file in another folder, linked from the model's: every byte the model asks for is
    // there, so only the link's target can refuse it.
    let scratch = Scratch::new("symlink-out");
    let elsewhere = Scratch::new("symlink-elsewhere");
    let onnx = model_reading(&scratch.0, "w.bin");
    std::fs::rename(scratch.0.join("w.bin"), elsewhere.0.join("w.bin")).unwrap();
    symlink(elsewhere.0.join("w.bin"), scratch.0.join("w.bin")).unwrap();
    let target = elsewhere.0.canonicalize().unwrap().join("w.bin");
    let msg = compile_error(&onnx);
    for part in [
        "outside the model's folder",
        "'w.bin'",
        &target.display().to_string(),
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    let plan = scratch.0.join("model.fff");
    let out = Command::new(bin("fffc"))
        .args([
            "compile".as_ref(),
            onnx.as_os_str(),
            "-o".as_ref(),
            plan.as_os_str(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: ") && stderr.contains("outside the model's folder"),
        "{stderr}"
    );
    assert!(!plan.exists(), "a refused compile must not write a plan");

    // A link to a system file, whatever the range asked for.
    let scratch = Scratch::new("symlink-passwd");
    let onnx = model_reading(&scratch.0, "passwd");
    symlink("/etc/passwd", scratch.0.join("passwd")).unwrap();
    let msg = compile_error(&onnx);
    assert!(
        msg.contains("'passwd'") && msg.contains("/etc/passwd") && msg.contains("outside"),
        "{msg}"
    );

    // A link to a folder outside, then a path through it.
    let scratch = Scratch::new("symlink-dir-out");
    let onnx = model_reading(&scratch.0, "shared/w.bin");
    std::fs::rename(scratch.0.join("w.bin"), elsewhere.0.join("w.bin")).unwrap();
    symlink(&elsewhere.0, scratch.0.join("shared")).unwrap();
    assert!(compile_error(&onnx).contains("outside the model's folder"));
}

#[cfg(unix)]
#[test]
fn symlinks_and_subfolders_inside_the_model_folder_are_read() {
    use std::os::unix::fs::symlink;

    let compiles = |onnx: &Path| {
        let g = fff_compiler::compile_path(onnx, &fff_compiler::Options::default()).unwrap();
        let (graph, weights) = fff_compiler::plan_writer::to_plan(&g).unwrap();
        check_outputs(
            "fff-layer-customop",
            &Model::from_bytes(&fff_runtime::plan::encode(&graph, &weights)).unwrap(),
        );
    };

    // In a subfolder.
    let scratch = Scratch::new("subfolder");
    let onnx = model_reading(&scratch.0, "data/w.bin");
    std::fs::create_dir(scratch.0.join("data")).unwrap();
    std::fs::rename(scratch.0.join("w.bin"), scratch.0.join("data/w.bin")).unwrap();
    compiles(&onnx);

    // Through a link to that file, inside the folder.
    let onnx = model_reading(&scratch.0, "link.bin");
    std::fs::rename(scratch.0.join("w.bin"), scratch.0.join("data/w.bin")).unwrap();
    symlink("data/w.bin", scratch.0.join("link.bin")).unwrap();
    compiles(&onnx);

    // The model's folder itself reached through a link.
    let linked = Scratch::new("linked-folder");
    std::fs::remove_dir(&linked.0).unwrap();
    symlink(&scratch.0, &linked.0).unwrap();
    compiles(&linked.0.join("model.onnx"));
}
