//! Element-wise ops: Identity, unary, binary with broadcasting, Where, Clip, Cast.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};
use serde::{Deserialize, Serialize};

use super::fact::{broadcast, dtype_of, fact, get, shape_of, value_of, Dim, Fact, Facts, Inferred};
use super::in_place::InPlace;
use super::util::{check_alloc, check_alloc_bytes};
use super::{broadcast_shapes, Op};
use crate::error::{Error, Result};
use crate::tensor::{Bf16, DType, Tensor, TensorView};

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

impl UnaryOp {
    /// Whether the op tells something about each element (a bool result) instead of computing on it.
    pub fn is_predicate(self) -> bool {
        matches!(self, UnaryOp::IsNaN | UnaryOp::IsInf | UnaryOp::Not)
    }
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

macro_rules! int_unary {
    ($op:expr, $a:expr, $unsupported:expr) => {
        match $op {
            UnaryOp::Neg => $a.mapv(|v| v.wrapping_neg()),
            UnaryOp::Abs => $a.mapv(|v| v.wrapping_abs()),
            UnaryOp::Sign => $a.mapv(|v| v.signum()),
            UnaryOp::Relu => $a.mapv(|v| v.max(0)),
            _ => return Err($unsupported()),
        }
    };
}

macro_rules! int_binary {
    ($op:expr, $x:expr, $y:expr, $variant:ident, $unsupported:expr) => {{
        use BinaryOp::*;
        if $op.is_comparison() {
            Tensor::Bool(zip_broadcast($x, $y, compare_fn($op))?)
        } else {
            if matches!($op, Div | Mod | Fmod) && $y.iter().any(|&v| v == 0) {
                return Err(Error::invalid(format!("integer {:?} by zero", $op)));
            }
            Tensor::$variant(match $op {
                Add => zip_broadcast($x, $y, |p, q| p.wrapping_add(q))?,
                Sub => zip_broadcast($x, $y, |p, q| p.wrapping_sub(q))?,
                Mul => zip_broadcast($x, $y, |p, q| p.wrapping_mul(q))?,
                Div => zip_broadcast($x, $y, |p, q| p.wrapping_div(q))?,
                Max => zip_broadcast($x, $y, |p, q| p.max(q))?,
                Min => zip_broadcast($x, $y, |p, q| p.min(q))?,
                Fmod => zip_broadcast($x, $y, |p, q| p.wrapping_rem(q))?,
                Mod => zip_broadcast($x, $y, |p, q| {
                    let r = p.wrapping_rem(q);
                    if r != 0 && ((r < 0) != (q < 0)) {
                        r + q
                    } else {
                        r
                    }
                })?,
                _ => return Err($unsupported()),
            })
        }
    }};
}

pub fn unary(op: UnaryOp, x: &TensorView) -> Result<Tensor> {
    use UnaryOp::*;
    let unsupported = || Error::invalid(format!("{op:?} does not take {}", x.dtype()));
    Ok(match x {
        TensorView::F32(a) => match op {
            IsNaN => Tensor::Bool(a.mapv(f32::is_nan)),
            IsInf => Tensor::Bool(a.mapv(f32::is_infinite)),
            Not => return Err(unsupported()),
            _ => Tensor::F32(a.mapv(float_unary(op))),
        },
        TensorView::I64(a) => Tensor::I64(int_unary!(op, a, unsupported)),
        TensorView::I32(a) => Tensor::I32(int_unary!(op, a, unsupported)),
        TensorView::Bool(a) => match op {
            Not => Tensor::Bool(a.mapv(|v| !v)),
            _ => return Err(unsupported()),
        },
        TensorView::BF16(_) | TensorView::I8(_) | TensorView::U8(_) => return Err(unsupported()),
    })
}

pub(super) fn float_unary(op: UnaryOp) -> fn(f32) -> f32 {
    use fff_ops::activation as act;
    use UnaryOp::*;
    match op {
        Neg => |v| -v,
        Abs => f32::abs,
        Exp => f32::exp,
        Log => f32::ln,
        Sqrt => f32::sqrt,
        Reciprocal => |v| 1.0 / v,
        Erf => act::erf,
        Tanh => f32::tanh,
        Relu => act::relu,
        Sigmoid => act::sigmoid,
        Floor => f32::floor,
        Ceil => f32::ceil,
        Sin => f32::sin,
        Cos => f32::cos,
        Sign => |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        Softplus => |v| if v > 20.0 { v } else { v.exp().ln_1p() },
        Gelu => act::gelu_erf,
        GeluTanh => act::gelu_tanh,
        Not | IsNaN | IsInf => unreachable!("handled by the caller"),
    }
}

/// Broadcasts `a` and `b` against each other and maps `f` over the pairs.
pub fn zip_broadcast<A: Copy, B: Copy, C>(
    a: &ArrayViewD<A>,
    b: &ArrayViewD<B>,
    f: impl Fn(A, B) -> C,
) -> Result<ArrayD<C>> {
    let shape = broadcast_shapes(a.shape(), b.shape())?;
    check_alloc_bytes(&shape, std::mem::size_of::<C>(), std::any::type_name::<C>())?;
    let dim = IxDyn(&shape);
    let (av, bv) = match (a.broadcast(dim.clone()), b.broadcast(dim)) {
        (Some(x), Some(y)) => (x, y),
        _ => {
            return Err(Error::invalid(format!(
                "shapes {:?} and {:?} do not broadcast",
                a.shape(),
                b.shape()
            )))
        }
    };
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

/// Evaluates `$body` with `$f` bound to the float arithmetic of binary op `$op` (NaN-propagating Max
/// and Min), or `$otherwise` for comparisons, logic, Pow and integer-only ops. Each op gets a closure of
/// its own type, so the loops in `$body` are compiled and vectorised per op rather than calling
/// through a function pointer for every element.
macro_rules! float_binary {
    ($op:expr, $f:ident => $body:expr, $otherwise:expr) => {{
        use $crate::opset::BinaryOp as B;
        match $op {
            B::Add => {
                let $f = |p: f32, q: f32| p + q;
                $body
            }
            B::Sub => {
                let $f = |p: f32, q: f32| p - q;
                $body
            }
            B::Mul => {
                let $f = |p: f32, q: f32| p * q;
                $body
            }
            B::Div => {
                let $f = |p: f32, q: f32| p / q;
                $body
            }
            B::Max => {
                let $f = |p: f32, q: f32| {
                    if p.is_nan() || q.is_nan() {
                        f32::NAN
                    } else {
                        p.max(q)
                    }
                };
                $body
            }
            B::Min => {
                let $f = |p: f32, q: f32| {
                    if p.is_nan() || q.is_nan() {
                        f32::NAN
                    } else {
                        p.min(q)
                    }
                };
                $body
            }
            B::Fmod => {
                let $f = |p: f32, q: f32| p % q;
                $body
            }
            _ => $otherwise,
        }
    }};
}

pub fn binary(op: BinaryOp, a: &TensorView, b: &TensorView) -> Result<Tensor> {
    use BinaryOp::*;
    if op == Pow {
        return pow(a, b);
    }
    if a.dtype() != b.dtype() {
        return Err(Error::invalid(format!(
            "{op:?} of {} and {}",
            a.dtype(),
            b.dtype()
        )));
    }
    let unsupported = || Error::invalid(format!("{op:?} does not take {}", a.dtype()));
    match (a, b) {
        (TensorView::F32(x), TensorView::F32(y)) => {
            if op.is_comparison() {
                return Ok(Tensor::Bool(zip_broadcast(x, y, compare_fn::<f32>(op))?));
            }
            float_binary!(
                op,
                f => Ok(Tensor::F32(zip_broadcast(x, y, f)?)),
                Err(unsupported())
            )
        }
        (TensorView::I64(x), TensorView::I64(y)) => Ok(int_binary!(op, x, y, I64, unsupported)),
        (TensorView::I32(x), TensorView::I32(y)) => Ok(int_binary!(op, x, y, I32, unsupported)),
        (TensorView::Bool(x), TensorView::Bool(y)) => {
            let f: fn(bool, bool) -> bool = match op {
                And => |p, q| p && q,
                Or => |p, q| p || q,
                Xor => |p, q| p != q,
                Equal => |p, q| p == q,
                _ => return Err(unsupported()),
            };
            Ok(Tensor::Bool(zip_broadcast(x, y, f)?))
        }
        // Quantised codes are compared (as ONNX allows) but not computed on: their arithmetic is
        // that of the quantisation ops, and wrapping u8 sums would only hide a mistake.
        (TensorView::I8(x), TensorView::I8(y)) if op.is_comparison() => {
            Ok(Tensor::Bool(zip_broadcast(x, y, compare_fn(op))?))
        }
        (TensorView::U8(x), TensorView::U8(y)) if op.is_comparison() => {
            Ok(Tensor::Bool(zip_broadcast(x, y, compare_fn(op))?))
        }
        _ => Err(unsupported()),
    }
}

fn compare_fn<T: PartialOrd>(op: BinaryOp) -> fn(T, T) -> bool {
    match op {
        BinaryOp::Equal => |p, q| p == q,
        BinaryOp::Less => |p, q| p < q,
        BinaryOp::LessOrEqual => |p, q| p <= q,
        BinaryOp::Greater => |p, q| p > q,
        BinaryOp::GreaterOrEqual => |p, q| p >= q,
        _ => unreachable!("only comparisons reach compare_fn"),
    }
}

/// `Pow`: the exponent may have another numeric type than the base.
fn pow(a: &TensorView, b: &TensorView) -> Result<Tensor> {
    let exp_f32 = |b: &TensorView| -> Result<ArrayD<f32>> {
        Ok(match b {
            TensorView::F32(y) => y.to_owned(),
            TensorView::I64(y) => y.mapv(|v| v as f32),
            TensorView::I32(y) => y.mapv(|v| v as f32),
            TensorView::Bool(_) | TensorView::BF16(_) | TensorView::I8(_) | TensorView::U8(_) => {
                return Err(Error::invalid(format!(
                    "Pow does not take a {} exponent",
                    b.dtype()
                )))
            }
        })
    };
    match a {
        TensorView::F32(x) => {
            let e = exp_f32(b)?;
            Ok(Tensor::F32(zip_broadcast(
                x,
                &e.view(),
                |p: f32, q: f32| {
                    if q == 2.0 {
                        p * p
                    } else {
                        p.powf(q)
                    }
                },
            )?))
        }
        TensorView::I64(x) => {
            let e = exp_f32(b)?;
            Ok(Tensor::I64(zip_broadcast(x, &e.view(), |p, q| {
                (p as f64).powf(q as f64) as i64
            })?))
        }
        TensorView::I32(x) => {
            let e = exp_f32(b)?;
            Ok(Tensor::I32(zip_broadcast(x, &e.view(), |p, q| {
                (p as f64).powf(q as f64) as i32
            })?))
        }
        TensorView::Bool(_) | TensorView::BF16(_) | TensorView::I8(_) | TensorView::U8(_) => Err(
            Error::invalid(format!("Pow does not take a {} base", a.dtype())),
        ),
    }
}

pub fn where_(cond: &TensorView, x: &TensorView, y: &TensorView) -> Result<Tensor> {
    let c = cond.bool()?;
    if x.dtype() != y.dtype() {
        return Err(Error::invalid(format!(
            "Where of {} and {}",
            x.dtype(),
            y.dtype()
        )));
    }
    let shape = broadcast_shapes(&broadcast_shapes(c.shape(), x.shape())?, y.shape())?;
    check_alloc(&shape, x.dtype())?;
    let dim = IxDyn(&shape);
    let cb = c
        .broadcast(dim.clone())
        .expect("broadcastable by construction");
    macro_rules! pick {
        ($p:expr, $q:expr, $v:ident) => {{
            let pb = $p
                .broadcast(dim.clone())
                .expect("broadcastable by construction");
            let qb = $q
                .broadcast(dim.clone())
                .expect("broadcastable by construction");
            Tensor::$v(
                Zip::from(&cb)
                    .and(&pb)
                    .and(&qb)
                    .map_collect(|&c, &p, &q| if c { p } else { q }),
            )
        }};
    }
    Ok(match (x, y) {
        (TensorView::F32(p), TensorView::F32(q)) => pick!(p, q, F32),
        (TensorView::I64(p), TensorView::I64(q)) => pick!(p, q, I64),
        (TensorView::I32(p), TensorView::I32(q)) => pick!(p, q, I32),
        (TensorView::Bool(p), TensorView::Bool(q)) => pick!(p, q, Bool),
        (TensorView::BF16(p), TensorView::BF16(q)) => pick!(p, q, BF16),
        (TensorView::I8(p), TensorView::I8(q)) => pick!(p, q, I8),
        (TensorView::U8(p), TensorView::U8(q)) => pick!(p, q, U8),
        _ => unreachable!("dtypes checked equal above"),
    })
}

pub fn clip(x: &TensorView, min: Option<&TensorView>, max: Option<&TensorView>) -> Result<Tensor> {
    let lo = min.map(|m| m.scalar_f64()).transpose()?;
    let hi = max.map(|m| m.scalar_f64()).transpose()?;
    match x {
        TensorView::F32(a) => {
            let (lo, hi) = (lo.map(|v| v as f32), hi.map(|v| v as f32));
            Ok(Tensor::F32(a.mapv(|v| {
                let v = lo.map_or(v, |l| if v < l { l } else { v });
                hi.map_or(v, |h| if v > h { h } else { v })
            })))
        }
        TensorView::I64(a) => {
            let (lo, hi) = (lo.map(|v| v as i64), hi.map(|v| v as i64));
            Ok(Tensor::I64(a.mapv(|v| {
                v.max(lo.unwrap_or(i64::MIN)).min(hi.unwrap_or(i64::MAX))
            })))
        }
        TensorView::I32(a) => {
            let (lo, hi) = (lo.map(|v| v as i32), hi.map(|v| v as i32));
            Ok(Tensor::I32(a.mapv(|v| {
                v.max(lo.unwrap_or(i32::MIN)).min(hi.unwrap_or(i32::MAX))
            })))
        }
        TensorView::Bool(_) | TensorView::BF16(_) | TensorView::I8(_) | TensorView::U8(_) => {
            Err(Error::invalid(format!("Clip does not take {}", x.dtype())))
        }
    }
}

/// Cast. Float to integer rounds toward zero and saturates at the target's range, NaN giving 0 (as
/// Rust's `as` does; ONNX leaves out-of-range values undefined); integer to integer saturates too, so
/// `Cast<uint8>(300)` is 255 and `Cast<int8>(-1000)` is -128; to bool is `!= 0`.
pub fn cast(x: &TensorView, to: DType) -> Result<Tensor> {
    // A cast to a wider type is the one way an element-wise op outgrows its input.
    if to.size() > x.dtype().size() {
        check_alloc(x.shape(), to)?;
    }
    /// Narrows with saturation; every source goes through i64 (floats by `as`, which saturates).
    fn sat<T: TryFrom<i64> + Bounded>(v: i64) -> T {
        T::try_from(v).unwrap_or(if v < 0 { T::MIN } else { T::MAX })
    }
    macro_rules! from {
        ($a:expr, $to_f32:expr, $to_i64:expr, $to_bool:expr) => {
            match to {
                DType::F32 => Tensor::F32($a.mapv($to_f32)),
                DType::I64 => Tensor::I64($a.mapv($to_i64)),
                DType::I32 => Tensor::I32($a.mapv(|v| sat::<i32>(($to_i64)(v)))),
                DType::Bool => Tensor::Bool($a.mapv($to_bool)),
                DType::BF16 => Tensor::BF16($a.mapv(|v| Bf16::from_f32(($to_f32)(v)))),
                DType::I8 => Tensor::I8($a.mapv(|v| sat::<i8>(($to_i64)(v)))),
                DType::U8 => Tensor::U8($a.mapv(|v| sat::<u8>(($to_i64)(v)))),
            }
        };
    }
    Ok(match x {
        TensorView::F32(a) => from!(a, |v: f32| v, |v: f32| v as i64, |v: f32| v != 0.0),
        TensorView::I64(a) => from!(a, |v: i64| v as f32, |v: i64| v, |v: i64| v != 0),
        TensorView::I32(a) => from!(a, |v: i32| v as f32, |v: i32| v as i64, |v: i32| v != 0),
        TensorView::Bool(a) => from!(a, |v: bool| v as u8 as f32, |v: bool| v as i64, |v: bool| v),
        TensorView::BF16(a) => from!(
            a,
            |v: Bf16| v.to_f32(),
            |v: Bf16| v.to_f32() as i64,
            |v: Bf16| v.to_f32() != 0.0
        ),
        TensorView::I8(a) => from!(a, |v: i8| v as f32, |v: i8| v as i64, |v: i8| v != 0),
        TensorView::U8(a) => from!(a, |v: u8| v as f32, |v: u8| v as i64, |v: u8| v != 0),
    })
}

/// The bounds [`cast`] saturates at.
trait Bounded {
    const MIN: Self;
    const MAX: Self;
}

macro_rules! bounded {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
        }
    )*};
}
bounded!(i32, i8, u8);

/// The shape rule of the element-wise ops.
pub(super) fn infer(op: &Op, ins: Facts) -> Inferred {
    let dt0 = dtype_of(ins, 0);
    let s0 = shape_of(ins, 0);
    Ok(match op {
        Op::Identity => vec![get(ins, 0).cloned().unwrap_or_else(Fact::unknown)],
        Op::Unary(u) => {
            let dt = if u.is_predicate() {
                Some(DType::Bool)
            } else {
                dt0
            };
            vec![fact(dt, s0)]
        }
        Op::Binary(b) => {
            let shape = match (s0, shape_of(ins, 1)) {
                (Some(a), Some(c)) => Some(broadcast(&a, &c)?),
                _ => None,
            };
            let dt = if b.is_comparison() || b.is_logical() {
                Some(DType::Bool)
            } else {
                dt0
            };
            let value = match (value_of(ins, 0), value_of(ins, 1)) {
                (Some(a), Some(c)) if !b.is_comparison() && !b.is_logical() => {
                    value_arith(*b, &a, &c)
                }
                _ => None,
            };
            vec![Fact {
                dtype: dt,
                shape,
                value,
            }]
        }
        Op::Where => {
            let shape = match (s0, shape_of(ins, 1), shape_of(ins, 2)) {
                (Some(a), Some(b), Some(c)) => Some(broadcast(&broadcast(&a, &b)?, &c)?),
                _ => None,
            };
            vec![fact(dtype_of(ins, 1), shape)]
        }
        Op::Clip => vec![fact(dt0, s0)],
        Op::Cast { to } => {
            let value = value_of(ins, 0).filter(|_| matches!(to, DType::I64 | DType::I32));
            vec![Fact {
                dtype: Some(*to),
                shape: s0,
                value,
            }]
        }
        other => return Err(format!("{} is not an element-wise op", other.name())),
    })
}

/// Element-wise arithmetic on symbolic values (shape computations), where both sides are known.
fn value_arith(op: BinaryOp, a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    use BinaryOp::*;
    let n = a.len().max(b.len());
    if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let x = &a[if a.len() == 1 { 0 } else { i }];
                let y = &b[if b.len() == 1 { 0 } else { i }];
                match (x.known(), y.known(), op) {
                    (Some(p), Some(q), Add) => Dim::Known(p.wrapping_add(q)),
                    (Some(p), Some(q), Sub) => Dim::Known(p.wrapping_sub(q)),
                    (Some(p), Some(q), Mul) => Dim::Known(p.wrapping_mul(q)),
                    (Some(p), Some(q), Div) if q != 0 => Dim::Known(p.wrapping_div(q)),
                    (_, Some(1), Mul | Div) | (_, Some(0), Add | Sub) => x.clone(),
                    (Some(1), _, Mul) | (Some(0), _, Add) => y.clone(),
                    _ => Dim::Unknown,
                }
            })
            .collect(),
    )
}

/// The inputs of a unary op whose buffer it can write its result into: float results only.
pub(super) fn unary_in_place_candidates(op: UnaryOp) -> &'static [usize] {
    if op.is_predicate() {
        &[]
    } else {
        &[0]
    }
}

/// The inputs of a binary op whose buffer it can write its result into: the float arithmetic ones.
pub(super) fn binary_in_place_candidates(op: BinaryOp) -> &'static [usize] {
    use BinaryOp::*;
    match op {
        Add | Sub | Mul | Div | Max | Min => &[0, 1],
        _ => &[],
    }
}

/// `op` applied to `a` in its own buffer.
pub(super) fn unary_in_place(op: UnaryOp, mut a: ArrayD<f32>) -> InPlace {
    a.mapv_inplace(float_unary(op));
    InPlace::Done(Tensor::F32(a))
}

/// `owned op other` (or `other op owned` when `index` is 1), written into `owned` when the result has
/// its shape.
pub(super) fn binary_in_place(
    op: BinaryOp,
    index: usize,
    mut owned: ArrayD<f32>,
    inputs: &[Option<TensorView>],
) -> Result<InPlace> {
    let other = inputs.get(1 - index.min(1)).and_then(|v| v.as_ref());
    let Some(TensorView::F32(other)) = other else {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    };
    let fits = broadcast_shapes(owned.shape(), other.shape()).is_ok_and(|s| s == owned.shape());
    let Some(other) = other.broadcast(owned.raw_dim()).filter(|_| fits) else {
        return Ok(InPlace::Declined(Tensor::F32(owned)));
    };
    float_binary!(
        op,
        f => {
            let zip = Zip::from(&mut owned).and(&other);
            if index == 0 {
                zip.for_each(|x, &y| *x = f(*x, y));
            } else {
                zip.for_each(|y, &x| *y = f(x, *y));
            }
            Ok(InPlace::Done(Tensor::F32(owned)))
        },
        Ok(InPlace::Declined(Tensor::F32(owned)))
    )
}
