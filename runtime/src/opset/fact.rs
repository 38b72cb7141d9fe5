//! What is known about a value before running anything: the facts each op's shape rule (`infer`)
//! derives from its inputs' facts. The compiler's shape inference runs these rules.

use std::fmt;

use crate::tensor::DType;

/// A dimension, or an element of a small integer tensor: known, a named symbol (`batch`, `seq`), or
/// unknown until run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            _ => None,
        }
    }

    /// The dimension two broadcast operands produce, if it can be told at compile time.
    pub fn broadcast(a: &Dim, b: &Dim) -> Result<Dim, String> {
        Ok(match (a, b) {
            (Dim::Known(1), other) | (other, Dim::Known(1)) => other.clone(),
            (Dim::Known(x), Dim::Known(y)) if x != y => {
                return Err(format!("dimensions {x} and {y} do not broadcast"))
            }
            (x, y) if x == y => x.clone(),
            // A symbol broadcast against a fixed size > 1 must equal it (or be 1, which ONNX
            // exporters never rely on for symbolic axes).
            (Dim::Known(x), _) | (_, Dim::Known(x)) => Dim::Known(*x),
            _ => Dim::Unknown,
        })
    }

    /// The product of dimensions, where all are known.
    pub fn product(dims: &[Dim]) -> Dim {
        dims.iter()
            .try_fold(1i64, |acc, d| d.known().and_then(|v| acc.checked_mul(v)))
            .map_or(Dim::Unknown, Dim::Known)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// The facts about one output slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    pub dtype: Option<DType>,
    /// `None` while the rank is unknown.
    pub shape: Option<Vec<Dim>>,
    /// For integer tensors of rank 0 or 1 that describe shapes: their elements, as far as known.
    pub value: Option<Vec<Dim>>,
}

impl Fact {
    pub fn unknown() -> Fact {
        Fact {
            dtype: None,
            shape: None,
            value: None,
        }
    }

    pub fn new(dtype: DType, shape: Vec<Dim>) -> Fact {
        Fact {
            dtype: Some(dtype),
            shape: Some(shape),
            value: None,
        }
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// The shape, if every dimension is a known number.
    pub fn known_shape(&self) -> Option<Vec<usize>> {
        self.shape
            .as_ref()?
            .iter()
            .map(|d| d.known().and_then(|v| usize::try_from(v).ok()))
            .collect()
    }

    /// The value, if every element is a known number.
    pub fn known_value(&self) -> Option<Vec<i64>> {
        self.value.as_ref()?.iter().map(Dim::known).collect()
    }
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("?")?,
        }
        match &self.shape {
            Some(s) => {
                let parts: Vec<String> = s.iter().map(Dim::to_string).collect();
                write!(f, "[{}]", parts.join(", "))
            }
            None => f.write_str("[..]"),
        }
    }
}

/// The facts of an op's inputs, by slot (`None` for an absent optional input).
pub type Facts<'a> = &'a [Option<&'a Fact>];

/// What a shape rule gives: one fact per output, or a definite contradiction.
pub type Inferred = Result<Vec<Fact>, String>;

pub(super) fn get<'a>(ins: Facts<'a>, i: usize) -> Option<&'a Fact> {
    ins.get(i).copied().flatten()
}

pub(super) fn shape_of(ins: Facts, i: usize) -> Option<Vec<Dim>> {
    get(ins, i).and_then(|f| f.shape.clone())
}

pub(super) fn value_of(ins: Facts, i: usize) -> Option<Vec<Dim>> {
    get(ins, i).and_then(|f| f.value.clone())
}

pub(super) fn dtype_of(ins: Facts, i: usize) -> Option<DType> {
    get(ins, i).and_then(|f| f.dtype)
}

pub(super) fn axis(a: i64, rank: usize) -> Result<usize, String> {
    super::norm_axis(a, rank).map_err(|e| e.to_string())
}

/// The shape two symbolic shapes broadcast to under numpy rules.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let rank = a.len().max(b.len());
    let one = Dim::Known(1);
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                &a[i + a.len() - rank]
            } else {
                &one
            };
            let db = if i + b.len() >= rank {
                &b[i + b.len() - rank]
            } else {
                &one
            };
            Dim::broadcast(da, db)
        })
        .collect()
}

pub(super) fn fact(dtype: Option<DType>, shape: Option<Vec<Dim>>) -> Fact {
    Fact {
        dtype,
        shape,
        value: None,
    }
}

/// Constant integer list of input `i`, where known.
pub(super) fn ints(ins: Facts, i: usize) -> Option<Vec<i64>> {
    get(ins, i).and_then(Fact::known_value)
}

/// The single output of an op that keeps its first input's dtype and shape.
pub(super) fn same_as_first(ins: Facts) -> Inferred {
    Ok(vec![fact(dtype_of(ins, 0), shape_of(ins, 0))])
}
