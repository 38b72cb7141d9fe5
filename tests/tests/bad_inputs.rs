//! Bad inputs of every kind — unknown ops, malformed ONNX, truncated or corrupted plans, plans of
//! another format version, inputs that do not match the model, malformed JSON, missing files — must give
//! a clear error naming the problem, through the libraries and through the `fffc` and `fffrun` binaries
//! (exit code 1, `error: ...` on stderr), and never a panic.
//!
//! The CLI tests run the binaries from `target/<profile>/`, so build them first:
//! `cargo build --workspace --bins --tests && cargo test -p fff-tests --test bad_inputs`.

mod common;

use common::bin;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use fff_compiler::CompileError;
use fff_models::fixtures;
use fff_models::onnx::{Elem, OnnxBuilder, D};
use fff_runtime::{DType, Error, Model, Tensor};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// A scratch folder for one test, unique to the test and this process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("fff-bad-inputs-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// Writes `contents` to `name` in the folder and returns its path.
    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path
    }

    /// A path in the folder that does not exist.
    fn missing(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a binary and returns its exit code, stdout and stderr.
fn run_cli<S: AsRef<OsStr>>(name: &str, args: &[S]) -> (Option<i32>, String, String) {
    let out = Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a binary that must fail cleanly: exit code 1, an `error: ...` line on stderr, no panic. Returns
/// stderr.
fn cli_error<S: AsRef<OsStr>>(name: &str, args: &[S]) -> String {
    let (code, stdout, stderr) = run_cli(name, args);
    assert!(!stderr.contains("panicked"), "{name} panicked:\n{stderr}");
    assert_eq!(
        code,
        Some(1),
        "{name} should exit with 1\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.starts_with("error: "),
        "{name} should print `error: ...`, got:\n{stderr}"
    );
    stderr
}

/// Asserts that `text` contains each of `parts`.
#[track_caller]
fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            text.contains(part),
            "expected the message to mention {part:?}, got:\n{text}"
        );
    }
}

/// The error of a result that must fail (for results whose `Ok` type is not `Debug`, like `Model`).
#[track_caller]
fn expect_err<T>(result: fff_runtime::Result<T>) -> Error {
    match result {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e,
    }
}

/// The message of a plan that must fail to load with `Error::Plan`.
#[track_caller]
fn plan_error(bytes: &[u8]) -> String {
    match expect_err(Model::from_bytes(bytes)) {
        e @ Error::Plan(_) => e.to_string(),
        other => panic!("expected Error::Plan, got {other:?}"),
    }
}

/// The `fff-layer-customop` fixture compiled to plan bytes (once per test process).
fn fixture_plan() -> &'static [u8] {
    static PLAN: OnceLock<Vec<u8>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let onnx = std::fs::read(fixtures::get("fff-layer-customop").onnx).expect("read fixture");
        fff_compiler::compile_to_plan_bytes(&onnx, &fff_compiler::Options::default())
            .expect("the fixture compiles")
    })
}

/// A little-endian u64 field of a plan header.
fn header_u64(plan: &[u8], at: usize) -> usize {
    u64::from_le_bytes(plan[at..at + 8].try_into().unwrap()) as usize
}

/// Checks that a damaged plan fails to load through the library, `fffrun` and `fffc inspect`, each
/// message mentioning `parts`.
fn assert_bad_plan(scratch: &Scratch, name: &str, plan: &[u8], parts: &[&str]) {
    let lib = plan_error(plan);
    assert_mentions(&lib, &["invalid plan"]);
    assert_mentions(&lib, parts);

    let path = scratch.file(name, plan);
    let input = fixtures::get("fff-layer-customop").input;
    for stderr in [
        cli_error("fffrun", &[path.as_os_str(), input.as_os_str()]),
        cli_error("fffc", &[OsStr::new("inspect"), path.as_os_str()]),
    ] {
        assert_mentions(&stderr, &["invalid plan", &path.display().to_string()]);
        assert_mentions(&stderr, parts);
    }
}

/// Checks that ONNX bytes fail to compile through the library and `fffc compile`, each message
/// mentioning `parts`; returns the library's error.
fn assert_bad_onnx(scratch: &Scratch, onnx: &[u8], parts: &[&str]) -> CompileError {
    let err =
        fff_compiler::compile_to_plan_bytes(onnx, &fff_compiler::Options::default()).unwrap_err();
    assert_mentions(&err.to_string(), parts);

    let path = scratch.file("model.onnx", onnx);
    let out = scratch.missing("model.fff");
    let stderr = cli_error(
        "fffc",
        &[
            OsStr::new("compile"),
            path.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
        ],
    );
    assert_mentions(&stderr, &["cannot compile", &path.display().to_string()]);
    assert_mentions(&stderr, parts);
    assert!(!out.exists(), "a failed compile must not write a plan");
    err
}

/// A model with inputs `a: [batch, seq]`, `b: [batch, seq]` and `c: [batch, 4]` (all float32) and
/// outputs `sum = a + b` and `r = relu(c)`, compiled to plan bytes.
fn small_plan() -> Vec<u8> {
    let mut m = OnnxBuilder::new(17);
    let a = m.input("a", Elem::Float, &[D::S("batch"), D::S("seq")]);
    let b = m.input("b", Elem::Float, &[D::S("batch"), D::S("seq")]);
    let c = m.input("c", Elem::Float, &[D::S("batch"), D::N(4)]);
    let sum = m.node("Add", &[&a, &b], vec![]);
    m.rename(&sum, "sum");
    let r = m.node("Relu", &[&c], vec![]);
    m.rename(&r, "r");
    m.output("sum", Elem::Float, &[D::S("batch"), D::S("seq")]);
    m.output("r", Elem::Float, &[D::S("batch"), D::N(4)]);
    fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
        .expect("the small model compiles")
}

/// Inputs by name and shape (each filled with float32 zeros).
type Shapes<'a> = &'a [(&'a str, &'a [usize])];

/// The same zero inputs as tensors, for the library.
fn zero_tensors(inputs: Shapes) -> Vec<(String, Tensor)> {
    inputs
        .iter()
        .map(|(name, shape)| (name.to_string(), Tensor::zeros(DType::F32, shape)))
        .collect()
}

/// The same zero inputs as plain-form JSON, for `fffrun`.
fn zero_json(inputs: Shapes) -> String {
    fn nested(shape: &[usize]) -> Value {
        match shape.split_first() {
            None => json!(0.0),
            Some((&n, rest)) => Value::Array(vec![nested(rest); n]),
        }
    }
    let map: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|(name, shape)| (name.to_string(), nested(shape)))
        .collect();
    Value::Object(map).to_string()
}

/// Runs a plan on `tensors` through the library, given owned and given borrowed, which must both fail
/// with the same `Error::Input`; returns the message.
fn run_input_error(plan: &[u8], tensors: Vec<(String, Tensor)>) -> String {
    let model = Model::from_bytes(plan).expect("the small plan loads");
    let message = |result| match expect_err(result) {
        e @ Error::Input(_) => e.to_string(),
        other => panic!("expected Error::Input, got {other:?}"),
    };
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.view()))
        .collect();
    let borrowed = message(model.run_borrowed(&views));
    let owned = message(model.run(tensors.clone()));
    assert_eq!(owned, borrowed, "the same inputs, owned and borrowed");
    owned
}

/// Runs `small_plan` on zero inputs of `inputs` through the library and `fffrun`; both must fail.
/// Returns (library message, fffrun stderr).
fn input_errors(test: &str, inputs: Shapes) -> (String, String) {
    let plan = small_plan();
    let lib = run_input_error(&plan, zero_tensors(inputs));
    let scratch = Scratch::new(test);
    let stderr = fffrun_error(&scratch, &plan, &zero_json(inputs));
    (lib, stderr)
}

/// Runs `fffrun` on a plan and an input file holding `json`, which must fail; returns stderr.
fn fffrun_error(scratch: &Scratch, plan: &[u8], json: &str) -> String {
    let model = scratch.file("model.fff", plan);
    let input = scratch.file("input.json", json);
    cli_error("fffrun", &[model, input])
}

// ---------------------------------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------------------------------

#[test]
fn unknown_op_names_op_node_and_opset() {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("batch"), D::N(4)]);
    let y = m.node("FooBar", &[&x], vec![]);
    m.rename(&y, "y");
    m.output("y", Elem::Float, &[D::S("batch"), D::N(4)]);

    let scratch = Scratch::new("unknown_op");
    let err = assert_bad_onnx(
        &scratch,
        &m.to_bytes(),
        &["unsupported op 'FooBar'", "node 'FooBar_1'", "opset 17"],
    );
    assert!(matches!(err, CompileError::UnsupportedOp { .. }), "{err:?}");
}

#[test]
fn malformed_onnx_is_rejected() {
    let scratch = Scratch::new("malformed_onnx");
    let garbage: Vec<u8> = (0u32..256)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = assert_bad_onnx(&scratch, &garbage, &["not a valid ONNX model"]);
    assert!(matches!(err, CompileError::Parse(_)), "{err:?}");

    let fixture = std::fs::read(fixtures::get("fff-layer-customop").onnx).unwrap();
    let err = assert_bad_onnx(
        &scratch,
        &fixture[..fixture.len() / 2],
        &["not a valid ONNX model"],
    );
    assert!(matches!(err, CompileError::Parse(_)), "{err:?}");
}

#[test]
fn undefined_value_in_graph_is_rejected() {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("batch"), D::N(4)]);
    let y = m.node("Add", &[&x, "ghost"], vec![]);
    m.rename(&y, "y");
    m.output("y", Elem::Float, &[D::S("batch"), D::N(4)]);

    let scratch = Scratch::new("undefined_value");
    let err = assert_bad_onnx(
        &scratch,
        &m.to_bytes(),
        &[
            "invalid graph",
            "node 'Add_1' reads 'ghost'",
            "no node, input or initializer defines",
        ],
    );
    assert!(matches!(err, CompileError::Graph(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------------
// Loading plans
// ---------------------------------------------------------------------------------------------------

#[test]
fn fixture_plan_is_valid() {
    // The damaged plans below are damaged copies of this one, which must load and run.
    let scratch = Scratch::new("fixture_plan_is_valid");
    assert!(Model::from_bytes(fixture_plan()).is_ok());
    let model = scratch.file("model.fff", fixture_plan());
    let input = fixtures::get("fff-layer-customop").input;
    let (code, stdout, stderr) = run_cli("fffrun", &[model, input]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with('{'), "{stdout}");
}

#[test]
fn truncated_plan_is_rejected() {
    let scratch = Scratch::new("truncated_plan");
    let plan = fixture_plan();
    for (len, says) in [
        (0, "file is 0 bytes, shorter than the 64-byte header"),
        (10, "file is 10 bytes, shorter than the 64-byte header"),
        (63, "file is 63 bytes, shorter than the 64-byte header"),
        (64, "truncated"),
        (plan.len() / 2, "truncated"),
        (plan.len() - 1, "truncated"),
    ] {
        assert_bad_plan(&scratch, &format!("cut{len}.fff"), &plan[..len], &[says]);
    }
}

#[test]
fn corrupted_plan_is_rejected() {
    let scratch = Scratch::new("corrupted_plan");
    let plan = fixture_plan();
    let (graph_off, graph_len) = (header_u64(plan, 16), header_u64(plan, 24));
    let (weights_off, weights_len) = (header_u64(plan, 32), header_u64(plan, 40));
    assert!(
        graph_len > 0 && weights_len > 0,
        "the fixture has a graph and weights"
    );

    for (name, at, says) in [
        (
            "graph.fff",
            graph_off + graph_len / 2,
            "graph section is corrupted",
        ),
        (
            "weights.fff",
            weights_off + weights_len / 2,
            "weights section is corrupted",
        ),
        ("magic.fff", 0, "not an fff plan (bad magic bytes)"),
    ] {
        let mut bad = plan.to_vec();
        bad[at] ^= 0x20;
        assert_bad_plan(&scratch, name, &bad, &[says]);
    }
}

#[test]
fn plan_of_another_version_is_rejected() {
    let scratch = Scratch::new("plan_version");
    let mut plan = fixture_plan().to_vec();
    plan[8..12].copy_from_slice(&99u32.to_le_bytes());
    assert_bad_plan(
        &scratch,
        "v99.fff",
        &plan,
        &[
            "format version 99 is not supported",
            "reads version 1",
            "recompile",
        ],
    );
}

// ---------------------------------------------------------------------------------------------------
// Running on bad inputs
// ---------------------------------------------------------------------------------------------------

#[test]
fn small_model_runs_on_valid_inputs() {
    // The inputs of the tests below are this valid set with one thing wrong.
    let inputs: Shapes = &[("a", &[2, 3]), ("b", &[2, 3]), ("c", &[2, 4])];
    let plan = small_plan();
    let model = Model::from_bytes(&plan).expect("the small plan loads");
    let outputs = model.run(zero_tensors(inputs)).expect("valid inputs run");
    assert_eq!(outputs.len(), 2);

    let scratch = Scratch::new("small_model_runs");
    let model = scratch.file("model.fff", &plan);
    let input = scratch.file("input.json", zero_json(inputs));
    let (code, stdout, stderr) = run_cli("fffrun", &[model, input]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_mentions(&stdout, &["\"sum\"", "\"r\""]);
}

#[test]
fn missing_input_is_named() {
    let (lib, cli) = input_errors("missing_input", &[("a", &[2, 3]), ("b", &[2, 3])]);
    for msg in [lib, cli] {
        assert_mentions(
            &msg,
            &["invalid input", "missing input 'c'", "float32 [batch, 4]"],
        );
    }
}

#[test]
fn unknown_input_is_named() {
    let (lib, cli) = input_errors(
        "unknown_input",
        &[("a", &[2, 3]), ("b", &[2, 3]), ("c", &[2, 4]), ("d", &[2])],
    );
    for msg in [lib, cli] {
        assert_mentions(
            &msg,
            &[
                "invalid input",
                "unknown input 'd'",
                r#"the model's inputs are ["a", "b", "c"]"#,
            ],
        );
    }
}

#[test]
fn wrong_dtype_is_named() {
    let plan = small_plan();
    let mut tensors = zero_tensors(&[("a", &[2, 3]), ("b", &[2, 3]), ("c", &[2, 4])]);
    tensors[0].1 = Tensor::zeros(DType::I64, &[2, 3]);
    let lib = run_input_error(&plan, tensors);
    assert_mentions(
        &lib,
        &[
            "invalid input",
            "input 'a' is int64, the model expects float32",
        ],
    );

    // Plain JSON takes its element type from the model (integers are fine for a float input), so the
    // dtype can only be wrong in the v2 form.
    let request = json!({"inputs": [
        {"name": "a", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
        {"name": "b", "shape": [2, 3], "datatype": "FP32", "data": [0, 0, 0, 0, 0, 0]},
        {"name": "c", "shape": [2, 4], "datatype": "FP32", "data": [0, 0, 0, 0, 0, 0, 0, 0]},
    ]});
    let scratch = Scratch::new("wrong_dtype");
    let cli = fffrun_error(&scratch, &plan, &request.to_string());
    assert_mentions(
        &cli,
        &[
            "invalid input",
            "input 'a' is INT64, the model expects float32 (FP32)",
        ],
    );
}

#[test]
fn wrong_rank_is_named() {
    let (lib, cli) = input_errors(
        "wrong_rank",
        &[("a", &[2, 3, 1]), ("b", &[2, 3]), ("c", &[2, 4])],
    );
    for msg in [lib, cli] {
        assert_mentions(
            &msg,
            &[
                "invalid input",
                "input 'a' has rank 3 (shape [2, 3, 1])",
                "expects rank 2 [batch, seq]",
            ],
        );
    }
}

#[test]
fn mismatched_symbolic_dims_are_named() {
    let (lib, cli) = input_errors(
        "symbolic_dims",
        &[("a", &[2, 3]), ("b", &[3, 3]), ("c", &[2, 4])],
    );
    for msg in [lib, cli] {
        assert_mentions(
            &msg,
            &[
                "invalid input",
                "input 'b' axis 0 (batch) is 3, but input 'a' set batch = 2",
            ],
        );
    }
}

#[test]
fn wrong_fixed_dim_is_named() {
    let (lib, cli) = input_errors(
        "fixed_dim",
        &[("a", &[2, 3]), ("b", &[2, 3]), ("c", &[2, 5])],
    );
    for msg in [lib, cli] {
        assert_mentions(
            &msg,
            &[
                "invalid input",
                "input 'c' axis 1 is 5, the model expects 4 [batch, 4]",
            ],
        );
    }
}

#[test]
fn malformed_json_input_is_rejected() {
    let scratch = Scratch::new("malformed_json");
    let json = r#"{"x": [1, 2,"#;
    let err =
        fff_runtime::io::parse_inputs(json, Model::from_bytes(fixture_plan()).unwrap().inputs())
            .unwrap_err();
    assert_mentions(
        &err.to_string(),
        &["invalid input", "malformed JSON", "EOF"],
    );

    let stderr = fffrun_error(&scratch, fixture_plan(), json);
    assert_mentions(
        &stderr,
        &["in input file", "input.json", "malformed JSON", "EOF"],
    );
}

// ---------------------------------------------------------------------------------------------------
// Missing files
// ---------------------------------------------------------------------------------------------------

/// Runs each CLI with one path that does not exist. Returns, for each run, its stderr and the context it
/// must give (naming the path), and the OS's own words for a missing file ("No such file or directory
/// (os error 2)").
fn missing_path_runs(scratch: &Scratch) -> (Vec<(String, String)>, String) {
    let onnx = scratch.missing("nope.onnx");
    let plan = scratch.missing("nope.fff");
    let json = scratch.missing("nope.json");
    let real_plan = scratch.file("model.fff", fixture_plan());
    let real_input = fixtures::get("fff-layer-customop").input;
    let cases: [(&str, Vec<&OsStr>, String); 4] = [
        (
            "fffc",
            vec![OsStr::new("compile"), onnx.as_os_str()],
            format!("cannot compile {}", onnx.display()),
        ),
        (
            "fffc",
            vec![OsStr::new("inspect"), plan.as_os_str()],
            format!("cannot load {}", plan.display()),
        ),
        (
            "fffrun",
            vec![plan.as_os_str(), real_input.as_os_str()],
            format!("cannot load model {}", plan.display()),
        ),
        (
            "fffrun",
            vec![real_plan.as_os_str(), json.as_os_str()],
            format!("cannot read input file {}", json.display()),
        ),
    ];
    let runs = cases
        .into_iter()
        .map(|(name, args, says)| (cli_error(name, &args), says))
        .collect();
    let not_found = std::fs::File::open(&onnx).unwrap_err().to_string();
    (runs, not_found)
}

#[test]
fn nonexistent_paths_are_named() {
    let scratch = Scratch::new("nonexistent_paths");
    let onnx = scratch.missing("nope.onnx");
    let plan = scratch.missing("nope.fff");

    let err = fff_compiler::compile_path(&onnx, &fff_compiler::Options::default()).unwrap_err();
    assert!(matches!(err, CompileError::Read { .. }), "{err:?}");
    assert_mentions(
        &err.to_string(),
        &[&format!("cannot read {}", onnx.display())],
    );
    match expect_err(Model::load(&plan)) {
        e @ Error::Io { .. } => assert_mentions(
            &e.to_string(),
            &[&format!("cannot open {}", plan.display())],
        ),
        other => panic!("expected Error::Io, got {other:?}"),
    }

    let (runs, not_found) = missing_path_runs(&scratch);
    for (stderr, says) in runs {
        assert_mentions(&stderr, &[&says, &not_found]);
    }
}

#[test]
fn missing_path_cause_is_printed_once() {
    let scratch = Scratch::new("missing_path_cause_once");
    let (runs, not_found) = missing_path_runs(&scratch);
    for (stderr, _) in runs {
        assert_eq!(
            stderr.matches(&not_found).count(),
            1,
            "the cause should appear once:\n{stderr}"
        );
    }
}

/// Shapes read from data that no machine can allocate, or no array can have, are left unfolded by the
/// compiler and fail with an error when the model runs (a failed allocation would abort the process,
/// which no caller can handle).
#[test]
fn absurd_shapes_from_data_are_errors() {
    /// The run-time error of a one-input model `y = x + ReduceSum(big)`.
    fn run_error(mut m: OnnxBuilder, x: &str, big: &str, len: usize) -> String {
        let s = m.node("ReduceSum", &[big], vec![]);
        let y = m.node("Add", &[&s, x], vec![]);
        m.rename(&y, "y");
        m.output("y", Elem::Float, &[D::N(len as i64)]);
        let plan =
            fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
                .expect("compiles unfolded");
        let x = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[len])));
        let model = Model::from_bytes(&plan).unwrap();
        expect_err(model.run(vec![("x".into(), x)])).to_string()
    }
    let cases: [(&str, Vec<i64>); 3] = [
        ("ConstantOfShape", vec![1 << 40, 1 << 20]),
        ("ConstantOfShape", vec![0, 1 << 62, 4]),
        ("Expand", vec![1 << 36, 4]),
    ];
    for (op, dims) in cases {
        let mut m = OnnxBuilder::new(17);
        let x = m.input("x", Elem::Float, &[D::N(4)]);
        let shape = m.ints("shape", &[dims.len() as i64], dims.clone());
        let big = if op == "Expand" {
            m.node("Expand", &[&x, &shape], vec![])
        } else {
            m.node("ConstantOfShape", &[&shape], vec![])
        };
        let msg = run_error(m, &x, &big, 4);
        assert_mentions(&msg, &[op, "too large", &format!("{:?}", dims[0])]);
    }

    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::N(1)]);
    let start = m.weight("start", &[], vec![0.0]);
    let limit = m.weight("limit", &[], vec![1e12]);
    let delta = m.weight("delta", &[], vec![1.0]);
    let r = m.node("Range", &[&start, &limit, &delta], vec![]);
    assert_mentions(&run_error(m, &x, &r, 1), &["Range", "too large"]);
}

/// A pattern pass must not assume the arity of an op it has not matched yet: here the value the GELU
/// pass follows back from an Erf comes from a one-input op.
#[test]
fn erf_of_a_unary_op_compiles_and_runs() {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("batch"), D::N(4)]);
    let r = m.node("Relu", &[&x], vec![]);
    let e = m.node("Erf", &[&r], vec![]);
    let one = m.weight("one", &[], vec![1.0]);
    let a = m.node("Add", &[&e, &one], vec![]);
    let y = m.node("Mul", &[&a, &x], vec![]);
    m.rename(&y, "y");
    m.output("y", Elem::Float, &[D::S("batch"), D::N(4)]);
    let plan =
        fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
            .unwrap();
    let model = Model::from_bytes(&plan).unwrap();
    let x = Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[2, 4]), 0.5));
    let out = model.run(vec![("x".into(), x)]).unwrap();
    let Tensor::F32(y) = &out[0].1 else {
        panic!("float output")
    };
    let want = (1.0 + libm_erf(0.5)) * 0.5;
    assert!(y.iter().all(|v| (v - want).abs() < 1e-6), "{y:?} vs {want}");
}

/// erf to float precision (Abramowitz and Stegun 7.1.26 is too coarse; this is the series).
fn libm_erf(x: f32) -> f32 {
    let x = x as f64;
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..40 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
}

// ---- thread limits, plans read into memory, contained panics ----

/// The fixture's input (JSON) parsed for `model`.
fn fixture_inputs(model: &Model) -> Vec<(String, Tensor)> {
    let json = std::fs::read_to_string(fixtures::get("fff-layer-customop").input).unwrap();
    fff_runtime::io::parse_inputs(&json, model.inputs())
        .unwrap()
        .0
}

/// Thread counts past [`fff_runtime::model::MAX_THREADS`] are refused before any thread starts,
/// through the library (loading from bytes and from a file) and `fffrun`'s flag.
#[test]
fn thread_counts_past_the_maximum_are_refused() {
    use fff_runtime::model::{Options, MAX_THREADS};
    let scratch = Scratch::new("threads");
    let path = scratch.file("model.fff", fixture_plan());
    for threads in [MAX_THREADS + 1, 1_000_000_000_000, usize::MAX] {
        let options = Options {
            threads,
            ..Default::default()
        };
        for result in [
            Model::from_bytes_with(fixture_plan(), options),
            Model::load_with(&path, options),
        ] {
            let e = expect_err(result).to_string();
            assert_mentions(
                &e,
                &[&threads.to_string(), &MAX_THREADS.to_string(), "threads"],
            );
        }
    }
    let input = fixtures::get("fff-layer-customop").input;
    for threads in ["1025", "1000000000000"] {
        // Under a 4 GiB address-space limit, so that a regression cannot start threads until the
        // machine runs out.
        let script = format!(
            "ulimit -v 4194304; exec '{}' --threads {threads} '{}' '{}'",
            common::bin("fffrun").display(),
            path.display(),
            input.display()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert_mentions(&stderr, &["--threads", threads, "at most 1024 threads"]);
    }
}

/// A plan loaded with `mmap: false` is read into memory: truncating its file, or overwriting it in
/// place, changes nothing for the loaded model (a mapped one would be killed by SIGBUS, or compute
/// with the new bytes).
#[test]
fn plans_read_into_memory_survive_changes_to_their_file() {
    use std::io::Write;
    let scratch = Scratch::new("no-mmap");
    let path = scratch.file("model.fff", fixture_plan());
    for threads in [1, 2] {
        let options = fff_runtime::model::Options {
            threads,
            mmap: false,
            ..Default::default()
        };
        let model = Model::load_with(&path, options).unwrap();
        let inputs = fixture_inputs(&model);
        let want = model.run(inputs.clone()).unwrap();
        // Overwritten in place (same length, no new file), then truncated to nothing.
        let len = fixture_plan().len();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(&vec![0xA5; len]).unwrap();
        file.sync_all().unwrap();
        assert_eq!(model.run(inputs.clone()).unwrap(), want);
        file.set_len(0).unwrap();
        assert_eq!(model.run(inputs.clone()).unwrap(), want);
        drop(file);
        std::fs::write(&path, fixture_plan()).unwrap();
    }
    // A file that is not all there is an error, as mapped.
    let cut = scratch.file("cut.fff", &fixture_plan()[..1000]);
    for mmap in [true, false] {
        let options = fff_runtime::model::Options {
            mmap,
            ..Default::default()
        };
        assert_mentions(
            &expect_err(Model::load_with(&cut, options)).to_string(),
            &["invalid plan"],
        );
    }
}

/// `fffrun --no-mmap` reads the plan into memory and prints what the mapped plan gives.
#[test]
fn fffrun_reads_the_plan_into_memory_with_no_mmap() {
    let scratch = Scratch::new("fffrun-no-mmap");
    let path = scratch.file("model.fff", fixture_plan());
    let input = fixtures::get("fff-layer-customop").input;
    let (code, mapped, stderr) = run_cli("fffrun", &[path.as_os_str(), input.as_os_str()]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, read, stderr) = run_cli(
        "fffrun",
        &[OsStr::new("--no-mmap"), path.as_os_str(), input.as_os_str()],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(read, mapped);
}

/// A panic during a run (here the caller's own observer's) comes back from `run_observed` as an
/// `Error::Internal`, not an unwinding into the caller, and the model keeps giving the same outputs,
/// on one thread (the caller's) and on a pool.
#[test]
fn a_panic_during_a_run_is_an_error_and_the_model_stays_usable() {
    for threads in [1, 2] {
        let options = fff_runtime::model::Options {
            threads,
            ..Default::default()
        };
        let model = Model::from_bytes_with(fixture_plan(), options).unwrap();
        let inputs = fixture_inputs(&model);
        let want = model.run(inputs.clone()).unwrap();
        for _ in 0..3 {
            let mut observe =
                |_: &fff_runtime::plan::PlanNode, _: &[Option<fff_runtime::TensorView>]| {
                    panic!("the observer gave up")
                };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.run_observed(inputs.clone(), &mut observe)
            }));
            match outcome {
                Ok(Err(Error::Internal(message))) => {
                    assert_mentions(&message, &["the observer gave up"])
                }
                Ok(other) => panic!("expected Error::Internal, got {:?}", other.map(|_| ())),
                Err(_) => panic!("the panic unwound out of run_observed ({threads} threads)"),
            }
            assert_eq!(model.run(inputs.clone()).unwrap(), want);
            let views: Vec<_> = inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
            assert_eq!(model.run_borrowed(&views).unwrap(), want);
        }
    }
}
