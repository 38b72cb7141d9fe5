//! FastFeedForward: a forest of binary trees of neurons (UltraFastBERT's FFF layer), each row
//! descending one path per tree; see docs/FFF.md. Written by the compiler's `feedforward` pass.

use fff_ops::activation::Activation;
use fff_ops::fff::{fff_dense_panels, fff_forward, Branch, FffLayer, FffShape, FffWeights};
use fff_ops::panels::MAX_PANEL_COLS;
use ndarray::Dimension;
use serde::{Deserialize, Serialize};

use super::fact::{dtype_of, fact, shape_of, Dim, Facts, Inferred};
use super::util::{check_alloc, standard_slice};
use crate::buffers;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorView};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
/// The activation of every neuron.
pub enum FffActivation {
    Gelu,
    GeluTanh,
    Relu,
}

/// How a node's logit picks the child to descend to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FffBranch {
    /// Right child iff logit > 0.
    Gt,
    /// Right child iff logit >= 0.
    Ge,
}

impl FffActivation {
    /// The kernels' activation.
    pub fn kernel(self) -> Activation {
        match self {
            FffActivation::Gelu => Activation::GeluErf,
            FffActivation::GeluTanh => Activation::GeluTanh,
            FffActivation::Relu => Activation::Relu,
        }
    }
}

impl FffBranch {
    /// The kernels' branch rule.
    pub fn kernel(self) -> Branch {
        match self {
            FffBranch::Gt => Branch::Greater,
            FffBranch::Ge => Branch::GreaterOrEqual,
        }
    }
}

/// The input slots and limits of [`super::Op::FastFeedForward`].
pub struct FastFeedForward;

impl FastFeedForward {
    pub const X: usize = 0;
    /// The neurons' input weights: `[nodes, d_in]`, or panels (see [`WeightLayout`]).
    pub const W_IN: usize = 1;
    pub const B_IN: usize = 2;
    /// The neurons' output weights: `[nodes, d_out]`, or panels (see [`WeightLayout`]).
    pub const W_OUT: usize = 3;
    pub const B_OUT: usize = 4;
    /// The two weights, in slot order.
    pub const WEIGHTS: [usize; 2] = [Self::W_IN, Self::W_OUT];
    pub(super) const REQUIRED: &'static [usize] = &[Self::X, Self::W_IN, Self::W_OUT];
    pub(super) const INPUTS: usize = 5;

    /// The deepest tree a plan may hold: the depth the kernels accept. The importer, the plan
    /// validator, the evaluator and the usage statistics all hold to it.
    pub const MAX_DEPTH: usize = fff_ops::fff::MAX_DEPTH;

    /// How a weight (W_in or W_out) of this shape is stored; `None` for a shape neither form has.
    /// Both weights of one node share a form, and panels only occur at depth 0.
    pub fn weight_layout(shape: &[usize]) -> Option<WeightLayout> {
        match *shape {
            [_, _] => Some(WeightLayout::NodeMajor),
            [_, _, cols] => Some(WeightLayout::Panels { cols }),
            _ => None,
        }
    }

    /// `d_out` as a W_out of this shape holds it, in either layout; `None` if it has neither or
    /// overflows.
    pub fn d_out(w_out: &[usize]) -> Option<usize> {
        match Self::weight_layout(w_out)? {
            WeightLayout::NodeMajor => Some(w_out[1]),
            WeightLayout::Panels { cols } => w_out[0].checked_mul(cols),
        }
    }

    /// `d_in` as a W_in of this shape holds it, in either layout.
    pub fn d_in(w_in: &[usize]) -> Option<usize> {
        Self::weight_layout(w_in).map(|_| w_in[1])
    }

    /// The most neurons one node may hold: the tree kernel numbers them in `u32`.
    pub const MAX_NODES: usize = u32::MAX as usize;

    /// The neurons of `trees` trees of `depth` levels (the rows of W_in and W_out, node-major); `None`
    /// past [`Self::MAX_DEPTH`] or [`Self::MAX_NODES`].
    pub fn total_nodes(depth: usize, trees: usize) -> Option<usize> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        let per_tree = (1usize << (depth + 1)) - 1;
        trees
            .checked_mul(per_tree)
            .filter(|&n| n <= Self::MAX_NODES)
    }

    /// The plan form: the attributes' limits and, where W_in and W_out are constants (their shapes
    /// given), the weights' form ([`weights_form`]). A plan that fails is refused at load, so that no
    /// kernel meets a layer it cannot compute.
    pub(super) fn validate(
        depth: usize,
        trees: usize,
        w_in: Option<&[usize]>,
        w_out: Option<&[usize]>,
    ) -> std::result::Result<(), String> {
        attributes(depth, trees)?;
        if let (Some(w_in), Some(w_out)) = (w_in, w_out) {
            weights_form(depth, trees, w_in, w_out)?;
        }
        Ok(())
    }
}

/// Checks `depth` and `trees` against the kernels' limits; the number of neurons.
fn attributes(depth: usize, trees: usize) -> std::result::Result<usize, String> {
    if depth > FastFeedForward::MAX_DEPTH {
        return Err(format!(
            "FastFeedForward depth {depth} is more than {}",
            FastFeedForward::MAX_DEPTH
        ));
    }
    if trees == 0 {
        return Err("FastFeedForward has no trees".to_string());
    }
    FastFeedForward::total_nodes(depth, trees).ok_or_else(|| {
        format!(
            "FastFeedForward of {trees} trees of depth {depth} has more than {} neurons",
            FastFeedForward::MAX_NODES
        )
    })
}

/// What a FastFeedForward's weights hold, as [`weights_form`] reads it from their shapes.
#[derive(Clone, Copy, Debug)]
struct WeightsForm {
    layout: WeightLayout,
    d_in: usize,
    d_out: usize,
    /// Neurons, all trees together.
    total: usize,
}

/// Reads the form of W_in and W_out of `trees` trees of `depth`: both node-major, or both panels at
/// depth 0, each with the rows (or panels) that many neurons need, and both widths at least 1. The
/// kernels assert all of this, so the plan validator and the evaluator check it first.
fn weights_form(
    depth: usize,
    trees: usize,
    w_in: &[usize],
    w_out: &[usize],
) -> std::result::Result<WeightsForm, String> {
    let total = attributes(depth, trees)?;
    let layout = match (
        FastFeedForward::weight_layout(w_in),
        FastFeedForward::weight_layout(w_out),
    ) {
        (Some(WeightLayout::NodeMajor), Some(WeightLayout::NodeMajor)) => WeightLayout::NodeMajor,
        (Some(p @ WeightLayout::Panels { .. }), Some(WeightLayout::Panels { .. }))
            if depth == 0 =>
        {
            p
        }
        _ => {
            return Err(format!(
                "FastFeedForward needs W_in and W_out 2-D (or as panels at depth 0), got {w_in:?} and {w_out:?}"
            ))
        }
    };
    let too_large = || format!("FastFeedForward W_out {w_out:?} is too large");
    let d_in = FastFeedForward::d_in(w_in).ok_or_else(too_large)?;
    let d_out = FastFeedForward::d_out(w_out).ok_or_else(too_large)?;
    if d_in == 0 || d_out == 0 {
        return Err(format!(
            "FastFeedForward needs inputs and outputs at least 1 wide, its weights W_in {w_in:?} and W_out {w_out:?} make them {d_in} and {d_out}"
        ));
    }
    let (want_in, want_out) = match layout {
        WeightLayout::Panels { cols } => {
            if !(1..=MAX_PANEL_COLS).contains(&cols) || !total.is_multiple_of(cols) {
                return Err(format!(
                    "FastFeedForward panels {cols} wide do not hold {total} neurons whole"
                ));
            }
            (
                vec![total / cols, d_in, cols],
                vec![d_out / cols, total, cols],
            )
        }
        WeightLayout::NodeMajor => (vec![total, d_in], vec![total, d_out]),
    };
    if w_in != want_in || w_out != want_out {
        return Err(format!(
            "FastFeedForward with {trees} trees of depth {depth} wants W_in {want_in:?} and W_out {want_out:?}, got {w_in:?} and {w_out:?}"
        ));
    }
    Ok(WeightsForm {
        layout,
        d_in,
        d_out,
        total,
    })
}

/// How FastFeedForward's weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// One row per neuron: W_in `[nodes, d_in]`, W_out `[nodes, d_out]`.
    NodeMajor,
    /// Column panels `cols` wide (`fff_ops::panels`), which the GEMM reads in place: W_in
    /// `[nodes / cols, d_in, cols]` (the panels of W_in's transpose), W_out `[d_out / cols, nodes,
    /// cols]`. Written by the compiler's `pack-weights` lowering for depth 0, at 64 columns or as
    /// repacked at load ([`crate::panel_width`]).
    Panels { cols: usize },
}

/// The output is written into a buffer from the recycler.
pub(super) const TAKES_BUFFERS: bool = true;

/// The shape rule of FastFeedForward: X with its last axis `d_out` wide, `d_out` told by W_out in
/// either [`WeightLayout`].
pub(super) fn infer(ins: Facts) -> Inferred {
    let d_out = match shape_of(ins, FastFeedForward::W_OUT).as_deref() {
        Some([_, d]) => d.clone(),
        Some([Dim::Known(p), _, Dim::Known(c)]) => {
            p.checked_mul(*c).map_or(Dim::Unknown, Dim::Known)
        }
        _ => Dim::Unknown,
    };
    let shape = shape_of(ins, FastFeedForward::X).map(|mut s| {
        if let Some(last) = s.last_mut() {
            *last = d_out;
        }
        s
    });
    Ok(vec![fact(dtype_of(ins, FastFeedForward::X), shape)])
}

#[allow(clippy::too_many_arguments)]
pub fn fast_feed_forward(
    x: &TensorView,
    w_in: &TensorView,
    b_in: Option<&TensorView>,
    w_out: &TensorView,
    b_out: Option<&TensorView>,
    depth: usize,
    trees: usize,
    activation: FffActivation,
    branch: FffBranch,
) -> Result<Tensor> {
    let x = x.f32()?;
    let WeightsForm {
        layout,
        d_in,
        d_out,
        total,
    } = weights_form(depth, trees, w_in.shape(), w_out.shape()).map_err(Error::Invalid)?;
    if x.shape().last() != Some(&d_in) {
        return Err(Error::invalid(format!(
            "FastFeedForward of X {:?} wants X [..., {d_in}] as its W_in {:?} reads",
            x.shape(),
            w_in.shape()
        )));
    }
    let shape = FffShape {
        d_in,
        d_out,
        depth,
        trees,
    };
    // Panels as the plan stores them, or as the model repacked them at load.
    let (panels, c) = match layout {
        WeightLayout::Panels { cols } => (true, cols),
        WeightLayout::NodeMajor => (false, 0),
    };
    let b_in = b_in.map(|b| b.f32()).transpose()?.map(standard_slice);
    let b_out = b_out.map(|b| b.f32()).transpose()?.map(standard_slice);
    if b_in.as_ref().is_some_and(|b| b.len() != total)
        || b_out.as_ref().is_some_and(|b| b.len() != d_out)
    {
        return Err(Error::invalid(
            "FastFeedForward biases do not match the weights",
        ));
    }
    let x_rows = standard_slice(x);
    let mut out_shape = x.raw_dim();
    out_shape[x.ndim() - 1] = d_out;
    // Rows of `d_out` may outgrow rows of `d_in`; empty weights do not even bound `d_out`.
    check_alloc(out_shape.slice(), crate::DType::F32)?;
    let rows: usize = x.shape()[..x.ndim() - 1].iter().product();
    // Every kernel writes every output element.
    let mut out = buffers::line_aligned_for_overwrite(out_shape.slice());
    let (act, br) = (activation.kernel(), branch.kernel());
    let (b_in, b_out) = (b_in.as_deref(), b_out.as_deref());
    let (x, out_rows) = (&x_rows[..], out.as_slice_mut().expect("fresh"));
    // The layer over weights of either stored type; the kernels widen bf16 as they read it.
    fn layer_of<'a, E>(
        shape: FffShape,
        act: Activation,
        branch: Branch,
        w_in: &'a [E],
        w_out: &'a [E],
        b_in: Option<&'a [f32]>,
        b_out: Option<&'a [f32]>,
    ) -> FffLayer<'a, E> {
        let w = FffWeights {
            w_in,
            b_in,
            w_out,
            b_out,
        };
        FffLayer {
            shape,
            act,
            branch,
            w,
        }
    }
    match (w_in, w_out) {
        (TensorView::F32(w_in), TensorView::F32(w_out)) => {
            let (wi, wo) = (standard_slice(w_in), standard_slice(w_out));
            let layer = layer_of(shape, act, br, &wi, &wo, b_in, b_out);
            if panels {
                fff_dense_panels(&layer, c, x, rows, out_rows);
            } else {
                fff_forward(&layer, x, rows, out_rows);
            }
        }
        (TensorView::BF16(_), TensorView::BF16(_)) if panels => {
            return Err(Error::invalid(
                "FastFeedForward weights as panels are float32 only",
            ))
        }
        (TensorView::BF16(w_in), TensorView::BF16(w_out)) => {
            let (wi, wo) = (standard_slice(w_in), standard_slice(w_out));
            fff_forward(
                &layer_of(shape, act, br, &wi, &wo, b_in, b_out),
                x,
                rows,
                out_rows,
            );
        }
        (a, b) => {
            return Err(Error::invalid(format!(
                "FastFeedForward weights are {} and {}: both float32 or both bfloat16",
                a.dtype(),
                b.dtype()
            )))
        }
    }
    Ok(Tensor::F32(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::F32(ArrayD::zeros(IxDyn(shape)))
    }

    /// The evaluator on zero tensors of the given shapes.
    fn eval(
        x: &[usize],
        w_in: &[usize],
        w_out: &[usize],
        depth: usize,
        trees: usize,
    ) -> Result<Tensor> {
        let (x, w_in, w_out) = (zeros(x), zeros(w_in), zeros(w_out));
        fast_feed_forward(
            &x.view(),
            &w_in.view(),
            None,
            &w_out.view(),
            None,
            depth,
            trees,
            FffActivation::Gelu,
            FffBranch::Gt,
        )
    }

    fn error(result: Result<Tensor>) -> String {
        match result {
            Ok(t) => panic!("expected an error, got a tensor of {:?}", t.shape()),
            Err(e) => e.to_string(),
        }
    }

    /// Layers the kernels would assert on (zero widths, no trees, more neurons than they number,
    /// weights that do not match) are refused by the evaluator, on every kernel path (one row and
    /// many for the tree kernel, depth 0 for the dense ones, and panels).
    #[test]
    fn layers_the_kernels_cannot_compute_are_errors() {
        for rows in [1, 3, 100] {
            // One tree of depth 1: three neurons.
            let e = error(eval(&[rows, 0], &[3, 0], &[3, 4], 1, 1));
            assert!(e.contains("at least 1 wide"), "{e}");
            let e = error(eval(&[rows, 4], &[3, 4], &[3, 0], 1, 1));
            assert!(e.contains("at least 1 wide"), "{e}");
            let e = error(eval(&[rows, 0], &[1, 0], &[1, 0], 0, 1));
            assert!(e.contains("at least 1 wide"), "{e}");
            let e = error(eval(&[rows, 0], &[1, 0, 1], &[0, 1, 1], 0, 1));
            assert!(e.contains("at least 1 wide"), "{e}");
            let e = error(eval(&[rows, 4], &[0, 4], &[0, 4], 2, 0));
            assert!(e.contains("no trees"), "{e}");
            let e = error(eval(&[rows, 4], &[3, 4], &[3, 4], 1, usize::MAX / 2));
            assert!(e.contains("neurons"), "{e}");
            let e = error(eval(
                &[rows, 4],
                &[3, 4],
                &[3, 4],
                FastFeedForward::MAX_DEPTH + 1,
                1,
            ));
            assert!(e.contains("depth"), "{e}");
            let e = error(eval(&[rows, 5], &[3, 4], &[3, 4], 1, 1));
            assert!(e.contains("wants X"), "{e}");
            assert_eq!(
                eval(&[rows, 4], &[3, 4], &[3, 2], 1, 1).unwrap().shape(),
                [rows, 2]
            );
        }
        let e = error(eval(&[], &[3, 4], &[3, 4], 1, 1));
        assert!(e.contains("wants X"), "{e}");
    }

    #[test]
    fn the_plan_form_checks_constant_weights() {
        let check = |w_in: &[usize], w_out: &[usize], depth, trees| {
            FastFeedForward::validate(depth, trees, Some(w_in), Some(w_out))
        };
        assert!(check(&[30, 64], &[30, 64], 3, 2).is_ok());
        assert!(check(&[1, 64, 64], &[1, 64, 64], 0, 64).is_ok());
        assert!(check(&[30, 64], &[30, 0], 3, 2)
            .unwrap_err()
            .contains("at least 1 wide"));
        assert!(check(&[30, 0], &[30, 64], 3, 2)
            .unwrap_err()
            .contains("at least 1 wide"));
        assert!(check(&[30, 64], &[15, 64], 3, 2)
            .unwrap_err()
            .contains("wants W_in"));
        assert!(check(&[1, 64, 64], &[1, 64, 64], 1, 64).is_err());
        assert!(FastFeedForward::validate(3, 0, None, None).is_err());
        assert!(FastFeedForward::validate(30, 1 << 40, None, None).is_err());
        // Weights computed at run time are left to the evaluator.
        assert!(FastFeedForward::validate(3, 2, Some(&[30, 0]), None).is_ok());
    }
}
