//! The FastFeedForward op as GEMMs: dense layers (depth 0), and any depth with every neuron off a
//! row's paths masked out. The GEMMs read f32 weights; [`with_f32_weights`] widens other types.

use std::cell::RefCell;

use super::{Branch, FffLayer, FffShape, FffWeights};
use crate::activation::Activation;
use crate::element::Element;

/// Depth 0 (a dense feedforward layer of `trees` neurons): every neuron is used, so the op is
/// `act(x . W_in^T + b_in) . W_out + b_out`, two GEMMs on the proven GEMM crate.
pub fn fff_dense(layer: &FffLayer, x: &[f32], rows: usize, out: &mut [f32]) {
    use crate::matmul::{gemm, MatRef};
    let FffShape {
        d_in, d_out, trees, ..
    } = dense_shape(layer, x, rows, out);
    let FffLayer { act, w, .. } = *layer;
    // The hidden activations are kept neuron-major (`trees x rows`): the GEMMs then read the weights
    // where they lie instead of packing them on every call, which matters most at few rows.
    with_scratch(rows * trees, 0, |hidden, _| {
        gemm(
            MatRef::row_major(w.w_in, trees, d_in),
            MatRef::row_major(x, rows, d_in).t(),
            hidden,
            1.0,
            0.0,
        );
        crate::activation::bias_act_runs(act, hidden, rows, w.b_in);
        output_gemm(MatRef::row_major(hidden, trees, rows).t(), &w, d_out, out);
    })
}

/// Depth 0 with both weight matrices stored as column panels `cols` wide ([`crate::panels`], as the
/// compiler packs them, or repacked at load): `layer.w.w_in` holds the panels of `W_in^T`
/// (`[d_in, trees]`) and `layer.w.w_out` those of `W_out` (`[trees, d_out]`); `trees` and `d_out` are
/// multiples of `cols`, so neither is padded. The hidden activations are row-major here: both GEMMs
/// read their weights in place.
pub fn fff_dense_panels(layer: &FffLayer, cols: usize, x: &[f32], rows: usize, out: &mut [f32]) {
    use crate::panels::{gemm_panels, Panels};
    use rayon::prelude::*;
    let FffShape {
        d_in, d_out, trees, ..
    } = dense_shape(layer, x, rows, out);
    let FffLayer { act, w, .. } = *layer;
    assert!(
        trees.is_multiple_of(cols) && d_out.is_multiple_of(cols),
        "panels {cols} wide hold whole layers"
    );
    let w_in =
        Panels::new(w.w_in, d_in, trees, cols).expect("W_in holds the panels of [d_in, trees]");
    let w_out =
        Panels::new(w.w_out, trees, d_out, cols).expect("W_out holds the panels of [trees, d_out]");
    with_scratch(rows * trees, 0, |hidden, _| {
        gemm_panels(x, rows, w_in, hidden, 0.0);
        // The activation shares the threads too: at 128 rows of 3072 neurons it is 0.16 ms.
        let chunk = trees.max(1) * 16;
        if crate::threads::available() > 1 && hidden.len() > 4 * chunk {
            hidden
                .par_chunks_mut(chunk)
                .for_each(|h| crate::activation::bias_act_rows(act, h, w.b_in));
        } else {
            crate::activation::bias_act_rows(act, hidden, w.b_in);
        }
        init_rows(out, d_out, w.b_out);
        gemm_panels(hidden, rows, w_out, out, 1.0);
    })
}

/// The shape of a depth-0 layer, checked against `x` (`rows x d_in`) and `out` (`rows x d_out`).
fn dense_shape(layer: &FffLayer, x: &[f32], rows: usize, out: &[f32]) -> FffShape {
    let shape = layer.shape;
    assert_eq!(shape.depth, 0, "the dense kernels compute trees of depth 0");
    assert_eq!(x.len(), rows * shape.d_in);
    assert_eq!(out.len(), rows * shape.d_out);
    shape
}

/// Any depth as GEMMs: all logits at once, each row's paths walked on them, every neuron off its paths
/// zeroed, then the output GEMM. Exact, and fast where most neurons are used anyway.
pub fn fff_masked_gemm(layer: &FffLayer, x: &[f32], rows: usize, out: &mut [f32]) {
    use crate::matmul::{gemm, MatRef};
    let FffLayer {
        shape,
        act,
        branch,
        w,
    } = *layer;
    let FffShape { d_in, d_out, .. } = shape;
    let k = shape.total_nodes();
    assert_eq!(x.len(), rows * d_in);
    assert_eq!(out.len(), rows * d_out);
    with_scratch(rows * k, 0, |hidden, _| {
        gemm(
            MatRef::row_major(x, rows, d_in),
            MatRef::row_major(w.w_in, k, d_in).t(),
            hidden,
            1.0,
            0.0,
        );
        let walk = |rows: &mut [f32]| {
            WALK_SCRATCH.with(|cell| {
                let (logits, at) = &mut *cell.borrow_mut();
                for row in rows.chunks_exact_mut(k.max(1)) {
                    mask_row(row, shape, branch, act, w.b_in, logits, at);
                }
            })
        };
        // The walks share the threads as the GEMMs do, rather than leave all but one idle meanwhile.
        let chunk = k.max(1) * MASK_CHUNK_ROWS;
        if crate::threads::available() > 1 && hidden.len() > chunk {
            use rayon::prelude::*;
            hidden.par_chunks_mut(chunk).for_each(walk);
        } else {
            walk(hidden);
        }
        output_gemm(MatRef::row_major(hidden, rows, k), &w, d_out, out);
    })
}

/// Rows per task of the masked GEMM's walks.
const MASK_CHUNK_ROWS: usize = 16;

thread_local! {
    /// The logits on one row's paths and where they sit, for [`mask_row`].
    static WALK_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Turns one row of logits (without `b_in`) into the row of activations the output GEMM reads: each
/// tree's path walked on the logits, the neurons on it activated (in one vectorised pass), every other
/// neuron zeroed. `logits` and `at` are scratch space.
fn mask_row(
    row: &mut [f32],
    shape: FffShape,
    branch: Branch,
    act: Activation,
    b_in: Option<&[f32]>,
    logits: &mut Vec<f32>,
    at: &mut Vec<u32>,
) {
    let n = shape.nodes_per_tree();
    logits.clear();
    at.clear();
    for t in 0..shape.trees {
        let mut node = 0;
        for _ in 0..=shape.depth {
            let i = t * n + node;
            let logit = row[i] + b_in.map_or(0.0, |b| b[i]);
            logits.push(logit);
            at.push(i as u32);
            node = 2 * node + 1 + branch.goes_right(logit) as usize;
        }
    }
    crate::activation::bias_act_rows(act, logits, None);
    row.fill(0.0);
    for (&i, &v) in at.iter().zip(logits.iter()) {
        row[i as usize] = v;
    }
}

thread_local! {
    /// Buffers of the GEMM paths, kept per thread and grown to the largest call, so that steady-state
    /// calls allocate nothing.
    static GEMM_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on this thread's scratch buffers of `a` and `b` elements (contents unspecified). When the
/// buffers are in use — a GEMM waiting on the pool may run another op's kernel on this thread — `f` gets
/// fresh ones instead.
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    GEMM_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (ba, bb) = &mut *bufs;
            if ba.len() < a {
                ba.resize(a, 0.0);
            }
            if bb.len() < b {
                bb.resize(b, 0.0);
            }
            f(&mut ba[..a], &mut bb[..b])
        }
        Err(_) => f(&mut vec![0.0; a], &mut vec![0.0; b]),
    })
}

/// Every output row set to `b_out` (or zero), ready for neurons to be added in.
pub(crate) fn init_rows(out: &mut [f32], d_out: usize, b_out: Option<&[f32]>) {
    for row in out.chunks_exact_mut(d_out.max(1)) {
        match b_out {
            Some(b) => row.copy_from_slice(b),
            None => row.fill(0.0),
        }
    }
}

/// `out = hidden . W_out + b_out`, for `hidden` the `rows x neurons` activations (in either layout).
fn output_gemm(hidden: crate::matmul::MatRef, w: &FffWeights, d_out: usize, out: &mut [f32]) {
    use crate::matmul::{gemm, MatRef};
    init_rows(out, d_out, w.b_out);
    gemm(
        hidden,
        MatRef::row_major(w.w_out, hidden.cols, d_out),
        out,
        1.0,
        1.0,
    );
}

thread_local! {
    /// Widened weights for the GEMMs, kept per thread and grown to the largest.
    static WIDE: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on `layer` with f32 weights: its own where they are f32, else widened into per-thread
/// scratch on each call (a cost the GEMMs pay on top of reading every weight).
pub(crate) fn with_f32_weights<E: Element, R>(
    layer: &FffLayer<E>,
    f: impl FnOnce(&FffLayer) -> R,
) -> R {
    if let (Some(w_in), Some(w_out)) = (E::as_f32(layer.w.w_in), E::as_f32(layer.w.w_out)) {
        return f(&f32_layer(layer, w_in, w_out));
    }
    WIDE.with(|cell| {
        let mut fresh = Default::default();
        // This thread's buffers are in use by a call waiting on the pool: fresh ones.
        let mut bufs = cell.try_borrow_mut();
        let (w_in, w_out) = match &mut bufs {
            Ok(b) => &mut **b,
            Err(_) => &mut fresh,
        };
        widen_into(layer.w.w_in, w_in);
        widen_into(layer.w.w_out, w_out);
        f(&f32_layer(layer, w_in, w_out))
    })
}

/// `layer` with the f32 weights `w_in` and `w_out`.
fn f32_layer<'a, E>(layer: &FffLayer<'a, E>, w_in: &'a [f32], w_out: &'a [f32]) -> FffLayer<'a> {
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

fn widen_into<E: Element>(src: &[E], dst: &mut Vec<f32>) {
    dst.clear();
    dst.extend(src.iter().map(|&b| b.widen()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fff::fff_reference;

    #[test]
    fn dense_path_agrees_with_reference_at_depth_zero() {
        let mut s = 7u32;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(rows, d_in, d_out, trees) in &[(1, 3, 5, 7), (9, 17, 13, 33), (4, 64, 64, 256)] {
            let shape = FffShape {
                d_in,
                d_out,
                depth: 0,
                trees,
            };
            let w_in: Vec<f32> = (0..trees * d_in).map(|_| next()).collect();
            let b_in: Vec<f32> = (0..trees).map(|_| next()).collect();
            let w_out: Vec<f32> = (0..trees * d_out).map(|_| next()).collect();
            let b_out: Vec<f32> = (0..d_out).map(|_| next()).collect();
            let x: Vec<f32> = (0..rows * d_in).map(|_| next()).collect();
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
            let mut want = vec![0.0f32; rows * d_out];
            let mut got = vec![0.0f32; rows * d_out];
            fff_reference(&layer, &x, rows, &mut want);
            fff_dense(&layer, &x, rows, &mut got);
            for (g, r) in got.iter().zip(&want) {
                assert!((g - r).abs() < 1e-5, "{g} vs {r}");
            }
            let mut masked = vec![0.0f32; rows * d_out];
            fff_masked_gemm(&layer, &x, rows, &mut masked);
            for (g, r) in masked.iter().zip(&want) {
                assert!((g - r).abs() < 1e-5, "masked GEMM at depth 0: {g} vs {r}");
            }
        }
    }

    /// Weights packed as the compiler packs them, rows around the GEMM's row block, with and without
    /// biases, on one and two threads.
    #[test]
    fn dense_panels_agree_with_reference() {
        use crate::panels::pack_panels_of;
        let mut s = 11u32;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(rows, d_in, d_out, trees) in &[(1, 3, 64, 64), (49, 17, 128, 192), (130, 40, 64, 256)]
        {
            for biases in [true, false] {
                let shape = FffShape {
                    d_in,
                    d_out,
                    depth: 0,
                    trees,
                };
                let w_in: Vec<f32> = (0..trees * d_in).map(|_| next()).collect();
                let b_in: Vec<f32> = (0..trees).map(|_| next()).collect();
                let w_out: Vec<f32> = (0..trees * d_out).map(|_| next()).collect();
                let b_out: Vec<f32> = (0..d_out).map(|_| next()).collect();
                let x: Vec<f32> = (0..rows * d_in).map(|_| 4.0 * next()).collect();
                // W_in^T [d_in, trees], then packed 64 and 16 columns wide.
                let w_in_t: Vec<f32> = (0..d_in * trees)
                    .map(|i| w_in[(i % trees) * d_in + i / trees])
                    .collect();
                let packs = [64, 16].map(|cols| {
                    (
                        pack_panels_of(&w_in_t, d_in, trees, cols),
                        pack_panels_of(&w_out, trees, d_out, cols),
                    )
                });
                let layer = |w_in, w_out| FffLayer {
                    shape,
                    act: Activation::GeluTanh,
                    branch: Branch::Greater,
                    w: FffWeights {
                        w_in,
                        b_in: biases.then_some(&b_in[..]),
                        w_out,
                        b_out: biases.then_some(&b_out[..]),
                    },
                };
                let mut want = vec![0.0f32; rows * d_out];
                fff_reference(&layer(&w_in, &w_out), &x, rows, &mut want);
                for (cols, threads) in [(64, 1), (64, 2), (16, 1), (16, 2)] {
                    let (pi, po) = &packs[(cols == 16) as usize];
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = vec![f32::NAN; rows * d_out];
                    let packed = layer(pi, po);
                    pool.install(|| fff_dense_panels(&packed, cols, &x, rows, &mut got));
                    for (g, r) in got.iter().zip(&want) {
                        assert!(
                            (g - r).abs() < 1e-5,
                            "{rows}x{d_in}->{trees}->{d_out}, biases {biases}, {cols}-column panels, {threads} threads: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }
}
