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

    /// The plan form's attribute limits.
    pub(super) fn validate(depth: usize) -> std::result::Result<(), String> {
        if depth > Self::MAX_DEPTH {
            return Err(format!(
                "FastFeedForward depth {depth} is more than {}",
                Self::MAX_DEPTH
            ));
        }
        Ok(())
    }
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
    let layout = match (
        FastFeedForward::weight_layout(w_in.shape()),
        FastFeedForward::weight_layout(w_out.shape()),
    ) {
        (Some(WeightLayout::NodeMajor), Some(WeightLayout::NodeMajor)) => {
            Some(WeightLayout::NodeMajor)
        }
        (Some(p @ WeightLayout::Panels { .. }), Some(WeightLayout::Panels { .. }))
            if depth == 0 =>
        {
            Some(p)
        }
        _ => None,
    };
    let Some(layout) = layout.filter(|_| x.ndim() != 0 && depth <= FastFeedForward::MAX_DEPTH)
    else {
        return Err(Error::invalid(format!(
            "FastFeedForward needs X [..., d_in], W_in and W_out 2-D (or as panels at depth 0), depth <= {}",
            FastFeedForward::MAX_DEPTH
        )));
    };
    let panels = matches!(layout, WeightLayout::Panels { .. });
    let d_in = x.shape()[x.ndim() - 1];
    let d_out = match *w_out.shape() {
        [p, _, c] if panels => p.checked_mul(c).ok_or_else(|| {
            Error::invalid(format!(
                "FastFeedForward W_out {:?} is too large",
                w_out.shape()
            ))
        })?,
        [_, d] => d,
        _ => unreachable!("ranks checked above"),
    };
    let shape = FffShape {
        d_in,
        d_out,
        depth,
        trees,
    };
    let total = shape.total_nodes();
    // Panels as the plan stores them, or as the model repacked them at load.
    let c = match layout {
        WeightLayout::Panels { cols } => cols,
        _ => 0,
    };
    let (want_in, want_out): (&[usize], &[usize]) = if panels {
        (&[total / c.max(1), d_in, c], &[d_out / c.max(1), total, c])
    } else {
        (&[total, d_in], &[total, d_out])
    };
    let whole_panels = (1..=MAX_PANEL_COLS).contains(&c) && total.is_multiple_of(c);
    if (panels && !whole_panels) || w_in.shape() != want_in || w_out.shape() != want_out {
        return Err(Error::invalid(format!(
            "FastFeedForward with {trees} trees of depth {depth} wants W_in {want_in:?} and W_out {want_out:?}, got {:?} and {:?}",
            w_in.shape(),
            w_out.shape()
        )));
    }
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
