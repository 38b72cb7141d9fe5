//! Which model input receives which part of a tokenised batch: the token ids, the attention mask, the
//! token types (segments) and the positions. Recognised by the names exporters give them, or named by
//! the caller (`--input-map ids=NAME,mask=NAME,...`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::PlanInput;

/// The model inputs a tokenised batch fills; every other input of the model is an error to leave
/// unfilled, so a text call never runs with a guessed input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// The token ids (`input_ids`).
    pub ids: String,
    /// 1 for a token, 0 for padding (`attention_mask`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Segment ids, all 0 for one text (`token_type_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_ids: Option<String>,
    /// 0, 1, 2, ... per text (`position_ids`), for exports that take them as an input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<String>,
}

/// The role names `--input-map` takes.
pub const ROLE_NAMES: [&str; 4] = ["ids", "mask", "type_ids", "positions"];

/// The role an input name suggests, by the names Hugging Face and sentence-transformers exports use.
fn role_of(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    if n.contains("token_type") || n.contains("segment") {
        Some("type_ids")
    } else if n.contains("position") {
        Some("positions")
    } else if n.contains("mask") {
        Some("mask")
    } else if n == "ids" || n.contains("input_ids") || n.ends_with("_ids") || n == "input" {
        Some("ids")
    } else {
        None
    }
}

impl Roles {
    /// The roles of `inputs`, recognised by name, then overridden by `map` (`role=input` pairs).
    /// Fails naming the problem when no input holds the ids, when two inputs claim one role, when a
    /// mapped name or role does not exist, or when an input is left with no role.
    pub fn resolve(inputs: &[PlanInput], map: &[(String, String)]) -> Result<Roles> {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        let mut slots: [Option<String>; 4] = Default::default();
        for (role, name) in map {
            let Some(at) = ROLE_NAMES.iter().position(|r| r == role) else {
                return Err(Error::invalid(format!(
                    "unknown input role '{role}'; the roles are {}",
                    ROLE_NAMES.join(", ")
                )));
            };
            if !names.contains(&name.as_str()) {
                return Err(Error::invalid(format!(
                    "the input map names '{name}' for {role}, but the model's inputs are {}",
                    names.join(", ")
                )));
            }
            slots[at] = Some(name.clone());
        }
        for name in &names {
            if slots.iter().flatten().any(|s| s == name) {
                continue;
            }
            let Some(role) = role_of(name) else {
                return Err(Error::invalid(format!(
                    "cannot tell what the model input '{name}' holds; name its role with an input map \
                     (ids=, mask=, type_ids= or positions=)"
                )));
            };
            let at = ROLE_NAMES
                .iter()
                .position(|r| *r == role)
                .expect("a role name");
            if let Some(other) = &slots[at] {
                return Err(Error::invalid(format!(
                    "the model inputs '{other}' and '{name}' both look like the {role}; name them with an input map"
                )));
            }
            slots[at] = Some(name.to_string());
        }
        let [ids, mask, type_ids, positions] = slots;
        let Some(ids) = ids else {
            return Err(Error::invalid(format!(
                "no model input holds the token ids (the inputs are {}); name it with an input map: ids=NAME",
                names.join(", ")
            )));
        };
        Ok(Roles {
            ids,
            mask,
            type_ids,
            positions,
        })
    }

    /// Parses `ids=NAME,mask=NAME,...` (also accepted as several `role=name` items).
    pub fn parse_map(text: &str) -> Result<Vec<(String, String)>> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((role, name)) if !name.trim().is_empty() => {
                    Ok((role.trim().to_string(), name.trim().to_string()))
                }
                _ => Err(Error::invalid(format!(
                    "'{pair}' is not role=input (e.g. ids=input_ids,mask=attention_mask)"
                ))),
            })
            .collect()
    }

    /// The inputs in role order, for messages.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("ids={}", self.ids)];
        for (role, name) in [
            ("mask", &self.mask),
            ("type_ids", &self.type_ids),
            ("positions", &self.positions),
        ] {
            if let Some(n) = name {
                parts.push(format!("{role}={n}"));
            }
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Dim;
    use crate::tensor::DType;

    fn inputs(names: &[&str]) -> Vec<PlanInput> {
        names
            .iter()
            .enumerate()
            .map(|(value, n)| PlanInput {
                name: n.to_string(),
                dtype: DType::I64,
                shape: vec![Dim::Sym("batch".into()), Dim::Sym("seq".into())],
                value,
            })
            .collect()
    }

    #[test]
    fn recognises_hugging_face_names() {
        let r = Roles::resolve(
            &inputs(&["input_ids", "attention_mask", "token_type_ids"]),
            &[],
        )
        .unwrap();
        assert_eq!(r.ids, "input_ids");
        assert_eq!(r.mask.as_deref(), Some("attention_mask"));
        assert_eq!(r.type_ids.as_deref(), Some("token_type_ids"));
        assert_eq!(r.positions, None);
    }

    #[test]
    fn a_map_overrides_and_unknown_inputs_are_refused() {
        let err = Roles::resolve(&inputs(&["a", "b"]), &[]).unwrap_err();
        assert!(err.to_string().contains("'a'"), "{err}");
        let map = Roles::parse_map("ids=a, mask=b").unwrap();
        let r = Roles::resolve(&inputs(&["a", "b"]), &map).unwrap();
        assert_eq!((r.ids.as_str(), r.mask.as_deref()), ("a", Some("b")));
        assert!(Roles::resolve(&inputs(&["a"]), &Roles::parse_map("idz=a").unwrap()).is_err());
        assert!(Roles::resolve(&inputs(&["a"]), &Roles::parse_map("ids=c").unwrap()).is_err());
        assert!(Roles::parse_map("ids").is_err());
    }
}
