//! The closed set of ops a plan can hold. The compiler imports ONNX into these, rewrites them and writes
//! them into the plan; the runtime evaluates them (see `eval`). Attributes that ONNX moved from
//! attributes to inputs across opsets (axes of Squeeze, Unsqueeze, Reduce*, the sizes of Split) are always
//! inputs here, so that one form serves every opset.

use serde::{Deserialize, Serialize};

use crate::tensor::DType;

/// Element-wise ops with one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Erf,
    Tanh,
    Relu,
    Sigmoid,
    Floor,
    Ceil,
    Sin,
    Cos,
    Sign,
    Softplus,
    Not,
    IsNaN,
    IsInf,
    /// GELU with erf.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
}

/// Element-wise ops with two inputs and numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Integer remainder with the sign of the divisor (ONNX `Mod` with `fmod=0`).
    Mod,
    /// Remainder with the sign of the dividend (ONNX `Mod` with `fmod=1`).
    Fmod,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
}

impl BinaryOp {
    /// Whether `a op b == b op a` for all inputs.
    pub fn is_commutative(self) -> bool {
        use BinaryOp::*;
        matches!(self, Add | Mul | Max | Min | Equal | And | Or | Xor)
    }

    pub fn is_comparison(self) -> bool {
        use BinaryOp::*;
        matches!(self, Equal | Less | LessOrEqual | Greater | GreaterOrEqual)
    }

    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FffActivation {
    Gelu,
    GeluTanh,
    Relu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FffBranch {
    /// Right child iff logit > 0.
    Gt,
    /// Right child iff logit >= 0.
    Ge,
}

/// A scalar held by an op attribute. Floats are kept as their bit pattern so that infinities and NaN
/// survive the plan's JSON encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scalar {
    F32Bits(u32),
    I64(i64),
    I32(i32),
    Bool(bool),
}

impl Scalar {
    pub fn f32(v: f32) -> Scalar {
        Scalar::F32Bits(v.to_bits())
    }

    pub fn dtype(self) -> DType {
        match self {
            Scalar::F32Bits(_) => DType::F32,
            Scalar::I64(_) => DType::I64,
            Scalar::I32(_) => DType::I32,
            Scalar::Bool(_) => DType::Bool,
        }
    }
}

/// One op with its attributes. The comment on each variant lists its inputs (`?` marks optional ones)
/// and outputs, as ONNX names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// operands... -> output (float; see `eval::einsum`)
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
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    /// input -> output; `coerce_2d` is the behaviour before opset 13 (softmax over all axes from `axis`)
    Softmax { axis: i64, coerce_2d: bool },
    /// input -> output
    LogSoftmax { axis: i64, coerce_2d: bool },
    /// X, Scale, B? -> Y, normalised over the axes from `axis` to the last
    LayerNorm { axis: i64, epsilon: f32 },
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
    /// Q, K, V, Mask? -> Y [b, sq, h, dv] = softmax(scale * Q K' + Mask) V per batch and head, where
    /// the operands read as `[b, h, s, d]` are `Transpose(Q, q_perm)`, `Transpose(K, k_perm)` and
    /// `Transpose(V, v_perm)` (batch and head axes broadcast) and Mask broadcasts to `[b, h, sq, sk]`;
    /// with `nan_to_zero`, NaN probabilities (rows masked entirely with -inf) count as 0.
    Attention {
        scale: f32,
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
            _ => Some(1),
        }
    }
}
