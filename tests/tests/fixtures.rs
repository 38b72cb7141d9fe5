//! Every bundled fixture compiles, runs and matches its reference outputs: ONNX Runtime's at the exported
//! shape, and tract running the original graph at other batch and sequence lengths.

mod common;

use common::{compile, max_abs_diff, max_abs_diff_to, random_inputs, read_expected, tract_run};
use fff_models::fixtures;
use fff_runtime::io::parse_inputs;
use tract_onnx::prelude::Framework;

const TOL: f64 = 1e-4;

/// Each fixture is run three times: on its reference input, then on other inputs, then on the
/// reference input again, handing every run's outputs back to the model in between, so that the
/// third run computes into buffers that earlier runs left full of other values. The third run borrows
/// its inputs ([`fff_runtime::Model::run_borrowed`]) and must leave them as they were.
#[test]
fn every_fixture_matches_its_expected_outputs() {
    for &name in fixtures::ALL {
        let f = fixtures::get(name);
        let model = compile(&f.onnx);
        let text = std::fs::read_to_string(&f.input).unwrap();
        let (inputs, _) = parse_inputs(&text, model.inputs()).unwrap();
        let expected = read_expected(&f.expected);
        for round in 0..3 {
            let given = if round == 1 {
                let shape = inputs[0].1.shape();
                random_inputs(&model, shape[0], shape[1], 9)
            } else {
                inputs.clone()
            };
            let outputs = if round == 2 {
                let views: Vec<_> = given.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
                let outputs = model.run_borrowed(&views).unwrap();
                assert!(given == inputs, "{name}: a borrowed input was changed");
                outputs
            } else {
                model.run(given).unwrap()
            };
            if round != 1 {
                assert_eq!(outputs.len(), expected.len(), "{name}: output count");
                for (out_name, shape, want) in &expected {
                    let got = &outputs
                        .iter()
                        .find(|(n, _)| n == out_name)
                        .unwrap_or_else(|| panic!("{name}: no {out_name}"))
                        .1;
                    let d = max_abs_diff(&format!("{name}/{out_name}"), got, shape, want);
                    assert!(d < TOL, "{name}/{out_name}, run {round}: max abs diff {d}");
                }
            }
            model.recycle(outputs);
        }
    }
}

/// The dense products read their weight panels at every width the runtime repacks them to: 16 (CPUs
/// without AVX-512), 32, 64 (as plans store them by default) and 1, from plans compiled with 64- and
/// with 16-column panels (`fffc compile --panel-cols 16`); each model reads its panels at the width
/// asked for and matches the reference outputs. A width that does not divide 64 is refused, by the
/// runtime and by the compiler.
#[test]
fn every_panel_width_matches_the_expected_outputs() {
    use fff_runtime::model::Options;
    use fff_runtime::op::Op;
    for name in ["bert-tiny", "dense-encoder-tiny"] {
        let f = fixtures::get(name);
        let onnx = std::fs::read(&f.onnx).unwrap();
        let expected = read_expected(&f.expected);
        let text = std::fs::read_to_string(&f.input).unwrap();
        let with_cols = |panel_cols: usize| fff_compiler::Options {
            panel_cols,
            ..Default::default()
        };
        let plan_of = |plan_cols: usize| {
            fff_compiler::compile_to_plan_bytes(&onnx, &with_cols(plan_cols)).unwrap()
        };
        let refused = fff_compiler::compile_bytes(&onnx, &with_cols(24))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("panel width 24"), "{refused}");
        let plan = plan_of(64);
        for (plan_cols, cols) in [(64, 16), (64, 32), (64, 64), (64, 1), (16, 16), (16, 64)] {
            let plan = if plan_cols == 64 {
                plan.clone()
            } else {
                plan_of(plan_cols)
            };
            let options = Options {
                threads: 1,
                panel_cols: cols,
                ..Default::default()
            };
            let model = fff_runtime::Model::from_bytes_with(&plan, options).unwrap();
            let mut panels = 0;
            for node in &model.graph().nodes {
                let at: &[usize] = match node.op {
                    Op::PackedLinear { .. } => &[1],
                    Op::FastFeedForward { depth: 0, .. } => &[1, 3],
                    _ => &[],
                };
                for &i in at {
                    let w = model.constant(node.inputs[i].unwrap()).unwrap();
                    if w.shape().len() == 3 {
                        assert_eq!(
                            w.shape()[2],
                            cols,
                            "{name}, plan of {plan_cols}: {} input {i}",
                            node.name
                        );
                        panels += 1;
                    }
                }
            }
            assert!(panels > 0, "{name}: no weight panels");
            let (inputs, _) = parse_inputs(&text, model.inputs()).unwrap();
            let outputs = model.run(inputs).unwrap();
            for (out_name, shape, want) in &expected {
                let got = &outputs.iter().find(|(n, _)| n == out_name).unwrap().1;
                let d = max_abs_diff(&format!("{name}/{out_name}"), got, shape, want);
                assert!(
                    d < TOL,
                    "{name}/{out_name}, plan of {plan_cols}, {cols}-column panels: max abs diff {d}"
                );
            }
        }
        let refused = fff_runtime::Model::from_bytes_with(
            &plan,
            Options {
                threads: 1,
                panel_cols: 24,
                ..Default::default()
            },
        );
        let message = refused.err().expect("width 24 refused").to_string();
        assert!(message.contains("panel width 24"), "{message}");
    }
}

/// Calls large enough that FastFeedForward's output takes a cache-line-aligned buffer (from 4 MiB: an
/// array that starts a few elements into its allocation), which later ops write in place and the
/// recycler takes back. Two input sets alternate over three runs, the outputs handed back in between,
/// and every run is checked against tract.
#[test]
fn large_calls_through_recycled_aligned_buffers_match_tract() {
    let f = fixtures::get("fff-encoder-tiny");
    let model = compile(&f.onnx);
    // 256 sequences of 64 tokens: FastFeedForward outputs of 16384 x 64 floats, 4 MiB.
    let sets: Vec<_> = [5, 6]
        .iter()
        .map(|&seed| {
            let inputs = random_inputs(&model, 256, 64, seed);
            let want = tract_run(&f.onnx, &inputs);
            (inputs, want)
        })
        .collect();
    for round in 0..3 {
        let (inputs, want) = &sets[round % 2];
        let got = model.run(inputs.clone()).unwrap();
        for ((out_name, g), w) in got.iter().zip(want) {
            let d = max_abs_diff_to(&format!("{out_name}, run {round}"), g, w);
            assert!(d < TOL, "{out_name}, run {round}: max abs diff {d}");
        }
        model.recycle(got);
    }
}

/// tract cannot analyse the dynamo exports, so they are checked against tract running the TorchScript
/// export of the same weights.
#[test]
fn fixtures_match_tract_at_other_shapes() {
    for &name in fixtures::ALL {
        if name == "fff-layer-customop" {
            continue; // tract cannot run the custom domain; see fff_layer_customop_matches_definition
        }
        let f = fixtures::get(name);
        let oracle = fixtures::get(fixtures::torchscript_twin(name).unwrap_or(name)).onnx;
        let model = compile(&f.onnx);
        for (batch, seq, seed) in [(1, 5, 1), (3, 11, 2)] {
            let inputs = random_inputs(&model, batch, seq, seed);
            let want = tract_run(&oracle, &inputs);
            let got = model.run(inputs).unwrap();
            for ((out_name, g), w) in got.iter().zip(&want) {
                let d = max_abs_diff_to(&format!("{name}/{out_name} at {batch}x{seq}"), g, w);
                assert!(
                    d < TOL,
                    "{name}/{out_name} at {batch}x{seq}: max abs diff {d}"
                );
            }
        }
    }
}

/// The FFF definition from the fixtures README, written out in f64 with GELU from the normal CDF: an
/// independent reference for the custom-op fixture, which tract cannot run.
fn fff_by_definition(
    x: &[f32],
    d_in: usize,
    w_in: &[f32],
    b_in: &[f32],
    w_out: &[f32],
    depth: u32,
    trees: usize,
) -> Vec<f64> {
    let n = (1usize << (depth + 1)) - 1;
    let d_out = w_out.len() / (trees * n);
    let gelu = |v: f64| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
    let mut y = Vec::new();
    for row in x.chunks(d_in) {
        let mut out = vec![0.0f64; d_out];
        for t in 0..trees {
            let mut node = 0;
            for _ in 0..=depth {
                let r = t * n + node;
                let logit: f64 = (0..d_in)
                    .map(|i| w_in[r * d_in + i] as f64 * row[i] as f64)
                    .sum::<f64>()
                    + b_in[r] as f64;
                for (j, o) in out.iter_mut().enumerate() {
                    *o += gelu(logit) * w_out[r * d_out + j] as f64;
                }
                node = 2 * node + 1 + usize::from(logit > 0.0);
            }
        }
        y.extend(out);
    }
    y
}

/// erf by its Taylor series (|x| < 3) or continued fraction; accurate to ~1e-12 where GELU needs it.
fn erf(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    if x.abs() < 3.0 {
        let (mut term, mut sum, mut k) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            k += 1.0;
            term *= -x * x / k;
            sum += term / (2.0 * k + 1.0);
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
    let a = x.abs();
    let mut frac = 0.0;
    for k in (1..60).rev() {
        frac = (k as f64 / 2.0) / (a + frac);
    }
    let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + frac);
    x.signum() * (1.0 - erfc)
}

#[test]
fn fff_layer_customop_matches_definition_at_other_shapes() {
    let f = fixtures::get("fff-layer-customop");
    let proto = tract_onnx::onnx().proto_model_for_path(&f.onnx).unwrap();
    let init = |name: &str| -> Vec<f32> {
        let t = proto
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .unwrap();
        t.raw_data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (w_in, b_in, w_out) = (init("w_in"), init("b_in"), init("w_out"));
    let model = compile(&f.onnx);
    for (batch, seq, seed) in [(1, 1, 3), (2, 9, 4), (4, 33, 5)] {
        let inputs = random_inputs(&model, batch, seq, seed);
        let fff_runtime::Tensor::F32(x) = &inputs[0].1 else {
            unreachable!()
        };
        let want = fff_by_definition(x.as_slice().unwrap(), 64, &w_in, &b_in, &w_out, 3, 2);
        let got = model.run(inputs.clone()).unwrap();
        let d = max_abs_diff("fff-layer-customop", &got[0].1, &[batch, seq, 64], &want);
        assert!(
            d < TOL,
            "fff-layer-customop at {batch}x{seq}: max abs diff {d}"
        );
    }
}

/// One loaded model serves several threads at once, each getting the outputs a lone run gives.
#[test]
fn one_model_runs_on_several_threads_at_once() {
    let f = fixtures::get("bert-tiny");
    let model = compile(&f.onnx);
    let inputs: Vec<_> = (0..4)
        .map(|i| random_inputs(&model, 1 + i % 2, 3 + i, i as u64))
        .collect();
    let alone: Vec<_> = inputs
        .iter()
        .map(|x| model.run(x.clone()).unwrap())
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| s.spawn(|| model.run(x.clone()).unwrap()))
            .collect();
        for (h, want) in handles.into_iter().zip(&alone) {
            assert_eq!(&h.join().unwrap(), want);
        }
    });
}

/// A model with one thread runs each call on the caller's thread (no pool): calls from several threads
/// at once, and from inside another rayon pool, give what the model with a pool gives. A model with a
/// pool switches between its pool and the caller's thread by the size of the call, with the same
/// results.
#[test]
fn one_thread_models_run_on_the_callers_thread() {
    use fff_runtime::model::Options;
    let f = fixtures::get("fff-encoder-tiny");
    let plan = fff_compiler::compile_to_plan_bytes(
        &std::fs::read(&f.onnx).unwrap(),
        &fff_compiler::Options::default(),
    )
    .unwrap();
    let on_threads = |threads| {
        let options = Options {
            threads,
            ..Default::default()
        };
        fff_runtime::Model::from_bytes_with(&plan, options).unwrap()
    };
    let (pooled, single) = (on_threads(2), on_threads(1));
    assert_eq!((pooled.threads(), single.threads()), (2, 1));
    let inputs: Vec<_> = (0..3)
        .map(|i| random_inputs(&pooled, 1 + i % 2, 4 + 3 * i, i as u64))
        .collect();
    let want: Vec<_> = inputs
        .iter()
        .map(|x| pooled.run(x.clone()).unwrap())
        .collect();
    let close = |got: &[(String, fff_runtime::Tensor)], want: &[(String, fff_runtime::Tensor)]| {
        for ((_, g), (name, w)) in got.iter().zip(want) {
            let wv: Vec<f64> = match w {
                fff_runtime::Tensor::F32(a) => a.iter().map(|&v| v as f64).collect(),
                _ => unreachable!("float outputs"),
            };
            let d = max_abs_diff(name, g, w.shape(), &wv);
            assert!(d < 1e-5, "{name}: max abs diff {d}");
        }
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| s.spawn(|| single.run(x.clone()).unwrap()))
            .collect();
        for (h, w) in handles.into_iter().zip(&want) {
            close(&h.join().unwrap(), w);
        }
    });
    let outer = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let got = outer.install(|| single.run(inputs[1].clone()).unwrap());
    close(&got, &want[1]);
    // The pooled model runs short calls on the caller's thread once it has seen one (see
    // `fff_runtime::pool_choice`) and longer ones on its pool: alternating sizes, every call still
    // agrees.
    let long = random_inputs(&pooled, 8, 64, 9);
    let long_want = single.run(long.clone()).unwrap();
    for round in 0..3 {
        close(&pooled.run(inputs[round].clone()).unwrap(), &want[round]);
        close(&pooled.run(long.clone()).unwrap(), &long_want);
    }
}
