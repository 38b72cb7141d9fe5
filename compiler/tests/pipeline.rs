//! The pipeline as one list: every step, lowerings included, runs for every entry point, can be
//! stopped after and dumped by name; the verifier names the step that breaks the graph; node ids
//! survive petgraph's reuse of indices.

use std::process::Command;

use fff_compiler::ir::{Graph, OutletId};
use fff_compiler::passes::{self, Kind, Step};
use fff_compiler::{CompileError, Options, Weights};
use fff_models::builders::{ff_layer_model, Defects, Ff};
use fff_models::fixtures;
use fff_runtime::op::{Op, UnaryOp};
use fff_runtime::{DType, Tensor};

fn dump_of(g: &Graph) -> String {
    fff_compiler::dump::dump(g)
}

fn constant_dtypes(g: &Graph) -> Vec<DType> {
    g.node_indices()
        .filter_map(|n| g.const_value(OutletId::new(n, 0)).map(|t| t.dtype()))
        .collect()
}

/// A deep tree, which runs on the tree kernel and so takes bf16 weights.
fn tree_layer() -> Vec<u8> {
    ff_layer_model(37, Ff::Fff { trees: 1, depth: 6 }, 11, Defects::default())
}

#[test]
fn compile_bytes_runs_the_lowerings_the_options_ask_for() {
    let f = fixtures::get("dense-encoder-tiny");
    let bytes = std::fs::read(&f.onnx).unwrap();
    let p16 = Options {
        panel_cols: 16,
        ..Options::default()
    };
    let from_bytes = fff_compiler::compile_bytes(&bytes, &p16).unwrap();
    let from_path = fff_compiler::compile_path(&f.onnx, &p16).unwrap();
    let default = fff_compiler::compile_bytes(&bytes, &Options::default()).unwrap();
    assert_eq!(dump_of(&from_bytes), dump_of(&from_path));
    assert_ne!(dump_of(&from_bytes), dump_of(&default));
    assert!(dump_of(&from_bytes).contains(", 16]"));

    let bf16 = Options {
        weights: Weights::Bf16,
        ..Options::default()
    };
    let g = fff_compiler::compile_bytes(&tree_layer(), &bf16).unwrap();
    assert!(constant_dtypes(&g).contains(&DType::BF16));
    let g = fff_compiler::compile_bytes(&tree_layer(), &Options::default()).unwrap();
    assert!(!constant_dtypes(&g).contains(&DType::BF16));
    // The plan bytes come from the same pipeline.
    let plan = fff_compiler::compile_to_plan_bytes(&tree_layer(), &bf16).unwrap();
    let plain = fff_compiler::compile_to_plan_bytes(&tree_layer(), &Options::default()).unwrap();
    assert!(plan.len() < plain.len());
}

#[test]
fn stop_after_a_lowering_skips_the_ones_after_it() {
    let asked = Options {
        weights: Weights::Bf16,
        panel_cols: 16,
        stop_after: Some("pack-weights".to_string()),
        ..Options::default()
    };
    let stopped = fff_compiler::compile_bytes(&tree_layer(), &asked).unwrap();
    let plain = fff_compiler::compile_bytes(&tree_layer(), &Options::default()).unwrap();
    assert_eq!(dump_of(&stopped), dump_of(&plain));
    let asked = Options {
        stop_after: Some("bf16-weights".to_string()),
        ..asked
    };
    let g = fff_compiler::compile_bytes(&tree_layer(), &asked).unwrap();
    assert!(constant_dtypes(&g).contains(&DType::BF16));
}

#[test]
fn an_unknown_step_is_refused_with_the_list() {
    let asked = Options {
        stop_after: Some("no-such-step".to_string()),
        ..Options::default()
    };
    let err = fff_compiler::compile_bytes(&tree_layer(), &asked)
        .unwrap_err()
        .to_string();
    for name in passes::step_names() {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn fffc_stops_after_and_dumps_every_step_by_name() {
    let f = fixtures::get("dense-encoder-tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_fffc"))
        .arg("compile")
        .arg(&f.onnx)
        .args([
            "--stop-after",
            "pack-weights",
            "--dump=pack-weights",
            "--dump",
        ])
        .args(["--panel-cols", "16"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let at_step = stdout.find("# after pack-weights (run 1)\n").unwrap();
    // The step's dump, then the final graph's: the same, the default compile's, since panel-width
    // never ran.
    let step_dump = &stdout[at_step..].split_once('\n').unwrap().1;
    let (first, second) = step_dump.split_at(step_dump.len() / 2);
    assert_eq!(first, second);
    let default = fff_compiler::compile_path(&f.onnx, &Options::default()).unwrap();
    assert_eq!(first, dump_of(&default));

    let out = Command::new(env!("CARGO_BIN_EXE_fffc"))
        .arg("compile")
        .arg(&f.onnx)
        .arg("--dump=no-such-step")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("panel-width") && stderr.contains("cse"),
        "{stderr}"
    );
}

/// Makes the graph's first output read a new node that reads itself: a cycle.
fn tangle(g: &mut Graph, _: &Options) -> fff_compiler::Result<bool> {
    let o = g.outputs()[0].1;
    let n = g.add_op("tangle", Op::Unary(UnaryOp::Relu), &[Some(o)], 1);
    g.replace_uses(o, OutletId::new(n, 0));
    Ok(true)
}

/// Gives the first constant a fact its tensor contradicts.
fn misstate(g: &mut Graph, _: &Options) -> fff_compiler::Result<bool> {
    let c = g
        .node_indices()
        .map(|n| OutletId::new(n, 0))
        .find(|&o| g.const_value(o).is_some())
        .unwrap();
    let mut fact = g.fact(c).clone();
    fact.dtype = Some(DType::I64);
    g.set_fact(c, fact);
    Ok(true)
}

#[test]
fn the_verifier_names_the_step_that_broke_the_graph() {
    let verified = Options {
        verify: true,
        ..Options::default()
    };
    for (name, run, violation) in [
        ("tangle", tangle as fn(&mut Graph, &Options) -> _, "cycle"),
        ("misstate", misstate, "its fact says int64"),
    ] {
        let steps = [
            Step {
                name: "pack-weights",
                kind: Kind::Lowering {
                    run: passes::pack_weights::run,
                    enabled: |_| true,
                },
            },
            Step {
                name,
                kind: Kind::Lowering {
                    run,
                    enabled: |_| true,
                },
            },
        ];
        let mut g = fff_compiler::import::import_model(
            &fff_compiler::import::parse(&tree_layer()).unwrap(),
            None,
        )
        .unwrap();
        let err = passes::run_steps(&steps, &mut g, &verified, &mut |_, _| {}).unwrap_err();
        let CompileError::Broken { step, violation: v } = &err else {
            panic!("not a verifier error: {err}");
        };
        assert_eq!(step, name);
        assert!(v.contains(violation), "{err}");
        assert!(err.to_string().contains(&format!("'{name}'")), "{err}");
        // Unverified, the same steps run through.
        let unverified = Options {
            verify: false,
            ..Options::default()
        };
        let mut g = fff_compiler::import::import_model(
            &fff_compiler::import::parse(&tree_layer()).unwrap(),
            None,
        )
        .unwrap();
        passes::run_steps(&steps, &mut g, &unverified, &mut |_, _| {}).unwrap();
    }
}

#[test]
fn node_ids_are_not_reused_with_indices() {
    let mut g = Graph::default();
    let scalar = || Tensor::F32(ndarray::arr0(1.0f32).into_dyn());
    let a = g.add_const("a", scalar()).node;
    let a_id = g.node(a).id();
    g.report.consider(a_id);
    g.remove_node(a);
    let b = g.add_const("b", scalar()).node;
    assert_eq!(a, b, "petgraph reuses the removed node's index");
    assert_ne!(g.node(b).id(), a_id);
    assert!(!g.report.was_considered(g.node(b).id()));
    assert!(g.report.was_considered(a_id));
}
