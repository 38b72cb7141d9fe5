//! LayerNorm over the axes from `axis` to the last, written by the compiler's `layer-norm` pass.

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::in_place::InPlace;
use super::norm_axis;
use crate::buffers;
use crate::error::{Error, Result};
use crate::tensor::{from_vec, Tensor, TensorView};

/// The input slots of [`super::Op::LayerNorm`].
pub struct LayerNorm;

impl LayerNorm {
    pub const X: usize = 0;
    pub const SCALE: usize = 1;
    pub const B: usize = 2;
    pub(super) const REQUIRED: &'static [usize] = &[Self::X, Self::SCALE];
    pub(super) const INPUTS: usize = 3;
}

/// The output is written into a buffer from the recycler (or over X, in place).
pub(super) const TAKES_BUFFERS: bool = true;

/// X's buffer takes the result.
pub(super) const IN_PLACE: &[usize] = &[LayerNorm::X];

pub fn layer_norm(
    x: &TensorView,
    scale: &TensorView,
    bias: Option<&TensorView>,
    axis: i64,
    eps: f32,
) -> Result<Tensor> {
    let x = x.f32()?;
    let (width, scale, bias) = layer_norm_params(x.shape(), scale, bias, axis)?;
    let input = x.as_standard_layout();
    // Written whole: the kernel copies the input in first.
    let mut out = from_vec(x.raw_dim(), buffers::for_overwrite(x.len()));
    fff_ops::norm::layer_norm(
        input.as_slice().expect("standard layout"),
        width,
        &scale,
        bias.as_deref(),
        eps,
        out.as_slice_mut().expect("fresh array"),
    );
    Ok(Tensor::F32(out))
}

/// [`layer_norm`] written over `x` (standard layout).
pub fn layer_norm_in_place(
    x: &mut ArrayD<f32>,
    scale: &TensorView,
    bias: Option<&TensorView>,
    axis: i64,
    eps: f32,
) -> Result<()> {
    let (width, scale, bias) = layer_norm_params(x.shape(), scale, bias, axis)?;
    let data = x.as_slice_mut().expect("standard layout");
    fff_ops::norm::layer_norm_in_place(data, width, &scale, bias.as_deref(), eps);
    Ok(())
}

/// The row width of a LayerNorm over `axis..` of `shape`, and its scale and bias expanded to a row.
#[allow(clippy::type_complexity)]
fn layer_norm_params(
    shape: &[usize],
    scale: &TensorView,
    bias: Option<&TensorView>,
    axis: i64,
) -> Result<(usize, Vec<f32>, Option<Vec<f32>>)> {
    let ax = norm_axis(axis, shape.len())?;
    let norm_shape = &shape[ax..];
    let width: usize = norm_shape.iter().product();
    let expand = |t: &ArrayViewD<f32>, what: &str| -> Result<Vec<f32>> {
        t.broadcast(IxDyn(norm_shape))
            .map(|b| b.iter().copied().collect())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "LayerNorm {what} {:?} does not fit {norm_shape:?}",
                    t.shape()
                ))
            })
    };
    let scale = expand(scale.f32()?, "scale")?;
    let bias = bias
        .map(|b| b.f32().and_then(|b| expand(b, "bias")))
        .transpose()?;
    Ok((width, scale, bias))
}

/// LayerNorm with X given as `owned`, written over it.
pub(super) fn in_place(
    mut owned: ArrayD<f32>,
    inputs: &[Option<TensorView>],
    axis: i64,
    epsilon: f32,
) -> Result<InPlace> {
    let Some(Some(scale)) = inputs.get(LayerNorm::SCALE) else {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    };
    let bias = inputs.get(LayerNorm::B).and_then(|b| b.as_ref());
    layer_norm_in_place(&mut owned, scale, bias, axis, epsilon)?;
    Ok(InPlace::Done(Tensor::F32(owned)))
}
