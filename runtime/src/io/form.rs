//! Telling the form of a JSON request (plain or v2) without building it.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::json_error;
use crate::error::Result;
use crate::plan::PlanInput;

pub(super) enum Form {
    Plain,
    V2,
    /// The request is not an object but this kind of value.
    NotObject(&'static str),
}

/// A v2 request has `"inputs"` holding an array of objects. An empty array counts as one unless the
/// model has an input named `inputs` (then it is that input, of length 0).
pub(super) fn detect<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    specs: &[PlanInput],
) -> Result<Form> {
    let inputs = de::Deserializer::deserialize_any(&mut *de, Top).map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(match inputs {
        Err(kind) => Form::NotObject(kind),
        Ok(Some(Inputs::Empty)) if !specs.iter().any(|s| s.name == "inputs") => Form::V2,
        Ok(Some(Inputs::Objects)) => Form::V2,
        Ok(_) => Form::Plain,
    })
}

/// What `"inputs"` holds.
enum Inputs {
    Empty,
    Objects,
    Other,
}

/// Implements the scalar visits of a visitor as `$value`.
macro_rules! scalars {
    ($value:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// The top level: `Ok(what "inputs" holds)` for an object, `Err(kind)` for anything else.
struct Top;

type TopValue = std::result::Result<Option<Inputs>, &'static str>;

impl<'de> Visitor<'de> for Top {
    type Value = TopValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopValue, A::Error> {
        let mut inputs = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "inputs" {
                inputs = Some(map.next_value_seed(InputsSeed)?);
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(Ok(inputs))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopValue, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Err("a list"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<TopValue, E> {
        Ok(Err("null"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopValue, E> {
        Ok(Err("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopValue, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopValue, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopValue, E> {
        Ok(Err("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopValue, E> {
        Ok(Err("a string"))
    }
}

struct InputsSeed;

impl<'de> DeserializeSeed<'de> for InputsSeed {
    type Value = Inputs;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Inputs, D::Error> {
        Ok(match d.deserialize_any(Kinds)? {
            Some((0, _)) => Inputs::Empty,
            Some((_, true)) => Inputs::Objects,
            _ => Inputs::Other,
        })
    }
}

/// For a list, `Some((length, whether every entry is an object))`; `None` for anything else.
struct Kinds;

impl<'de> Visitor<'de> for Kinds {
    type Value = Option<(usize, bool)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (mut n, mut all) = (0, true);
        while let Some(is_object) = seq.next_element_seed(IsObject)? {
            n += 1;
            all &= is_object;
        }
        Ok(Some((n, all)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(None)
    }
    scalars!(None);
}

/// Whether a value is an object (consuming it either way).
struct IsObject;

impl<'de> DeserializeSeed<'de> for IsObject {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IsObject {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(true)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(false)
    }
    scalars!(false);
}

/// Consumes any value, reporting syntax errors as building a tree would (serde's `IgnoredAny` takes
/// serde_json's faster path, whose messages differ, e.g. for a trailing comma).
#[derive(Clone, Copy)]
pub(super) struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    scalars!(Skip);
}
