//! The subgraph a feedforward candidate occupies: everything between one block input `x` and one block
//! output `y`. A region is only valid when `y` is a pure function of `x` (and constants): walking back
//! from `y` without crossing `x` must never reach another model input.

use std::collections::{HashMap, HashSet};

use fff_runtime::op::Op;
use petgraph::stable_graph::NodeIndex;

use crate::ir::{Dim, Graph, NodeKind, OutletId};

/// The op nodes between `x` and `y`, in topological order.
#[derive(Clone, Debug)]
pub struct Region {
    pub x: OutletId,
    pub y: OutletId,
    pub nodes: Vec<NodeIndex>,
    /// Values outside the region whose shape (never their data) the region reads through `Shape` or
    /// `Size`, as exporters that compute `batch * seq` once per model do.
    pub shape_sources: Vec<OutletId>,
}

/// `Shape` and `Size` read only the shape of their input.
pub fn reads_only_shape(op: &Op) -> bool {
    matches!(op, Op::Shape { .. } | Op::Size)
}

impl Region {
    /// Walks back from `y`, stopping at `x` and at constants.
    pub fn between(
        g: &Graph,
        x: OutletId,
        y: OutletId,
        topo_pos: &HashMap<NodeIndex, usize>,
    ) -> Result<Region, String> {
        if y.node == x.node {
            return Err("the block output is its input".into());
        }
        let mut seen = HashSet::new();
        let mut shape_reads = Vec::new();
        let mut stack = vec![y.node];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            match &g.node(n).kind {
                NodeKind::Const(_) => continue,
                NodeKind::Input => {
                    return Err(format!(
                        "it also depends on the model input '{}'",
                        g.node(n).name
                    ));
                }
                NodeKind::Op(op) if reads_only_shape(op) => {
                    shape_reads.extend(g.inputs_of(n).into_iter().flatten());
                    continue;
                }
                NodeKind::Op(_) => {}
            }
            for i in g.inputs_of(n).into_iter().flatten() {
                if i.node == x.node {
                    if i.slot != x.slot {
                        return Err("it reads another output of the block input's producer".into());
                    }
                    continue;
                }
                stack.push(i.node);
            }
        }
        let mut nodes: Vec<NodeIndex> = seen
            .into_iter()
            .filter(|n| matches!(g.node(*n).kind, NodeKind::Op(_)))
            .collect();
        nodes.sort_by_key(|n| topo_pos[n]);
        let mut shape_sources: Vec<OutletId> = shape_reads
            .into_iter()
            .filter(|o| *o != x && !nodes.contains(&o.node))
            .collect();
        shape_sources.sort();
        shape_sources.dedup();
        Ok(Region {
            x,
            y,
            nodes,
            shape_sources,
        })
    }

    pub fn contains(&self, n: NodeIndex) -> bool {
        self.nodes.contains(&n)
    }

    pub fn ops<'a>(&'a self, g: &'a Graph) -> impl Iterator<Item = &'a Op> + 'a {
        self.nodes.iter().filter_map(|&n| g.op(n))
    }
}

/// Immediate dominators of the nodes that depend on model data, over a virtual root feeding every
/// model input (`None` is that root). A node dominates `n` when every path from any model input to `n`
/// passes through it. Paths through `Shape` and `Size` carry no data and are left out.
fn dominators(g: &Graph, order: &[NodeIndex]) -> HashMap<NodeIndex, Option<NodeIndex>> {
    let mut idom: HashMap<NodeIndex, Option<NodeIndex>> = HashMap::new();
    let mut depth: HashMap<Option<NodeIndex>, usize> = HashMap::from([(None, 0)]);
    for &n in order {
        let preds: Vec<NodeIndex> = if matches!(g.node(n).kind, NodeKind::Input) {
            vec![]
        } else if g.op(n).is_some_and(reads_only_shape) {
            continue;
        } else {
            let mut p: Vec<NodeIndex> = g.producers(n).filter(|p| idom.contains_key(p)).collect();
            p.sort();
            p.dedup();
            if p.is_empty() {
                continue; // depends on constants only
            }
            p
        };
        let dom = if preds.is_empty() {
            None
        } else {
            let mut d = Some(preds[0]);
            for &p in &preds[1..] {
                d = intersect(&idom, &depth, d, Some(p));
            }
            d
        };
        idom.insert(n, dom);
        depth.insert(Some(n), depth[&dom] + 1);
    }
    idom
}

/// The dominator tree of the data nodes, kept up to date while blocks are replaced.
pub struct Dominators {
    idom: HashMap<NodeIndex, Option<NodeIndex>>,
    /// The nodes each node immediately dominates.
    children: HashMap<NodeIndex, Vec<NodeIndex>>,
    /// Times the tree was worked out from the whole graph.
    analyses: usize,
}

impl Dominators {
    pub fn new(g: &Graph, order: &[NodeIndex]) -> Dominators {
        let idom = dominators(g, order);
        let mut children: HashMap<NodeIndex, Vec<NodeIndex>> = HashMap::new();
        for (&n, &d) in &idom {
            if let Some(d) = d {
                children.entry(d).or_default().push(n);
            }
        }
        Dominators {
            idom,
            children,
            analyses: 1,
        }
    }

    /// Times the tree was worked out from the whole graph.
    pub fn analyses(&self) -> usize {
        self.analyses
    }

    pub fn idom(&self) -> &HashMap<NodeIndex, Option<NodeIndex>> {
        &self.idom
    }

    /// Updates the tree after the readers of `region.y` were made to read `op`, a new node reading
    /// `region.x` and constants. Data enters the region only at `x`; where it also leaves it only at
    /// `y`, the region acts as one node, so `op` takes `y`'s place: dominated by `x`, dominating what
    /// `y` dominated. Otherwise (a value inside the region read outside it) the tree is worked out
    /// again.
    pub fn replaced(&mut self, g: &Graph, region: &Region, op: NodeIndex) {
        let inside: HashSet<NodeIndex> = region.nodes.iter().copied().collect();
        // `y`'s readers read `op` now; any reader left outside the region reads the data inside.
        let leaks = region.nodes.iter().any(|&n| {
            g.readers(n)
                .any(|r| !inside.contains(&r) && self.idom.contains_key(&r))
        });
        if leaks || !self.idom.contains_key(&region.x.node) {
            let analyses = self.analyses + 1;
            *self = Dominators::new(g, &g.topo_order());
            self.analyses = analyses;
            return;
        }
        let moved = self.children.remove(&region.y.node).unwrap_or_default();
        for &n in &moved {
            self.idom.insert(n, Some(op));
        }
        self.children.insert(op, moved);
        self.idom.insert(op, Some(region.x.node));
        self.children.entry(region.x.node).or_default().push(op);
    }
}

fn intersect(
    idom: &HashMap<NodeIndex, Option<NodeIndex>>,
    depth: &HashMap<Option<NodeIndex>, usize>,
    mut a: Option<NodeIndex>,
    mut b: Option<NodeIndex>,
) -> Option<NodeIndex> {
    while a != b {
        if depth[&a] >= depth[&b] {
            a = a.and_then(|n| idom[&n]);
        } else {
            b = b.and_then(|n| idom[&n]);
        }
    }
    a
}

/// The last dimension of a value, where known.
pub fn last_dim(g: &Graph, o: OutletId) -> Option<usize> {
    match g.fact(o).shape.as_ref()?.last()? {
        Dim::Known(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

/// Ops that only rearrange a value without changing its elements.
pub fn is_reshaping(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze | Op::Unsqueeze | Op::Identity
    )
}

/// The block input: the nearest dominator of `y` whose region holds every weight consumer, then moved
/// back through reshaping ops that keep the last dimension (so `[batch, seq, d] -> [-1, d]` flattening is
/// inside the block). Returns the regions from the furthest input back to the nearest.
pub fn find_inputs(
    g: &Graph,
    idom: &HashMap<NodeIndex, Option<NodeIndex>>,
    topo_pos: &HashMap<NodeIndex, usize>,
    y: OutletId,
    consumers: &[NodeIndex],
) -> Result<Vec<Region>, String> {
    let mut d = idom.get(&y.node).copied().flatten();
    let mut found = None;
    while let Some(n) = d {
        if g.node(n).outputs.len() == 1 {
            let x = OutletId::new(n, 0);
            if let Ok(r) = Region::between(g, x, y, topo_pos) {
                if consumers.iter().all(|c| r.contains(*c)) {
                    found = Some(r);
                    break;
                }
            }
        }
        d = idom.get(&n).copied().flatten();
    }
    let mut regions = vec![found.ok_or("no single value feeds every part of the block")?];
    let width = last_dim(g, regions[0].x).ok_or("the block input's last dimension is not known")?;
    loop {
        let x = regions[regions.len() - 1].x;
        let Some(op) = g.op(x.node) else { break };
        let Some(Some(src)) = g.inputs_of(x.node).first().copied() else {
            break;
        };
        if !is_reshaping(op)
            || last_dim(g, src) != Some(width)
            || g.fact(src).dtype != Some(fff_runtime::DType::F32)
        {
            break;
        }
        match Region::between(g, src, y, topo_pos) {
            Ok(r) => regions.push(r),
            Err(_) => break,
        }
    }
    regions.reverse();
    Ok(regions)
}

/// Extends the block output through a single reader that only reshapes it or adds a constant bias of
/// the output width, as long as the region stays a function of the block input.
pub fn extend_output(
    g: &Graph,
    mut region: Region,
    topo_pos: &HashMap<NodeIndex, usize>,
) -> Region {
    let Some(width) = last_dim(g, region.y) else {
        return region;
    };
    loop {
        let readers = g.consumers(region.y);
        if readers.len() != 1 || g.is_output(region.y) {
            return region;
        }
        let (next, slot) = readers[0];
        let Some(op) = g.op(next) else { return region };
        let ok = match op {
            op if is_reshaping(op) => slot == 0,
            Op::Binary(fff_runtime::op::BinaryOp::Add) => g
                .inputs_of(next)
                .iter()
                .flatten()
                .any(|i| *i != region.y && g.const_value(*i).is_some_and(|c| c.len() == width)),
            _ => false,
        };
        let y = OutletId::new(next, 0);
        if !ok || last_dim(g, y) != Some(width) || g.node(next).outputs.len() != 1 {
            return region;
        }
        match Region::between(g, region.x, y, topo_pos) {
            Ok(r) => region = r,
            Err(_) => return region,
        }
    }
}
