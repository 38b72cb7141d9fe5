//! The tree kernel against the reference, on every instruction set and plan.

use super::*;
use crate::activation::Activation;
use crate::element::{to_bf16, to_f32, Bf16};
use crate::fff::Branch;
use crate::fff::{fff_masked_gemm, fff_reference, FffWeights};
use crate::simd::Store;
use plan::forest_chunk;
use route::partition;

/// `layer`'s weights rounded to bf16 (`w_in`, `w_out`), for [`with_bf16`].
fn rounded(layer: &FffLayer) -> (Vec<Bf16>, Vec<Bf16>) {
    (to_bf16(layer.w.w_in), to_bf16(layer.w.w_out))
}

/// `layer` with the rounded weights `(w_in, w_out)` of [`rounded`]; biases and the rest the same.
fn with_bf16<'a>(
    layer: &FffLayer<'a>,
    (w_in, w_out): &'a (Vec<Bf16>, Vec<Bf16>),
) -> FffLayer<'a, Bf16> {
    FffLayer {
        shape: layer.shape,
        act: layer.act,
        branch: layer.branch,
        w: FffWeights {
            w_in,
            b_in: layer.w.b_in,
            w_out,
            b_out: layer.w.b_out,
        },
    }
}

#[test]
fn partition_puts_rows_with_the_bit_last_and_keeps_every_row() {
    let mut lcg = Lcg(7);
    for n in [0usize, 1, 2, 5, 64, 129] {
        let code: Vec<u8> = (0..n).map(|_| (lcg.next() > 0.0) as u8 * 3).collect();
        let mut set: Vec<u32> = (0..n as u32).rev().collect();
        let before = partition(&mut set, &code, 2);
        assert_eq!(before, code.iter().filter(|&&c| c & 2 == 0).count());
        assert!(set[..before].iter().all(|&r| code[r as usize] & 2 == 0));
        assert!(set[before..].iter().all(|&r| code[r as usize] & 2 != 0));
        let mut sorted = set.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
    }
}

struct Lcg(u32);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (self.0 >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    }
    /// Seeded `(w_in, b_in, w_out, b_out)` for `shape`, drawn in that order.
    fn weights(&mut self, shape: FffShape) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let total = shape.total_nodes();
        (
            self.vec(total * shape.d_in),
            self.vec(total),
            self.vec(total * shape.d_out),
            self.vec(shape.d_out),
        )
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
        let (w_in, b_in, w_out, b_out) = rng.weights(shape);
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

/// Every path (each instruction set; one bucket or split at several levels; tiny tiles; rows
/// walking alone from sets of up to three; one thread or a pool) against the reference, on odd
/// widths, several trees and every depth from 1 to 11.
#[test]
fn every_plan_agrees_with_the_reference() {
    let mut rng = Lcg(23);
    let cases = [
        (1, 37, 100, 1, 3),
        (3, 100, 37, 2, 2),
        (517, 37, 37, 3, 4),
        (5000, 100, 17, 4, 1),
        (64, 16, 100, 5, 2),
        (517, 100, 100, 6, 1),
        (3, 37, 64, 7, 2),
        (5000, 37, 23, 8, 2),
        (1, 100, 37, 9, 1),
        (517, 48, 33, 10, 1),
        (5000, 37, 37, 11, 1),
        // Wider than a column pass: several passes, with and without a masked tail.
        (600, 40, 320, 5, 2),
        (300, 24, 300, 4, 1),
        // One row, whose levels fuse routing with emission: the dot product longer than the
        // output row, and shorter.
        (1, 331, 200, 6, 2),
        (1, 130, 300, 4, 3),
        // One row of a forest, its trees walked four at a time: whole groups, and a last group
        // of one, two and three trees; more output rows than one pass sums, and fewer.
        (1, 768, 768, 1, 8),
        (1, 40, 33, 2, 5),
        (1, 19, 21, 3, 7),
        (1, 64, 17, 0, 6),
        (1, 33, 65, 4, 18),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (case, &(rows, d_in, d_out, depth, trees)) in cases.iter().enumerate() {
        let shape = FffShape {
            d_in,
            d_out,
            depth,
            trees,
        };
        let (w_in, b_in, w_out, b_out) = rng.weights(shape);
        let x: Vec<f32> = rng.vec(rows * d_in).iter().map(|v| v * 4.0).collect();
        let biased = case % 2 == 0;
        let w = FffWeights {
            w_in: &w_in,
            b_in: biased.then_some(&b_in[..]),
            w_out: &w_out,
            b_out: biased.then_some(&b_out[..]),
        };
        let layer = FffLayer {
            shape,
            act: [Activation::GeluErf, Activation::Relu, Activation::GeluTanh][case % 3],
            branch: [Branch::Greater, Branch::GreaterOrEqual][case % 2],
            w,
        };
        let mut want = vec![0.0; rows * d_out];
        fff_reference(&layer, &x, rows, &mut want);
        let skip: Vec<bool> = (0..rows)
            .map(|r| near_boundary(shape, &w, &x[r * d_in..(r + 1) * d_in]))
            .collect();
        // The same weights rounded to bf16, against the reference on their widened values.
        let weights16 = rounded(&layer);
        let layer16 = with_bf16(&layer, &weights16);
        let mut want16 = vec![0.0; rows * d_out];
        fff_reference(&layer16, &x, rows, &mut want16);
        let (wide_in, wide_out) = (to_f32(&weights16.0), to_f32(&weights16.1));
        let wide = FffWeights {
            w_in: &wide_in,
            w_out: &wide_out,
            ..w
        };
        let skip16: Vec<bool> = (0..rows)
            .map(|r| near_boundary(shape, &wide, &x[r * d_in..(r + 1) * d_in]))
            .collect();
        let mut splits = vec![0, 1, depth / 2, depth];
        splits.dedup();
        let mut plans = vec![None];
        for &split in &splits {
            for (tile, lone, store) in [
                (5, 0, Store::Cached),
                (512, 1, Store::Streaming),
                (64, 3, Store::Streaming),
            ] {
                plans.push(Some(Plan {
                    split,
                    tile,
                    lone,
                    store,
                }));
            }
        }
        for isa in Isa::available() {
            for &plan in &plans {
                for threads in [1, 2] {
                    let ctx = format!("{isa:?} {plan:?} threads {threads} {shape:?}");
                    // On one thread aligned to a cache line, on two one element past it: streaming
                    // stores take their aligned path and their head-first path.
                    let mut buf = vec![f32::NAN; rows * d_out + 16];
                    let at = buf.as_ptr().align_offset(64) + threads - 1;
                    let got = &mut buf[at..at + rows * d_out];
                    pool.install(|| run(isa, &Job::of(&layer), &x, rows, got, threads, plan));
                    agree(got, &want, d_out, &skip, &ctx);
                    pool.install(|| run(isa, &Job::of(&layer16), &x, rows, got, threads, plan));
                    agree(got, &want16, d_out, &skip16, &format!("bf16 {ctx}"));
                }
            }
        }
        // The masked GEMM on the same cases, its walks split between the pool's two threads.
        let mut masked = vec![f32::NAN; rows * d_out];
        pool.install(|| fff_masked_gemm(&layer, &x, rows, &mut masked));
        agree(
            &masked,
            &want,
            d_out,
            &skip,
            &format!("masked GEMM {shape:?}"),
        );
    }
}

/// Within 1e-4 (relative above 1) of the reference on every row not near a branch boundary: bf16
/// kernels widen weights exactly and keep activations in f32, so they meet the f32 tolerance
/// against the reference on the widened weights.
fn agree(got: &[f32], want: &[f32], d_out: usize, skip: &[bool], ctx: &str) {
    for (r, _) in skip.iter().enumerate().filter(|(_, &s)| !s) {
        for j in 0..d_out {
            let (g, e) = (got[r * d_out + j], want[r * d_out + j]);
            assert!(
                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                "{ctx} row {r}: {g} vs {e}"
            );
        }
    }
}

/// A forest call large enough to go in chunks, on every instruction set and one or two threads.
#[test]
fn forests_in_chunks_agree_with_the_reference() {
    let mut rng = Lcg(31);
    let (rows, d_in, d_out) = (1100, 1500, 1499);
    let shape = FffShape {
        d_in,
        d_out,
        depth: 1,
        trees: 5,
    };
    assert!(forest_chunk(shape, rows).is_some_and(|c| c < rows && rows < 2 * c));
    let (w_in, b_in, w_out, b_out) = rng.weights(shape);
    let x = rng.vec(rows * d_in);
    let w = FffWeights {
        w_in: &w_in,
        b_in: Some(&b_in),
        w_out: &w_out,
        b_out: Some(&b_out),
    };
    let layer = FffLayer {
        shape,
        act: Activation::GeluErf,
        branch: Branch::Greater,
        w,
    };
    let mut want = vec![0.0; rows * d_out];
    fff_reference(&layer, &x, rows, &mut want);
    let skip: Vec<bool> = (0..rows)
        .map(|r| near_boundary(shape, &w, &x[r * d_in..(r + 1) * d_in]))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for isa in Isa::available() {
        for threads in [1, 2] {
            let mut got = vec![f32::NAN; rows * d_out];
            pool.install(|| run(isa, &Job::of(&layer), &x, rows, &mut got, threads, None));
            agree(
                &got,
                &want,
                d_out,
                &skip,
                &format!("{isa:?} threads {threads}"),
            );
        }
    }
}

#[test]
fn plans_split_large_calls_and_keep_small_ones_whole() {
    let shape = FffShape {
        d_in: 768,
        d_out: 768,
        depth: 11,
        trees: 1,
    };
    assert_eq!(Plan::new(1, shape, 1).split, 0);
    assert_eq!(Plan::new(128, shape, 1).split, 0);
    // Even split levels: routing takes two levels a pass.
    assert_eq!(Plan::new(16384, shape, 1).split, 6);
    assert_eq!(Plan::new(4096, shape, 1).split, 4);
    assert_eq!(Plan::new(512, shape, 1).split, 2);
    // Outputs far larger than the caches are streamed.
    assert_eq!(Plan::new(2048, shape, 1).store, Store::Cached);
    assert_eq!(Plan::new(16384, shape, 1).store, Store::Streaming);
    // Two threads get at least eight buckets where rows allow.
    assert_eq!(Plan::new(128, shape, 2).split, 3);
    assert_eq!(Plan::new(3, shape, 2).split, 0);
    let shallow = FffShape { depth: 2, ..shape };
    assert_eq!(Plan::new(16384, shallow, 2).split, 2);
}

/// The same bits on one thread and on three, with f32 and bf16 weights, on every instruction set:
/// a row's logits must not depend on which rows a call routes with it (the thread count changes
/// the tiles, the buckets and which rows walk alone). The width has whole 64-element blocks and a
/// tail, which the dot products sum in separate running sums.
#[test]
fn parallel_tiles_agree_with_one_thread() {
    let mut rng = Lcg(5);
    let (d_in, d_out) = (100, 40);
    let shape = FffShape {
        d_in,
        d_out,
        depth: 6,
        trees: 2,
    };
    let total = shape.total_nodes();
    let (w_in, w_out) = (rng.vec(total * d_in), rng.vec(total * d_out));
    let w = FffWeights {
        w_in: &w_in,
        b_in: None,
        w_out: &w_out,
        b_out: None,
    };
    let rows = 1000;
    let x = rng.vec(rows * d_in);
    let layer = FffLayer {
        shape,
        act: Activation::Relu,
        branch: Branch::GreaterOrEqual,
        w,
    };
    let weights16 = rounded(&layer);
    let layer16 = with_bf16(&layer, &weights16);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for isa in Isa::available() {
        let (mut one, mut many) = (vec![0.0; rows * d_out], vec![0.0; rows * d_out]);
        run(isa, &Job::of(&layer), &x, rows, &mut one, 1, None);
        pool.install(|| run(isa, &Job::of(&layer), &x, rows, &mut many, 3, None));
        assert!(
            one == many,
            "{isa:?}: f32 results depend on the thread count"
        );
        run(isa, &Job::of(&layer16), &x, rows, &mut one, 1, None);
        pool.install(|| run(isa, &Job::of(&layer16), &x, rows, &mut many, 3, None));
        assert!(
            one == many,
            "{isa:?}: bf16 results depend on the thread count"
        );
    }
}
