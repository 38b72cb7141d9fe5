//! Routing: sets of rows walked down a tree, grouped by node so that rows at one node share the
//! loads of its weight row, two levels a pass; sets that shrink to a row walk on alone, four rows in
//! interleaved lanes.

use super::Job;
use crate::element::Element;
use crate::simd::Vector;

#[derive(Default)]
pub(super) struct Walk {
    /// Local rows, permuted by the partitions into the order of their nodes.
    pub(super) set: Vec<u32>,
    /// Where each local row goes from its current set: at the last level 1 if right; two levels at
    /// once, bit 1 if right at the set's node and bit 0 if right at the child it takes.
    pub(super) code: Vec<u8>,
    /// Pending node sets: `(start, end, node, level)` in `set`.
    pub(super) stack: Vec<(u32, u32, u32, u32)>,
    /// Rows that walk on alone: `(local row, node, level)`.
    pub(super) lone: Vec<(u32, u32, u32)>,
}

/// Where routing records logits: local row `i`'s logit at level `k` goes to
/// `acts[i * stride + k - first]`; routing stops before level `stop`. The caller turns them into
/// activations afterwards, in one vectorised pass: the branch needs only the logit's sign, and a
/// scalar GELU per node cost measurably more.
pub(super) struct Levels<'a> {
    pub(super) acts: &'a mut [f32],
    pub(super) stride: usize,
    pub(super) first: usize,
    pub(super) stop: usize,
}

/// Moves the rows whose `code` has `bit` set to the end of `set`; returns how many come before them.
///
/// Without branches: on rows that vary, a row's side is a coin toss, and a branch on it was mispredicted
/// half the time. Rows `i..j` are those found to go after; each row is swapped to `i`, and `i` moves
/// past it only if it goes before.
pub(super) fn partition(set: &mut [u32], code: &[u8], bit: u8) -> usize {
    let mut i = 0;
    for j in 0..set.len() {
        let row = set[j];
        set.swap(i, j);
        i += usize::from(code[row as usize] & bit == 0);
    }
    i
}

/// Routes local rows `0..ids.len()` (local row `i` is row `ids[i]` of `x`) from `node` at `level` down
/// to level `lv.stop`: records each activation in `lv`, and in `ends[i]` the node each row reaches at
/// level `lv.stop`. Leaves `walk.set` holding the local rows in the order of those nodes. Sets of at
/// most `lone` rows walk on alone, four at a time. Meanwhile `ahead` (the inputs of work to come) is
/// fetched into L2, one row's worth per group of rows dotted. In a `large` call (one split at a level)
/// the dot products also fetch their input rows into L1 a few lines ahead.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn route<W: Element, V: Vector>(
    job: &Job<W>,
    tree: usize,
    x: &[f32],
    ids: &[u32],
    walk: &mut Walk,
    lv: Levels,
    ends: &mut [u32],
    node: usize,
    level: usize,
    lone: usize,
    ahead: &[f32],
    large: bool,
) {
    let d_in = job.shape.d_in;
    let mut ahead = ahead.chunks(d_in.max(16));
    let mut fetch_ahead = || {
        if let Some(c) = ahead.next() {
            crate::simd::prefetch_l2(c);
        }
    };
    let base = tree * job.shape.nodes_per_tree();
    let count = ids.len();
    let Walk {
        set,
        code,
        stack,
        lone: alone,
    } = walk;
    let Levels {
        acts,
        stride,
        first,
        stop,
    } = lv;
    let xrow = |i: u32| {
        let r = ids[i as usize] as usize;
        &x[r * d_in..(r + 1) * d_in]
    };
    let w_in = |node: usize| &job.w_in[(base + node) * d_in..(base + node + 1) * d_in];
    let bias = |node: usize| job.b_in.map_or(0.0, |b| b[base + node]);
    set.clear();
    set.extend(0..count as u32);
    code.clear();
    code.resize(count, 0);
    stack.clear();
    alone.clear();
    stack.push((0, count as u32, node as u32, level as u32));
    while let Some((a, b, node, level)) = stack.pop() {
        let (a, b, node, level) = (a as usize, b as usize, node as usize, level as usize);
        if a == b {
            continue;
        }
        if level == stop {
            for &i in &set[a..b] {
                ends[i as usize] = node as u32;
            }
            continue;
        }
        if b - a <= lone {
            alone.extend(set[a..b].iter().map(|&i| (i, node as u32, level as u32)));
            continue;
        }
        if level + 1 < stop {
            // Two levels in one pass over the set's inputs: every row against this node and both its
            // children (half the input traffic of a level at a time, for half again the arithmetic).
            let (l, r) = (2 * node + 1, 2 * node + 2);
            if level + 2 < stop {
                for g in 2 * l + 1..=2 * r + 2 {
                    crate::simd::prefetch(&w_in(g)[..d_in.min(16)]);
                }
            }
            let w = [w_in(node), w_in(l), w_in(r)];
            let bias = [bias(node), bias(l), bias(r)];
            let mut record = |i: u32, dot: [f32; 3]| {
                let i = i as usize;
                let logit = dot[0] + bias[0];
                acts[i * stride + level - first] = logit;
                let right = job.branch.goes_right(logit);
                let logit = if right {
                    dot[2] + bias[2]
                } else {
                    dot[1] + bias[1]
                };
                acts[i * stride + level + 1 - first] = logit;
                code[i] = (right as u8) << 1 | job.branch.goes_right(logit) as u8;
            };
            let mut groups = set[a..b].chunks_exact(4);
            for g in &mut groups {
                let dots = V::dots::<W, 4, 3>(std::array::from_fn(|k| xrow(g[k])), w, large);
                fetch_ahead();
                for k in 0..4 {
                    record(g[k], dots[k]);
                }
            }
            // The last one to three rows together: one running sum per row and weight row is a chain
            // of dependent adds, so a row alone waits on their latency (the sums are the same).
            match *groups.remainder() {
                [a] => record(a, V::dots::<W, 1, 3>([xrow(a)], w, large)[0]),
                [a, b] => {
                    let d = V::dots::<W, 2, 3>([xrow(a), xrow(b)], w, large);
                    record(a, d[0]);
                    record(b, d[1]);
                }
                [a, b, c] => {
                    let d = V::dots::<W, 3, 3>([xrow(a), xrow(b), xrow(c)], w, large);
                    record(a, d[0]);
                    record(b, d[1]);
                    record(c, d[2]);
                }
                _ => {}
            }
            // Grandchildren left to right: split by the first branch, then each half by the second.
            let m = a + partition(&mut set[a..b], code, 2);
            let m0 = a + partition(&mut set[a..m], code, 1);
            let m1 = m + partition(&mut set[m..b], code, 1);
            let next = level as u32 + 2;
            let (l, r) = (l as u32, r as u32);
            stack.push((m1 as u32, b as u32, 2 * r + 2, next));
            stack.push((m as u32, m1 as u32, 2 * r + 1, next));
            stack.push((m0 as u32, m as u32, 2 * l + 2, next));
            stack.push((a as u32, m0 as u32, 2 * l + 1, next));
        } else {
            // The last level: every row of the set against this node's weights, which stay in L1.
            let (wi, bi) = (w_in(node), bias(node));
            let mut record = |i: u32, dot: f32| {
                let logit = dot + bi;
                acts[i as usize * stride + level - first] = logit;
                code[i as usize] = job.branch.goes_right(logit) as u8;
            };
            let mut groups = set[a..b].chunks_exact(4);
            for g in &mut groups {
                let dots = V::dot4(std::array::from_fn(|k| xrow(g[k])), [wi; 4], large);
                fetch_ahead();
                for k in 0..4 {
                    record(g[k], dots[k]);
                }
            }
            // The last few rows in padded lanes: the sums of a group, whatever the set's size.
            let rest = groups.remainder();
            if let Some(&first) = rest.first() {
                let dots = V::dot4(
                    std::array::from_fn(|k| xrow(*rest.get(k).unwrap_or(&first))),
                    [wi; 4],
                    large,
                );
                for (k, &i) in rest.iter().enumerate() {
                    record(i, dots[k]);
                }
            }
            let m = a + partition(&mut set[a..b], code, 1);
            let (node, next) = (node as u32, level as u32 + 1);
            stack.push((m as u32, b as u32, 2 * node + 2, next));
            stack.push((a as u32, m as u32, 2 * node + 1, next));
        }
    }
    // Rows walking alone: four lanes; a lane that reaches the stop level takes the next row.
    let mut queue = alone.iter().copied();
    let mut lanes = [(0u32, 0u32, 0u32); 4];
    let mut live = 0;
    loop {
        while live < 4 {
            match queue.next() {
                Some(e) => {
                    lanes[live] = e;
                    live += 1;
                }
                None => break,
            }
        }
        if live == 0 {
            break;
        }
        // Fewer than four lanes left are padded with the first: each row gets the sums it would get
        // beside others, so its result does not depend on the rows it walks with.
        let lane = |k: usize| lanes[if k < live { k } else { 0 }];
        let dots = V::dot4(
            std::array::from_fn(|k| xrow(lane(k).0)),
            std::array::from_fn(|k| w_in(lane(k).1 as usize)),
            large,
        );
        for k in (0..live).rev() {
            let (i, node, level) = lanes[k];
            let logit = dots[k] + bias(node as usize);
            acts[i as usize * stride + level as usize - first] = logit;
            let child = 2 * node + 1 + job.branch.goes_right(logit) as u32;
            if level as usize + 1 == stop {
                ends[i as usize] = child;
                live -= 1;
                lanes[k] = lanes[live];
            } else {
                lanes[k] = (i, child, level + 1);
            }
        }
    }
}
