//! Translation validation: the original region and a proposed `FastFeedForward` op are both evaluated on
//! random probe inputs of several leading shapes, with the runtime's evaluator, and must agree.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use fff_runtime::op::Op;
use fff_runtime::opset::eval;
use fff_runtime::{Tensor, TensorView};
use ndarray::{ArrayD, IxDyn};

use super::region::Region;
use crate::ir::{Dim, Graph, OutletId};

/// Absolute and relative tolerance of the comparison.
const TOL: f32 = 1e-4;

/// The most elements a probe tensor may have (256 MiB of float32): fixed dimensions come from the
/// model, and a damaged or hostile one must not make validation allocate without bound.
const PROBE_MAX_ELEMENTS: usize = 1 << 26;

/// The runtime's evaluator, with tensors that data sizes capped at [`PROBE_MAX_ELEMENTS`].
fn probe_eval(
    op: &Op,
    inputs: &[Option<TensorView>],
    n_outputs: usize,
) -> fff_runtime::Result<fff_runtime::opset::OpOutputs> {
    fff_runtime::opset::with_element_limit(PROBE_MAX_ELEMENTS, || eval(op, inputs, n_outputs))
}

/// Checks that a probe of `shape` stays within [`PROBE_MAX_ELEMENTS`].
fn probe_fits(shape: &[usize], what: &str) -> Result<(), String> {
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(n) if n <= PROBE_MAX_ELEMENTS => Ok(()),
        _ => Err(format!("{what} of shape {shape:?} is too large to probe")),
    }
}

/// One probe: a value of the block input and, for a block that reads shapes of other values, those
/// values as the model computes them for an input of the same batch and sequence sizes.
pub struct Probe {
    pub x: Tensor,
    pub shape_sources: HashMap<OutletId, Tensor>,
}

/// The model's values at the three probe sizes, as far as blocks judged so far needed them. The blocks
/// of one run share them, so a deep model is run up to each block once in all rather than once per
/// block. Only their shapes are read (through `Shape` and `Size`, and for the probe of a block's
/// input), and a rewrite keeps every shape, so values from before a rewrite serve after it.
#[derive(Default)]
pub struct ModelValues {
    at_sizes: Vec<HashMap<OutletId, Tensor>>,
}

/// Probes for the region: random values of its input at three leading shapes, and where the region
/// reads shapes of other values, those values from running the model up to them at matching sizes.
pub fn probes(
    g: &Graph,
    r: &Region,
    d_in: usize,
    model: &mut ModelValues,
) -> Result<Vec<Probe>, String> {
    if r.shape_sources.is_empty() {
        return Ok(input_probes(g, r.x, d_in)?
            .into_iter()
            .map(|x| Probe {
                x,
                shape_sources: HashMap::new(),
            })
            .collect());
    }
    let mut rng = Xorshift(0x0ddba11);
    let mut out = Vec::new();
    for (variant, sizes) in [[1usize, 3], [2, 5], [3, 2]].into_iter().enumerate() {
        let mut symbols: Vec<String> = Vec::new();
        let mut feeds = HashMap::new();
        for &n in g.inputs() {
            let fact = &g.node(n).outputs[0];
            let shape: Vec<usize> = fact
                .shape
                .as_ref()
                .ok_or("a model input has no known rank")?
                .iter()
                .map(|d| match d {
                    Dim::Known(k) => usize::try_from(*k).unwrap_or(usize::MAX),
                    Dim::Sym(s) => {
                        let i = symbols.iter().position(|x| x == s).unwrap_or_else(|| {
                            symbols.push(s.clone());
                            symbols.len() - 1
                        });
                        sizes.get(i).copied().unwrap_or(2)
                    }
                    Dim::Unknown => 2,
                })
                .collect();
            let name = &g.node(n).name;
            probe_fits(&shape, &format!("model input '{name}'"))?;
            // Token ids 0 are valid in every vocabulary; masks are all ones.
            let t = match fact.dtype {
                Some(fff_runtime::DType::F32) => rng.tensor(&shape),
                Some(fff_runtime::DType::I64) => Tensor::I64(ArrayD::from_elem(
                    IxDyn(&shape),
                    i64::from(name.contains("mask")),
                )),
                Some(fff_runtime::DType::I32) => Tensor::I32(ArrayD::from_elem(
                    IxDyn(&shape),
                    i32::from(name.contains("mask")),
                )),
                Some(fff_runtime::DType::Bool) => {
                    Tensor::Bool(ArrayD::from_elem(IxDyn(&shape), true))
                }
                // Quantised codes: 0 is a valid code of every quantised input.
                Some(dt @ (fff_runtime::DType::I8 | fff_runtime::DType::U8)) => {
                    Tensor::zeros(dt, &shape)
                }
                Some(dt @ fff_runtime::DType::BF16) => {
                    return Err(format!("a model input is {dt}"))
                }
                None => return Err("a model input has no known type".into()),
            };
            feeds.insert(OutletId::new(n, 0), t);
        }
        if model.at_sizes.len() <= variant {
            model.at_sizes.push(feeds);
        }
        let values = &mut model.at_sizes[variant];
        let mut wanted = r.shape_sources.clone();
        wanted.push(r.x);
        eval_prefix(g, values, &wanted)?;
        let x_shape = values[&r.x].shape().to_vec();
        probe_fits(&x_shape, "the block input")?;
        let x = rng.tensor(&x_shape);
        let shape_sources = r
            .shape_sources
            .iter()
            .map(|o| {
                let t = match g.const_value(*o) {
                    Some(c) => Tensor::clone(c),
                    None => values[o].clone(),
                };
                (*o, t)
            })
            .collect();
        out.push(Probe { x, shape_sources });
    }
    Ok(out)
}

/// Runs the part of the graph that `wanted` depends on and `values` lacks, adding its values.
fn eval_prefix(
    g: &Graph,
    values: &mut HashMap<OutletId, Tensor>,
    wanted: &[OutletId],
) -> Result<(), String> {
    let missing = |values: &HashMap<OutletId, Tensor>, o: &OutletId| {
        g.const_value(*o).is_none() && !values.contains_key(o)
    };
    // Depth first, each node after its inputs: a topological order of what is missing.
    let mut stack: Vec<(NodeIndex, bool)> = wanted
        .iter()
        .filter(|o| missing(values, o))
        .map(|o| (o.node, false))
        .collect();
    let mut visited = HashSet::new();
    while let Some((n, inputs_done)) = stack.pop() {
        let Some(op) = g.op(n) else { continue };
        if !inputs_done {
            if visited.insert(n) {
                stack.push((n, true));
                stack.extend(
                    g.inputs_of(n)
                        .into_iter()
                        .flatten()
                        .filter(|o| missing(values, o))
                        .map(|o| (o.node, false)),
                );
            }
            continue;
        }
        let outs = {
            let views: Vec<Option<TensorView>> = g
                .inputs_of(n)
                .iter()
                .map(|i| {
                    i.map(|o| {
                        g.const_value(o)
                            .map_or_else(|| values.get(&o).map(Tensor::view), |c| Some(c.view()))
                    })
                })
                .map(|v| v.map(|v| v.ok_or("a value the block needs was not computed")))
                .map(Option::transpose)
                .collect::<Result<_, _>>()?;
            probe_eval(op, &views, g.node(n).outputs.len())
                .map_err(|e| format!("running the model up to the block fails: {e}"))?
        };
        for (s, t) in outs.into_iter().enumerate() {
            values.insert(OutletId::new(n, s), t);
        }
    }
    if let Some(o) = wanted.iter().find(|o| missing(values, o)) {
        return Err(format!(
            "running the model up to the block does not compute '{}'",
            g.node(o.node).name
        ));
    }
    Ok(())
}

/// Random values of the block input at three leading shapes (fixed dims kept, symbolic ones varied),
/// drawn from a seeded standard normal.
fn input_probes(g: &Graph, x: OutletId, d_in: usize) -> Result<Vec<Tensor>, String> {
    let shape = g
        .fact(x)
        .shape
        .clone()
        .ok_or("the block input's rank is not known")?;
    let lead = &shape[..shape.len().saturating_sub(1)];
    let mut rng = Xorshift(0x5eed_f00d);
    let variants: [&[usize]; 3] = [&[1], &[2, 3, 2, 2], &[5, 3, 1, 2]];
    variants
        .iter()
        .map(|v| {
            let mut dims: Vec<usize> = lead
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Known(k) => usize::try_from(*k).unwrap_or(usize::MAX),
                    _ => v.get(i).copied().unwrap_or(1),
                })
                .collect();
            dims.push(d_in);
            probe_fits(&dims, "the block input")?;
            Ok(rng.tensor(&dims))
        })
        .collect()
}

struct Xorshift(u64);

impl Xorshift {
    fn normal(&mut self) -> f32 {
        let mut sum = 0.0f32;
        for _ in 0..12 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            sum += (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        }
        sum - 6.0
    }

    /// A float32 tensor of approximately standard-normal values.
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::F32(
            ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| self.normal()).collect())
                .expect("sized"),
        )
    }
}

/// Evaluates the region on one probe.
pub fn eval_region(g: &Graph, r: &Region, probe: &Probe) -> Result<Tensor, String> {
    let x = &probe.x;
    let mut values: HashMap<OutletId, Tensor> = HashMap::new();
    for &n in &r.nodes {
        let op = g.op(n).expect("regions hold op nodes");
        let ins = g.inputs_of(n);
        let outs = {
            let views: Vec<Option<TensorView>> = ins
                .iter()
                .map(|i| {
                    i.map(|o| {
                        if o == r.x {
                            x.view()
                        } else if let Some(c) = g.const_value(o) {
                            c.view()
                        } else if let Some(t) = probe.shape_sources.get(&o) {
                            t.view()
                        } else {
                            values[&o].view()
                        }
                    })
                })
                .collect();
            probe_eval(op, &views, g.node(n).outputs.len())
                .map_err(|e| format!("the original block fails on a probe: {e}"))?
        };
        for (s, t) in outs.into_iter().enumerate() {
            values.insert(OutletId::new(n, s), t);
        }
    }
    values
        .remove(&r.y)
        .ok_or_else(|| "the block output was not computed".to_string())
}

/// The outcome of comparing one proposal on all probes.
pub struct Agreement {
    pub rows: usize,
    pub boundary_rows: usize,
}

/// Compares `op` (with its weight tensors) against the region's outputs `want` on `probes`. A row that
/// differs is forgiven only when one of its logits lies within a hair of the branch threshold, where two
/// correct evaluations may take different branches; such rows are counted.
pub fn agree(
    op: &Op,
    weights: &[Option<&Tensor>; 4],
    probes: &[Probe],
    want: &[Tensor],
    rows_limit: usize,
) -> Result<Agreement, String> {
    let mut rows = 0;
    let mut boundary_rows = 0;
    for (p, w) in probes.iter().zip(want) {
        let (x, w) = (limit_rows(&p.x, rows_limit), limit_rows(w, rows_limit));
        let views = [
            Some(x.view()),
            weights[0].map(Tensor::view),
            weights[1].map(Tensor::view),
            weights[2].map(Tensor::view),
            weights[3].map(Tensor::view),
        ];
        let got = probe_eval(op, &views, 1)
            .map_err(|e| format!("the proposed op fails: {e}"))?
            .remove(0);
        if got.shape() != w.shape() {
            return Err(format!(
                "output shape {:?} differs from the block's {:?}",
                got.shape(),
                w.shape()
            ));
        }
        let (Tensor::F32(ga), Tensor::F32(wa), Tensor::F32(xa)) = (&got, &w, &x) else {
            return Err("the block output is not float32".into());
        };
        let d_out = *w.shape().last().unwrap_or(&1);
        let d_in = *x.shape().last().unwrap_or(&1);
        let (gs, ws, xs) = (
            ga.as_slice().expect("fresh"),
            wa.as_standard_layout(),
            xa.as_standard_layout(),
        );
        let (ws, xs) = (
            ws.as_slice().expect("standard"),
            xs.as_slice().expect("standard"),
        );
        for r in 0..gs.len() / d_out.max(1) {
            rows += 1;
            let differs = (0..d_out).any(|j| {
                let (a, b) = (gs[r * d_out + j], ws[r * d_out + j]);
                // Written so that NaN on either side counts as a difference.
                let close = (a - b).abs() <= TOL * (1.0 + b.abs());
                !close
            });
            if differs {
                if near_boundary(&xs[r * d_in..(r + 1) * d_in], weights[0], weights[1]) {
                    boundary_rows += 1;
                } else {
                    return Err(format!(
                        "outputs differ on probe row {r} of shape {:?}",
                        x.shape()
                    ));
                }
            }
        }
    }
    Ok(Agreement {
        rows,
        boundary_rows,
    })
}

/// Whether any node's logit for this row is within a hair of zero.
fn near_boundary(x: &[f32], w_in: Option<&Tensor>, b_in: Option<&Tensor>) -> bool {
    let Some(Tensor::F32(w)) = w_in else {
        return false;
    };
    let w = w.as_standard_layout();
    let w = w.as_slice().expect("standard");
    let b = match b_in {
        Some(Tensor::F32(b)) => b.iter().copied().collect(),
        _ => vec![0.0; w.len() / x.len().max(1)],
    };
    w.chunks_exact(x.len().max(1)).zip(b).any(|(row, b)| {
        let (dot, mag) = row.iter().zip(x).fold((b, b.abs()), |(s, m), (p, q)| {
            (s + p * q, m + (p * q).abs())
        });
        dot.abs() <= 1e-5 * mag.max(1.0)
    })
}

/// The first `limit` rows of a tensor's leading axes (all of it when it has fewer).
fn limit_rows(t: &Tensor, limit: usize) -> Tensor {
    let Tensor::F32(a) = t else { return t.clone() };
    let width = *a.shape().last().unwrap_or(&1);
    let rows = a.len() / width.max(1);
    if rows <= limit {
        return t.clone();
    }
    let v: Vec<f32> = a
        .as_standard_layout()
        .iter()
        .take(limit * width)
        .copied()
        .collect();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[limit, width]), v).expect("sized"))
}
