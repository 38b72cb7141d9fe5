//! IntegerLinear: the product of activations that a model quantised itself (uint8 codes with one zero
//! point, as ONNX's `DynamicQuantizeLinear` or a per-tensor `QuantizeLinear` give them) with int8
//! weights, scaled back to float32. Written by the compiler's `integer-products` rewrite from
//! `MatMulInteger` and `DequantizeLinear → MatMul` patterns (see that pass for the forms).
//!
//! `Y = act(float32(Σ_k (X[.., k] - X_ZERO) W[k, c]) * SCALE[c] + B[c]) + R`: the integer sum is exact,
//! then one float32 multiply by the column's scale, the bias added, the activation, the residual added
//! with broadcasting. That is bit for bit what `Add(Mul(Cast<float>(MatMulInteger(X, W, X_ZERO, 0)),
//! SCALE), B)` computes, which is why the rewrite may put this op in its place.
//!
//! W is `[ceil(n / 64), ceil(k / 4), 64, 4]` int8 codes in the layout of `fff_ops::quant::int8`
//! (the codes as the model gives them, full range), W_SUM their column sums; SCALE holds one value or
//! `n`, computed at run time (the activations' scale times the weights') or constant.

use fff_ops::quant::{int8 as qi8, Epilogue};
use ndarray::ArrayD;

use super::fact::{dtype_of, fact, shape_of, Dim, Facts, Inferred};
use super::in_place::InPlace;
use super::linear::{projection_shape, with_residual};
use super::quant_linear::{Precision, QuantLinear};
use super::util::standard_slice;
use super::FffActivation;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorView};

/// The input slots of [`super::Op::IntegerLinear`].
pub struct IntegerLinear;

impl IntegerLinear {
    /// uint8 codes `[..., k]`.
    pub const X: usize = 0;
    /// The packed int8 weights.
    pub const W: usize = 1;
    pub const B: usize = 2;
    /// The residual, added with broadcasting after the activation.
    pub const R: usize = 3;
    /// float32, one value or one per output column.
    pub const SCALE: usize = 4;
    /// The column sums of the codes `[n]` int32.
    pub const W_SUM: usize = 5;
    /// X's zero point, a uint8 scalar; absent means 0.
    pub const X_ZERO: usize = 6;
    pub(super) const REQUIRED: &'static [usize] = &[Self::X, Self::W, Self::SCALE, Self::W_SUM];
    pub(super) const INPUTS: usize = 7;
    /// How many input slots the op has.
    pub const INPUTS_LEN: usize = Self::INPUTS;

    /// The packed shape of `[k, n]` codes.
    pub fn packed_shape(k: usize, n: usize) -> [usize; 4] {
        QuantLinear::packed_shape(Precision::Int8, k, n)
    }

    /// Checks the plan form: W's shape fits `n`.
    pub fn validate(n: usize, w: Option<&[usize]>) -> std::result::Result<(), String> {
        match w {
            Some(shape)
                if !matches!(shape, &[p, _, c, g]
                    if c == qi8::COLS && g == qi8::GROUP && p == n.div_ceil(c)) =>
            {
                Err(format!(
                    "IntegerLinear weights {shape:?} are not packed for {n} outputs"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The output is written into a buffer from the recycler (or into the residual's, in place).
pub(super) const TAKES_BUFFERS: bool = true;

/// The residual's buffer takes the result.
pub(super) const IN_PLACE: &[usize] = &[IntegerLinear::R];

/// The op's attributes.
#[derive(Clone, Copy)]
pub struct Params {
    pub n: usize,
    pub activation: Option<FffActivation>,
}

/// The inputs besides X and W.
#[derive(Clone, Copy)]
pub struct Side<'v, 'a> {
    pub bias: Option<&'v TensorView<'a>>,
    pub residual: Option<&'v TensorView<'a>>,
    pub scale: &'v TensorView<'a>,
    pub sum: &'v TensorView<'a>,
    pub zero: Option<&'v TensorView<'a>>,
}

/// `act(X W * SCALE + B) + R`; see the module's doc.
pub fn integer_linear(p: Params, x: &TensorView, w: &TensorView, ins: Side) -> Result<Tensor> {
    with_residual(output_shape(p, x)?, ins.residual, |acc, out| {
        accumulate(p, x, w, ins, acc, out)
    })
}

/// The shape of the product: X's with its last dim `n`.
fn output_shape(p: Params, x: &TensorView) -> Result<Vec<usize>> {
    let mut shape = x.shape().to_vec();
    match shape.last_mut() {
        Some(last) => *last = p.n,
        None => return Err(Error::invalid("IntegerLinear of a scalar")),
    }
    Ok(shape)
}

/// The elements of a tensor that must be stored contiguous (constants are).
fn slice<'a, T>(a: &'a ndarray::ArrayViewD<'_, T>, what: &str) -> Result<&'a [T]> {
    a.as_slice()
        .ok_or_else(|| Error::invalid(format!("IntegerLinear {what} are not contiguous")))
}

/// One scale per output column: SCALE as given, or its one value repeated.
fn column_scales(scale: &TensorView, n: usize) -> Result<Vec<f32>> {
    let s = scale.f32()?;
    let fits = s.len() == 1 || (s.len() == n && s.shape().iter().rev().skip(1).all(|&d| d == 1));
    if !fits {
        return Err(Error::invalid(format!(
            "IntegerLinear scale {:?} is neither one value nor one per output ({n})",
            s.shape()
        )));
    }
    let first = s.iter().next().copied().unwrap_or(0.0);
    Ok(if s.len() == n {
        s.iter().copied().collect()
    } else {
        vec![first; n]
    })
}

/// X's zero point: a uint8 scalar, or 0 when absent.
fn zero_point(zero: Option<&TensorView>) -> Result<u8> {
    let Some(z) = zero else { return Ok(0) };
    let z = z.u8()?;
    match z.len() {
        1 => Ok(*z.iter().next().expect("one element")),
        _ => Err(Error::invalid(format!(
            "IntegerLinear zero point {:?} is not one value",
            z.shape()
        ))),
    }
}

/// `out = act(X W * SCALE + B) (+ out when accumulate)`, `out` of the product's shape.
fn accumulate(
    p: Params,
    x: &TensorView,
    w: &TensorView,
    ins: Side,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    let k = *x.shape().last().expect("rank checked by output_shape");
    let want = IntegerLinear::packed_shape(k, p.n);
    if w.shape() != want {
        return Err(Error::invalid(format!(
            "IntegerLinear of X [..., {k}]: weights {:?}, wants {want:?} for {} outputs",
            w.shape(),
            p.n
        )));
    }
    let scales = column_scales(ins.scale, p.n)?;
    let sums = slice(ins.sum.i32()?, "sums")?;
    let weights = qi8::I8Weights::new(slice(w.i8()?, "weights")?, &scales, sums, k, p.n)
        .ok_or_else(|| {
            Error::invalid(format!(
                "IntegerLinear: sums {} do not match {} outputs",
                sums.len(),
                p.n
            ))
        })?;
    let zero = zero_point(ins.zero)?;
    let bias = match ins.bias {
        Some(b) => {
            let b = b.f32()?;
            if b.len() != p.n {
                return Err(Error::invalid(format!(
                    "IntegerLinear bias {:?} does not match {} outputs",
                    b.shape(),
                    p.n
                )));
            }
            Some(standard_slice(b))
        }
        None => None,
    };
    let codes = standard_slice(x.u8()?);
    let rows = codes.len() / k.max(1);
    let epi = Epilogue {
        bias: bias.as_deref(),
        activation: p.activation.map(FffActivation::kernel),
        accumulate,
    };
    qi8::gemm_u8(&codes, rows, zero, weights, epi, out);
    Ok(())
}

/// The shape rule.
pub(super) fn infer(p: Params, ins: Facts) -> Inferred {
    if let Some(dt) = dtype_of(ins, IntegerLinear::X) {
        if dt != DType::U8 {
            return Err(format!("IntegerLinear takes uint8 codes, not {dt}"));
        }
    }
    let shape = projection_shape(ins, shape_of(ins, IntegerLinear::X), Dim::Known(p.n as i64))?;
    Ok(vec![fact(Some(DType::F32), shape)])
}

/// The op with its residual given as `owned`: accumulated onto it when it has the result's shape.
pub(super) fn in_place(
    p: Params,
    mut owned: ArrayD<f32>,
    inputs: &[Option<TensorView>],
) -> Result<InPlace> {
    let get = |slot: usize| inputs.get(slot).and_then(|v| v.as_ref());
    let (Some(x), Some(w), Some(scale), Some(sum)) = (
        get(IntegerLinear::X),
        get(IntegerLinear::W),
        get(IntegerLinear::SCALE),
        get(IntegerLinear::W_SUM),
    ) else {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    };
    if owned.shape() != output_shape(p, x)?.as_slice() {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    }
    let ins = Side {
        bias: get(IntegerLinear::B),
        residual: None,
        scale,
        sum,
        zero: get(IntegerLinear::X_ZERO),
    };
    let out = owned.as_slice_mut().expect("standard layout");
    accumulate(p, x, w, ins, true, out)?;
    Ok(InPlace::Done(Tensor::F32(owned)))
}
