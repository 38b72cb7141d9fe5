//! What quantising costs: the float32 plan and the quantised plan run on the same inputs (probes made
//! from the plan's inputs, or the user's `--calibrate` file), compared per output row and, for every
//! conditional FastFeedForward layer, by the leaves its rows reach.

use std::collections::HashMap;

use fff_runtime::op::Op;
use fff_runtime::plan::{Dim, PlanGraph};
use fff_runtime::{DType, Model, Result, Tensor};
use ndarray::{ArrayD, IxDyn};

/// How far one output of the quantised plan is from the float32 plan's.
#[derive(Clone, Debug)]
pub struct OutputCost {
    pub name: String,
    /// Rows compared: the output's elements over its last dimension.
    pub rows: usize,
    pub max_abs: f32,
    /// Cosine similarity of each row with the float32 plan's row: the smallest and the mean.
    pub min_cosine: f64,
    pub mean_cosine: f64,
}

/// How many rows of one conditional layer took another path than in the float32 plan.
#[derive(Clone, Debug)]
pub struct PathCost {
    pub node: String,
    pub rows: usize,
    pub changed: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Cost {
    pub outputs: Vec<OutputCost>,
    pub paths: Vec<PathCost>,
}

/// Runs both plans on `inputs` and compares them.
pub fn measure(reference: &Model, quantized: &Model, inputs: &[(String, Tensor)]) -> Result<Cost> {
    let (want, want_paths) = run_with_paths(reference, inputs)?;
    let (got, got_paths) = run_with_paths(quantized, inputs)?;
    let mut cost = Cost::default();
    for ((name, a), (_, b)) in want.iter().zip(&got) {
        if let (Tensor::F32(a), Tensor::F32(b)) = (a, b) {
            if a.shape() == b.shape() {
                cost.outputs.push(compare(name, a, b));
            }
        }
    }
    for (node, a) in &want_paths {
        if let Some((_, b)) = got_paths.iter().find(|(n, _)| n == node) {
            let trees = a.1.max(1);
            let changed =
                a.0.chunks(trees)
                    .zip(b.0.chunks(trees))
                    .filter(|(x, y)| x != y)
                    .count();
            cost.paths.push(PathCost {
                node: node.clone(),
                rows: a.0.len() / trees,
                changed,
            });
        }
    }
    Ok(cost)
}

/// Leaves per row and tree, and the tree count, of one conditional layer.
type Leaves = (Vec<u32>, usize);

/// A run's outputs and the leaves of each conditional layer, by node name.
type Observed = (Vec<(String, Tensor)>, Vec<(String, Leaves)>);

fn run_with_paths(model: &Model, inputs: &[(String, Tensor)]) -> Result<Observed> {
    let mut paths = Vec::new();
    let outputs = model.run_observed(inputs.to_vec(), &mut |node, views| {
        if let Op::FastFeedForward { depth, trees, .. } = node.op {
            if depth > 0 {
                if let Some(leaves) = fff_runtime::fff_stats::row_leaves(node, views) {
                    paths.push((node.name.clone(), (leaves, trees)));
                }
            }
        }
    })?;
    Ok((outputs, paths))
}

fn compare(name: &str, a: &ArrayD<f32>, b: &ArrayD<f32>) -> OutputCost {
    let d = a.shape().last().copied().unwrap_or(1).max(1);
    let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().copied().collect(), b.iter().copied().collect());
    let mut max_abs = 0.0f32;
    let (mut min, mut sum, mut rows) = (1.0f64, 0.0f64, 0usize);
    for (x, y) in a.chunks(d).zip(b.chunks(d)) {
        let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
        for (&p, &q) in x.iter().zip(y) {
            max_abs = max_abs.max((p - q).abs());
            xy += p as f64 * q as f64;
            xx += p as f64 * p as f64;
            yy += q as f64 * q as f64;
        }
        // Two zero rows agree; one zero row against another does not.
        let cos = if xx == 0.0 && yy == 0.0 {
            1.0
        } else if xx == 0.0 || yy == 0.0 {
            0.0
        } else {
            xy / (xx.sqrt() * yy.sqrt())
        };
        min = min.min(cos);
        sum += cos;
        rows += 1;
    }
    OutputCost {
        name: name.to_string(),
        rows,
        max_abs,
        min_cosine: min,
        mean_cosine: if rows > 0 { sum / rows as f64 } else { 1.0 },
    }
}

/// Sequence-like symbolic dimensions of the probes, and their batch.
const PROBE_SEQ: usize = 32;
const PROBE_BATCH: usize = 2;

/// Inputs for the plan, made up: float inputs random in [-1, 1]; integer inputs that index an
/// embedding table directly random below its row count; masks all ones; other integers zeros.
/// Symbolic dimensions are [`PROBE_BATCH`] when named like a batch and [`PROBE_SEQ`] otherwise.
pub fn probe_inputs(g: &PlanGraph) -> Vec<(String, Tensor)> {
    let rows_of = table_rows(g);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    g.inputs
        .iter()
        .map(|i| {
            let shape: Vec<usize> = i
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Sym(s) if s.to_lowercase().contains("batch") => PROBE_BATCH,
                    _ => PROBE_SEQ,
                })
                .collect();
            let len = shape.iter().product::<usize>();
            let name = i.name.to_lowercase();
            let ints: Vec<i64> = if name.contains("mask") {
                vec![1; len]
            } else if let Some(&rows) = rows_of.get(&i.value) {
                (0..len)
                    .map(|_| (next() % rows.max(1) as u64) as i64)
                    .collect()
            } else {
                vec![0; len]
            };
            let s = IxDyn(&shape);
            let t = match i.dtype {
                DType::F32 => Tensor::F32(ArrayD::from_shape_fn(s, |_| {
                    (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })),
                DType::I64 => Tensor::I64(ArrayD::from_shape_vec(s, ints).expect("len")),
                DType::I32 => Tensor::I32(
                    ArrayD::from_shape_vec(s, ints.iter().map(|&v| v as i32).collect())
                        .expect("len"),
                ),
                DType::Bool => Tensor::Bool(ArrayD::from_elem(s, true)),
                DType::BF16 | DType::I8 | DType::U8 => Tensor::zeros(i.dtype, &shape),
            };
            (i.name.clone(), t)
        })
        .collect()
}

/// For each value used directly as the indices of a Gather from a constant table, the table's
/// smallest row count.
fn table_rows(g: &PlanGraph) -> HashMap<usize, usize> {
    let mut rows: HashMap<usize, usize> = HashMap::new();
    for n in &g.nodes {
        let Op::Gather { axis: 0 } = n.op else {
            continue;
        };
        // Gather's inputs: data, indices.
        let (Some(Some(data)), Some(Some(idx))) = (n.inputs.first(), n.inputs.get(1)) else {
            continue;
        };
        if let Some(c) = g.constants.iter().find(|c| c.value == *data) {
            if let Some(&r) = c.shape.first() {
                let e = rows.entry(*idx).or_insert(r);
                *e = (*e).min(r);
            }
        }
    }
    rows
}
