//! The conditional kernel for FastFeedForward with trees of depth > 0 (the UltraFastBERT family).
//!
//! Rows are processed in tiles that stay in cache, one tree at a time and level by level. Where a level
//! has fewer nodes than the tile has rows, the rows are grouped by node (a counting sort), so rows that
//! reach the same node share one load of its weights; deeper down each row walks alone. The activation
//! and the branch are applied right after each dot product, and each neuron's output row is added into
//! the output in place. Tiles run in parallel on the current rayon pool; scratch space is per thread
//! and reused, so steady-state calls allocate nothing.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::fff::{FffLayer, FffShape, FffWeights};
use crate::simd::{Isa, Portable, PortableFma, Vector};

/// Rows per tile: enough that rows share the weights of the upper ten levels, few enough that the
/// tile's inputs and outputs (2 x 3 MiB at width 768) stay in the last-level cache. Measured with the
/// `fff_family` bench: 1024 beat 256 and 2048 on the machine in `docs/PERFORMANCE.md`.
pub const TILE_ROWS: usize = 1024;

#[derive(Default)]
struct Scratch {
    /// Each row's node at the current level.
    nodes: Vec<u32>,
    /// Rows sorted by node.
    order: Vec<u32>,
    /// Where each node's rows start in `order`, and the fill cursor while sorting.
    starts: Vec<u32>,
    cursor: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Computes `rows` rows of the op (`x`: `rows x d_in`, `out`: `rows x d_out`) with the best instruction
/// set, in parallel on the current rayon pool.
pub fn fff_tree(layer: &FffLayer, x: &[f32], rows: usize, out: &mut [f32]) {
    check(layer.shape, &layer.w, x, rows, out);
    let (job, shape) = (layer, layer.shape);
    let isa = Isa::best();
    let threads = rayon::current_num_threads().max(1);
    let tile = rows.div_ceil(threads).clamp(8, TILE_ROWS);
    if rows <= tile {
        SCRATCH.with(|s| run_tile(isa, job, x, out, &mut s.borrow_mut()));
        return;
    }
    out.par_chunks_mut(tile * shape.d_out)
        .zip(x.par_chunks(tile * shape.d_in))
        .for_each(|(y, xs)| SCRATCH.with(|s| run_tile(isa, job, xs, y, &mut s.borrow_mut())));
}

/// The same on one thread with a chosen instruction set (which must be in [`Isa::available`]).
pub fn fff_tree_with(isa: Isa, layer: &FffLayer, x: &[f32], rows: usize, out: &mut [f32]) {
    check(layer.shape, &layer.w, x, rows, out);
    assert!(
        Isa::available().contains(&isa),
        "{isa:?} is not available on this CPU"
    );
    let (job, shape) = (layer, layer.shape);
    for (y, xs) in out
        .chunks_mut(TILE_ROWS * shape.d_out.max(1))
        .zip(x.chunks(TILE_ROWS * shape.d_in.max(1)))
    {
        SCRATCH.with(|s| run_tile(isa, job, xs, y, &mut s.borrow_mut()));
    }
}

fn check(shape: FffShape, w: &FffWeights, x: &[f32], rows: usize, out: &[f32]) {
    let total = shape.total_nodes();
    assert!(shape.d_in > 0 && shape.d_out > 0, "widths must be positive");
    assert_eq!(w.w_in.len(), total * shape.d_in);
    assert_eq!(w.w_out.len(), total * shape.d_out);
    assert!(w.b_in.is_none_or(|b| b.len() == total));
    assert!(w.b_out.is_none_or(|b| b.len() == shape.d_out));
    assert_eq!(x.len(), rows * shape.d_in);
    assert_eq!(out.len(), rows * shape.d_out);
}

fn run_tile(isa: Isa, job: &FffLayer, x: &[f32], y: &mut [f32], s: &mut Scratch) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only ever produced by `Isa::available` after detecting AVX-512F and
        // FMA on this CPU (and `fff_tree_with` asserts availability).
        Isa::Avx512 => unsafe { tile_avx512(job, x, y, s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Isa::Avx2Fma => unsafe { tile_avx2(job, x, y, s) },
        // NEON and its fused multiply-add are part of the aarch64 baseline.
        Isa::Neon => tile::<PortableFma>(job, x, y, s),
        _ => tile::<Portable>(job, x, y, s),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_avx512(job: &FffLayer, x: &[f32], y: &mut [f32], s: &mut Scratch) {
    tile::<crate::simd::Avx512>(job, x, y, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(job: &FffLayer, x: &[f32], y: &mut [f32], s: &mut Scratch) {
    tile::<crate::simd::Avx2>(job, x, y, s)
}

/// One neuron for one row: its logit, activation and output row; returns the child the row moves to.
#[inline(always)]
fn walk_one<V: Vector>(job: &FffLayer, i: usize, node: usize, x: &[f32], y: &mut [f32]) -> u32 {
    let (d_in, d_out) = (job.shape.d_in, job.shape.d_out);
    let logit = V::dot(x, &job.w.w_in[i * d_in..(i + 1) * d_in]) + job.w.b_in.map_or(0.0, |b| b[i]);
    V::axpy(
        job.act.apply(logit),
        &job.w.w_out[i * d_out..(i + 1) * d_out],
        y,
    );
    (2 * node + 1 + job.branch.goes_right(logit) as usize) as u32
}

/// Four rows, each at its own node of the tree whose first neuron is `base`: four interleaved dot
/// products, then four interleaved output updates; `nodes` advance to the children.
#[inline(always)]
fn walk_four<V: Vector>(
    job: &FffLayer,
    base: usize,
    nodes: &mut [u32; 4],
    x: &[f32],
    y: &mut [f32],
) {
    let (d_in, d_out) = (job.shape.d_in, job.shape.d_out);
    let neuron = |k: usize| base + nodes[k] as usize;
    let dots = V::dot4(
        std::array::from_fn(|k| &x[k * d_in..(k + 1) * d_in]),
        std::array::from_fn(|k| &job.w.w_in[neuron(k) * d_in..(neuron(k) + 1) * d_in]),
    );
    let logits: [f32; 4] =
        std::array::from_fn(|k| dots[k] + job.w.b_in.map_or(0.0, |b| b[neuron(k)]));
    let outs: [&[f32]; 4] =
        std::array::from_fn(|k| &job.w.w_out[neuron(k) * d_out..(neuron(k) + 1) * d_out]);
    let mut rows = y.chunks_exact_mut(d_out);
    let ys: [&mut [f32]; 4] = std::array::from_fn(|_| rows.next().expect("four rows"));
    V::axpy4(logits.map(|l| job.act.apply(l)), outs, ys);
    for (node, logit) in nodes.iter_mut().zip(logits) {
        *node = 2 * *node + 1 + job.branch.goes_right(logit) as u32;
    }
}

/// One tile of rows, every tree, every level.
#[inline(always)]
fn tile<V: Vector>(job: &FffLayer, x: &[f32], y: &mut [f32], s: &mut Scratch) {
    let FffShape {
        d_in,
        d_out,
        depth,
        trees,
    } = job.shape;
    let n = job.shape.nodes_per_tree();
    let rows = y.len() / d_out;
    crate::fff::init_rows(y, d_out, job.w.b_out);
    s.nodes.clear();
    s.nodes.resize(rows, 0);
    s.order.resize(rows, 0);
    for t in 0..trees {
        s.nodes.fill(0);
        for level in 0..=depth {
            let width = 1usize << level;
            let first = width - 1;
            let step = |y: &mut [f32], r: usize, node: usize| {
                walk_one::<V>(
                    job,
                    t * n + node,
                    node,
                    &x[r * d_in..(r + 1) * d_in],
                    &mut y[r * d_out..(r + 1) * d_out],
                )
            };
            if width * 2 <= rows {
                // Group rows by node: counting sort of the rows by their node at this level.
                s.starts.clear();
                s.starts.resize(width + 1, 0);
                for &node in &s.nodes {
                    s.starts[node as usize - first + 1] += 1;
                }
                for k in 0..width {
                    s.starts[k + 1] += s.starts[k];
                }
                s.cursor.clear();
                s.cursor.extend_from_slice(&s.starts);
                for (r, &node) in s.nodes.iter().enumerate() {
                    let slot = &mut s.cursor[node as usize - first];
                    s.order[*slot as usize] = r as u32;
                    *slot += 1;
                }
                for k in 0..width {
                    for idx in s.starts[k]..s.starts[k + 1] {
                        let r = s.order[idx as usize] as usize;
                        s.nodes[r] = step(y, r, first + k);
                    }
                }
            } else {
                // Each row walks alone: four rows at a time, so that their weight fetches overlap.
                let mut r = 0;
                while r + 4 <= rows {
                    let nodes: &mut [u32; 4] =
                        (&mut s.nodes[r..r + 4]).try_into().expect("four rows");
                    walk_four::<V>(
                        job,
                        t * n,
                        nodes,
                        &x[r * d_in..(r + 4) * d_in],
                        &mut y[r * d_out..(r + 4) * d_out],
                    );
                    r += 4;
                }
                for r in r..rows {
                    s.nodes[r] = step(y, r, s.nodes[r] as usize);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::fff::{fff_masked_gemm, fff_reference, Branch};

    struct Lcg(u32);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (self.0 >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// Whether any logit on the reference path of this row is so close to zero that a different
    /// summation order may take the other branch.
    fn near_boundary(shape: FffShape, w: &FffWeights, x: &[f32]) -> bool {
        let n = shape.nodes_per_tree();
        (0..shape.trees).any(|t| {
            let mut node = 0;
            (0..=shape.depth).any(|_| {
                let i = t * n + node;
                let logit: f32 = w.w_in[i * shape.d_in..(i + 1) * shape.d_in]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    + w.b_in.map_or(0.0, |b| b[i]);
                node = 2 * node + 1 + usize::from(logit > 0.0);
                logit.abs() < 1e-4
            })
        })
    }

    #[test]
    fn every_instruction_set_agrees_with_the_reference() {
        let mut rng = Lcg(11);
        let cases = [
            (1, 7, 5, 3, 1),
            (3, 33, 17, 1, 2),
            (300, 64, 64, 4, 2),
            (517, 100, 31, 2, 5),
            (64, 768, 768, 11, 1),
        ];
        for &(rows, d_in, d_out, depth, trees) in &cases {
            let shape = FffShape {
                d_in,
                d_out,
                depth,
                trees,
            };
            let total = shape.total_nodes();
            let (w_in, b_in, w_out, b_out) = (
                rng.vec(total * d_in),
                rng.vec(total),
                rng.vec(total * d_out),
                rng.vec(d_out),
            );
            let x: Vec<f32> = rng.vec(rows * d_in).iter().map(|v| v * 4.0).collect();
            for biased in [true, false] {
                let w = FffWeights {
                    w_in: &w_in,
                    b_in: biased.then_some(&b_in[..]),
                    w_out: &w_out,
                    b_out: biased.then_some(&b_out[..]),
                };
                let layer = FffLayer {
                    shape,
                    act: Activation::GeluErf,
                    branch: Branch::Greater,
                    w,
                };
                let mut want = vec![0.0; rows * d_out];
                fff_reference(&layer, &x, rows, &mut want);
                let mut kernels: Vec<(String, Vec<f32>)> = Vec::new();
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; rows * d_out];
                    fff_tree_with(isa, &layer, &x, rows, &mut got);
                    kernels.push((format!("tree kernel, {isa:?}"), got));
                }
                let mut masked = vec![f32::NAN; rows * d_out];
                fff_masked_gemm(&layer, &x, rows, &mut masked);
                kernels.push(("masked GEMM".to_string(), masked));
                for (kernel, got) in kernels {
                    for r in 0..rows {
                        if near_boundary(shape, &w, &x[r * d_in..(r + 1) * d_in]) {
                            continue;
                        }
                        for j in 0..d_out {
                            let (g, e) = (got[r * d_out + j], want[r * d_out + j]);
                            assert!(
                                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                                "{kernel} {shape:?} row {r}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn parallel_tiles_agree_with_one_thread() {
        let mut rng = Lcg(5);
        let shape = FffShape {
            d_in: 48,
            d_out: 40,
            depth: 6,
            trees: 2,
        };
        let total = shape.total_nodes();
        let (w_in, w_out) = (rng.vec(total * 48), rng.vec(total * 40));
        let w = FffWeights {
            w_in: &w_in,
            b_in: None,
            w_out: &w_out,
            b_out: None,
        };
        let rows = 1000;
        let x = rng.vec(rows * 48);
        let layer = FffLayer {
            shape,
            act: Activation::Relu,
            branch: Branch::GreaterOrEqual,
            w,
        };
        let mut one = vec![0.0; rows * 40];
        fff_tree_with(Isa::best(), &layer, &x, rows, &mut one);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut many = vec![0.0; rows * 40];
        pool.install(|| fff_tree(&layer, &x, rows, &mut many));
        assert_eq!(one, many);
    }
}
