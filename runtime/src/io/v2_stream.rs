//! The v2 form read with each entry's `data` going straight into a buffer of the declared type when
//! its `name` and `datatype` come before it (as the protocol writes them); otherwise that `data` is
//! read as a JSON tree first. The checks and their messages are those of [`super::parse_v2_entry`].

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::form::Skip;
use super::plain_stream::Buf;
use super::{describe, find_spec, parse_v2_entry, v2_datatype, v2_header};
use crate::error::{Error, Result};
use crate::plan::PlanInput;
use crate::tensor::Tensor;

/// Reads a v2 request (as the caller has checked) from `de`; the last `"inputs"` key counts.
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
    let entries = match parsed {
        Ok(entries) => entries,
        Err(e) => return Err(fatal.unwrap_or_else(|| super::json_error(e))),
    };
    de.end().map_err(super::json_error)?;
    entries.into_iter().collect()
}

type Entries = Vec<Result<(String, Tensor)>>;

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
        while let Some(key) = map.next_key::<String>()? {
            if key == "inputs" {
                entries = map.next_value_seed(EntriesSeed {
                    specs: self.specs,
                    fatal: &mut *self.fatal,
                })?;
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(entries)
    }
}

struct EntriesSeed<'a> {
    specs: &'a [PlanInput],
    fatal: &'a mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Entries;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Entries, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Entries;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element_seed(EntrySeed {
            position: entries.len(),
            specs: self.specs,
            fatal: &mut *self.fatal,
        })? {
            entries.push(entry);
        }
        Ok(entries)
    }
}

struct EntrySeed<'a> {
    position: usize,
    specs: &'a [PlanInput],
    fatal: &'a mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Result<(String, Tensor)>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// An entry's `data` read typed: its buffer, its leaf count and its first bad element.
struct Typed {
    buf: Buf,
    count: usize,
    bad: Option<String>,
    out_of_memory: bool,
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Result<(String, Tensor)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        let mut typed: Option<Typed> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "data" {
                fields.insert(key, map.next_value::<Value>()?);
                continue;
            }
            let spec = fields
                .get("name")
                .and_then(Value::as_str)
                .and_then(|name| find_spec(name, self.specs).ok())
                .filter(|spec| {
                    fields.get("datatype").and_then(Value::as_str) == Some(v2_datatype(spec.dtype))
                });
            match spec {
                Some(spec) => {
                    let mut t = Typed {
                        buf: Buf::new(spec.dtype),
                        count: 0,
                        bad: None,
                        out_of_memory: false,
                    };
                    map.next_value_seed(Leaves(&mut t)).inspect_err(|_| {
                        if t.out_of_memory {
                            *self.fatal = Some(Error::TooLarge(format!(
                                "input '{}' does not fit in memory ({} elements read)",
                                spec.name, t.count
                            )));
                        }
                    })?;
                    fields.insert(key, Value::Null);
                    typed = Some(t);
                }
                None => {
                    fields.insert(key, map.next_value::<Value>()?);
                    typed = None;
                }
            }
        }
        let entry = Value::Object(fields);
        let Some(t) = typed else {
            return Ok(parse_v2_entry(self.position, &entry, self.specs));
        };
        Ok(
            v2_header(self.position, &entry, self.specs).and_then(|(name, spec, shape, count)| {
                if t.count != count {
                    return Err(Error::input(format!(
                    "input '{name}' has {} data elements, but its shape {shape:?} holds {count}",
                    t.count
                )));
                }
                if let Some(bad) = t.bad {
                    return Err(Error::input(format!(
                        "input '{name}'{bad}; the model expects {}",
                        spec.dtype
                    )));
                }
                let tensor = t.buf.into_tensor(&shape);
                Ok((name, tensor))
            }),
        )
    }
}

/// The leaves of a (possibly nested) list, in order; a non-list is one leaf.
struct Leaves<'a>(&'a mut Typed);

impl<'de> DeserializeSeed<'de> for Leaves<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Leaves<'_> {
    fn leaf<E: de::Error>(self, leaf: Value) -> Result<(), E> {
        let t = self.0;
        let i = t.count;
        t.count += 1;
        if t.bad.is_some() {
            return Ok(());
        }
        match t.buf.push(&leaf) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => {
                t.bad = Some(format!(" data[{i}] is {}{why}", describe(&leaf)));
                Ok(())
            }
            Err(()) => {
                t.out_of_memory = true;
                Err(E::custom("out of memory"))
            }
        }
    }
}

impl<'de> Visitor<'de> for Leaves<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a nested list or an element")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Leaves(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        self.leaf(Value::Object(Map::new()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.leaf(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
        self.leaf(Value::Number(x.into()))
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
        self.leaf(Value::Number(x.into()))
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
        self.leaf(Number::from_f64(x).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.leaf(Value::String(s.to_string()))
    }
}
