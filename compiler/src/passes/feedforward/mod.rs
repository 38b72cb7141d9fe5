//! Feedforward blocks to `FastFeedForward`.
//!
//! Guarantees: every candidate block (see `anchors`) whose output is a function of one input value is
//! either replaced by one `FastFeedForward` op that agreed with it on random probes of several shapes
//! (see `validate`), or left exactly as it was with the reason recorded in `Graph::report`. A dense
//! feedforward block becomes the op with depth 0. `FastFeedForward` nodes imported directly are reported
//! too. Weights are stored node-major (`[trees*N, d_in]` and `[trees*N, d_out]`), transposed here, at
//! compile time.

mod anchors;
mod region;
mod validate;

use std::collections::{HashMap, HashSet};

use fff_runtime::op::{BinaryOp, FastFeedForward, FffActivation, FffBranch, Op, UnaryOp};
use fff_runtime::Tensor;
use petgraph::stable_graph::NodeIndex;

use crate::error::Result;
use crate::ir::{Graph, OutletId};
use crate::report::{Refused, Rewritten};
use anchors::Candidate;
use region::{extend_output, find_inputs, last_dim, Dominators, Region};

pub fn run(g: &mut Graph) -> Result<bool> {
    Ok(run_counted(g)?.changed)
}

/// What one run of the pass did, and how much searching it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Whether any block was rewritten.
    pub changed: bool,
    /// Candidates judged (rewritten or refused).
    pub judged: usize,
    /// Node answers the search for projection pairs worked out: about the graph's size, whatever the
    /// number of blocks.
    pub pairing_visits: usize,
    /// Times the whole graph's order and dominator tree were worked out: once, and once more after
    /// each rewrite of a block whose inner values are read outside it.
    pub graph_analyses: usize,
}

/// Runs the pass and reports its work. Candidates are taken in one sweep over the nodes in topological
/// order: a rewrite changes only what lies downstream of the block it replaces, which the sweep has not
/// reached yet, so nothing found upstream is searched again.
pub fn run_counted(g: &mut Graph) -> Result<Work> {
    report_direct_ops(g);
    let mut work = Work::default();
    let order = g.topo_order();
    let mut pos: HashMap<NodeIndex, usize> =
        order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut dom = Dominators::new(g, &order);
    let mut gathers = anchors::gather_candidates(g, &order, &pos);
    let mut pairing = anchors::Pairing::default();
    let mut model_values = validate::ModelValues::default();
    let mut taken: HashSet<NodeIndex> = HashSet::new();
    for &n in &order {
        let mut here: Vec<Candidate> = pairing.candidate(g, &pos, n).into_iter().collect();
        here.extend(gathers.remove(&n).unwrap_or_default());
        for c in here {
            if g.report.was_considered(g.node(c.anchor).id())
                || c.consumers.iter().any(|n| taken.contains(n))
            {
                continue;
            }
            let id = g.node(c.anchor).id();
            g.report.consider(id);
            work.judged += 1;
            let anchor = g.node(c.anchor).name.clone();
            match judge(g, dom.idom(), &pos, &c, &mut model_values) {
                Ok((region, proposal, agreement)) => {
                    taken.extend(c.consumers.iter().copied());
                    let (report, fff) = apply(g, &c, &anchor, &region, proposal, agreement);
                    // The new op stands where the block's output stood in the order.
                    pos.insert(fff, pos[&region.y.node]);
                    dom.replaced(g, &region, fff);
                    g.report.rewritten.push(report);
                    work.changed = true;
                }
                Err(reason) => g.report.refused.push(Refused { anchor, reason }),
            }
        }
    }
    work.pairing_visits = pairing.visits();
    work.graph_analyses = dom.analyses();
    Ok(work)
}

/// An imported `FastFeedForward` node is reported as found in direct form.
fn report_direct_ops(g: &mut Graph) {
    let direct: Vec<NodeIndex> = g
        .node_indices()
        .filter(|&n| {
            matches!(g.op(n), Some(Op::FastFeedForward { .. }))
                && !g.report.was_considered(g.node(n).id())
        })
        .collect();
    for n in direct {
        let id = g.node(n).id();
        g.report.consider(id);
        let Some(Op::FastFeedForward { depth, trees, .. }) = g.op(n).cloned() else {
            continue;
        };
        let ins = g.inputs_of(n);
        let width = |i: usize| {
            ins.get(i)
                .copied()
                .flatten()
                .and_then(|o| last_dim(g, o))
                .unwrap_or(0)
        };
        let report = Rewritten {
            anchor: g.node(n).name.clone(),
            form: "direct",
            trees,
            depth,
            d_in: width(FastFeedForward::W_IN),
            d_out: width(FastFeedForward::W_OUT),
            probe_rows: 0,
            boundary_rows: 0,
        };
        g.report.rewritten.push(report);
    }
}

/// A proposed replacement: the op and its weights, node-major.
struct Proposal {
    op: Op,
    w_in: Tensor,
    b_in: Option<Tensor>,
    w_out: Tensor,
    b_out: Option<Tensor>,
}

fn judge(
    g: &Graph,
    idom: &HashMap<NodeIndex, Option<NodeIndex>>,
    pos: &HashMap<NodeIndex, usize>,
    c: &Candidate,
    model: &mut validate::ModelValues,
) -> Result<(Region, Proposal, validate::Agreement), String> {
    let mut last_err = String::new();
    // The widest region first: the input moved back through flattening reshapes, the output extended
    // through the reshape back and the bias. A narrower one where the widest's shapes do not line up.
    for region in find_inputs(g, idom, pos, c.y, &c.consumers)? {
        match judge_region(g, c, extend_output(g, region, pos), model) {
            Ok(found) => return Ok(found),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

fn judge_region(
    g: &Graph,
    c: &Candidate,
    region: Region,
    model: &mut validate::ModelValues,
) -> Result<(Region, Proposal, validate::Agreement), String> {
    let d_in = last_dim(g, region.x).ok_or("the block input's last dimension is not known")?;
    let d_out = last_dim(g, region.y).ok_or("the block output's last dimension is not known")?;
    let probes = validate::probes(g, &region, d_in, model)?;
    let want: Vec<Tensor> = probes
        .iter()
        .map(|p| validate::eval_region(g, &region, p))
        .collect::<Result<_, _>>()?;
    let proposals = proposals(g, &region, c, d_in, d_out);
    if proposals.is_empty() {
        return Err(format!(
            "its weights do not fit a {d_in} -> {d_out} feedforward layer"
        ));
    }
    let mut last_err = String::new();
    for p in proposals {
        let w = [
            Some(&p.w_in),
            p.b_in.as_ref(),
            Some(&p.w_out),
            p.b_out.as_ref(),
        ];
        // One row first, to throw out wrong proposals cheaply; then every probe row.
        if let Err(e) = validate::agree(&p.op, &w, &probes[..1], &want[..1], 1) {
            last_err = e;
            continue;
        }
        match validate::agree(&p.op, &w, &probes, &want, usize::MAX) {
            Ok(agreement) => return Ok((region, p, agreement)),
            Err(e) => last_err = e,
        }
    }
    Err(format!("no FastFeedForward op reproduces it ({last_err})"))
}

/// Every reading of the candidate as a FastFeedForward op, most likely first: weight roles and layouts,
/// biases, (trees, depth) splits of the neuron count, activations. The branch rule is read off the
/// comparison in the block: random probes cannot tell `>` from `>=`.
fn proposals(
    g: &Graph,
    region: &Region,
    c: &Candidate,
    d_in: usize,
    d_out: usize,
) -> Vec<Proposal> {
    let ops: Vec<&Op> = region.ops(g).collect();
    let has = |f: &dyn Fn(&Op) -> bool| ops.iter().any(|o| f(o));
    let branch = if has(&|o| {
        matches!(
            o,
            Op::Binary(BinaryOp::GreaterOrEqual | BinaryOp::LessOrEqual)
        )
    }) {
        FffBranch::Ge
    } else {
        FffBranch::Gt
    };
    let mut acts = Vec::new();
    if has(&|o| matches!(o, Op::Unary(UnaryOp::Erf | UnaryOp::Gelu))) {
        acts.push(FffActivation::Gelu);
    }
    if has(&|o| matches!(o, Op::Unary(UnaryOp::Tanh | UnaryOp::GeluTanh))) {
        acts.push(FffActivation::GeluTanh);
    }
    if has(&|o| matches!(o, Op::Unary(UnaryOp::Relu))) {
        acts.push(FffActivation::Relu);
    }
    for a in [
        FffActivation::Gelu,
        FffActivation::GeluTanh,
        FffActivation::Relu,
    ] {
        if !acts.contains(&a) {
            acts.push(a);
        }
    }
    let reshape_hints: Vec<Vec<i64>> = region
        .nodes
        .iter()
        .filter(|&&n| matches!(g.op(n), Some(Op::Reshape { .. })))
        .filter_map(|&n| {
            g.inputs_of(n)
                .get(1)
                .copied()
                .flatten()
                .and_then(|o| g.fact(o).known_value())
        })
        .collect();
    let consts: Vec<&Tensor> = region
        .nodes
        .iter()
        .flat_map(|&n| g.inputs_of(n))
        .flatten()
        .filter_map(|o| g.const_value(o).map(|t| t.as_ref()))
        .filter(|t| t.dtype() == fff_runtime::DType::F32)
        .collect();

    let mut out = Vec::new();
    let (wa, wb) = (
        g.const_value(c.weights.0).map(|t| t.as_ref()),
        g.const_value(c.weights.1).map(|t| t.as_ref()),
    );
    let (Some(wa), Some(wb)) = (wa, wb) else {
        return out;
    };
    for (w_in_raw, w_out_raw) in [(wa, wb), (wb, wa)] {
        for w_in in node_major(w_in_raw, d_in) {
            for w_out in node_major(w_out_raw, d_out) {
                let k = w_in.shape()[0];
                if w_out.shape()[0] != k {
                    continue;
                }
                let biases = |len: usize| -> Vec<Option<Tensor>> {
                    let mut v: Vec<Option<Tensor>> = Vec::new();
                    for t in &consts {
                        if t.len() == len
                            && t.shape().iter().filter(|&&d| d != 1).count() <= 1
                            && !std::ptr::eq(*t, w_in_raw)
                        {
                            let flat = flat(t);
                            if !v.iter().any(|b| b.as_ref() == Some(&flat)) {
                                v.push(Some(flat));
                            }
                        }
                    }
                    v.push(None);
                    v
                };
                for (trees, depth) in splits(k, &reshape_hints, c.form == "dense") {
                    for b_in in biases(k) {
                        for b_out in biases(d_out) {
                            for &activation in &acts {
                                out.push(Proposal {
                                    op: Op::FastFeedForward {
                                        depth,
                                        trees,
                                        activation,
                                        branch,
                                    },
                                    w_in: w_in.clone(),
                                    b_in: b_in.clone(),
                                    w_out: w_out.clone(),
                                    b_out: b_out.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A 2-D weight as `[neurons, width]`: as stored when its columns are the width, transposed when its
/// rows are (both for a square matrix).
fn node_major(w: &Tensor, width: usize) -> Vec<Tensor> {
    let Tensor::F32(a) = w else { return vec![] };
    let (r, c) = (a.shape()[0], a.shape()[1]);
    let mut v = Vec::new();
    if c == width {
        v.push(w.clone());
    }
    if r == width {
        v.push(Tensor::F32(a.t().as_standard_layout().into_owned()));
    }
    v
}

fn flat(t: &Tensor) -> Tensor {
    match t {
        Tensor::F32(a) => Tensor::F32(
            ndarray::ArrayD::from_shape_vec(
                ndarray::IxDyn(&[a.len()]),
                a.iter().copied().collect(),
            )
            .expect("1-D"),
        ),
        other => other.clone(),
    }
}

/// `(trees, depth)` with `trees * (2^(depth+1) - 1) == k`: a split whose `[trees, nodes]` appears as
/// the last two dims of a reshape in the block first, then deeper trees first (depth 0 first for a block
/// without masking ops).
fn splits(k: usize, hints: &[Vec<i64>], dense_first: bool) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = (0..40)
        .map(|d| (d, (1usize << (d + 1)) - 1))
        .take_while(|(_, n)| *n <= k)
        .filter(|(_, n)| k.is_multiple_of(*n))
        .map(|(d, n)| (k / n, d))
        .collect();
    let hinted = |&(t, d): &(usize, usize)| {
        let n = (1i64 << (d + 1)) - 1;
        hints
            .iter()
            .any(|h| h.len() >= 2 && h[h.len() - 1] == n && h[h.len() - 2] == t as i64)
    };
    v.sort_by_key(|s| (!hinted(s), if dense_first { s.1 } else { usize::MAX - s.1 }));
    v
}

/// Adds the op, makes the block's readers read it, and returns its report and node.
fn apply(
    g: &mut Graph,
    c: &Candidate,
    anchor: &str,
    region: &Region,
    p: Proposal,
    agreement: validate::Agreement,
) -> (Rewritten, NodeIndex) {
    let Op::FastFeedForward { depth, trees, .. } = p.op else {
        unreachable!("proposals are FastFeedForward ops")
    };
    let d_in = p.w_in.shape()[1];
    let d_out = p.w_out.shape()[1];
    let name = format!("{anchor}/fff");
    let w_in = g.add_const(&format!("{name}/w_in"), p.w_in);
    let b_in = p.b_in.map(|b| g.add_const(&format!("{name}/b_in"), b));
    let w_out = g.add_const(&format!("{name}/w_out"), p.w_out);
    let b_out = p.b_out.map(|b| g.add_const(&format!("{name}/b_out"), b));
    let n = g.add_op(
        &name,
        p.op,
        &[Some(region.x), Some(w_in), b_in, Some(w_out), b_out],
        1,
    );
    g.replace_uses(region.y, OutletId::new(n, 0));
    let id = g.node(n).id();
    g.report.consider(id);
    let form = if depth == 0 { "dense" } else { c.form };
    let report = Rewritten {
        anchor: anchor.to_string(),
        form,
        trees,
        depth,
        d_in,
        d_out,
        probe_rows: agreement.rows,
        boundary_rows: agreement.boundary_rows,
    };
    (report, n)
}
