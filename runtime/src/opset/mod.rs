//! The closed set of ops a plan can hold, one module per op or small family of ops. Each module holds
//! its op's parameters, its named input slots, its shape rule on [`Fact`]s (`infer`), its evaluation,
//! its in-place and buffer policy and the checks of its plan form; this module lists the ops and
//! dispatches each concern to them. The compiler imports ONNX into these ops, infers shapes and folds
//! constants with them and writes them into the plan; the runtime validates and evaluates them, so both
//! agree by construction.
//!
//! Attributes that ONNX moved from attributes to inputs across opsets (axes of Squeeze, Unsqueeze,
//! Reduce*, the sizes of Split) are always inputs here, so that one form serves every opset.
//!
//! Every evaluation checks its inputs and returns an error rather than panicking on shapes, dtypes or
//! indices that do not fit.

pub mod attention;
pub mod einsum;
pub mod elementwise;
mod fact;
pub mod fast_feedforward;
pub mod generators;
pub mod in_place;
pub mod index;
pub mod integer_linear;
pub mod layer_norm;
pub mod layout;
pub mod linear;
pub mod matmul;
pub mod matmul_integer;
pub mod quant_linear;
pub mod quantize;
pub mod reduce;
pub mod softmax;
mod util;

use serde::{Deserialize, Serialize};
use smallvec::{smallvec, SmallVec};

pub use attention::Attention;
pub use elementwise::{BinaryOp, UnaryOp};
pub use fact::{broadcast, Dim, Fact, Facts, Inferred};
pub use fast_feedforward::{FastFeedForward, FffActivation, FffBranch, WeightLayout};
pub use generators::Scalar;
pub use index::ScatterReduction;
pub use integer_linear::IntegerLinear;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use matmul_integer::MatMulInteger;
pub use quant_linear::{Precision, QuantLinear};
pub use quantize::{DequantizeLinear, DynamicQuantizeLinear, QuantizeLinear, ScaleLayout};
pub use reduce::ReduceOp;
pub use util::{broadcast_shapes, norm_axis, with_element_limit, MAX_ELEMENTS};

use crate::error::Result;
use crate::tensor::{DType, Tensor, TensorView};
use util::{input, optional};

/// One op with its attributes. The comment on each variant lists its inputs (`?` marks optional ones)
/// and outputs, as ONNX names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// X -> Y
    Identity,
    /// X -> Y
    Unary(UnaryOp),
    /// A, B -> C
    Binary(BinaryOp),
    /// condition, X, Y -> Z
    Where,
    /// input, min?, max? -> output
    Clip,
    /// input -> output
    Cast { to: DType },
    /// data -> 1-D int64 shape, of the axes `start..end`
    Shape { start: i64, end: Option<i64> },
    /// data -> scalar int64 element count
    Size,
    /// data, shape -> reshaped
    Reshape { allowzero: bool },
    /// input -> 2-D output
    Flatten { axis: i64 },
    /// data, axes? -> squeezed
    Squeeze,
    /// data, axes -> expanded
    Unsqueeze,
    /// data -> transposed; no `perm` reverses the axes
    Transpose { perm: Option<Vec<i64>> },
    /// inputs... -> concat_result
    Concat { axis: i64 },
    /// input, split? -> outputs...; without `split` the axis is cut into `num_outputs` near-equal parts
    Split { axis: i64, num_outputs: usize },
    /// data, starts, ends, axes?, steps? -> output
    Slice,
    /// input, shape -> output
    Expand,
    /// input, repeats -> output
    Tile,
    /// data, indices -> output
    Gather { axis: i64 },
    /// data, indices -> output
    GatherElements { axis: i64 },
    /// data, indices -> output
    GatherNd { batch_dims: i64 },
    /// data, indices, updates -> output
    ScatterElements {
        axis: i64,
        reduction: ScatterReduction,
    },
    /// data, indices, updates -> output
    ScatterNd { reduction: ScatterReduction },
    /// operands... -> output (float; see [`einsum`])
    Einsum { equation: String },
    /// shape -> output filled with `value`
    ConstantOfShape { value: Scalar },
    /// start, limit, delta -> output
    Range,
    /// x, axis -> y
    CumSum { exclusive: bool, reverse: bool },
    /// data, axes? -> reduced
    Reduce {
        op: ReduceOp,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    /// data -> int64 indices
    ArgMax {
        axis: i64,
        keepdims: bool,
        select_last_index: bool,
    },
    /// A, B -> Y, numpy semantics
    MatMul,
    /// A, B, C? -> Y = alpha * A' B' + beta * C
    Gemm {
        alpha: F32Attr,
        beta: F32Attr,
        trans_a: bool,
        trans_b: bool,
    },
    /// input -> output; `coerce_2d` is the behaviour before opset 13 (softmax over all axes from `axis`)
    Softmax { axis: i64, coerce_2d: bool },
    /// input -> output
    LogSoftmax { axis: i64, coerce_2d: bool },
    /// X, Scale, B? -> Y, normalised over the axes from `axis` to the last
    LayerNorm { axis: i64, epsilon: F32Attr },
    /// `X [..., k], W [k, n], B? [n], R? -> Y = X W + B + R`: a projection with its bias added, and a
    /// residual R added with broadcasting exactly as `Add(X W + B, R)` would. When R has the result's
    /// shape, the product is accumulated onto it in one pass.
    Linear,
    /// `X [..., k], W [ceil(n / 64), k, 64], B? [n], R? -> Y`: [`Op::Linear`] with its `[k, n]` weights
    /// stored as column panels (`fff_ops::panels`: 64 columns each, row-major, the last zero-padded),
    /// which the GEMM reads in place. Written by the compiler's `pack-weights` lowering. The op takes
    /// panels `c` wide by W's shape (`[ceil(n / c), k, c]`), as the runtime repacks them at load for
    /// CPUs whose GEMM reads another width best ([`crate::panel_width`]).
    PackedLinear { n: usize },
    /// `X [..., k], W, B? [n], R?, W_SCALE? [n], W_SUM? [n] -> Y [..., n] = act(X W + B) + R`, W
    /// stored in reduced precision and packed for its kernels (see [`quant_linear`]). Written by the
    /// compiler's `quantize` lowering.
    QuantLinear {
        n: usize,
        precision: Precision,
        activation: Option<FffActivation>,
    },
    /// Q, K, V, Mask? -> Y [b, sq, h, dv] = softmax(scale * Q K' + Mask) V per batch and head, where
    /// the operands read as `[b, h, s, d]` are `Transpose(Q, q_perm)`, `Transpose(K, k_perm)` and
    /// `Transpose(V, v_perm)` (batch and head axes broadcast) and Mask broadcasts to `[b, h, sq, sk]`;
    /// with `nan_to_zero`, NaN probabilities (rows masked entirely with -inf) count as 0.
    Attention {
        scale: F32Attr,
        nan_to_zero: bool,
        q_perm: [usize; 4],
        k_perm: [usize; 4],
        v_perm: [usize; 4],
    },
    /// X, W_in, B_in?, W_out, B_out? -> Y; see docs/FFF.md. At depth 0 the compiler may store the
    /// weights as column panels (`fff_ops::panels`): W_in `[trees / 64, d_in, 64]` (the panels of
    /// W_in's transpose) and W_out `[d_out / 64, trees, 64]`, told apart from `[nodes, d]` by rank (or
    /// `c` instead of 64, as repacked at load; see [`crate::panel_width`]).
    FastFeedForward {
        depth: usize,
        trees: usize,
        activation: FffActivation,
        branch: FffBranch,
    },
    /// x, y_scale, y_zero_point? -> y (`to`: uint8 or int8),
    /// y = saturate(round_half_even(x / y_scale) + y_zero_point); the scale per tensor, per `axis`, or
    /// in blocks of `block_size` along it (see [`quantize`]).
    QuantizeLinear {
        axis: i64,
        block_size: usize,
        to: DType,
    },
    /// x (uint8, int8 or int32), x_scale, x_zero_point? -> y (float32) = (x - x_zero_point) * x_scale
    DequantizeLinear { axis: i64, block_size: usize },
    /// x (float32) -> y (uint8), y_scale (float32 scalar), y_zero_point (uint8 scalar), as ONNX
    /// defines it
    DynamicQuantizeLinear,
    /// A (u8/i8), B (u8/i8), a_zero_point?, b_zero_point? -> Y (int32) = (A - a_zp)(B - b_zp), numpy
    /// matmul rules
    MatMulInteger,
    /// `X [..., k] uint8, W, B? [n], R?, SCALE, W_SUM [n], X_ZERO? -> Y [..., n] =
    /// act(float32(Σ (X - X_ZERO) W) * SCALE + B) + R`, W int8 codes packed for the int8 kernels (see
    /// [`integer_linear`]). Written by the compiler's `integer-products` rewrite of models quantised
    /// before import.
    IntegerLinear {
        n: usize,
        activation: Option<FffActivation>,
    },
}

/// An f32 attribute, compared and hashed by its bit pattern, so that ops are `Eq + Hash` and can key
/// maps (as CSE does). Encoded in plans and printed exactly as the f32 is.
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct F32Attr(pub f32);

impl PartialEq for F32Attr {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for F32Attr {}

impl std::hash::Hash for F32Attr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl std::fmt::Debug for F32Attr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl From<f32> for F32Attr {
    fn from(v: f32) -> Self {
        F32Attr(v)
    }
}

/// What an op produces: most ops one tensor, held without a heap allocation.
pub type OpOutputs = SmallVec<[Tensor; 1]>;

/// Which input slots an op must have and how many it may have; checked when a plan loads.
struct Arity {
    required: &'static [usize],
    /// `None`: any number (variadic ops).
    max: Option<usize>,
}

const fn arity(required: &'static [usize], max: usize) -> Arity {
    Arity {
        required,
        max: Some(max),
    }
}

impl Op {
    /// A short name for messages and dumps: the variant, with the element-wise kind where there is one.
    pub fn name(&self) -> String {
        match self {
            Op::Unary(u) => format!("{u:?}"),
            Op::Binary(b) => format!("{b:?}"),
            Op::Reduce { op, .. } => format!("Reduce{op:?}"),
            other => {
                let dbg = format!("{other:?}");
                dbg.split(|c: char| !c.is_alphanumeric())
                    .next()
                    .unwrap_or("")
                    .to_string()
            }
        }
    }

    /// How many outputs a node with this op has; `None` for ops whose count is a node property.
    pub fn fixed_outputs(&self) -> Option<usize> {
        match self {
            Op::Split { .. } => None,
            Op::DynamicQuantizeLinear => Some(DynamicQuantizeLinear::OUTPUTS),
            _ => Some(1),
        }
    }

    /// Whether this op is one of quantisation's, which plans from format version 2 on hold.
    pub fn is_quantisation(&self) -> bool {
        matches!(
            self,
            Op::QuantLinear { .. }
                | Op::IntegerLinear { .. }
                | Op::QuantizeLinear { .. }
                | Op::DequantizeLinear { .. }
                | Op::DynamicQuantizeLinear
                | Op::MatMulInteger
        )
    }

    /// Whether this op computes in float32 only, so that quantised (uint8, int8) operands are a
    /// mistake (a dequantisation left out) to report rather than a value to compute on: the products,
    /// the normalisations, float maths and arithmetic. Comparisons and data movement take them.
    fn is_float_only(&self) -> bool {
        match self {
            Op::Binary(b) => !b.is_comparison(),
            Op::Unary(_)
            | Op::MatMul
            | Op::Gemm { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::LayerNorm { .. }
            | Op::Attention { .. }
            | Op::FastFeedForward { .. }
            | Op::Einsum { .. }
            | Op::Linear
            | Op::PackedLinear { .. }
            | Op::Clip
            | Op::Reduce { .. }
            | Op::CumSum { .. } => true,
            _ => false,
        }
    }

    /// The output facts of this op given its input facts, one per output (its shape rule).
    pub fn infer(&self, ins: Facts, n_outputs: usize) -> Inferred {
        if self.is_float_only() {
            if let Some((slot, dt)) = ins
                .iter()
                .enumerate()
                .find_map(|(i, f)| f.and_then(|f| f.dtype).map(|d| (i, d)))
                .filter(|(_, d)| d.is_quantised())
            {
                return Err(format!(
                    "{} does not take {dt} (input {slot}): quantised values must be dequantised first",
                    self.name()
                ));
            }
        }
        match self {
            Op::Identity
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Clip
            | Op::Cast { .. } => elementwise::infer(self, ins),
            Op::Shape { .. } | Op::Size | Op::ConstantOfShape { .. } | Op::Range => {
                generators::infer(self, ins)
            }
            Op::Reshape { .. }
            | Op::Flatten { .. }
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Transpose { .. }
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Slice
            | Op::Expand
            | Op::Tile => layout::infer(self, ins, n_outputs),
            Op::Gather { .. }
            | Op::GatherElements { .. }
            | Op::GatherNd { .. }
            | Op::ScatterElements { .. }
            | Op::ScatterNd { .. }
            | Op::CumSum { .. } => index::infer(self, ins),
            Op::Reduce { .. } | Op::ArgMax { .. } => reduce::infer(self, ins),
            Op::Einsum { equation } => einsum::infer(equation, ins),
            Op::MatMul | Op::Gemm { .. } => matmul::infer(self, ins),
            Op::Linear | Op::PackedLinear { .. } => linear::infer(self, ins),
            Op::QuantLinear {
                n,
                precision,
                activation,
            } => quant_linear::infer(
                quant_linear::Params {
                    n: *n,
                    precision: *precision,
                    activation: *activation,
                },
                ins,
            ),
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. } => {
                fact::same_as_first(ins)
            }
            Op::Attention {
                q_perm,
                k_perm,
                v_perm,
                ..
            } => attention::infer([q_perm, k_perm, v_perm], ins),
            Op::FastFeedForward { .. } => fast_feedforward::infer(ins),
            Op::QuantizeLinear {
                axis,
                block_size,
                to,
            } => quantize::infer_quantize(ins, *axis, *block_size, *to),
            Op::DequantizeLinear { axis, block_size } => {
                quantize::infer_dequantize(ins, *axis, *block_size)
            }
            Op::DynamicQuantizeLinear => quantize::infer_dynamic(ins),
            Op::MatMulInteger => matmul_integer::infer(ins),
            Op::IntegerLinear { n, activation } => integer_linear::infer(
                integer_linear::Params {
                    n: *n,
                    activation: *activation,
                },
                ins,
            ),
        }
    }

    /// Whether this op writes its result into a buffer from the recycler ([`crate::buffers`]), so that
    /// the buffer of a value it made is worth keeping for the next run.
    pub fn takes_buffers(&self) -> bool {
        match self {
            Op::Linear | Op::PackedLinear { .. } => linear::TAKES_BUFFERS,
            Op::QuantLinear { .. } => quant_linear::TAKES_BUFFERS,
            Op::IntegerLinear { .. } => integer_linear::TAKES_BUFFERS,
            Op::FastFeedForward { .. } => fast_feedforward::TAKES_BUFFERS,
            Op::Attention { .. } => attention::TAKES_BUFFERS,
            Op::LayerNorm { .. } => layer_norm::TAKES_BUFFERS,
            Op::MatMul | Op::Gemm { .. } => matmul::TAKES_BUFFERS,
            _ => false,
        }
    }

    fn arity(&self) -> Arity {
        match self {
            Op::Identity
            | Op::Unary(_)
            | Op::Cast { .. }
            | Op::Shape { .. }
            | Op::Size
            | Op::Flatten { .. }
            | Op::Transpose { .. }
            | Op::ConstantOfShape { .. }
            | Op::ArgMax { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. } => arity(&[0], 1),
            Op::Binary(_)
            | Op::Reshape { .. }
            | Op::Unsqueeze
            | Op::Expand
            | Op::Tile
            | Op::Gather { .. }
            | Op::GatherElements { .. }
            | Op::GatherNd { .. }
            | Op::CumSum { .. }
            | Op::MatMul => arity(&[0, 1], 2),
            Op::Squeeze | Op::Split { .. } | Op::Reduce { .. } => arity(&[0], 2),
            Op::Where | Op::Range | Op::ScatterElements { .. } | Op::ScatterNd { .. } => {
                arity(&[0, 1, 2], 3)
            }
            Op::Clip => arity(&[0], 3),
            Op::Slice => arity(&[0, 1, 2], 5),
            Op::Gemm { .. } => arity(&[0, 1], 3),
            Op::Concat { .. } | Op::Einsum { .. } => Arity {
                required: &[0],
                max: None,
            },
            Op::LayerNorm { .. } => arity(LayerNorm::REQUIRED, LayerNorm::INPUTS),
            Op::Linear | Op::PackedLinear { .. } => arity(Linear::REQUIRED, Linear::INPUTS),
            Op::QuantLinear { .. } => arity(QuantLinear::REQUIRED, QuantLinear::INPUTS),
            Op::Attention { .. } => arity(Attention::REQUIRED, Attention::INPUTS),
            Op::FastFeedForward { .. } => arity(FastFeedForward::REQUIRED, FastFeedForward::INPUTS),
            Op::QuantizeLinear { .. } => arity(QuantizeLinear::REQUIRED, QuantizeLinear::INPUTS),
            Op::DequantizeLinear { .. } => {
                arity(DequantizeLinear::REQUIRED, DequantizeLinear::INPUTS)
            }
            Op::DynamicQuantizeLinear => arity(
                DynamicQuantizeLinear::REQUIRED,
                DynamicQuantizeLinear::INPUTS,
            ),
            Op::MatMulInteger => arity(MatMulInteger::REQUIRED, MatMulInteger::INPUTS),
            Op::IntegerLinear { .. } => arity(IntegerLinear::REQUIRED, IntegerLinear::INPUTS),
        }
    }

    /// Checks the plan form of a node with this op: its inputs (`Some` where present, by slot), its
    /// attributes' limits, and what its ops need of the shapes of inputs that are constants
    /// (`constant_shape` of a value; `None` for values computed at run time). A plan that fails is
    /// refused at load, before anything runs.
    pub fn validate(
        &self,
        inputs: &[Option<usize>],
        constant_shape: &dyn Fn(usize) -> Option<Vec<usize>>,
    ) -> std::result::Result<(), String> {
        let Arity { required, max } = self.arity();
        if max.is_some_and(|m| inputs.len() > m) {
            return Err(format!(
                "{} takes at most {} inputs, has {}",
                self.name(),
                max.unwrap_or(0),
                inputs.len()
            ));
        }
        if let Some(&slot) = required
            .iter()
            .find(|&&s| inputs.get(s).copied().flatten().is_none())
        {
            return Err(format!("{} lacks its required input {slot}", self.name()));
        }
        match self {
            Op::Attention {
                q_perm,
                k_perm,
                v_perm,
                ..
            } => attention::validate([q_perm, k_perm, v_perm]),
            Op::FastFeedForward { depth, trees, .. } => {
                let shape =
                    |slot: usize| inputs.get(slot).copied().flatten().and_then(constant_shape);
                FastFeedForward::validate(
                    *depth,
                    *trees,
                    shape(FastFeedForward::W_IN).as_deref(),
                    shape(FastFeedForward::W_OUT).as_deref(),
                )
            }
            Op::IntegerLinear { n, .. } => {
                let w = inputs.get(IntegerLinear::W).copied().flatten();
                IntegerLinear::validate(*n, w.and_then(constant_shape).as_deref())
            }
            Op::QuantLinear { n, precision, .. } => {
                let present = |slot: usize| inputs.get(slot).copied().flatten();
                QuantLinear::validate(
                    *n,
                    *precision,
                    present(QuantLinear::W).and_then(constant_shape).as_deref(),
                    present(QuantLinear::W_SCALE).is_some()
                        && present(QuantLinear::W_SUM).is_some(),
                )
            }
            Op::QuantizeLinear { to, .. } if !to.is_quantised() => Err(format!(
                "QuantizeLinear to {to}: quantised values are uint8 or int8"
            )),
            Op::QuantizeLinear {
                axis, block_size, ..
            }
            | Op::DequantizeLinear { axis, block_size } => {
                // The scale's layout over x, where both are constants; values computed at run time
                // are checked by the evaluator.
                let shape =
                    |slot: usize| inputs.get(slot).copied().flatten().and_then(constant_shape);
                match (shape(QuantizeLinear::X), shape(QuantizeLinear::SCALE)) {
                    (Some(x), Some(s)) => {
                        let known = |d: &[usize]| d.iter().map(|&v| Some(v)).collect::<Vec<_>>();
                        ScaleLayout::of(&known(&x), &known(&s), *axis, *block_size)
                            .map(|_| ())
                            .map_err(|e| format!("{}: {e}", self.name()))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// Evaluates `op` on `inputs` (`None` for an absent optional input), producing `n_outputs` tensors.
/// Never panics: should a kernel still assert on something the checks let through, the panic comes
/// back as [`crate::Error::Internal`].
pub fn eval(op: &Op, inputs: &[Option<TensorView>], n_outputs: usize) -> Result<OpOutputs> {
    crate::error::contain_panic(|| eval_checked(op, inputs, n_outputs))
}

/// [`eval`] itself: every op checks its inputs before its kernel runs.
fn eval_checked(op: &Op, inputs: &[Option<TensorView>], n_outputs: usize) -> Result<OpOutputs> {
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
        Op::Cast { to } => one(elementwise::cast(input(inputs, 0)?, *to)),
        Op::Shape { start, end } => one(Ok(generators::shape(input(inputs, 0)?, *start, *end))),
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
        Op::ConstantOfShape { value } => {
            one(generators::constant_of_shape(input(inputs, 0)?, *value))
        }
        Op::Range => one(generators::range(
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
        } => one(reduce::argmax(
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
        Op::MatMul => one(matmul::matmul(input(inputs, 0)?, input(inputs, 1)?)),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => one(matmul::gemm(
            input(inputs, 0)?,
            input(inputs, 1)?,
            optional(inputs, 2),
            alpha.0,
            beta.0,
            *trans_a,
            *trans_b,
        )),
        Op::Softmax { axis, coerce_2d } => one(softmax::softmax(
            input(inputs, 0)?,
            *axis,
            *coerce_2d,
            false,
        )),
        Op::LogSoftmax { axis, coerce_2d } => {
            one(softmax::softmax(input(inputs, 0)?, *axis, *coerce_2d, true))
        }
        Op::LayerNorm { axis, epsilon } => one(layer_norm::layer_norm(
            input(inputs, LayerNorm::X)?,
            input(inputs, LayerNorm::SCALE)?,
            optional(inputs, LayerNorm::B),
            *axis,
            epsilon.0,
        )),
        Op::Linear | Op::PackedLinear { .. } => one(linear::linear(
            input(inputs, Linear::X)?,
            linear::LinearWeights::of(op, input(inputs, Linear::W)?),
            optional(inputs, Linear::B),
            optional(inputs, Linear::R),
        )),
        Op::QuantLinear {
            n,
            precision,
            activation,
        } => one(quant_linear::quant_linear(
            quant_linear::Params {
                n: *n,
                precision: *precision,
                activation: *activation,
            },
            input(inputs, QuantLinear::X)?,
            input(inputs, QuantLinear::W)?,
            quant_linear::Side {
                bias: optional(inputs, QuantLinear::B),
                residual: optional(inputs, QuantLinear::R),
                scale: optional(inputs, QuantLinear::W_SCALE),
                sum: optional(inputs, QuantLinear::W_SUM),
            },
        )),
        Op::IntegerLinear { n, activation } => one(integer_linear::integer_linear(
            integer_linear::Params {
                n: *n,
                activation: *activation,
            },
            input(inputs, IntegerLinear::X)?,
            input(inputs, IntegerLinear::W)?,
            integer_linear::Side {
                bias: optional(inputs, IntegerLinear::B),
                residual: optional(inputs, IntegerLinear::R),
                scale: input(inputs, IntegerLinear::SCALE)?,
                sum: input(inputs, IntegerLinear::W_SUM)?,
                zero: optional(inputs, IntegerLinear::X_ZERO),
            },
        )),
        Op::Attention {
            scale,
            nan_to_zero,
            q_perm,
            k_perm,
            v_perm,
        } => one(attention::attention(
            [
                (input(inputs, Attention::Q)?, q_perm),
                (input(inputs, Attention::K)?, k_perm),
                (input(inputs, Attention::V)?, v_perm),
            ],
            optional(inputs, Attention::MASK),
            scale.0,
            *nan_to_zero,
        )),
        Op::FastFeedForward {
            depth,
            trees,
            activation,
            branch,
        } => one(fast_feedforward::fast_feed_forward(
            input(inputs, FastFeedForward::X)?,
            input(inputs, FastFeedForward::W_IN)?,
            optional(inputs, FastFeedForward::B_IN),
            input(inputs, FastFeedForward::W_OUT)?,
            optional(inputs, FastFeedForward::B_OUT),
            *depth,
            *trees,
            *activation,
            *branch,
        )),
        Op::QuantizeLinear {
            axis,
            block_size,
            to,
        } => one(quantize::quantize_linear(
            input(inputs, QuantizeLinear::X)?,
            input(inputs, QuantizeLinear::SCALE)?,
            optional(inputs, QuantizeLinear::ZERO_POINT),
            *axis,
            *block_size,
            *to,
        )),
        Op::DequantizeLinear { axis, block_size } => one(quantize::dequantize_linear(
            input(inputs, DequantizeLinear::X)?,
            input(inputs, DequantizeLinear::SCALE)?,
            optional(inputs, DequantizeLinear::ZERO_POINT),
            *axis,
            *block_size,
        )),
        Op::DynamicQuantizeLinear => {
            quantize::dynamic_quantize_linear(input(inputs, DynamicQuantizeLinear::X)?)
                .map(SmallVec::from_iter)
        }
        Op::MatMulInteger => one(matmul_integer::matmul_integer(
            input(inputs, MatMulInteger::A)?,
            input(inputs, MatMulInteger::B)?,
            optional(inputs, MatMulInteger::A_ZERO),
            optional(inputs, MatMulInteger::B_ZERO),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

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

    /// Products, broadcasts and gathers set their output size from their inputs' shapes: an outer
    /// product of two short vectors may be huge, and is checked before it is allocated.
    #[test]
    fn outputs_that_outgrow_their_inputs_respect_the_element_limit() {
        let column = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1000, 1])));
        let row = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 1000])));
        let ins = [Some(column.view()), Some(row.view())];
        for op in [Op::MatMul, Op::Binary(BinaryOp::Add)] {
            assert_eq!(eval(&op, &ins, 1).unwrap()[0].len(), 1_000_000);
            let limited = with_element_limit(999_999, || eval(&op, &ins, 1));
            assert!(
                matches!(limited, Err(Error::TooLarge(_))),
                "{op:?}: {limited:?}"
            );
        }
        let gather = Op::Gather { axis: 1 };
        let indices = Tensor::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1000])));
        let ins = [Some(column.view()), Some(indices.view())];
        let limited = with_element_limit(999_999, || eval(&gather, &ins, 1));
        assert!(matches!(limited, Err(Error::TooLarge(_))), "{limited:?}");
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
