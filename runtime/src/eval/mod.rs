//! Reference evaluation of every [`Op`] on owned or borrowed tensors. The executor runs plans with it and
//! the compiler folds constants and validates rewrites with it, so both agree by construction.
//!
//! Every function checks its inputs and returns an error rather than panicking on shapes, dtypes or
//! indices that do not fit.

pub mod einsum;
mod elementwise;
pub mod in_place;
mod index;
mod layout;
mod nn;
mod reduce;

use smallvec::{smallvec, SmallVec};

use crate::error::{Error, Result};
use crate::op::Op;
use crate::tensor::{DType, Tensor, TensorView};

/// The most elements one op may create; a shape input asking for more is an error, not an abort.
pub const MAX_ELEMENTS: usize = 1 << 34;

thread_local! {
    /// The element limit in force on this thread (see [`with_element_limit`]).
    static ELEMENT_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_ELEMENTS) };
}

/// Runs `f` with the ops it evaluates on this thread allowed at most `limit` elements (and never more
/// than [`MAX_ELEMENTS`]) where data sets a size: Expand, Tile, ConstantOfShape and Range then fail
/// with [`Error::TooLarge`]. The compiler folds constants and probes rewrites under a small limit, so a
/// model that asks for a huge tensor is left to fail when it runs instead of when it compiles.
pub fn with_element_limit<R>(limit: usize, f: impl FnOnce() -> R) -> R {
    /// Restores the previous limit however `f` ends.
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            ELEMENT_LIMIT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(ELEMENT_LIMIT.with(|l| l.replace(limit.min(MAX_ELEMENTS))));
    f()
}

/// What an op produces: most ops one tensor, held without a heap allocation.
pub type OpOutputs = SmallVec<[Tensor; 1]>;

/// Evaluates `op` on `inputs` (`None` for an absent optional input), producing `n_outputs` tensors.
pub fn eval(op: &Op, inputs: &[Option<TensorView>], n_outputs: usize) -> Result<OpOutputs> {
    let one = |t: Result<Tensor>| t.map(|t| smallvec![t]);
    match op {
        Op::Identity => one(Ok(input(inputs, 0)?.to_owned())),
        Op::Unary(u) => one(elementwise::unary(*u, input(inputs, 0)?)),
        Op::Binary(b) => one(elementwise::binary(
            *b,
            input(inputs, 0)?,
            input(inputs, 1)?,
        )),
        Op::Where => one(elementwise::where_(
            input(inputs, 0)?,
            input(inputs, 1)?,
            input(inputs, 2)?,
        )),
        Op::Clip => one(elementwise::clip(
            input(inputs, 0)?,
            optional(inputs, 1),
            optional(inputs, 2),
        )),
        Op::Cast { to } => one(Ok(elementwise::cast(input(inputs, 0)?, *to))),
        Op::Shape { start, end } => one(Ok(layout::shape(input(inputs, 0)?, *start, *end))),
        Op::Size => one(Ok(Tensor::scalar_i64(input(inputs, 0)?.len() as i64))),
        Op::Reshape { allowzero } => one(layout::reshape(
            input(inputs, 0)?,
            input(inputs, 1)?,
            *allowzero,
        )),
        Op::Flatten { axis } => one(layout::flatten(input(inputs, 0)?, *axis)),
        Op::Squeeze => one(layout::squeeze(input(inputs, 0)?, optional(inputs, 1))),
        Op::Unsqueeze => one(layout::unsqueeze(input(inputs, 0)?, input(inputs, 1)?)),
        Op::Transpose { perm } => one(layout::transpose(input(inputs, 0)?, perm.as_deref())),
        Op::Einsum { equation } => {
            let all = (0..inputs.len())
                .map(|i| input(inputs, i))
                .collect::<Result<Vec<_>>>()?;
            one(einsum::einsum(equation, &all))
        }
        Op::Concat { axis } => {
            let all = (0..inputs.len())
                .map(|i| input(inputs, i))
                .collect::<Result<Vec<_>>>()?;
            one(layout::concat(&all, *axis))
        }
        Op::Split { axis, num_outputs } => {
            let n = if *num_outputs == 0 {
                n_outputs
            } else {
                *num_outputs
            };
            layout::split(input(inputs, 0)?, optional(inputs, 1), *axis, n).map(SmallVec::from_vec)
        }
        Op::Slice => one(layout::slice(
            input(inputs, 0)?,
            input(inputs, 1)?,
            input(inputs, 2)?,
            optional(inputs, 3),
            optional(inputs, 4),
        )),
        Op::Expand => one(layout::expand(input(inputs, 0)?, input(inputs, 1)?)),
        Op::Tile => one(layout::tile(input(inputs, 0)?, input(inputs, 1)?)),
        Op::ConstantOfShape { value } => one(layout::constant_of_shape(input(inputs, 0)?, *value)),
        Op::Range => one(layout::range(
            input(inputs, 0)?,
            input(inputs, 1)?,
            input(inputs, 2)?,
        )),
        Op::Gather { axis } => one(index::gather(input(inputs, 0)?, input(inputs, 1)?, *axis)),
        Op::GatherElements { axis } => one(index::gather_elements(
            input(inputs, 0)?,
            input(inputs, 1)?,
            *axis,
        )),
        Op::GatherNd { batch_dims } => one(index::gather_nd(
            input(inputs, 0)?,
            input(inputs, 1)?,
            *batch_dims,
        )),
        Op::ScatterNd { reduction } => one(index::scatter_nd(
            input(inputs, 0)?,
            input(inputs, 1)?,
            input(inputs, 2)?,
            *reduction,
        )),
        Op::ScatterElements { axis, reduction } => one(index::scatter_elements(
            input(inputs, 0)?,
            input(inputs, 1)?,
            input(inputs, 2)?,
            *axis,
            *reduction,
        )),
        Op::CumSum { exclusive, reverse } => one(index::cumsum(
            input(inputs, 0)?,
            input(inputs, 1)?,
            *exclusive,
            *reverse,
        )),
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        } => one(index::argmax(
            input(inputs, 0)?,
            *axis,
            *keepdims,
            *select_last_index,
        )),
        Op::Reduce {
            op,
            keepdims,
            noop_with_empty_axes,
        } => one(reduce::reduce(
            *op,
            input(inputs, 0)?,
            optional(inputs, 1),
            *keepdims,
            *noop_with_empty_axes,
        )),
        Op::MatMul => one(nn::matmul(input(inputs, 0)?, input(inputs, 1)?)),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => one(nn::gemm(
            input(inputs, 0)?,
            input(inputs, 1)?,
            optional(inputs, 2),
            *alpha,
            *beta,
            *trans_a,
            *trans_b,
        )),
        Op::Softmax { axis, coerce_2d } => {
            one(nn::softmax(input(inputs, 0)?, *axis, *coerce_2d, false))
        }
        Op::LogSoftmax { axis, coerce_2d } => {
            one(nn::softmax(input(inputs, 0)?, *axis, *coerce_2d, true))
        }
        Op::LayerNorm { axis, epsilon } => one(nn::layer_norm(
            input(inputs, 0)?,
            input(inputs, 1)?,
            optional(inputs, 2),
            *axis,
            *epsilon,
        )),
        Op::Linear | Op::PackedLinear { .. } => one(nn::linear(
            input(inputs, 0)?,
            nn::LinearWeights::of(op, input(inputs, 1)?),
            optional(inputs, 2),
            optional(inputs, 3),
        )),
        Op::Attention {
            scale,
            nan_to_zero,
            q_perm,
            k_perm,
            v_perm,
        } => one(nn::attention(
            [
                (input(inputs, 0)?, q_perm),
                (input(inputs, 1)?, k_perm),
                (input(inputs, 2)?, v_perm),
            ],
            optional(inputs, 3),
            *scale,
            *nan_to_zero,
        )),
        Op::FastFeedForward {
            depth,
            trees,
            activation,
            branch,
        } => one(nn::fast_feed_forward(
            input(inputs, 0)?,
            input(inputs, 1)?,
            optional(inputs, 2),
            input(inputs, 3)?,
            optional(inputs, 4),
            *depth,
            *trees,
            *activation,
            *branch,
        )),
    }
}

/// The required input `i`.
fn input<'a, 'b>(inputs: &'b [Option<TensorView<'a>>], i: usize) -> Result<&'b TensorView<'a>> {
    inputs
        .get(i)
        .and_then(|v| v.as_ref())
        .ok_or_else(|| Error::invalid(format!("required input {i} is missing")))
}

/// The optional input `i`: absent when out of range or empty-named.
fn optional<'a, 'b>(inputs: &'b [Option<TensorView<'a>>], i: usize) -> Option<&'b TensorView<'a>> {
    inputs.get(i).and_then(|v| v.as_ref())
}

/// Resolves a possibly negative axis against `rank` (`-1` is the last axis).
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(Error::invalid(format!(
            "axis {axis} is out of range for rank {rank}"
        )))
    }
}

/// The shape two shapes broadcast to under numpy rules.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::invalid(format!(
                    "shapes {a:?} and {b:?} do not broadcast"
                )))
            }
        };
    }
    Ok(out)
}

/// Checks that a shape asked for by data (a shape input) is not absurdly large, and that this machine
/// can allocate it: a failed allocation would abort the process instead of returning an error.
fn check_alloc(shape: &[usize], dtype: DType) -> Result<()> {
    let limit = ELEMENT_LIMIT.with(std::cell::Cell::get);
    let bytes = crate::tensor::checked_len(shape)
        .ok()
        .filter(|&n| n <= limit)
        .and_then(|n| n.checked_mul(dtype.size()));
    match bytes {
        Some(b) if Vec::<u8>::new().try_reserve_exact(b).is_ok() => Ok(()),
        Some(b) => Err(Error::TooLarge(format!(
            "shape {shape:?} of {dtype} needs {b} bytes, more than can be allocated"
        ))),
        None => Err(Error::TooLarge(format!(
            "shape {shape:?} is too large to allocate"
        ))),
    }
}

/// Converts non-negative dims given as i64 into usize.
fn dims_from_ints(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::invalid(format!("{what} has a negative dimension {d}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Scalar;

    fn shape_of(dims: &[i64]) -> Tensor {
        Tensor::I64(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[dims.len()]), dims.to_vec()).unwrap(),
        )
    }

    fn constant_of_shape(dims: &[i64]) -> Result<OpOutputs> {
        let shape = shape_of(dims);
        eval(
            &Op::ConstantOfShape {
                value: Scalar::F32Bits(0),
            },
            &[Some(shape.view())],
            1,
        )
    }

    #[test]
    fn the_element_limit_applies_inside_and_is_restored_after() {
        assert_eq!(constant_of_shape(&[10, 10]).unwrap()[0].len(), 100);
        let inside = with_element_limit(99, || constant_of_shape(&[10, 10]));
        assert!(matches!(inside, Err(Error::TooLarge(_))), "{inside:?}");
        assert_eq!(
            with_element_limit(100, || constant_of_shape(&[10, 10])).unwrap()[0].len(),
            100
        );
        assert_eq!(constant_of_shape(&[10, 10]).unwrap()[0].len(), 100);
    }

    #[test]
    fn shapes_no_array_can_have_are_refused_even_when_empty() {
        assert!(matches!(
            constant_of_shape(&[0, 1 << 62, 4]),
            Err(Error::TooLarge(_))
        ));
        assert_eq!(constant_of_shape(&[0, 1 << 20, 4]).unwrap()[0].len(), 0);
        assert!(crate::tensor::checked_len(&[0, usize::MAX, 2]).is_err());
        assert_eq!(crate::tensor::checked_len(&[0, 5]).unwrap(), 0);
    }
}
