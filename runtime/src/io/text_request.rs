//! Requests that carry text instead of tensors: `{"text": "…"}` or `{"text": ["…", …]}`, or an Open
//! Inference Protocol v2 request whose one input has datatype `BYTES` (its `data` the strings, flat or
//! nested, as many as its `shape` says).

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::JsonStyle;
use crate::error::{Error, Result};

/// The keys of a request that tell a text request from one of tensors, read without keeping the rest.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    text: Option<IgnoredAny>,
    #[serde(default)]
    inputs: Option<Vec<ProbeEntry>>,
}

#[derive(Deserialize)]
struct ProbeEntry {
    #[serde(default)]
    datatype: Option<String>,
}

/// Whether the JSON `reader` yields looks like a text request: a `"text"` key, or a v2 input of
/// datatype `BYTES`. Reads as a stream, keeping nothing else (a request of tensors can be large);
/// JSON that does not parse is not a text request here, and is reported by the reader of tensors.
pub fn looks_like_text_request(reader: impl std::io::Read) -> bool {
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, reader));
    match Probe::deserialize(&mut de) {
        Ok(p) => {
            p.text.is_some()
                || p.inputs
                    .is_some_and(|i| i.iter().any(|e| e.datatype.as_deref() == Some("BYTES")))
        }
        Err(_) => false,
    }
}

/// The texts of a text request, and its form; `None` when `json` is not a text request (a request of
/// tensors). JSON that does not parse is an error here, naming where: bytes that are not UTF-8 are
/// caught so, as are escapes of lone surrogates.
pub fn parse_text_request(json: &[u8]) -> Result<Option<(Vec<String>, JsonStyle)>> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| Error::input(format!("the request is not valid JSON: {e}")))?;
    let Value::Object(map) = &v else {
        return Ok(None);
    };
    if let Some(text) = map.get("text") {
        if map.len() != 1 {
            return Ok(None);
        }
        let texts = match text {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => strings(items, "\"text\"")?,
            other => {
                return Err(Error::input(format!(
                    "\"text\" must be a string or a list of strings, not {}",
                    super::kind(other)
                )))
            }
        };
        return Ok(Some((texts, JsonStyle::Plain)));
    }
    let Some(Value::Array(inputs)) = map.get("inputs") else {
        return Ok(None);
    };
    let bytes: Vec<&Value> = inputs
        .iter()
        .filter(|i| i.get("datatype").and_then(Value::as_str) == Some("BYTES"))
        .collect();
    let [entry] = bytes.as_slice() else {
        if bytes.is_empty() {
            return Ok(None);
        }
        return Err(Error::input(format!(
            "the request has {} BYTES inputs; a text request has one",
            bytes.len()
        )));
    };
    if inputs.len() != 1 {
        return Err(Error::input(
            "a text request has one input, of datatype BYTES; the others are filled from its tokens",
        ));
    }
    let name = entry.get("name").and_then(Value::as_str).unwrap_or("?");
    let mut flat = Vec::new();
    flatten(entry.get("data").unwrap_or(&Value::Null), &mut flat);
    let texts = strings(
        &flat.into_iter().cloned().collect::<Vec<_>>(),
        &format!("input '{name}'"),
    )?;
    if let Some(shape) = entry.get("shape").and_then(Value::as_array) {
        let count = shape
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .try_fold(1usize, |n, d| d.and_then(|d| n.checked_mul(d)));
        if count != Some(texts.len()) {
            return Err(Error::input(format!(
                "input '{name}' has shape {} but {} strings",
                Value::Array(shape.clone()),
                texts.len()
            )));
        }
    }
    Ok(Some((texts, JsonStyle::V2)))
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn strings(items: &[Value], what: &str) -> Result<Vec<String>> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(Error::input(format!(
                "element {i} of {what} is {}, not a string",
                super::kind(other)
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(json: &str) -> Result<Option<(Vec<String>, JsonStyle)>> {
        parse_text_request(json.as_bytes())
    }

    #[test]
    fn reads_both_forms_and_leaves_tensor_requests() {
        let (t, s) = texts(r#"{"text": ["a", "b"]}"#).unwrap().unwrap();
        assert_eq!(
            (t, s),
            (vec!["a".to_string(), "b".to_string()], JsonStyle::Plain)
        );
        let (t, _) = texts(r#"{"text": "solo"}"#).unwrap().unwrap();
        assert_eq!(t, ["solo"]);
        let v2 = r#"{"inputs": [{"name": "t", "shape": [2, 1], "datatype": "BYTES", "data": [["x"], ["y"]]}]}"#;
        let (t, s) = texts(v2).unwrap().unwrap();
        assert_eq!((t.len(), s), (2, JsonStyle::V2));
        assert!(texts(r#"{"input_ids": [[1, 2]]}"#).unwrap().is_none());
        assert!(texts(
            r#"{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]}"#
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn the_probe_tells_text_from_tensors() {
        let probe = |s: &str| looks_like_text_request(s.as_bytes());
        assert!(probe(r#"{"text": ["a"]}"#));
        assert!(probe(
            r#"{"id": "1", "inputs": [{"name": "t", "datatype": "BYTES", "data": ["a"]}]}"#
        ));
        assert!(!probe(r#"{"input_ids": [[1, 2]]}"#));
        assert!(!probe(
            r#"{"inputs": [{"name": "x", "datatype": "INT64", "data": [1]}]}"#
        ));
        assert!(!probe(r#"{"text": "#));
        assert!(!probe("[1, 2]"));
    }

    #[test]
    fn refuses_what_is_not_text() {
        assert!(texts(r#"{"text": [1]}"#).is_err());
        assert!(texts(r#"{"text": {"a": 1}}"#).is_err());
        let wrong_count =
            r#"{"inputs": [{"name": "t", "shape": [3], "datatype": "BYTES", "data": ["x"]}]}"#;
        assert!(texts(wrong_count)
            .unwrap_err()
            .to_string()
            .contains("shape"));
        // A lone surrogate escape and raw bytes that are not UTF-8.
        assert!(texts(r#"{"text": ["\udc00"]}"#).is_err());
        let mut raw = br#"{"text": [""#.to_vec();
        raw.extend_from_slice(&[0xff, 0xfe]);
        raw.extend_from_slice(br#""]}"#);
        assert!(parse_text_request(&raw).is_err());
    }
}
