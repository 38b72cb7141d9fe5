//! The ONNX quantisation ops on 8-bit integers: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear, with ONNX's exact semantics (the division `x / scale` in f32, rounding half
//! to even, then the zero point, then saturation), so that an imported quantised model computes what
//! ONNX Runtime computes.
//!
//! Scales come in three layouts ([`ScaleLayout`]): per tensor (a scalar or one element), per axis (a
//! 1-D scale along `axis`) and blocked (opset 21: a scale of x's rank whose dimension on `axis` is
//! `ceil(D / block_size)`, the last block possibly partial, as the ONNX reference allows). A zero point
//! has its scale's shape and the quantised type.

use fff_ops::quant::int8 as qi8;
use ndarray::{ArrayD, IxDyn};

use super::fact::{dtype_of, fact, shape_of, Dim, Facts, Inferred};
use super::util::{check_alloc, standard_slice};
use crate::error::{Error, Result};
use crate::tensor::{from_vec, DType, Tensor, TensorView};

/// The input slots of [`super::Op::QuantizeLinear`].
pub struct QuantizeLinear;

impl QuantizeLinear {
    pub const X: usize = 0;
    pub const SCALE: usize = 1;
    pub const ZERO_POINT: usize = 2;
    pub(super) const REQUIRED: &'static [usize] = &[Self::X, Self::SCALE];
    pub(super) const INPUTS: usize = 3;
}

/// The input slots of [`super::Op::DequantizeLinear`].
pub struct DequantizeLinear;

impl DequantizeLinear {
    pub const X: usize = 0;
    pub const SCALE: usize = 1;
    pub const ZERO_POINT: usize = 2;
    pub(super) const REQUIRED: &'static [usize] = &[Self::X, Self::SCALE];
    pub(super) const INPUTS: usize = 3;
}

/// The input and output slots of [`super::Op::DynamicQuantizeLinear`].
pub struct DynamicQuantizeLinear;

impl DynamicQuantizeLinear {
    pub const X: usize = 0;
    /// Output: the uint8 codes.
    pub const Y: usize = 0;
    /// Output: the float32 scalar scale.
    pub const Y_SCALE: usize = 1;
    /// Output: the uint8 scalar zero point.
    pub const Y_ZERO_POINT: usize = 2;
    pub const OUTPUTS: usize = 3;
    pub(super) const REQUIRED: &'static [usize] = &[Self::X];
    pub(super) const INPUTS: usize = 1;
}

/// How a scale (and its zero point) maps onto the elements of x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleLayout {
    /// One scale for every element.
    Tensor,
    /// One scale per index along `axis`.
    Axis { axis: usize },
    /// One scale per `block` consecutive indices along `axis`, and per index along the other axes.
    Blocked { axis: usize, block: usize },
}

impl ScaleLayout {
    /// The layout of a scale of `scale` shape for x of `x` shape, or why they do not fit. Dimensions
    /// are what is known of them (`None` unknown), so the compiler checks facts with the same rule the
    /// evaluator applies to data.
    pub fn of(
        x: &[Option<usize>],
        scale: &[Option<usize>],
        axis: i64,
        block_size: usize,
    ) -> std::result::Result<ScaleLayout, String> {
        let one_element = scale.len() <= 1 && scale.iter().all(|&d| d == Some(1));
        if one_element {
            return Ok(ScaleLayout::Tensor);
        }
        let ax = super::norm_axis(axis, x.len()).map_err(|e| e.to_string())?;
        if block_size == 0 {
            if scale.len() != 1 {
                return Err(format!(
                    "a scale of shape {} is neither per tensor (one element) nor per axis (1-D)",
                    dims_text(scale)
                ));
            }
            if let (Some(s), Some(d)) = (scale[0], x[ax]) {
                if s != d {
                    return Err(format!(
                        "a per-axis scale of {s} elements does not match x's dimension {d} on axis {axis}"
                    ));
                }
            }
            return Ok(ScaleLayout::Axis { axis: ax });
        }
        if scale.len() != x.len() {
            return Err(format!(
                "block_size {block_size} needs a scale of x's rank {}, not of shape {}",
                x.len(),
                dims_text(scale)
            ));
        }
        for (i, (&s, &d)) in scale.iter().zip(x).enumerate() {
            let (Some(s), Some(d)) = (s, d) else { continue };
            let want = if i == ax { d.div_ceil(block_size) } else { d };
            if s != want {
                return Err(if i == ax {
                    format!(
                        "blocks of {block_size} along axis {axis} of size {d} need {want} scales there, not {s}"
                    )
                } else {
                    format!(
                        "a blocked scale of shape {} does not match x's dimension {d} on axis {i}",
                        dims_text(scale)
                    )
                });
            }
        }
        Ok(ScaleLayout::Blocked {
            axis: ax,
            block: block_size,
        })
    }

    /// Calls `f(x_index, scale_index)` for every element of x (of `shape`), in standard order.
    fn for_each(self, shape: &[usize], mut f: impl FnMut(usize, usize)) {
        let (ax, block) = match self {
            ScaleLayout::Tensor => {
                (0..shape.iter().product()).for_each(|i| f(i, 0));
                return;
            }
            ScaleLayout::Axis { axis } => (axis, None),
            ScaleLayout::Blocked { axis, block } => (axis, Some(block)),
        };
        let outer: usize = shape[..ax].iter().product();
        let d = shape[ax];
        let inner: usize = shape[ax + 1..].iter().product();
        let blocks = block.map_or(0, |b| d.div_ceil(b));
        let mut xi = 0;
        for o in 0..outer {
            for j in 0..d {
                for i in 0..inner {
                    let si = match block {
                        None => j,
                        Some(b) => (o * blocks + j / b) * inner + i,
                    };
                    f(xi, si);
                    xi += 1;
                }
            }
        }
    }
}

fn dims_text(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".into(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn known(shape: &[usize]) -> Vec<Option<usize>> {
    shape.iter().map(|&d| Some(d)).collect()
}

fn fact_dims(dims: &[Dim]) -> Vec<Option<usize>> {
    dims.iter()
        .map(|d| d.known().and_then(|v| usize::try_from(v).ok()))
        .collect()
}

/// The range of codes of a quantised type.
fn code_range(to: DType) -> Result<(i32, i32)> {
    match to {
        DType::U8 => Ok((0, 255)),
        DType::I8 => Ok((-128, 127)),
        other => Err(Error::invalid(format!(
            "quantised values are uint8 or int8, not {other}"
        ))),
    }
}

/// Checks that every scale is positive and finite: a zero scale divides by zero, a negative one flips
/// the codes, and neither is what a quantiser writes.
pub fn check_scales(scales: &[f32]) -> std::result::Result<(), String> {
    match scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        Some(s) => Err(format!("scale {s} is not a positive finite number")),
        None => Ok(()),
    }
}

/// The zero point's elements widened to i32, checked against the scale's shape and `dtype`.
fn zero_points(
    zp: Option<&TensorView>,
    scale_shape: &[usize],
    dtype: DType,
) -> Result<Option<Vec<i32>>> {
    let Some(zp) = zp else { return Ok(None) };
    if zp.dtype() != dtype {
        return Err(Error::invalid(format!(
            "the zero point is {}, not {dtype}",
            zp.dtype()
        )));
    }
    if zp.shape() != scale_shape {
        return Err(Error::invalid(format!(
            "the zero point's shape {:?} is not the scale's {scale_shape:?}",
            zp.shape()
        )));
    }
    Ok(Some(match zp {
        TensorView::U8(a) => a.iter().map(|&v| v as i32).collect(),
        TensorView::I8(a) => a.iter().map(|&v| v as i32).collect(),
        TensorView::I32(a) => a.iter().copied().collect(),
        other => {
            return Err(Error::invalid(format!(
                "a zero point of {} is not supported",
                other.dtype()
            )))
        }
    }))
}

/// The scales as f32 in standard order, with their layout over `x_shape`.
fn scales<'a>(
    scale: &'a TensorView,
    x_shape: &[usize],
    axis: i64,
    block_size: usize,
) -> Result<(std::borrow::Cow<'a, [f32]>, ScaleLayout)> {
    let s = scale
        .f32()
        .map_err(|_| Error::invalid(format!("the scale is {}, not float32", scale.dtype())))?;
    let layout = ScaleLayout::of(&known(x_shape), &known(scale.shape()), axis, block_size)
        .map_err(Error::invalid)?;
    Ok((standard_slice(s), layout))
}

/// `y = saturate(round_half_even(x / scale) + zero_point)`, as `to` (uint8 or int8).
pub fn quantize_linear(
    x: &TensorView,
    scale: &TensorView,
    zero_point: Option<&TensorView>,
    axis: i64,
    block_size: usize,
    to: DType,
) -> Result<Tensor> {
    let (lo, hi) = code_range(to)?;
    let xs = x.f32().map_err(|_| {
        Error::invalid(format!("QuantizeLinear takes float32 x, not {}", x.dtype()))
    })?;
    let (s, layout) = scales(scale, x.shape(), axis, block_size)?;
    check_scales(&s).map_err(Error::invalid)?;
    let zp = zero_points(zero_point, scale.shape(), to)?;
    let xv = standard_slice(xs);
    let shape = IxDyn(x.shape());
    if layout == ScaleLayout::Tensor {
        // One scale: the vectorised kernels, which compute the same codes.
        let z = zp.as_ref().map_or(0, |z| z[0]);
        return Ok(match to {
            DType::U8 => {
                let mut y = vec![0u8; xv.len()];
                qi8::quantize_u8(&xv, s[0], z as u8, &mut y);
                Tensor::U8(from_vec(shape, y))
            }
            _ => {
                let mut y = vec![0i8; xv.len()];
                qi8::quantize_i8(&xv, s[0], z as i8, &mut y);
                Tensor::I8(from_vec(shape, y))
            }
        });
    }
    let mut codes = vec![0i32; xv.len()];
    layout.for_each(x.shape(), |xi, si| {
        // The zero point is added in i32 before the clamp, as ONNX does; a NaN quotient gives the
        // lowest code, as the kernels of the per-tensor case do.
        let q = xv[xi] / s[si];
        let z = zp.as_ref().map_or(0, |z| z[si]);
        codes[xi] = if q.is_nan() {
            lo
        } else {
            (q.round_ties_even() as i32).saturating_add(z).clamp(lo, hi)
        };
    });
    Ok(match to {
        DType::U8 => Tensor::U8(from_vec(shape, codes.iter().map(|&c| c as u8).collect())),
        _ => Tensor::I8(from_vec(shape, codes.iter().map(|&c| c as i8).collect())),
    })
}

/// `y = (x - zero_point) * scale` in f32, for x of uint8, int8 or int32 (whose zero point, if any,
/// must be 0, as ONNX says).
pub fn dequantize_linear(
    x: &TensorView,
    scale: &TensorView,
    zero_point: Option<&TensorView>,
    axis: i64,
    block_size: usize,
) -> Result<Tensor> {
    let (s, layout) = scales(scale, x.shape(), axis, block_size)?;
    check_scales(&s).map_err(Error::invalid)?;
    let zp = zero_points(zero_point, scale.shape(), x.dtype())?;
    if x.dtype() == DType::I32 && zp.as_ref().is_some_and(|z| z.iter().any(|&v| v != 0)) {
        return Err(Error::invalid(
            "an int32 x takes no zero point other than 0",
        ));
    }
    // The f32 result (and the widened x) may be four times x's bytes.
    check_alloc(x.shape(), DType::F32)?;
    if layout == ScaleLayout::Tensor {
        // One scale: the vectorised kernels, which compute the same values.
        let z = zp.as_ref().map_or(0, |z| z[0]);
        let mut y = vec![0f32; x.len()];
        match x {
            TensorView::U8(a) => qi8::dequantize_u8(&standard_slice(a), s[0], z as u8, &mut y),
            TensorView::I8(a) => qi8::dequantize_i8(&standard_slice(a), s[0], z as i8, &mut y),
            _ => {}
        }
        if matches!(x, TensorView::U8(_) | TensorView::I8(_)) {
            return Ok(Tensor::F32(from_vec(IxDyn(x.shape()), y)));
        }
    }
    let xv: Vec<f32> = match x {
        TensorView::U8(a) => a.iter().map(|&v| v as f32).collect(),
        TensorView::I8(a) => a.iter().map(|&v| v as f32).collect(),
        TensorView::I32(a) => a.iter().map(|&v| v as f32).collect(),
        other => {
            return Err(Error::invalid(format!(
                "DequantizeLinear takes uint8, int8 or int32 x, not {}",
                other.dtype()
            )))
        }
    };
    let mut y = vec![0f32; xv.len()];
    layout.for_each(x.shape(), |xi, si| {
        let z = zp.as_ref().map_or(0.0, |z| z[si] as f32);
        y[xi] = (xv[xi] - z) * s[si];
    });
    Ok(Tensor::F32(from_vec(IxDyn(x.shape()), y)))
}

/// The uint8 scale and zero point DynamicQuantizeLinear picks for `x`: the range `[min(0, min x),
/// max(0, max x)]` spread over 0..=255. A range so narrow that its scale is 0 (all zeros, or
/// values so small that the division underflows) gets scale 1 and zero point 0, as the ONNX
/// reference defines for all zeros; every code is then 0. A NaN or infinite element has no range:
/// an error.
pub fn dynamic_scale(x: &[f32]) -> Result<(f32, u8)> {
    if let Some(v) = x.iter().find(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "DynamicQuantizeLinear of a tensor holding {v}: its range is undefined"
        )));
    }
    let max = x.iter().fold(0f32, |m, &v| m.max(v));
    let min = x.iter().fold(0f32, |m, &v| m.min(v));
    let scale = (max - min) / 255.0;
    if !scale.is_finite() {
        return Err(Error::invalid(format!(
            "DynamicQuantizeLinear of a range [{min}, {max}] wider than float32 holds"
        )));
    }
    if scale == 0.0 {
        return Ok((1.0, 0));
    }
    let zp = (0.0 - min / scale).clamp(0.0, 255.0).round_ties_even();
    Ok((scale, zp as u8))
}

/// DynamicQuantizeLinear: x (float32) -> y (uint8), y_scale (float32 scalar), y_zero_point (uint8
/// scalar), `y = saturate(round_half_even(x / y_scale) + y_zero_point)`, on the vectorised kernel
/// (`fff_ops::quant::int8::dynamic_quantize_u8`, tested against the scalar formula; its scale and zero
/// point are [`dynamic_scale`]'s).
pub fn dynamic_quantize_linear(x: &TensorView) -> Result<[Tensor; 3]> {
    let xs = x.f32().map_err(|_| {
        Error::invalid(format!(
            "DynamicQuantizeLinear takes float32 x, not {}",
            x.dtype()
        ))
    })?;
    let xv = standard_slice(xs);
    let mut y = vec![0u8; xv.len()];
    let (scale, zp) = qi8::dynamic_quantize_u8(&xv, &mut y);
    if !scale.is_finite() {
        // Checked again for the message: the kernel gives NaN or infinity for these.
        dynamic_scale(&xv)?;
        return Err(Error::invalid("DynamicQuantizeLinear: no finite range"));
    }
    Ok([
        Tensor::U8(from_vec(IxDyn(x.shape()), y)),
        Tensor::scalar_f32(scale),
        Tensor::U8(ArrayD::from_elem(IxDyn(&[]), zp)),
    ])
}

/// Checks a known dtype against the ones an input takes.
fn expect(
    op: &str,
    what: &str,
    got: Option<DType>,
    allowed: &[DType],
) -> std::result::Result<(), String> {
    match got {
        Some(d) if !allowed.contains(&d) => {
            let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
            Err(format!(
                "{op} takes {what} of {}, not {d}",
                names.join(" or ")
            ))
        }
        _ => Ok(()),
    }
}

/// The shape checks Quantize and Dequantize share: the scale's layout over x, and the zero point's
/// shape, where the facts tell them.
fn check_scale_facts(
    ins: Facts,
    x: usize,
    scale: usize,
    zero_point: usize,
    axis: i64,
    block_size: usize,
) -> std::result::Result<(), String> {
    let (Some(xs), Some(ss)) = (shape_of(ins, x), shape_of(ins, scale)) else {
        return Ok(());
    };
    ScaleLayout::of(&fact_dims(&xs), &fact_dims(&ss), axis, block_size)?;
    if let Some(zs) = shape_of(ins, zero_point) {
        let (z, s) = (fact_dims(&zs), fact_dims(&ss));
        let differ = z.len() != s.len()
            || z.iter()
                .zip(&s)
                .any(|(a, b)| matches!((a, b), (Some(a), Some(b)) if a != b));
        if differ {
            return Err(format!(
                "the zero point's shape {} is not the scale's {}",
                dims_text(&z),
                dims_text(&s)
            ));
        }
    }
    Ok(())
}

pub(super) fn infer_quantize(ins: Facts, axis: i64, block_size: usize, to: DType) -> Inferred {
    let op = "QuantizeLinear";
    code_range(to).map_err(|e| e.to_string())?;
    expect(op, "x", dtype_of(ins, QuantizeLinear::X), &[DType::F32])?;
    expect(
        op,
        "a scale",
        dtype_of(ins, QuantizeLinear::SCALE),
        &[DType::F32],
    )?;
    expect(
        op,
        "a zero point",
        dtype_of(ins, QuantizeLinear::ZERO_POINT),
        &[to],
    )?;
    check_scale_facts(
        ins,
        QuantizeLinear::X,
        QuantizeLinear::SCALE,
        QuantizeLinear::ZERO_POINT,
        axis,
        block_size,
    )?;
    Ok(vec![fact(Some(to), shape_of(ins, QuantizeLinear::X))])
}

pub(super) fn infer_dequantize(ins: Facts, axis: i64, block_size: usize) -> Inferred {
    let op = "DequantizeLinear";
    let xd = dtype_of(ins, DequantizeLinear::X);
    expect(op, "x", xd, &[DType::U8, DType::I8, DType::I32])?;
    expect(
        op,
        "a scale",
        dtype_of(ins, DequantizeLinear::SCALE),
        &[DType::F32],
    )?;
    if let Some(xd) = xd {
        expect(
            op,
            "a zero point (x's type)",
            dtype_of(ins, DequantizeLinear::ZERO_POINT),
            &[xd],
        )?;
    }
    check_scale_facts(
        ins,
        DequantizeLinear::X,
        DequantizeLinear::SCALE,
        DequantizeLinear::ZERO_POINT,
        axis,
        block_size,
    )?;
    Ok(vec![fact(
        Some(DType::F32),
        shape_of(ins, DequantizeLinear::X),
    )])
}

pub(super) fn infer_dynamic(ins: Facts) -> Inferred {
    expect(
        "DynamicQuantizeLinear",
        "x",
        dtype_of(ins, DynamicQuantizeLinear::X),
        &[DType::F32],
    )?;
    Ok(vec![
        fact(Some(DType::U8), shape_of(ins, DynamicQuantizeLinear::X)),
        fact(Some(DType::F32), Some(vec![])),
        fact(Some(DType::U8), Some(vec![])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    #[test]
    fn the_layouts_follow_the_scale_shape() {
        let x = known(&[2, 8]);
        assert_eq!(ScaleLayout::of(&x, &[], 1, 0), Ok(ScaleLayout::Tensor));
        assert_eq!(
            ScaleLayout::of(&x, &[Some(1)], 5, 0),
            Ok(ScaleLayout::Tensor)
        );
        assert_eq!(
            ScaleLayout::of(&x, &[Some(8)], -1, 0),
            Ok(ScaleLayout::Axis { axis: 1 })
        );
        assert!(ScaleLayout::of(&x, &[Some(2)], 1, 0).is_err());
        assert_eq!(
            ScaleLayout::of(&x, &known(&[2, 3]), 1, 3),
            Ok(ScaleLayout::Blocked { axis: 1, block: 3 })
        );
        assert!(ScaleLayout::of(&x, &known(&[2, 2]), 1, 3).is_err());
        assert!(ScaleLayout::of(&x, &[Some(3)], 1, 3).is_err());
    }

    /// Every element of a blocked layout finds the scale of its block: checked against the index
    /// computed directly from the coordinates.
    #[test]
    fn blocked_indices_match_their_coordinates() {
        let shape = [2, 5, 3];
        let mut seen = vec![];
        ScaleLayout::Blocked { axis: 1, block: 2 }.for_each(&shape, |xi, si| seen.push((xi, si)));
        let mut want = vec![];
        for a in 0..2 {
            for b in 0..5 {
                for c in 0..3 {
                    want.push(((a * 5 + b) * 3 + c, (a * 3 + b / 2) * 3 + c));
                }
            }
        }
        assert_eq!(seen, want);
    }

    #[test]
    fn quantize_refuses_bad_scales_without_panicking() {
        let x = f32s(&[2], &[1.0, 2.0]);
        for s in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let scale = Tensor::scalar_f32(s);
            let r = quantize_linear(&x.view(), &scale.view(), None, 1, 0, DType::U8);
            assert!(r.is_err(), "scale {s}: {r:?}");
        }
    }
}
