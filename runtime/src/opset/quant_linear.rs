//! QuantLinear: a projection `act(X W + B) + R` whose weights are stored in reduced precision and packed
//! for the kernels of `fff_ops::quant`. Written by the compiler's `quantize` lowering
//! (`fffc compile --quantize int8|bf16`); activations, biases and results stay f32.
//!
//! - int8: W `[ceil(n / 64), ceil(k / 4), 64, 4]` int8, quantised per output column (symmetric, codes in
//!   [-127, 127]), with its scales `W_SCALE [n]` f32 and code sums `W_SUM [n]` int32. Each call
//!   quantises X per row (symmetric int8) and accumulates exactly in int32.
//! - bf16: W `[ceil(n / 64), ceil(k / 2), 64, 2]` bfloat16; X is rounded to bf16 per call, sums in f32.

use fff_ops::quant::{bf16 as qbf16, int8 as qi8, Epilogue};
use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use super::fact::{dtype_of, fact, shape_of, Dim, Facts, Inferred};
use super::in_place::InPlace;
use super::linear::{projection_shape, with_residual};
use super::util::{contiguous, standard_slice};
use super::FffActivation;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorView};

/// The stored precision of a [`super::Op::QuantLinear`]'s weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Precision {
    Int8,
    Bf16,
}

impl Precision {
    /// The weights' element type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::Int8 => DType::I8,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The rows of `k` grouped into one packed entry.
    fn group(self) -> usize {
        match self {
            Precision::Int8 => qi8::GROUP,
            Precision::Bf16 => qbf16::GROUP,
        }
    }

    /// The lower-case name `--quantize` takes and `fffc inspect` shows.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The input slots of [`super::Op::QuantLinear`].
pub struct QuantLinear;

impl QuantLinear {
    pub const X: usize = 0;
    /// The packed weights (see the module's doc).
    pub const W: usize = 1;
    pub const B: usize = 2;
    /// The residual, added with broadcasting after the activation.
    pub const R: usize = 3;
    /// int8 only: the per-column scales `[n]`.
    pub const W_SCALE: usize = 4;
    /// int8 only: the per-column sums of the codes `[n]`.
    pub const W_SUM: usize = 5;
    pub(super) const REQUIRED: &'static [usize] = &[Self::X, Self::W];
    pub(super) const INPUTS: usize = 6;
    /// How many input slots the op has.
    pub const INPUTS_LEN: usize = Self::INPUTS;

    /// The packed shape of `[k, n]` weights.
    pub fn packed_shape(precision: Precision, k: usize, n: usize) -> [usize; 4] {
        let (c, g) = (qi8::COLS, precision.group());
        [n.div_ceil(c), k.div_ceil(g), c, g]
    }

    /// Checks the plan form: W's shape fits `n` and its precision, the int8 side inputs are there.
    pub fn validate(
        n: usize,
        precision: Precision,
        w: Option<&[usize]>,
        has_scale_and_sum: bool,
    ) -> std::result::Result<(), String> {
        if let Some(shape) = w {
            let ok = matches!(shape, &[p, _, c, g]
                if c == qi8::COLS && g == precision.group() && p == n.div_ceil(c));
            if !ok {
                return Err(format!(
                    "QuantLinear {} weights {shape:?} are not packed for {n} outputs",
                    precision.name()
                ));
            }
        }
        match (precision, has_scale_and_sum) {
            (Precision::Int8, false) => Err("QuantLinear int8 lacks its scales or sums".into()),
            (Precision::Bf16, true) => Err("QuantLinear bf16 takes no scales or sums".into()),
            _ => Ok(()),
        }
    }
}

/// The output is written into a buffer from the recycler (or into the residual's, in place).
pub(super) const TAKES_BUFFERS: bool = true;

/// The residual's buffer takes the result.
pub(super) const IN_PLACE: &[usize] = &[QuantLinear::R];

/// The op's attributes.
#[derive(Clone, Copy)]
pub struct Params {
    pub n: usize,
    pub precision: Precision,
    pub activation: Option<FffActivation>,
}

/// The weights as the kernels read them.
enum Weights<'a> {
    Int8(qi8::I8Weights<'a>),
    Bf16(qbf16::Bf16Weights<'a>),
}

/// Checks every input against `k` and `n` and borrows the weights, scales and bias as slices.
fn weights<'a>(
    p: Params,
    k: usize,
    w: &'a TensorView<'_>,
    scale: Option<&'a TensorView<'_>>,
    sum: Option<&'a TensorView<'_>>,
) -> Result<Weights<'a>> {
    let want = QuantLinear::packed_shape(p.precision, k, p.n);
    if w.shape() != want {
        return Err(Error::invalid(format!(
            "QuantLinear {} of X [..., {k}]: weights {:?}, wants {want:?} for {} outputs",
            p.precision.name(),
            w.shape(),
            p.n
        )));
    }
    fn side<'a, 'd>(t: Option<&'a TensorView<'d>>, what: &str) -> Result<&'a TensorView<'d>> {
        t.ok_or_else(|| Error::invalid(format!("QuantLinear int8 lacks its {what}")))
    }
    Ok(match p.precision {
        Precision::Int8 => {
            let data = slice(w.i8()?)?;
            let scales = slice(side(scale, "scales")?.f32()?)?;
            let sums = slice(side(sum, "sums")?.i32()?)?;
            Weights::Int8(
                qi8::I8Weights::new(data, scales, sums, k, p.n).ok_or_else(|| {
                    Error::invalid(format!(
                        "QuantLinear int8: scales {} and sums {} do not match {} outputs",
                        scales.len(),
                        sums.len(),
                        p.n
                    ))
                })?,
            )
        }
        Precision::Bf16 => Weights::Bf16(
            qbf16::Bf16Weights::new(slice(w.bf16()?)?, k, p.n)
                .ok_or_else(|| Error::invalid("QuantLinear bf16: weights do not fit"))?,
        ),
    })
}

/// The elements of a constant in place: plans store them contiguous.
fn slice<'a, T>(a: &'a ndarray::ArrayViewD<'_, T>) -> Result<&'a [T]> {
    a.as_slice()
        .ok_or_else(|| Error::invalid("QuantLinear weights are not contiguous"))
}

/// `act(X W + B) + R`; see the module's doc.
pub fn quant_linear(p: Params, x: &TensorView, w: &TensorView, ins: Side) -> Result<Tensor> {
    with_residual(output_shape(p, x)?, ins.residual, |acc, out| {
        accumulate(p, x, w, ins, acc, out)
    })
}

/// The optional inputs.
#[derive(Clone, Copy)]
pub struct Side<'v, 'a> {
    pub bias: Option<&'v TensorView<'a>>,
    pub residual: Option<&'v TensorView<'a>>,
    pub scale: Option<&'v TensorView<'a>>,
    pub sum: Option<&'v TensorView<'a>>,
}

/// The shape of the product: X's with its last dim `n`.
fn output_shape(p: Params, x: &TensorView) -> Result<Vec<usize>> {
    let mut shape = x.shape().to_vec();
    match shape.last_mut() {
        Some(last) => *last = p.n,
        None => return Err(Error::invalid("QuantLinear of a scalar")),
    }
    Ok(shape)
}

/// `out = act(X W + B) (+ out when accumulate)`, `out` of the product's shape.
fn accumulate(
    p: Params,
    x: &TensorView,
    w: &TensorView,
    ins: Side,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    let k = *x.shape().last().expect("rank checked by output_shape");
    let weights = weights(p, k, w, ins.scale, ins.sum)?;
    let bias = match ins.bias {
        Some(b) => {
            let b = b.f32()?;
            if b.len() != p.n {
                return Err(Error::invalid(format!(
                    "QuantLinear bias {:?} does not match {} outputs",
                    b.shape(),
                    p.n
                )));
            }
            Some(standard_slice(b))
        }
        None => None,
    };
    let x = contiguous(x.f32()?);
    let x = x.as_slice().expect("contiguous");
    let rows = x.len() / k.max(1);
    let epi = Epilogue {
        bias: bias.as_deref(),
        activation: p.activation.map(FffActivation::kernel),
        accumulate,
    };
    if k == 0 {
        // No products: every output is act(bias) (+ out).
        for row in out.chunks_exact_mut(p.n.max(1)) {
            for (c, o) in row.iter_mut().enumerate() {
                let mut v = epi.bias.map_or(0.0, |b| b[c]);
                if let Some(a) = epi.activation {
                    v = a.apply(v);
                }
                *o = if accumulate { *o + v } else { v };
            }
        }
        return Ok(());
    }
    match weights {
        Weights::Int8(w) => qi8::linear_i8(x, rows, w, epi, out),
        Weights::Bf16(w) => qbf16::gemm_bf16(x, rows, w, epi, out),
    }
    Ok(())
}

/// The shape rule.
pub(super) fn infer(p: Params, ins: Facts) -> Inferred {
    let dt0 = dtype_of(ins, QuantLinear::X);
    let shape = projection_shape(ins, shape_of(ins, QuantLinear::X), Dim::Known(p.n as i64))?;
    Ok(vec![fact(dt0, shape)])
}

/// The op with its residual given as `owned`: accumulated onto it when it has the result's shape.
pub(super) fn in_place(
    p: Params,
    mut owned: ArrayD<f32>,
    inputs: &[Option<TensorView>],
) -> Result<InPlace> {
    let get = |slot: usize| inputs.get(slot).and_then(|v| v.as_ref());
    let (Some(x), Some(w)) = (get(QuantLinear::X), get(QuantLinear::W)) else {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    };
    if owned.shape() != output_shape(p, x)?.as_slice() {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    }
    let ins = Side {
        bias: get(QuantLinear::B),
        residual: None,
        scale: get(QuantLinear::W_SCALE),
        sum: get(QuantLinear::W_SUM),
    };
    let out = owned.as_slice_mut().expect("standard layout");
    accumulate(p, x, w, ins, true, out)?;
    Ok(InPlace::Done(Tensor::F32(owned)))
}
