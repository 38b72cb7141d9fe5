//! Damaged files, by the thousand: plans and ONNX models with random bytes changed, truncated or
//! duplicated, and plans whose graph or weights were altered and then re-sealed with valid checksums
//! (so that the damage reaches the validator and the ops), and ONNX models with an attribute, a shape,
//! an initializer, an edge or an op type altered (so that the damage reaches the importer and the
//! passes), must give errors, never panics. A seeded,
//! bounded fuzz of the plan loader, the runtime behind it and the importer, run with every test.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use fff_models::fixtures;
use fff_runtime::Model;
use prost::Message;
use serde_json::Value;
use tract_onnx::pb::{tensor_shape_proto::dimension, type_proto, ModelProto};

/// Seeds per file and kind of damage: `FFF_FUZZ_SEEDS` for a longer search, else `default`.
fn seeds(default: u64) -> u64 {
    std::env::var("FFF_FUZZ_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fixtures the fuzz damages: `FFF_FUZZ_FIXTURES` (comma-separated), else a FFF layer and a BERT.
fn fuzzed_fixtures() -> Vec<&'static str> {
    match std::env::var("FFF_FUZZ_FIXTURES") {
        // Fixture names live for the whole test run.
        Ok(list) => list.leak().split(',').collect(),
        Err(_) => vec!["fff-layer-customop", "bert-tiny"],
    }
}

/// xorshift64*, so that every failure names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    /// The generator of one case, from its seed (spread so that neighbouring seeds differ early).
    fn for_seed(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A fixture compiled to plan bytes, and its input (JSON).
fn compiled_fixture(name: &'static str) -> (Vec<u8>, String) {
    let f = fixtures::get(name);
    let onnx = std::fs::read(&f.onnx).unwrap();
    let plan =
        fff_compiler::compile_to_plan_bytes(&onnx, &fff_compiler::Options::default()).unwrap();
    (plan, std::fs::read_to_string(&f.input).unwrap())
}

/// `bytes` with one random kind of damage: bytes overwritten (random values or extreme integers),
/// a truncation, or a span duplicated.
fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(b.len());
                b[at] = rng.next() as u8;
            }
        }
        1 => {
            // An 8-byte field set to an extreme value, where plan headers and lengths live.
            let at = rng.below(b.len().saturating_sub(8)) & !7;
            let v = [u64::MAX, 1 << 40, 0, i64::MAX as u64, 1 << 31][rng.below(5)];
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        2 => {
            // Early bytes carry the headers and graph: damage there most often.
            let span = (b.len() / 8).max(1);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(span);
                b[at] = rng.next() as u8;
            }
        }
        3 => b.truncate(rng.below(b.len())),
        _ => {
            let from = rng.below(b.len());
            let len = rng.below(64).min(b.len() - from);
            let span = b[from..from + len].to_vec();
            let at = rng.below(b.len());
            b.splice(at..at, span);
        }
    }
    b
}

/// Loads `plan` and, if it loads, runs it on `input` (JSON); any panic fails the test. Odd seeds load
/// with the weight panels repacked to 16 columns, as CPUs without AVX-512 do, whatever this one has.
fn load_and_run(plan: &[u8], input: &str, seed: u64) {
    let options = fff_runtime::model::Options {
        panel_cols: if seed % 2 == 1 { 16 } else { 0 },
        ..Default::default()
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let Ok(model) = Model::from_bytes_with(plan, options) else {
            return;
        };
        if let Ok((inputs, _)) = fff_runtime::io::parse_inputs(input, model.inputs()) {
            let _ = model.run(inputs);
        }
    }));
    assert!(outcome.is_ok(), "a damaged plan panicked (seed {seed})");
}

#[test]
fn damaged_plans_give_errors_not_panics() {
    for name in fuzzed_fixtures() {
        let (plan, input) = compiled_fixture(name);
        for seed in 1..=seeds(400) {
            let mut rng = Rng::for_seed(seed);
            let damaged = mutate(&plan, &mut rng);
            load_and_run(&damaged, &input, seed);
        }
    }
}

#[test]
fn damaged_onnx_gives_errors_not_panics() {
    for name in fuzzed_fixtures() {
        let onnx = std::fs::read(fixtures::get(name).onnx).unwrap();
        for seed in 1..=seeds(150) {
            let mut rng = Rng::for_seed(seed);
            let damaged = mutate(&onnx, &mut rng);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let _ = fff_compiler::compile_to_plan_bytes(
                    &damaged,
                    &fff_compiler::Options::default(),
                );
            }));
            assert!(
                outcome.is_ok(),
                "damaged ONNX of {name} panicked (seed {seed})"
            );
        }
    }
}

/// A plan file around `graph` (JSON bytes) and `weights`, with valid header and checksums (the layout
/// of docs/PLAN_FORMAT.md, written out here independently of the runtime's encoder).
fn seal(graph: &[u8], weights: &[u8]) -> Vec<u8> {
    let weights_off = (64 + graph.len()).next_multiple_of(64);
    let total = weights_off + weights.len();
    let mut out = b"FFFPLAN\0".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64, graph.len(), weights_off, weights.len()] {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    out.extend_from_slice(&crc32fast::hash(graph).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(weights).to_le_bytes());
    out.extend_from_slice(&(total as u64).to_le_bytes());
    out.extend_from_slice(graph);
    out.resize(weights_off, 0);
    out.extend_from_slice(weights);
    out
}

/// The graph (as JSON) and weights sections of a sealed plan.
fn unseal(plan: &[u8]) -> (Value, Vec<u8>) {
    let field = |at: usize| u64::from_le_bytes(plan[at..at + 8].try_into().unwrap()) as usize;
    let (g, gl, w, wl) = (field(16), field(24), field(32), field(40));
    (
        serde_json::from_slice(&plan[g..g + gl]).unwrap(),
        plan[w..w + wl].to_vec(),
    )
}

/// Every leaf of `v` (numbers, strings, booleans, nulls), as JSON pointers.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                leaves(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                leaves(
                    item,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        _ => out.push(at),
    }
}

/// `graph` with one leaf replaced by a value another leaf holds or an extreme one.
fn mutate_graph(graph: &Value, rng: &mut Rng) -> Value {
    let mut g = graph.clone();
    let mut paths = vec![];
    leaves(&g, String::new(), &mut paths);
    for _ in 0..1 + rng.below(3) {
        let target = &paths[rng.below(paths.len())];
        let donor = g.pointer(&paths[rng.below(paths.len())]).cloned().unwrap();
        let extreme = [
            Value::from(0),
            Value::from(1),
            Value::from(-1),
            Value::from(u32::MAX),
            Value::from(1u64 << 40),
            Value::from(i64::MIN),
            Value::from(0.5),
            Value::from("Linear"),
            Value::Null,
        ];
        let new = if rng.below(2) == 0 {
            donor
        } else {
            extreme[rng.below(extreme.len())].clone()
        };
        *g.pointer_mut(target).unwrap() = new;
    }
    g
}

#[test]
fn resealed_plans_with_altered_graphs_or_weights_give_errors_not_panics() {
    for name in fuzzed_fixtures() {
        let (plan, input) = compiled_fixture(name);
        let (graph, weights) = unseal(&plan);
        let mut loaded = 0;
        let runs = seeds(600);
        for seed in 1..=runs {
            let mut rng = Rng::for_seed(seed);
            let (g, w) = if seed % 4 == 0 {
                (graph.clone(), mutate(&weights, &mut rng))
            } else {
                (mutate_graph(&graph, &mut rng), weights.clone())
            };
            let damaged = seal(&serde_json::to_vec(&g).unwrap(), &w);
            loaded += Model::from_bytes(&damaged).is_ok() as usize;
            load_and_run(&damaged, &input, seed);
        }
        // The damage must reach past the loader often enough to test the ops.
        eprintln!("{name}: {loaded} of {runs} altered plans loaded");
        assert!(
            loaded as u64 > runs / 12,
            "{name}: only {loaded} altered plans loaded"
        );
    }
}

/// `model` with one structural change: an attribute's value, an initializer's dims, data or values
/// (NaN, infinities), a node's input or op type, or a graph input's dimension.
fn mutate_model(model: &ModelProto, rng: &mut Rng) -> ModelProto {
    let mut m = model.clone();
    let g = m.graph.as_mut().expect("a graph");
    let extreme = |rng: &mut Rng| [0i64, 1, -1, 2, 3, -3, 7, 1 << 33, i64::MIN][rng.below(9)];
    let names: Vec<String> = g.node.iter().flat_map(|n| n.output.clone()).collect();
    match rng.below(7) {
        6 => {
            // Weights set to NaN, infinities or huge values (raw float32 initializers only).
            let floats: Vec<usize> = (0..g.initializer.len())
                .filter(|&i| {
                    g.initializer[i].data_type == 1 && g.initializer[i].raw_data.len() >= 4
                })
                .collect();
            if let Some(&i) = floats.get(rng.below(floats.len())) {
                let raw = &mut g.initializer[i].raw_data;
                let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38, 0.0][rng.below(5)];
                let all = rng.below(2) == 0;
                for at in (0..raw.len() / 4).filter(|&k| all || k == 0) {
                    raw[4 * at..4 * at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        0 => {
            let nodes: Vec<usize> = (0..g.node.len())
                .filter(|&i| !g.node[i].attribute.is_empty())
                .collect();
            if let Some(&n) = nodes.get(rng.below(nodes.len())) {
                let attrs = &mut g.node[n].attribute;
                let a = rng.below(attrs.len());
                let attr = &mut attrs[a];
                attr.i = extreme(rng);
                attr.f = [0.0, -1.0, f32::NAN, f32::INFINITY, 1e30][rng.below(5)];
                if !attr.ints.is_empty() {
                    let j = rng.below(attr.ints.len());
                    attr.ints[j] = extreme(rng);
                }
                if rng.below(4) == 0 {
                    attr.ints.pop();
                }
            }
        }
        1 => {
            if !g.initializer.is_empty() {
                let t = rng.below(g.initializer.len());
                let init = &mut g.initializer[t];
                if !init.dims.is_empty() && rng.below(2) == 0 {
                    let d = rng.below(init.dims.len());
                    init.dims[d] = extreme(rng);
                } else {
                    let keep = rng.below(init.raw_data.len() + 1);
                    init.raw_data.truncate(keep);
                    let keep = rng.below(init.int64_data.len() + 1);
                    init.int64_data.truncate(keep);
                    let keep = rng.below(init.float_data.len() + 1);
                    init.float_data.truncate(keep);
                }
            }
        }
        2 => {
            let n = rng.below(g.node.len());
            let node = &mut g.node[n];
            if !node.input.is_empty() && !names.is_empty() {
                let i = rng.below(node.input.len());
                node.input[i] = names[rng.below(names.len())].clone();
            }
        }
        3 => {
            let (a, b) = (rng.below(g.node.len()), rng.below(g.node.len()));
            g.node[a].op_type = g.node[b].op_type.clone();
        }
        4 => {
            let n = rng.below(g.node.len());
            let node = &mut g.node[n];
            if !node.input.is_empty() {
                let i = rng.below(node.input.len());
                node.input[i] = if rng.below(2) == 0 {
                    String::new()
                } else {
                    "nowhere".into()
                };
            } else {
                node.input.push(names[0].clone());
            }
        }
        _ => {
            let i = rng.below(g.input.len());
            if let Some(type_proto::Value::TensorType(t)) =
                g.input[i].r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                if let Some(shape) = t.shape.as_mut() {
                    if !shape.dim.is_empty() && rng.below(4) != 0 {
                        let d = rng.below(shape.dim.len());
                        shape.dim[d].value = Some(dimension::Value::DimValue(extreme(rng)));
                    } else {
                        shape.dim.pop();
                    }
                } else {
                    t.elem_type = 0;
                }
            }
        }
    }
    m
}

#[test]
fn onnx_models_with_altered_structure_give_errors_not_panics() {
    for name in fuzzed_fixtures() {
        let f = fixtures::get(name);
        let model = ModelProto::decode(&*std::fs::read(&f.onnx).unwrap()).unwrap();
        let input = std::fs::read_to_string(&f.input).unwrap();
        let mut compiled = 0;
        let runs = seeds(300);
        for seed in 1..=runs {
            let mut rng = Rng::for_seed(seed);
            let damaged = mutate_model(&model, &mut rng).encode_to_vec();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                fff_compiler::compile_to_plan_bytes(&damaged, &fff_compiler::Options::default())
                    .ok()
            }));
            match outcome {
                Ok(Some(plan)) => {
                    compiled += 1;
                    load_and_run(&plan, &input, seed);
                }
                Ok(None) => {}
                Err(_) => panic!("altered ONNX of {name} panicked the compiler (seed {seed})"),
            }
        }
        eprintln!("{name}: {compiled} of {runs} altered models compiled");
    }
}

/// Empty batches and sequences, and sequences of one token, on every fixture and on one and two
/// threads: each run gives outputs or an error, never a panic. (The BERT exports refuse empty batches
/// with an error, as ONNX semantics require: their Reshape to `[0, s, -1, d]` of zero elements leaves
/// the `-1` undetermined.)
#[test]
fn empty_and_single_token_inputs_give_outputs_or_errors() {
    for &name in fixtures::ALL {
        let (plan, _) = compiled_fixture(name);
        for threads in [1, 2] {
            let model = Model::from_bytes_with(
                &plan,
                fff_runtime::model::Options {
                    threads,
                    ..Default::default()
                },
            )
            .unwrap();
            for (batch, seq) in [(0, 4), (2, 0), (0, 0), (1, 1)] {
                let inputs = common::random_inputs(&model, batch, seq, 7);
                let outcome = catch_unwind(AssertUnwindSafe(|| model.run(inputs)));
                match outcome {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => eprintln!("{name} {batch}x{seq}: {e}"),
                    Err(_) => panic!("{name} panicked at batch {batch}, sequence {seq}"),
                }
            }
        }
    }
}

/// Damaged `.npy` and `.npz` inputs (a float32 and an int64 array, written by `fffrun`'s own writer and
/// then damaged) are read with an error or a tensor, never a panic.
#[test]
fn damaged_numpy_files_give_errors_not_panics() {
    let dir = std::env::temp_dir().join(format!("fff-mutations-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let x = fff_runtime::Tensor::F32(ndarray::ArrayD::from_shape_fn(
        ndarray::IxDyn(&[2, 3, 4]),
        |i| i[2] as f32 * 0.5,
    ));
    let ids = fff_runtime::Tensor::I64(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[2, 3]), 7));
    let npz = dir.join("clean.npz");
    fff_runtime::npy::write_npz(&npz, &[("x".into(), x), ("ids".into(), ids)]).unwrap();
    let npz_bytes = std::fs::read(&npz).unwrap();
    // A version-1.0 `.npy` of float32 [2, 3, 4], written out by hand.
    let npy_bytes = {
        let mut header =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }".to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        for i in 0..24 {
            b.extend_from_slice(&(i as f32 * 0.25).to_le_bytes());
        }
        b
    };
    let clean = dir.join("clean.npy");
    std::fs::write(&clean, &npy_bytes).unwrap();
    assert_eq!(
        fff_runtime::npy::read_npy(&clean).unwrap().shape(),
        [2, 3, 4]
    );
    for (clean, ext) in [(&npy_bytes, "npy"), (&npz_bytes, "npz")] {
        for seed in 1..=seeds(300) {
            let mut rng = Rng::for_seed(seed);
            let path = dir.join(format!("damaged.{ext}"));
            std::fs::write(&path, mutate(clean, &mut rng)).unwrap();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                if ext == "npy" {
                    let _ = fff_runtime::npy::read_npy(&path);
                } else {
                    let _ = fff_runtime::npy::read_npz(&path);
                }
            }));
            assert!(outcome.is_ok(), "a damaged .{ext} panicked (seed {seed})");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- FastFeedForward widths and op attributes at extremes ----

/// Sets every constant's `len` to the bytes its shape and dtype take, after shapes were altered (a
/// shape no length can hold keeps its old length, which the validator refuses).
fn fit_constant_lens(graph: &mut Value) {
    for c in graph["constants"].as_array_mut().unwrap() {
        let size: u64 = match c["dtype"].as_str().unwrap() {
            "f32" | "i32" => 4,
            "i64" => 8,
            "bf16" => 2,
            _ => 1,
        };
        let len = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .try_fold(size, |n, d| d.as_u64().and_then(|d| n.checked_mul(d)));
        if let Some(len) = len {
            c["len"] = Value::from(len);
        }
    }
}

/// The constant that defines `value` in a plan's graph.
fn constant_mut(graph: &mut Value, value: u64) -> &mut Value {
    graph["constants"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["value"] == value)
        .expect("a constant of that value")
}

/// The FastFeedForward layer fixture (2 trees of depth 3, 64 -> 64) as graph and weights, with the
/// values of its node's W_in and W_out.
fn fff_layer_sections() -> (Value, Vec<u8>, u64, u64) {
    let (plan, _) = compiled_fixture("fff-layer-customop");
    let (graph, weights) = unseal(&plan);
    let node = &graph["nodes"][0];
    assert!(node["op"].get("FastFeedForward").is_some(), "{node}");
    let slot = |i: usize| node["inputs"][i].as_u64().unwrap();
    let (w_in, w_out) = (slot(1), slot(3));
    (graph, weights, w_in, w_out)
}

/// Whether `e`, or the cause it wraps, is a contained panic.
fn is_internal(e: &fff_runtime::Error) -> bool {
    match e {
        fff_runtime::Error::Internal(_) => true,
        fff_runtime::Error::Node { cause, .. } => is_internal(cause),
        _ => false,
    }
}

/// A FastFeedForward whose weights make its input or output 0 wide (checksums valid) is refused
/// when the plan loads, through the library and `fffrun`, rather than reaching the tree kernel's
/// assertion.
#[test]
fn fastfeedforward_of_zero_width_is_refused_at_load() {
    let (graph, weights, w_in, w_out) = fff_layer_sections();
    let dir = std::env::temp_dir().join(format!("fff-mutations-width-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = fixtures::get("fff-layer-customop").input;
    for (case, zero_in, zero_out) in [
        ("d_out", false, true),
        ("d_in", true, false),
        ("both", true, true),
    ] {
        let mut g = graph.clone();
        if zero_in {
            constant_mut(&mut g, w_in)["shape"][1] = Value::from(0);
            g["inputs"][0]["shape"][2] = Value::from(0);
        }
        if zero_out {
            constant_mut(&mut g, w_out)["shape"][1] = Value::from(0);
        }
        fit_constant_lens(&mut g);
        let plan = seal(&serde_json::to_vec(&g).unwrap(), &weights);
        let error = match Model::from_bytes(&plan) {
            Ok(model) => {
                let x = common::random_inputs(&model, 1, 3, 1);
                let run = catch_unwind(AssertUnwindSafe(|| model.run(x).map(|_| ())));
                panic!("{case} = 0: the plan loaded, and its run gave {run:?}")
            }
            Err(e) => e.to_string(),
        };
        for part in ["invalid plan", "FastFeedForward", "at least 1 wide"] {
            assert!(error.contains(part), "{case} = 0: {error}");
        }
        let path = dir.join(format!("{case}.fff"));
        std::fs::write(&path, &plan).unwrap();
        let out = std::process::Command::new(common::bin("fffrun"))
            .args([path.as_os_str(), input.as_os_str()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case} = 0: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("at least 1 wide"),
            "{case} = 0: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// FastFeedForward weights computed at run time (here given as a model input) escape the plan's
/// checks: the evaluator checks them before any kernel runs.
#[test]
fn fastfeedforward_weights_given_at_run_time_are_checked_before_the_kernels() {
    let (mut graph, weights, _, w_out) = fff_layer_sections();
    graph["constants"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["value"] != w_out);
    graph["inputs"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "w_out", "dtype": "f32", "shape": [30, "width"], "value": w_out
        }));
    let plan = seal(&serde_json::to_vec(&graph).unwrap(), &weights);
    for threads in [1, 2] {
        let options = fff_runtime::model::Options {
            threads,
            ..Default::default()
        };
        let model = Model::from_bytes_with(&plan, options).unwrap();
        for (rows, width) in [(1, 0), (3, 0), (100, 0), (3, 7)] {
            let x = fff_runtime::Tensor::zeros(fff_runtime::DType::F32, &[1, rows, 64]);
            let w = fff_runtime::Tensor::zeros(fff_runtime::DType::F32, &[30, width]);
            let inputs = vec![("x".to_string(), x), ("w_out".to_string(), w)];
            let outcome = catch_unwind(AssertUnwindSafe(|| model.run(inputs)));
            match outcome {
                Ok(Ok(out)) => {
                    assert!(width > 0, "a {width}-wide W_out ran");
                    assert_eq!(out[0].1.shape(), [1, rows, width]);
                }
                Ok(Err(e)) => {
                    let message = e.to_string();
                    assert!(width == 0 && !is_internal(&e), "{message}");
                    assert!(message.contains("at least 1 wide"), "{message}");
                }
                Err(_) => {
                    panic!("{rows} rows of a {width}-wide W_out panicked ({threads} threads)")
                }
            }
        }
    }
}

/// Every number of the ops' attributes and of the shapes of constants and inputs, set to extremes
/// (0, 1, huge, negative) one at a time, and every occurrence of one number at once (so that shapes
/// that must agree still do): loading and running give outputs or errors, never a panic, nor a panic
/// contained as `Error::Internal`. On the FastFeedForward layer, and on the ops of a dense encoder
/// that run kernels (its FastFeedForward, PackedLinear, Attention and LayerNorm nodes). Cases
/// alternate between one thread and two.
#[test]
fn op_attributes_and_shapes_at_extremes_give_errors_not_panics() {
    const EXTREMES: [i64; 9] = [0, 1, 2, 3, 65, 1 << 31, 1 << 40, 1 << 62, -1];
    const KERNEL_OPS: [&str; 5] = [
        "FastFeedForward",
        "PackedLinear",
        "Linear",
        "Attention",
        "LayerNorm",
    ];
    for name in ["fff-layer-customop", "dense-encoder-tiny"] {
        let (plan, _) = compiled_fixture(name);
        let (graph, weights) = unseal(&plan);
        // The numbers to alter: attributes and constant shapes of the nodes that run kernels, and the
        // inputs' shapes.
        let mut paths = vec![];
        for (i, node) in graph["nodes"].as_array().unwrap().iter().enumerate() {
            let op = &node["op"];
            let kind = op
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_default();
            if !KERNEL_OPS.contains(&kind.as_str()) {
                continue;
            }
            leaves(op, format!("/nodes/{i}/op"), &mut paths);
            for v in node["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_u64)
            {
                if let Some(c) = graph["constants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .position(|c| c["value"] == v)
                {
                    leaves(
                        &graph["constants"][c]["shape"],
                        format!("/constants/{c}/shape"),
                        &mut paths,
                    );
                }
            }
        }
        for (i, input) in graph["inputs"].as_array().unwrap().iter().enumerate() {
            leaves(&input["shape"], format!("/inputs/{i}/shape"), &mut paths);
        }
        paths.retain(|p| graph.pointer(p).is_some_and(Value::is_number));
        paths.sort();
        paths.dedup();
        let mut values: Vec<Value> = paths
            .iter()
            .map(|p| graph.pointer(p).unwrap().clone())
            .collect();
        values.sort_by_key(|v| v.to_string());
        values.dedup();
        let mut cases: Vec<(String, Value)> = vec![];
        for &extreme in &EXTREMES {
            for p in &paths {
                let mut g = graph.clone();
                *g.pointer_mut(p).unwrap() = Value::from(extreme);
                cases.push((format!("{p} = {extreme}"), g));
            }
            for v in &values {
                let mut g = graph.clone();
                for p in &paths {
                    if g.pointer(p) == Some(v) {
                        *g.pointer_mut(p).unwrap() = Value::from(extreme);
                    }
                }
                cases.push((format!("every {v} = {extreme}"), g));
            }
        }
        let mut loaded = 0;
        for (n, (case, mut g)) in cases.into_iter().enumerate() {
            fit_constant_lens(&mut g);
            let plan = seal(&serde_json::to_vec(&g).unwrap(), &weights);
            // Cases alternate between the caller's thread and a pool of two.
            let threads = 1 + n % 2;
            let options = fff_runtime::model::Options {
                threads,
                ..Default::default()
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let Ok(model) = Model::from_bytes_with(&plan, options) else {
                    return Ok(false);
                };
                // Inputs declared absurdly large are not made (the run would refuse them).
                let elements = |i: &fff_runtime::plan::PlanInput| {
                    i.shape.iter().try_fold(1usize, |n, d| match d {
                        fff_runtime::plan::Dim::Fixed(d) => n.checked_mul(*d),
                        _ => n.checked_mul(70),
                    })
                };
                if model
                    .inputs()
                    .iter()
                    .any(|i| elements(i).is_none_or(|n| n > 1 << 22))
                {
                    return Ok(true);
                }
                for (batch, seq) in [(1, 1), (2, 5), (0, 3), (70, 1)] {
                    let inputs = common::random_inputs(&model, batch, seq, 3);
                    if let Err(e) = model.run(inputs) {
                        if is_internal(&e) {
                            return Err(e.to_string());
                        }
                    }
                }
                Ok(true)
            }));
            match outcome {
                Ok(Ok(l)) => loaded += l as usize,
                Ok(Err(e)) => panic!("{name}, {case}: a contained panic: {e}"),
                Err(_) => panic!("{name}, {case}: panicked ({threads} threads)"),
            }
        }
        eprintln!("{name}: {loaded} altered plans loaded");
        assert!(loaded > 0, "{name}: no altered plan loaded");
    }
}
