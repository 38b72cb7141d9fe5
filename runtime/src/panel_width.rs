//! Repacking a plan's weight panels, at load, to the width this CPU's GEMM reads best.
//!
//! Plans store the constant weights of `PackedLinear` and of depth-0 `FastFeedForward` as column
//! panels 64 wide (`fff_ops::panels::PANEL_COLS`), the height of the GEMM crate's AVX-512
//! micro-kernel. Its AVX2 and NEON micro-kernels are 16 columns tall; at 128 rows the AVX2 one read
//! 64-column panels at 0.84–1.00x the speed of row-major weights, against 1.03–1.23x for 16-column
//! panels (docs/PERFORMANCE.md), so a CPU without AVX-512 gets its panels repacked once at load: the
//! repacked copy lives on the heap for the life of the model, and the mapped pages of the original
//! are given back to the system as soon as each is copied (they are never read again).
//!
//! What this guarantees: only constants every reader of which reads them as panels (and that no model
//! output names) are repacked, a depth-0 `FastFeedForward`'s two weights both or neither; each becomes
//! the same matrix at the new width, shape `[ceil(n / c), k, c]`, which the ops take by their shape.

use fff_ops::panels::{repack_panels_into, MAX_PANEL_COLS, PANEL_COLS};

use crate::error::{Error, Result};
use crate::opset::{FastFeedForward, Linear, Op};
use crate::plan::PlanGraph;
use crate::tensor::{Tensor, TensorView};

/// The width asked for, or the CPU's best for 0. Widths must divide the plans' 64, so that depth-0
/// layers, whole 64-column panels, stay whole panels.
pub fn resolve(asked: usize) -> Result<usize> {
    match asked {
        0 => Ok(fff_ops::panels::best_cols()),
        c if PANEL_COLS.is_multiple_of(c) => Ok(c),
        c => Err(Error::invalid(format!(
            "panel width {c}: it must divide {PANEL_COLS} (0 for this CPU's best)"
        ))),
    }
}

/// The constants to repack to `cols` columns a panel and their repacked tensors; `constant(v)` is the
/// view of value `v` when it is a constant, and `done(v)` is told as soon as `v`'s panels are copied,
/// so that the caller can release the originals' memory before the next copy.
pub fn repacked<'a>(
    graph: &PlanGraph,
    constant: impl Fn(usize) -> Option<TensorView<'a>>,
    cols: usize,
    mut done: impl FnMut(usize),
) -> Vec<(usize, Tensor)> {
    // For each value: the matrix `(k, n)` its panel readers see, or `None` once any reader (or an
    // output) takes it otherwise.
    let mut seen: Vec<Option<Option<(usize, usize)>>> = vec![None; graph.num_values];
    let mut mark = |v: usize, as_panels: Option<(usize, usize)>| {
        let slot = &mut seen[v];
        *slot = match (*slot, as_panels) {
            (None, p) => Some(p),
            (Some(Some(a)), Some(b)) if a == b => Some(Some(a)),
            _ => Some(None),
        };
    };
    for node in &graph.nodes {
        for (i, input) in node.inputs.iter().enumerate() {
            let Some(v) = *input else { continue };
            let matrix = panel_inputs(&node.op)
                .contains(&i)
                .then(|| panel_matrix(&node.op, constant(v)?.shape()))
                .flatten();
            mark(v, matrix);
        }
    }
    for o in &graph.outputs {
        mark(o.value, None);
    }
    // A depth-0 FastFeedForward reads both weights at one width: one that stays keeps the other.
    let mut kept = true;
    while kept {
        kept = false;
        for node in &graph.nodes {
            let Op::FastFeedForward { depth: 0, .. } = node.op else {
                continue;
            };
            let pair = FastFeedForward::WEIGHTS.map(|i| node.inputs.get(i).copied().flatten());
            let [Some(a), Some(b)] = pair else { continue };
            if seen[a].flatten().is_some() != seen[b].flatten().is_some() {
                seen[a] = Some(None);
                seen[b] = Some(None);
                kept = true;
            }
        }
    }
    let mut out = Vec::new();
    for (v, matrix) in seen.into_iter().enumerate() {
        let (Some(Some((k, n))), Some(TensorView::F32(w))) = (matrix, constant(v)) else {
            continue;
        };
        let from = w.shape()[2];
        if from == cols {
            continue;
        }
        let Some(source) = w.as_slice() else {
            continue;
        };
        // A fresh buffer: large ones get huge pages, a few hundred faults instead of tens of
        // thousands for a model's weights.
        let mut data = crate::buffers::fresh(n.div_ceil(cols) * k * cols);
        if !repack_panels_into(source, k, n, from, cols, &mut data) {
            continue;
        }
        done(v);
        let shape = [n.div_ceil(cols), k, cols];
        out.push((
            v,
            Tensor::F32(crate::tensor::from_vec(ndarray::IxDyn(&shape), data)),
        ));
    }
    out
}

/// The inputs `op` may read as weight panels: W of `PackedLinear`, W_in and W_out of a depth-0
/// `FastFeedForward`.
pub fn panel_inputs(op: &Op) -> &'static [usize] {
    match op {
        Op::PackedLinear { .. } => &[Linear::W],
        Op::FastFeedForward { depth: 0, .. } => &FastFeedForward::WEIGHTS,
        _ => &[],
    }
}

/// `(k, n)` of the matrix that panels shaped `[p, k, c]` hold as `op` reads them: `n` columns for
/// `PackedLinear { n }`, all `p * c` for a depth-0 `FastFeedForward` (whose widths are whole panels).
/// `None` for any other shape, which the op will reject when it runs.
pub fn panel_matrix(op: &Op, shape: &[usize]) -> Option<(usize, usize)> {
    let &[p, k, c] = shape else { return None };
    let n = match op {
        Op::PackedLinear { n } => *n,
        _ => p.checked_mul(c)?,
    };
    ((1..=MAX_PANEL_COLS).contains(&c) && p == n.div_ceil(c)).then_some((k, n))
}

#[cfg(test)]
mod tests {
    use fff_ops::panels::{pack_panels, pack_panels_of};
    use ndarray::{ArrayViewD, IxDyn};

    use super::*;
    use crate::op::BinaryOp;
    use crate::plan::{PlanNode, PlanOutput};

    fn node(op: Op, inputs: &[usize], output: usize) -> PlanNode {
        PlanNode {
            name: format!("n{output}"),
            op,
            inputs: inputs.iter().map(|&v| Some(v)).collect(),
            outputs: vec![output],
        }
    }

    /// Value 0 is the input; 1, 2 and 3 are the same panels of a `[3, 100]` matrix, 1 read only as
    /// panels, 2 also by an Add, 3 also named as an output.
    #[test]
    fn repacks_only_constants_that_every_reader_reads_as_panels() {
        let (k, n) = (3, 100);
        let rows: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        let packed = pack_panels(&rows, k, n);
        let linear = || Op::PackedLinear { n };
        let graph = PlanGraph {
            producer: String::new(),
            num_values: 8,
            inputs: vec![],
            outputs: vec![PlanOutput {
                name: "w".into(),
                value: 3,
                dtype: None,
                shape: None,
            }],
            constants: vec![],
            nodes: vec![
                node(linear(), &[0, 1], 4),
                node(linear(), &[0, 1], 5),
                node(linear(), &[0, 2], 6),
                node(Op::Binary(BinaryOp::Add), &[2, 6], 7),
                node(linear(), &[0, 3], 7),
            ],
            text: None,
        };
        let constant = |v: usize| {
            (1..=3).contains(&v).then(|| {
                TensorView::F32(
                    ArrayViewD::from_shape(IxDyn(&[2, k, PANEL_COLS]), &packed[..]).unwrap(),
                )
            })
        };
        let mut released = vec![];
        let got = repacked(&graph, constant, 16, |v| released.push(v));
        assert_eq!(released, [1]);
        assert_eq!(got.len(), 1);
        let (v, Tensor::F32(t)) = &got[0] else {
            panic!("f32 panels")
        };
        assert_eq!(*v, 1);
        assert_eq!(t.shape(), &[7, k, 16]);
        assert_eq!(t.as_slice().unwrap(), &pack_panels_of(&rows, k, n, 16)[..]);
        assert!(repacked(&graph, constant, PANEL_COLS, |_| {}).is_empty());
    }

    /// Two dense FastFeedForward nodes, 64 neurons from width 2 to 64: the first's W_out (value 4) is
    /// also read by an Add, so its W_in (value 3) stays too; the second's weights (5, 6) are repacked.
    #[test]
    fn a_dense_feedforward_keeps_both_weights_when_one_must_stay() {
        let ff = || Op::FastFeedForward {
            depth: 0,
            trees: 64,
            activation: crate::op::FffActivation::Gelu,
            branch: crate::op::FffBranch::Gt,
        };
        let ff_node = |w_in: usize, w_out: usize, output: usize| PlanNode {
            name: format!("n{output}"),
            op: ff(),
            inputs: vec![Some(0), Some(w_in), None, Some(w_out), None],
            outputs: vec![output],
        };
        let graph = PlanGraph {
            producer: String::new(),
            num_values: 10,
            inputs: vec![],
            outputs: vec![],
            constants: vec![],
            nodes: vec![
                ff_node(3, 4, 7),
                node(Op::Binary(BinaryOp::Add), &[4, 7], 8),
                ff_node(5, 6, 9),
            ],
            text: None,
        };
        let (w_in, w_out) = (vec![0.5f32; 2 * 64], vec![0.25f32; 64 * 64]);
        let constant = |v: usize| match v {
            3 | 5 => Some(TensorView::F32(
                ArrayViewD::from_shape(IxDyn(&[1, 2, 64]), &w_in[..]).unwrap(),
            )),
            4 | 6 => Some(TensorView::F32(
                ArrayViewD::from_shape(IxDyn(&[1, 64, 64]), &w_out[..]).unwrap(),
            )),
            _ => None,
        };
        let got: Vec<(usize, Vec<usize>)> = repacked(&graph, constant, 16, |_| {})
            .into_iter()
            .map(|(v, t)| (v, t.shape().to_vec()))
            .collect();
        assert_eq!(got, [(5, vec![4, 2, 16]), (6, vec![4, 64, 16])]);
    }

    #[test]
    fn widths_must_divide_the_plans_width() {
        assert_eq!(resolve(16).unwrap(), 16);
        assert_eq!(resolve(1).unwrap(), 1);
        assert!([16, 64].contains(&resolve(0).unwrap()));
        for bad in [24, 65, 128] {
            assert!(resolve(bad)
                .unwrap_err()
                .to_string()
                .contains("panel width"));
        }
    }
}
