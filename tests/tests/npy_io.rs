//! `fffrun` reads `.npy` and `.npz` inputs and writes `.npz` outputs: the numbers that come back through
//! the files are the ones the library computes on the same arrays.

mod common;

use common::bin;

use std::process::Command;

use fff_models::fixtures;
use fff_runtime::npy::{read_npy, read_npz, write_npz};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?}: {stderr}");
    stderr
}

#[test]
fn npy_and_npz_inputs_and_npz_outputs_round_trip() {
    let dir = std::env::temp_dir().join(format!("fff-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = fixtures::get("fff-layer-customop");
    let plan = dir.join("m.fff");
    run(Command::new(bin("fffc"))
        .arg("compile")
        .arg(&f.onnx)
        .arg("-o")
        .arg(&plan));
    let x = dir.join("x.npy");
    run(Command::new(bin("fff-models"))
        .args(["npy", "--shape", "2x9x64", "--seed", "3", "-o"])
        .arg(&x));
    let want = common::compile(&f.onnx)
        .run(vec![("x".to_string(), read_npy(&x).unwrap())])
        .unwrap();

    let y1 = dir.join("y1.npz");
    run(Command::new(bin("fffrun"))
        .arg(&plan)
        .arg(&x)
        .arg("-o")
        .arg(&y1));
    let xz = dir.join("x.npz");
    write_npz(&xz, &[("x".to_string(), read_npy(&x).unwrap())]).unwrap();
    let y2 = dir.join("y2.npz");
    run(Command::new(bin("fffrun"))
        .arg(&plan)
        .arg(&xz)
        .arg("-o")
        .arg(&y2)
        .args(["--threads", "2"]));
    for y in [y1, y2] {
        assert_eq!(read_npz(&y).unwrap(), want, "{}", y.display());
    }

    // A .npy for a model with several inputs is refused with a clear message.
    let several = common::compile(&fixtures::get("bert-tiny").onnx);
    assert_eq!(several.inputs().len(), 3);
    let bert_plan = dir.join("bert.fff");
    run(Command::new(bin("fffc"))
        .arg("compile")
        .arg(&fixtures::get("bert-tiny").onnx)
        .arg("-o")
        .arg(&bert_plan));
    let out = Command::new(bin("fffrun"))
        .arg(&bert_plan)
        .arg(&x)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the model has 3 inputs"));
    let _ = std::fs::remove_dir_all(dir);
}
