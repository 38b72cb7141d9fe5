//! The plain JSON form read straight into typed buffers: each input's nested lists are flattened
//! into a `Vec` of the element type the model declares while the nesting is checked, so reading takes
//! about the memory of the tensors themselves (a buffer grows by doubling, fallibly) instead of a
//! `serde_json::Value` tree many times their size.
//!
//! The messages are those of the tree walk: the shape is that of the first entries at each depth, the
//! first ragged entry (an enclosing list of the wrong length before anything inside it) is reported
//! before any element of the wrong kind, and inputs are checked in the order of their names.

use std::fmt;

use ndarray::IxDyn;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::form::Skip;
use super::{describe, find_spec, format_index, integer, kind};
use crate::error::{Error, Result};
use crate::plan::PlanInput;
use crate::tensor::{from_vec, Bf16, DType, Tensor};

/// Reads a plain-form request (an object, as the caller has checked) from `de` into tensors, sorted by
/// name, a later duplicate name replacing an earlier one.
pub(super) fn read<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    specs: &[PlanInput],
) -> Result<Vec<(String, Tensor)>> {
    let mut fatal = None;
    let parsed = de::Deserializer::deserialize_map(
        &mut *de,
        Top {
            specs,
            fatal: &mut fatal,
        },
    );
    let mut entries = match parsed {
        Ok(entries) => entries,
        Err(e) => return Err(fatal.unwrap_or_else(|| super::json_error(e))),
    };
    de.end().map_err(super::json_error)?;
    entries.reverse();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|later, earlier| later.0 == earlier.0);
    entries
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor?)))
        .collect()
}

type Entries = Vec<(String, Result<Tensor>)>;

/// The top-level object: each known input read typed, other keys skipped (their error kept).
struct Top<'a> {
    specs: &'a [PlanInput],
    fatal: &'a mut Option<Error>,
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            match find_spec(&name, self.specs) {
                Ok(spec) => {
                    let mut flat = Flat::new(spec.dtype);
                    map.next_value_seed(Node(&mut flat)).inspect_err(|_| {
                        if flat.out_of_memory {
                            *self.fatal = Some(Error::TooLarge(format!(
                                "input '{name}' does not fit in memory ({} elements read)",
                                flat.buf.len()
                            )));
                        }
                    })?;
                    let tensor = flat.finish(&name);
                    entries.push((name, tensor));
                }
                Err(e) => {
                    map.next_value::<Skip>()?;
                    entries.push((name, Err(e)));
                }
            }
        }
        Ok(entries)
    }
}

/// A typed, growing element buffer.
pub(super) enum Buf {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    BF16(Vec<Bf16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl Buf {
    pub(super) fn new(dtype: DType) -> Buf {
        match dtype {
            DType::F32 => Buf::F32(Vec::new()),
            DType::I64 => Buf::I64(Vec::new()),
            DType::I32 => Buf::I32(Vec::new()),
            DType::Bool => Buf::Bool(Vec::new()),
            DType::BF16 => Buf::BF16(Vec::new()),
            DType::I8 => Buf::I8(Vec::new()),
            DType::U8 => Buf::U8(Vec::new()),
        }
    }

    /// The tensor of `shape`, which must hold as many elements as the buffer.
    pub(super) fn into_tensor(self, shape: &[usize]) -> Tensor {
        let s = IxDyn(shape);
        match self {
            Buf::F32(v) => Tensor::F32(from_vec(s, v)),
            Buf::I64(v) => Tensor::I64(from_vec(s, v)),
            Buf::I32(v) => Tensor::I32(from_vec(s, v)),
            Buf::Bool(v) => Tensor::Bool(from_vec(s, v)),
            Buf::BF16(v) => Tensor::BF16(from_vec(s, v)),
            Buf::I8(v) => Tensor::I8(from_vec(s, v)),
            Buf::U8(v) => Tensor::U8(from_vec(s, v)),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::I64(v) => v.len(),
            Buf::I32(v) => v.len(),
            Buf::Bool(v) => v.len(),
            Buf::BF16(v) => v.len(),
            Buf::I8(v) => v.len(),
            Buf::U8(v) => v.len(),
        }
    }

    /// Appends `leaf` converted to the element type: `Ok(Err(why))` when it does not fit the type,
    /// `Err(())` when memory for it cannot be had.
    pub(super) fn push(&mut self, leaf: &Value) -> Result<Result<(), &'static str>, ()> {
        fn put<T>(
            v: &mut Vec<T>,
            x: Result<T, &'static str>,
        ) -> Result<Result<(), &'static str>, ()> {
            let x = match x {
                Ok(x) => x,
                Err(why) => return Ok(Err(why)),
            };
            if v.len() == v.capacity() {
                v.try_reserve(v.capacity().max(64)).map_err(|_| ())?;
            }
            v.push(x);
            Ok(Ok(()))
        }
        match self {
            Buf::F32(v) => put(
                v,
                match leaf {
                    Value::Null => Ok(f32::NAN),
                    Value::Number(n) => match n.as_f64() {
                        Some(x) if (x as f32).is_infinite() => Err(", out of float32 range"),
                        Some(x) => Ok(x as f32),
                        None => Err(""),
                    },
                    _ => Err(""),
                },
            ),
            Buf::I64(v) => put(
                v,
                match leaf {
                    Value::Number(n) => integer(n),
                    _ => Err(""),
                },
            ),
            Buf::I32(v) => put(
                v,
                match leaf {
                    Value::Number(n) => integer(n)
                        .and_then(|x| i32::try_from(x).map_err(|_| ", out of int32 range")),
                    _ => Err(""),
                },
            ),
            Buf::Bool(v) => put(
                v,
                match leaf {
                    Value::Bool(b) => Ok(*b),
                    Value::Number(n) => match integer(n) {
                        Ok(0) => Ok(false),
                        Ok(1) => Ok(true),
                        _ => Err(", not true, false, 0 or 1"),
                    },
                    _ => Err(""),
                },
            ),
            Buf::BF16(v) => put(
                v,
                match leaf {
                    Value::Null => Ok(Bf16::from_f32(f32::NAN)),
                    Value::Number(n) => n.as_f64().map(|x| Bf16::from_f32(x as f32)).ok_or(""),
                    _ => Err(""),
                },
            ),
            Buf::I8(v) => put(
                v,
                match leaf {
                    Value::Number(n) => {
                        integer(n).and_then(|x| i8::try_from(x).map_err(|_| ", out of int8 range"))
                    }
                    _ => Err(""),
                },
            ),
            Buf::U8(v) => put(
                v,
                match leaf {
                    Value::Number(n) => {
                        integer(n).and_then(|x| u8::try_from(x).map_err(|_| ", out of uint8 range"))
                    }
                    _ => Err(""),
                },
            ),
        }
    }
}

/// The first ragged entry found: where, and what it is.
struct Ragged {
    index: Vec<usize>,
    here: String,
}

/// One input's flattening state.
struct Flat {
    dtype: DType,
    buf: Buf,
    /// The lengths of the first list at each depth (the shape), as each closes.
    shape: Vec<Option<usize>>,
    /// The nesting depth of the first leaf (or one below the first empty list).
    rank: Option<usize>,
    /// Where the walk is.
    index: Vec<usize>,
    ragged: Option<Ragged>,
    /// The first element that does not fit the type.
    bad_element: Option<String>,
    out_of_memory: bool,
}

impl Flat {
    fn new(dtype: DType) -> Flat {
        Flat {
            dtype,
            buf: Buf::new(dtype),
            shape: Vec::new(),
            rank: None,
            index: Vec::new(),
            ragged: None,
            bad_element: None,
            out_of_memory: false,
        }
    }

    /// Records a ragged entry at the current index unless one was found before it in the tree walk's
    /// order: an entry found earlier, unless it lies inside this one.
    fn ragged_here(&mut self, here: String) {
        let replace = match &self.ragged {
            None => true,
            Some(r) => r.index.len() > self.index.len() && r.index.starts_with(&self.index),
        };
        if replace {
            self.ragged = Some(Ragged {
                index: self.index.clone(),
                here,
            });
        }
    }

    fn leaf<E: de::Error>(&mut self, leaf: Value) -> Result<(), E> {
        let depth = self.index.len();
        let rank = *self.rank.get_or_insert(depth);
        if depth < rank {
            self.ragged_here(kind(&leaf).to_string());
            return Ok(());
        }
        if self.ragged.is_some() || self.bad_element.is_some() {
            return Ok(());
        }
        match self.buf.push(&leaf) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => {
                let at = match rank {
                    0 => String::new(),
                    _ => format!(" element {}", format_index(&self.index)),
                };
                self.bad_element = Some(format!("{at} is {}{why}", describe(&leaf)));
                Ok(())
            }
            Err(()) => {
                self.out_of_memory = true;
                Err(E::custom("out of memory"))
            }
        }
    }

    fn finish(self, name: &str) -> Result<Tensor> {
        let rank = self.rank.unwrap_or(0);
        let shape: Vec<usize> = self.shape[..rank.min(self.shape.len())]
            .iter()
            .map(|d| d.unwrap_or(0))
            .collect();
        if let Some(r) = self.ragged {
            let depth = r.index.len();
            let expected = match shape.get(depth) {
                Some(want) if depth < rank => format!("a list of {want} elements"),
                _ => "a single element".to_string(),
            };
            let at = if depth == 0 {
                "the value".to_string()
            } else {
                format!("entry {}", format_index(&r.index))
            };
            return Err(Error::input(format!(
                "input '{name}' is ragged: {at} is {}, but the first entries make it {expected} \
                 (shape {shape:?})",
                r.here
            )));
        }
        if let Some(bad) = self.bad_element {
            return Err(Error::input(format!(
                "input '{name}'{bad}; the model expects {}",
                self.dtype
            )));
        }
        Ok(self.buf.into_tensor(&shape))
    }
}

/// One value of an input: a list (walked) or a leaf.
struct Node<'a>(&'a mut Flat);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a nested list or an element")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let flat = self.0;
        let depth = flat.index.len();
        if flat.rank.is_some_and(|rank| depth >= rank) {
            // A list where an element belongs: only its length matters, for the message.
            let mut n = 0usize;
            while seq.next_element::<Skip>()?.is_some() {
                n += 1;
            }
            flat.ragged_here(format!("a list of {n} elements"));
            return Ok(());
        }
        flat.index.push(0);
        while seq.next_element_seed(Node(&mut *flat))?.is_some() {
            *flat.index.last_mut().expect("pushed above") += 1;
        }
        let n = flat.index.pop().expect("pushed above");
        flat.rank.get_or_insert(depth + 1);
        if flat.shape.len() <= depth {
            flat.shape.resize(depth + 1, None);
        }
        match flat.shape[depth] {
            None => flat.shape[depth] = Some(n),
            Some(want) if want != n => flat.ragged_here(format!("a list of {n} elements")),
            Some(_) => {}
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        self.0.leaf(Value::Object(Default::default()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.leaf(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.0.leaf(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
        self.0.leaf(Value::Number(x.into()))
    }

    fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
        self.0.leaf(Value::Number(x.into()))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
        self.0
            .leaf(Number::from_f64(x).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.0.leaf(Value::String(s.to_string()))
    }
}
