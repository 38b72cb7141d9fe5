//! The definition of the op, read literally: the reference the kernels are tested against, and the
//! leaves rows reach, for usage statistics.

use super::{FffLayer, FffShape};
use crate::element::Element;

/// The leaf each row reaches in each tree: `leaves[r * trees + t]` is the index, among the `2^depth`
/// neurons of tree `t`'s last level, of the one row `r` ends at (0 for depth 0). For usage statistics:
/// the kernels never materialise paths. Computed with plain sums, so a row whose logit is within
/// rounding of zero may be counted on the other side than the kernel took.
pub fn fff_leaves(layer: &FffLayer, x: &[f32], rows: usize, leaves: &mut [u32]) {
    let FffShape {
        d_in, depth, trees, ..
    } = layer.shape;
    let n = layer.shape.nodes_per_tree();
    assert_eq!(x.len(), rows * d_in, "fff_leaves: x is not rows x d_in");
    assert_eq!(
        leaves.len(),
        rows * trees,
        "fff_leaves: leaves is not rows x trees"
    );
    assert_eq!(
        layer.w.w_in.len(),
        trees * n * d_in,
        "fff_leaves: W_in does not match the shape"
    );
    for (xr, out) in x
        .chunks_exact(d_in.max(1))
        .zip(leaves.chunks_exact_mut(trees.max(1)))
    {
        for (t, leaf) in out.iter_mut().enumerate() {
            let mut node = 0usize;
            for _ in 0..depth {
                let row = t * n + node;
                let wi = &layer.w.w_in[row * d_in..(row + 1) * d_in];
                let logit = wi.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>()
                    + layer.w.b_in.map_or(0.0, |b| b[row]);
                node = 2 * node + 1 + usize::from(layer.branch.goes_right(logit));
            }
            *leaf = (node + 1 - (1 << depth)) as u32;
        }
    }
}

/// The reference kernel: per row, per tree, per level, exactly as the definition reads. `x` holds
/// `rows x d_in`, `out` receives `rows x d_out`. Weights of other element types are widened as read.
pub fn fff_reference<E: Element>(layer: &FffLayer<E>, x: &[f32], rows: usize, out: &mut [f32]) {
    let FffLayer {
        shape,
        act,
        branch,
        w,
    } = *layer;
    let FffShape {
        d_in,
        d_out,
        depth,
        trees,
    } = shape;
    let n = shape.nodes_per_tree();
    assert_eq!(w.w_in.len(), trees * n * d_in);
    assert_eq!(w.w_out.len(), trees * n * d_out);
    assert!(w.b_in.is_none_or(|b| b.len() == trees * n));
    assert!(w.b_out.is_none_or(|b| b.len() == d_out));
    assert_eq!(x.len(), rows * d_in);
    assert_eq!(out.len(), rows * d_out);
    for r in 0..rows {
        let xr = &x[r * d_in..(r + 1) * d_in];
        let yr = &mut out[r * d_out..(r + 1) * d_out];
        match w.b_out {
            Some(b) => yr.copy_from_slice(b),
            None => yr.fill(0.0),
        }
        for t in 0..trees {
            let mut node = 0usize;
            for _ in 0..=depth {
                let row = t * n + node;
                let wi = &w.w_in[row * d_in..(row + 1) * d_in];
                let mut logit: f32 = wi.iter().zip(xr).map(|(a, b)| a.widen() * b).sum();
                if let Some(b) = w.b_in {
                    logit += b[row];
                }
                let a = act.apply(logit);
                let wo = &w.w_out[row * d_out..(row + 1) * d_out];
                for (y, &v) in yr.iter_mut().zip(wo) {
                    *y += a * v.widen();
                }
                node = 2 * node + 1 + branch.goes_right(logit) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::fff::{Branch, FffWeights};

    /// The leaves agree with the reference kernel's outputs, read back through output weights that
    /// give every neuron its own output column: the one nonzero column among a tree's last level is
    /// the leaf the row reached.
    #[test]
    fn leaves_agree_with_the_reference_walk() {
        let mut s = 11u32;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(rows, d_in, depth, trees) in &[(1, 3, 1, 1), (17, 5, 3, 2), (40, 9, 5, 3)] {
            let shape = FffShape {
                d_in,
                d_out: 0,
                depth,
                trees,
            };
            let n = shape.nodes_per_tree();
            let d_out = trees * n;
            let shape = FffShape { d_out, ..shape };
            let w_in: Vec<f32> = (0..trees * n * d_in).map(|_| next()).collect();
            let b_in: Vec<f32> = (0..trees * n).map(|_| next() * 0.1).collect();
            let mut w_out = vec![0.0f32; d_out * d_out];
            for i in 0..d_out {
                w_out[i * d_out + i] = 1.0;
            }
            let x: Vec<f32> = (0..rows * d_in).map(|_| next()).collect();
            let layer = FffLayer {
                shape,
                act: Activation::GeluTanh,
                branch: Branch::GreaterOrEqual,
                w: FffWeights {
                    w_in: &w_in,
                    b_in: Some(&b_in),
                    w_out: &w_out,
                    b_out: None,
                },
            };
            let mut y = vec![0.0f32; rows * d_out];
            fff_reference(&layer, &x, rows, &mut y);
            let mut leaves = vec![u32::MAX; rows * trees];
            fff_leaves(&layer, &x, rows, &mut leaves);
            let first_leaf = (1 << depth) - 1;
            for r in 0..rows {
                for t in 0..trees {
                    let last_level = &y[r * d_out + t * n + first_leaf..r * d_out + (t + 1) * n];
                    let used: Vec<usize> = (0..last_level.len())
                        .filter(|&i| last_level[i] != 0.0)
                        .collect();
                    assert_eq!(
                        used,
                        vec![leaves[r * trees + t] as usize],
                        "row {r} tree {t}"
                    );
                }
            }
        }
    }
}
