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
            "reads versions 1 to 2",
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

// ---- values written twice ----

/// A model `x: [batch, 4]` → `y = relu(x)` whose output value `y` a second node, `Neg(x)`, writes too.
#[test]
fn value_written_by_two_nodes_is_rejected() {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("batch"), D::N(4)]);
    let first = m.node("Relu", &[&x], vec![]);
    m.rename(&first, "y");
    let second = m.node("Neg", &[&x], vec![]);
    m.rename(&second, "y");
    m.output("y", Elem::Float, &[D::S("batch"), D::N(4)]);

    let scratch = Scratch::new("written_by_two_nodes");
    let err = assert_bad_onnx(
        &scratch,
        &m.to_bytes(),
        &[
            "invalid graph",
            "value 'y' is written twice",
            "node 'Relu_1'",
            "node 'Neg_2'",
        ],
    );
    assert!(matches!(err, CompileError::Graph(_)), "{err:?}");
}

#[test]
fn node_writing_a_graph_input_is_rejected() {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("batch"), D::N(4)]);
    m.input("z", Elem::Float, &[D::S("batch"), D::N(4)]);
    let y = m.node("Relu", &[&x], vec![]);
    m.rename(&y, "z");
    m.output("z", Elem::Float, &[D::S("batch"), D::N(4)]);

    let scratch = Scratch::new("writing_a_graph_input");
    assert_bad_onnx(
        &scratch,
        &m.to_bytes(),
        &[
            "value 'z' is written twice",
            "by a graph input",
            "node 'Relu_1'",
        ],
    );
}

#[test]
fn node_writing_an_initializer_is_rejected() {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("batch"), D::N(4)]);
    let w = m.weight("w", &[4], vec![1.0, 2.0, 3.0, 4.0]);
    let y = m.node("Add", &[&x, &w], vec![]);
    m.rename(&y, "y");
    let shadow = m.node("Neg", &[&x], vec![]);
    m.rename(&shadow, "w");
    m.output("y", Elem::Float, &[D::S("batch"), D::N(4)]);

    let scratch = Scratch::new("writing_an_initializer");
    assert_bad_onnx(
        &scratch,
        &m.to_bytes(),
        &[
            "value 'w' is written twice",
            "by an initializer",
            "node 'Neg_2'",
        ],
    );
}

/// Empty output names mark optional outputs left out; they may repeat, within a node and across nodes.
#[test]
fn empty_optional_outputs_may_repeat() {
    use prost::Message;

    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("batch"), D::N(4)]);
    let g = m.weight("g", &[4], vec![1.0; 4]);
    let a = m.node_in("", "LayerNormalization", &[&x, &g], vec![], 3);
    let b = m.node_in("", "Dropout", &[&a[0]], vec![], 2);
    m.rename(&b[0], "y");
    m.output("y", Elem::Float, &[D::S("batch"), D::N(4)]);
    let mut proto = m.build();
    for node in &mut proto.graph.as_mut().unwrap().node {
        for out in node.output.iter_mut().skip(1) {
            out.clear();
        }
    }
    fff_compiler::compile_to_plan_bytes(&proto.encode_to_vec(), &Default::default()).unwrap();
}

// ---- output files and standard output ----

/// The ONNX model behind `small_plan`.
fn small_onnx() -> Vec<u8> {
    let mut m = OnnxBuilder::new(17);
    let a = m.input("a", Elem::Float, &[D::S("batch"), D::S("seq")]);
    let b = m.input("b", Elem::Float, &[D::S("batch"), D::S("seq")]);
    let sum = m.node("Add", &[&a, &b], vec![]);
    m.rename(&sum, "sum");
    m.output("sum", Elem::Float, &[D::S("batch"), D::S("seq")]);
    m.to_bytes()
}

/// Runs `command` (a shell command line) under `sh -c` and returns its exit code, stdout and stderr.
fn run_sh(command: &str) -> (Option<i32>, String, String) {
    let out = Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("run sh");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The names in a folder, sorted.
fn folder_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the scratch folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn output_naming_an_input_is_refused() {
    let scratch = Scratch::new("output_is_input");
    let onnx = scratch.file("model.onnx", small_onnx());
    let stderr = cli_error("fffc", &[s("compile"), s(&onnx), s("-o"), s(&onnx)]);
    assert_mentions(
        &stderr,
        &["output file", "is the input model", "model.onnx"],
    );
    assert_eq!(
        std::fs::read(&onnx).unwrap(),
        small_onnx(),
        "the ONNX is untouched"
    );

    let plan = scratch.file("model.fff", small_plan());
    let input = scratch.file(
        "input.json",
        zero_json(&[("a", &[1, 2]), ("b", &[1, 2]), ("c", &[1, 4])]),
    );
    let before = std::fs::read(&input).unwrap();
    // The same files under other spellings: the check compares files, not names.
    let input_again = scratch.0.join(".").join("input.json");
    for (target, what) in [(&plan, "the model"), (&input_again, "the input file")] {
        let stderr = cli_error("fffrun", &[s(&plan), s(&input), s("-o"), s(target)]);
        assert_mentions(&stderr, &["output file", what]);
    }
    assert_eq!(
        std::fs::read(&plan).unwrap(),
        small_plan(),
        "the plan is untouched"
    );
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input is untouched"
    );
}

/// An `OsString` of anything path-like, for mixed argument lists.
fn s(p: impl AsRef<OsStr>) -> std::ffi::OsString {
    p.as_ref().to_os_string()
}

/// A write that fails part-way (the file-size limit `ulimit -f 1`, 512 bytes, with SIGXFSZ ignored so
/// that the write returns an error instead of killing the process) leaves the previous output whole
/// and no temporary file behind, for both tools.
#[test]
fn failed_write_keeps_the_previous_output() {
    let scratch = Scratch::new("failed_write");
    // A model with weights, whose plan is larger than the limit.
    let onnx = scratch.file(
        "model.onnx",
        std::fs::read(fixtures::get("fff-layer-customop").onnx).unwrap(),
    );
    let plan = scratch.0.join("model.fff");
    let (code, _, stderr) = run_cli("fffc", &[s("compile"), s(&onnx), s("-o"), s(&plan)]);
    assert_eq!(code, Some(0), "{stderr}");
    // The small model (output `sum` of 1024 elements), whose outputs are larger than the limit.
    let small = scratch.file("small.fff", small_plan());
    let input = scratch.file(
        "input.json",
        zero_json(&[("a", &[16, 64]), ("b", &[16, 64]), ("c", &[16, 4])]),
    );
    let out = scratch.0.join("out.json");
    let (code, _, stderr) = run_cli("fffrun", &[s(&small), s(&input), s("-o"), s(&out)]);
    assert_eq!(code, Some(0), "{stderr}");
    let good_plan = std::fs::read(&plan).unwrap();
    let good_out = std::fs::read(&out).unwrap();
    assert!(good_plan.len() > 512 && good_out.len() > 512);
    let before = folder_entries(&scratch.0);

    let limited = |args: &[&std::path::Path], bin_name: &str| {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.display())).collect();
        run_sh(&format!(
            "trap '' XFSZ; ulimit -f 1; exec '{}' {}",
            bin(bin_name).display(),
            quoted.join(" ")
        ))
    };
    let o = std::path::Path::new("-o");
    let (code, _, stderr) = limited(&[std::path::Path::new("compile"), &onnx, o, &plan], "fffc");
    assert_eq!(code, Some(1), "{stderr}");
    assert_mentions(&stderr, &["error: ", "model.fff"]);
    let (code, _, stderr) = limited(&[&small, &input, o, &out], "fffrun");
    assert_eq!(code, Some(1), "{stderr}");
    assert_mentions(&stderr, &["error: cannot write output file", "out.json"]);

    // Compared without printing the bytes.
    assert!(
        std::fs::read(&plan).unwrap() == good_plan,
        "the plan is whole"
    );
    assert!(
        std::fs::read(&out).unwrap() == good_out,
        "the outputs are whole"
    );
    assert_eq!(
        folder_entries(&scratch.0),
        before,
        "no temporary file is left"
    );
}

/// Outputs written to a closed standard output are an error (exit 1), not silently lost.
#[test]
fn closed_stdout_is_an_error() {
    let scratch = Scratch::new("closed_stdout");
    let plan = scratch.file("model.fff", small_plan());
    let input = scratch.file(
        "input.json",
        zero_json(&[("a", &[1, 2]), ("b", &[1, 2]), ("c", &[1, 4])]),
    );
    let (code, stdout, stderr) = run_sh(&format!(
        "exec '{}' '{}' '{}' >&-",
        bin("fffrun").display(),
        plan.display(),
        input.display()
    ));
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert_mentions(
        &stderr,
        &["error: cannot write the outputs to standard output"],
    );
    let (code, _, stderr) = run_sh(&format!(
        "exec '{}' inspect '{}' >&-",
        bin("fffc").display(),
        plan.display()
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert_mentions(
        &stderr,
        &["error: cannot write the description to standard output"],
    );
    // Output sent to /dev/null on purpose is written, not an error.
    let (code, _, stderr) = run_sh(&format!(
        "exec '{}' '{}' '{}' >/dev/null",
        bin("fffrun").display(),
        plan.display(),
        input.display()
    ));
    assert_eq!(code, Some(0), "{stderr}");
}

// ---- .npz members checked before they are inflated ----

/// Writes an `.npz` whose members are float32 arrays of zeros, deflated as they are written (so
/// neither the test nor the file holds their bytes: 1 GiB of zeros deflates to about 1 MiB).
fn zeros_npz(path: &std::path::Path, members: &[(&str, &[u64])]) {
    use npyz::zip::{write::FileOptions, CompressionMethod, ZipWriter};
    use std::io::Write;
    let mut zip = ZipWriter::new(std::fs::File::create(path).expect("create the .npz"));
    for (name, shape) in members {
        let options = FileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .large_file(true);
        zip.start_file(format!("{name}.npy"), options).unwrap();
        let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
        let mut dict = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
            dims.join(" ")
        );
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        zip.write_all(b"\x93NUMPY\x01\x00").unwrap();
        zip.write_all(&(dict.len() as u16).to_le_bytes()).unwrap();
        zip.write_all(dict.as_bytes()).unwrap();
        let mut left = shape.iter().product::<u64>() * 4;
        let chunk = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            zip.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    }
    zip.finish().unwrap();
}

/// Runs `fffrun` under an address-space limit of 512 MiB, well under the 1 GiB that inflating a
/// member would take; returns its exit code and stderr.
fn fffrun_limited(model: &std::path::Path, input: &std::path::Path) -> (Option<i32>, String) {
    let (code, _, stderr) = run_sh(&format!(
        "ulimit -v 524288; exec '{}' '{}' '{}' --threads 1",
        bin("fffrun").display(),
        model.display(),
        input.display()
    ));
    (code, stderr)
}

#[test]
fn npz_member_of_no_input_is_refused_before_inflating() {
    let scratch = Scratch::new("npz_unknown_member");
    let model = scratch.file("model.fff", small_plan());
    let npz = scratch.0.join("in.npz");
    zeros_npz(&npz, &[("big", &[1 << 28]), ("a", &[1, 2])]);
    assert!(std::fs::metadata(&npz).unwrap().len() < 4 << 20);
    let (code, stderr) = fffrun_limited(&model, &npz);
    assert_eq!(code, Some(1), "{stderr}");
    assert_mentions(&stderr, &["error: ", "array 'big'", "unknown input 'big'"]);
}

#[test]
fn npz_member_of_the_wrong_shape_is_refused_before_inflating() {
    let scratch = Scratch::new("npz_wrong_shape");
    let model = scratch.file("model.fff", small_plan());
    let npz = scratch.0.join("in.npz");
    // `c` is [batch, 4]: a second dimension of 1 is wrong, whatever the batch.
    zeros_npz(&npz, &[("c", &[1 << 28, 1])]);
    let (code, stderr) = fffrun_limited(&model, &npz);
    assert_eq!(code, Some(1), "{stderr}");
    assert_mentions(
        &stderr,
        &[
            "error: ",
            "array 'c'",
            "has shape [268435456, 1]",
            "[batch, 4]",
        ],
    );
}

// ---- JSON inputs read in bounded memory ----

/// A 50 MB JSON input of 10^7 numbers, run through `fffrun` under an address-space limit of 512 MiB:
/// the numbers take 40 MB as float32; the debug build reading them straight into a buffer needs about
/// 300 MiB of address space, while the JSON tree they used to be read into took 900 MB (it aborted
/// under 800 MiB).
#[test]
fn large_json_input_is_read_in_bounded_memory() {
    let scratch = Scratch::new("large_json");
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::S("n")]);
    let y = m.node("ReduceSum", &[&x], vec![]);
    m.rename(&y, "y");
    m.output("y", Elem::Float, &[D::N(1)]);
    let plan =
        fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
            .expect("the sum model compiles");
    let model = scratch.file("model.fff", plan);
    let n = 10_000_000;
    let mut json = String::with_capacity(5 * n + 16);
    json.push_str("{\"x\": [");
    for i in 0..n {
        json.push_str(if i == 0 { "0.25" } else { ",0.25" });
    }
    json.push_str("]}");
    let input = scratch.file("input.json", json);
    let (code, stdout, stderr) = run_sh(&format!(
        "ulimit -v {}; exec '{}' '{}' '{}' --threads 1",
        LARGE_JSON_LIMIT_KB,
        bin("fffrun").display(),
        model.display(),
        input.display()
    ));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), r#"{"y":[2500000.0]}"#);
}

/// The address-space limit of `large_json_input_is_read_in_bounded_memory`.
const LARGE_JSON_LIMIT_KB: u64 = 512 * 1024;

// ---- memory budget ----

/// Runs a binary with its address space limited to `kib` KiB (`ulimit -v`, in a shell that then
/// becomes the binary), so that no allocation of the child can take more of the machine; returns
/// its exit code (`None` when a signal ended it), stdout and stderr.
fn run_cli_limited<S: AsRef<OsStr>>(
    kib: u64,
    name: &str,
    args: &[S],
) -> (Option<i32>, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} under ulimit: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_cli_limited`] for a run that must fail cleanly (exit 1, `error: ...`); returns stderr.
fn cli_error_limited<S: AsRef<OsStr>>(kib: u64, name: &str, args: &[S]) -> String {
    let (code, stdout, stderr) = run_cli_limited(kib, name, args);
    assert!(!stderr.contains("panicked"), "{name} panicked:\n{stderr}");
    assert_eq!(
        code,
        Some(1),
        "{name} should exit with 1 (None: killed by a signal)\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{name}: {stderr}");
    stderr
}

/// 4 GiB of address space: the limit under which the issue saw a 6.4 GB MatMul abort.
const FOUR_GIB_IN_KIB: u64 = 4 << 20;

/// A model whose output is `Expand(x, shape)` (x: `[1]` float32) or, with `op` "ConstantOfShape",
/// `ConstantOfShape(shape)`, or with "Tile", `Tile(x, shape)`: one node whose size an int64 input,
/// `shape` (`[rank]`), sets at run time.
fn input_sized_plan(op: &str, rank: i64) -> Vec<u8> {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::N(1)]);
    let shape = m.input("shape", Elem::Int64, &[D::N(rank)]);
    let y = match op {
        "ConstantOfShape" => m.node("ConstantOfShape", &[&shape], vec![]),
        "Tile" => m.node("Tile", &[&x, &shape], vec![]),
        _ => m.node("Expand", &[&x, &shape], vec![]),
    };
    // Keeps x an input of a model whose output does not read it.
    let unused = m.node("Neg", &[&x], vec![]);
    m.rename(&y, "y");
    m.rename(&unused, "neg");
    let dims: Vec<D> = ["d0", "d1"][..rank as usize]
        .iter()
        .map(|&d| D::S(d))
        .collect();
    m.output("y", Elem::Float, &dims);
    m.output("neg", Elem::Float, &[D::N(1)]);
    fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
        .unwrap_or_else(|e| panic!("the {op} model compiles: {e}"))
}

/// The inputs of [`input_sized_plan`], as tensors.
fn input_sized_inputs(shape: &[i64]) -> Vec<(String, Tensor)> {
    vec![
        (
            "x".into(),
            Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1]))),
        ),
        ("shape".into(), Tensor::vec_i64(shape.to_vec())),
    ]
}

/// The issue's test: an Expand to 8 GiB is refused under `--max-memory 1G`, at once (within a second,
/// with slack for a loaded machine), naming the node and the size, and without allocating (the address
/// space is limited below 8 GiB, but the message shows the budget refused it, not the allocator).
#[test]
fn max_memory_refuses_an_expand_to_8_gib_within_a_second() {
    let scratch = Scratch::new("budget-expand");
    let model = scratch.file("model.fff", input_sized_plan("Expand", 2));
    let input = scratch.file("input.json", r#"{"x": [1.0], "shape": [2, 1073741824]}"#);
    let start = std::time::Instant::now();
    let stderr = cli_error_limited(
        FOUR_GIB_IN_KIB,
        "fffrun",
        &[
            model.as_os_str(),
            input.as_os_str(),
            OsStr::new("--max-memory"),
            OsStr::new("1G"),
        ],
    );
    let elapsed = start.elapsed();
    assert_mentions(
        &stderr,
        &[
            "(Expand)",
            "[2, 1073741824]",
            "8589934592 bytes",
            "memory budget of 1.00 GiB",
        ],
    );
    assert!(elapsed.as_secs_f64() < 5.0, "took {elapsed:?}");

    // Within the budget the same model runs.
    let small = scratch.file("small.json", r#"{"x": [1.0], "shape": [2, 3]}"#);
    let (code, stdout, stderr) = run_cli(
        "fffrun",
        &[model, small, "--max-memory".into(), "1G".into()],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_mentions(&stdout, &["[[1.0,1.0,1.0],[1.0,1.0,1.0]]"]);
}

/// `--max-memory` takes bytes or K, M, G, T, and refuses anything else with a message saying what a
/// size looks like.
#[test]
fn max_memory_sizes_are_parsed_and_garbage_is_refused() {
    let scratch = Scratch::new("budget-sizes");
    let model = scratch.file("model.fff", input_sized_plan("Expand", 2));
    let input = scratch.file("input.json", r#"{"x": [1.0], "shape": [2, 3]}"#);
    for good in ["64K", "512M", "1g", "4096"] {
        let (code, _, stderr) = run_cli(
            "fffrun",
            &[
                model.as_os_str(),
                input.as_os_str(),
                "--max-memory".as_ref(),
                good.as_ref(),
            ],
        );
        assert_eq!(code, Some(0), "--max-memory {good}: {stderr}");
    }
    for bad in ["lots", "1.5G", "-1G", "0", "12Q", "99999999999999999999"] {
        let flag = format!("--max-memory={bad}");
        let (code, _, stderr) = run_cli(
            "fffrun",
            &[model.as_os_str(), input.as_os_str(), flag.as_ref()],
        );
        assert_ne!(code, Some(0), "--max-memory {bad} was accepted");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_mentions(&stderr, &["--max-memory", bad]);
    }
    // Too small for the run: refused by the budget, not by the parser.
    let stderr = cli_error(
        "fffrun",
        &[model, input, "--max-memory".into(), "16".into()],
    );
    assert_mentions(&stderr, &["(Expand)", "memory budget of 16 bytes"]);
}

/// Through the library: `Options::max_memory` bounds a call, owned inputs or borrowed, and an error
/// names the node and the size; calls within the budget still run, on the same model.
#[test]
fn options_max_memory_refuses_a_call_past_it() {
    let plan = input_sized_plan("Expand", 2);
    let options = fff_runtime::model::Options {
        max_memory: 1 << 30,
        ..Default::default()
    };
    let model = Model::from_bytes_with(&plan, options).unwrap();
    assert_eq!(model.max_memory(), 1 << 30);
    let inputs = input_sized_inputs(&[2, 1 << 30]);
    let views: Vec<_> = inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
    for e in [
        expect_err(model.run(inputs.clone())),
        expect_err(model.run_borrowed(&views)),
    ] {
        let Error::Node { node, op, cause } = &e else {
            panic!("expected Error::Node, got {e:?}");
        };
        assert_eq!(op, "Expand", "{e}");
        assert!(node.starts_with("Expand"), "{e}");
        assert!(matches!(**cause, Error::TooLarge(_)), "{e:?}");
        assert_mentions(&e.to_string(), &["8589934592 bytes", "memory budget"]);
    }
    let out = model.run(input_sized_inputs(&[4, 5])).unwrap();
    assert_eq!(out[0].1.shape(), &[4, 5]);
}

/// Outputs no larger than their inputs (copies, here) are counted once the node has run: a call whose
/// values held at once pass the budget fails at the node that took it past.
#[test]
fn values_held_at_once_are_counted_against_the_budget() {
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::N(256)]);
    let a = m.node("Neg", &[&x], vec![]);
    let b = m.node("Abs", &[&x], vec![]);
    m.rename(&a, "a");
    m.rename(&b, "b");
    m.output("a", Elem::Float, &[D::N(256)]);
    m.output("b", Elem::Float, &[D::N(256)]);
    let plan =
        fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
            .unwrap();
    let x = || vec![("x".to_string(), Tensor::zeros(DType::F32, &[256]))];
    // x (1 KiB, owned) and the first output make 2 KiB; the second takes x's buffer over, as x's
    // last reader, so the peak stays 2 KiB.
    let model = |max_memory| {
        let options = fff_runtime::model::Options {
            max_memory,
            ..Default::default()
        };
        Model::from_bytes_with(&plan, options).unwrap()
    };
    assert!(model(2048).run(x()).is_ok());
    let e = expect_err(model(2047).run(x()));
    assert!(matches!(&e, Error::Node { cause, .. } if matches!(**cause, Error::TooLarge(_))));
    assert_mentions(
        &e.to_string(),
        &["(2048 bytes)", "memory budget of 2.00 KiB (2047 bytes)"],
    );
}

/// A run-time MatMul of 6.4 GB under a 4 GiB address-space limit: an error naming the node and the
/// size, not an abort. The default budget is no more than the address-space limit leaves.
#[test]
fn a_matmul_past_the_address_space_limit_is_an_error_not_an_abort() {
    let mut m = OnnxBuilder::new(17);
    let a = m.input("a", Elem::Float, &[D::N(80_000), D::N(1)]);
    let b = m.input("b", Elem::Float, &[D::N(1), D::N(20_000)]);
    let y = m.node("MatMul", &[&a, &b], vec![]);
    m.rename(&y, "y");
    m.output("y", Elem::Float, &[D::N(80_000), D::N(20_000)]);
    let plan =
        fff_compiler::compile_to_plan_bytes(&m.to_bytes(), &fff_compiler::Options::default())
            .unwrap();
    let scratch = Scratch::new("budget-matmul");
    let model = scratch.file("model.fff", plan);
    let input = scratch.file(
        "input.json",
        zero_json(&[("a", &[80_000, 1]), ("b", &[1, 20_000])]),
    );
    let stderr = cli_error_limited(FOUR_GIB_IN_KIB, "fffrun", &[model, input]);
    assert_mentions(
        &stderr,
        &[
            "(MatMul)",
            "[80000, 20000]",
            "6400000000 bytes",
            "memory budget",
        ],
    );
}

/// ConstantOfShape and Tile of 40 GB, sized by an input, are refused by the default budget: never
/// allocated, whatever the allocator (mimalloc maps without reserving, so a fallible reservation alone
/// let them through to the OOM killer). The child's address space is limited to 8 GiB, which bounds
/// the default budget on any machine.
#[test]
fn default_budget_refuses_40_gb_asked_for_by_an_input() {
    let scratch = Scratch::new("budget-default");
    for (op, shape) in [
        ("ConstantOfShape", "[10, 1000000000]"),
        ("Tile", "[10000000000]"),
    ] {
        let rank = if op == "Tile" { 1 } else { 2 };
        let model = scratch.file("model.fff", input_sized_plan(op, rank));
        let input = scratch.file("input.json", format!(r#"{{"x": [1.0], "shape": {shape}}}"#));
        let stderr = cli_error_limited(2 * FOUR_GIB_IN_KIB, "fffrun", &[model, input]);
        assert_mentions(
            &stderr,
            &[&format!("({op})"), "40000000000 bytes", "memory budget"],
        );
    }
}

/// The default budget is the memory available when the model loads: positive, and no more than the
/// machine has.
#[test]
fn default_budget_is_at_most_the_machines_memory() {
    let model = Model::from_bytes(&input_sized_plan("Expand", 2)).unwrap();
    assert!(model.max_memory() > 0);
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        let total_kib: usize = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("MemTotal in /proc/meminfo");
        assert!(model.max_memory() <= total_kib * 1024);
    }
}

/// `fffc` leaves a constant outer product of 40 GB unfolded, as it does every fold past its size
/// limit, and compiles; the run is then refused by the budget. The compile runs with 4 GiB of address
/// space, under which an attempt to fold aborted.
#[test]
fn a_huge_constant_matmul_is_not_folded() {
    let n = 100_000;
    let mut m = OnnxBuilder::new(17);
    let x = m.input("x", Elem::Float, &[D::N(1), D::N(1)]);
    let a = m.weight("a", &[n, 1], vec![1.0; n as usize]);
    let b = m.weight("b", &[1, n], vec![1.0; n as usize]);
    let outer = m.node("MatMul", &[&a, &b], vec![]);
    let y = m.node("Mul", &[&outer, &x], vec![]);
    m.rename(&y, "y");
    m.output("y", Elem::Float, &[D::N(n), D::N(n)]);
    let scratch = Scratch::new("budget-fold");
    let onnx = scratch.file("outer.onnx", m.to_bytes());
    let plan = scratch.missing("outer.fff");
    let (code, _, stderr) = run_cli_limited(
        FOUR_GIB_IN_KIB,
        "fffc",
        &[
            OsStr::new("compile"),
            onnx.as_os_str(),
            OsStr::new("-o"),
            plan.as_os_str(),
        ],
    );
    assert_eq!(
        code,
        Some(0),
        "fffc should compile (None: killed by a signal):\n{stderr}"
    );
    let input = scratch.file("input.json", r#"{"x": [[2.0]]}"#);
    let stderr = cli_error_limited(
        FOUR_GIB_IN_KIB,
        "fffrun",
        &[
            plan.as_os_str(),
            input.as_os_str(),
            OsStr::new("--max-memory"),
            OsStr::new("1G"),
        ],
    );
    assert_mentions(&stderr, &["40000000000 bytes", "memory budget"]);
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
