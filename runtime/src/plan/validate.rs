//! Checks a decoded plan graph before anything runs, so that a corrupt or hand-edited plan is an error
//! and never an out-of-bounds access: every value is defined exactly once before it is used, constants
//! lie inside the weights section with the byte size their shape needs, names are unique, and each
//! node's inputs and attributes are what its op accepts ([`crate::opset::Op::validate`]).

use std::collections::HashSet;

use super::graph::PlanGraph;
use crate::error::{Error, Result};
use crate::tensor::checked_len;

/// The largest value count a plan may declare (guards allocations sized by the file).
const MAX_VALUES: usize = 1 << 24;

pub fn validate(g: &PlanGraph, weights_len: usize) -> Result<()> {
    let bad = |msg: String| Err(Error::plan(msg));
    if g.num_values > MAX_VALUES {
        return bad(format!(
            "{} values is more than a plan may hold",
            g.num_values
        ));
    }
    let mut defined = vec![false; g.num_values];
    let define = |defined: &mut Vec<bool>, v: usize, what: &str| -> Result<()> {
        match defined.get_mut(v) {
            Some(d) if !*d => {
                *d = true;
                Ok(())
            }
            Some(_) => Err(Error::plan(format!("value {v} ({what}) is defined twice"))),
            None => Err(Error::plan(format!("value {v} ({what}) is out of range"))),
        }
    };
    if let Some(text) = &g.text {
        validate_text(g, text)?;
    }
    let mut names = HashSet::new();
    for i in &g.inputs {
        if !names.insert(&i.name) {
            return bad(format!("input name '{}' repeats", i.name));
        }
        define(&mut defined, i.value, &i.name)?;
    }
    for c in &g.constants {
        define(&mut defined, c.value, "constant")?;
        let n = checked_len(&c.shape).map_err(|e| Error::plan(e.to_string()))?;
        let fits = c
            .offset
            .checked_add(c.len)
            .is_some_and(|end| end <= weights_len);
        if !fits || n.checked_mul(c.dtype.size()) != Some(c.len) || c.offset % c.dtype.size() != 0 {
            return bad(format!(
                "constant for value {} does not fit the weights section",
                c.value
            ));
        }
    }
    // Each value's constant, for the ops that check the shapes of constant inputs.
    let mut constant_of = vec![None; g.num_values];
    for c in &g.constants {
        constant_of[c.value] = Some(c);
    }
    let constant_shape = |v: usize| Some(constant_of.get(v).copied().flatten()?.shape.clone());
    for node in &g.nodes {
        for v in node.inputs.iter().flatten() {
            if !defined.get(*v).copied().unwrap_or(false) {
                return bad(format!(
                    "node '{}' reads value {v} before it is defined",
                    node.name
                ));
            }
        }
        if let Err(msg) = node.op.validate(&node.inputs, &constant_shape) {
            return bad(format!("node '{}': {msg}", node.name));
        }
        if let Some(n) = node.op.fixed_outputs() {
            if node.outputs.len() != n {
                return bad(format!(
                    "node '{}' has {} outputs, its op has {n}",
                    node.name,
                    node.outputs.len()
                ));
            }
        }
        for &v in &node.outputs {
            define(&mut defined, v, &node.name)?;
        }
    }
    let mut out_names = HashSet::new();
    for o in &g.outputs {
        if !out_names.insert(&o.name) {
            return bad(format!("output name '{}' repeats", o.name));
        }
        if !defined.get(o.value).copied().unwrap_or(false) {
            return bad(format!("output '{}' is never computed", o.name));
        }
    }
    Ok(())
}

/// The text section names inputs the plan has, of integer types, and a usable length.
fn validate_text(g: &PlanGraph, text: &crate::text::TextConfig) -> Result<()> {
    if text.max_length == 0 {
        return Err(Error::plan("the text section's max length is 0"));
    }
    let r = &text.roles;
    for name in [
        Some(&r.ids),
        r.mask.as_ref(),
        r.type_ids.as_ref(),
        r.positions.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        match g.inputs.iter().find(|i| &i.name == name) {
            Some(i)
                if matches!(
                    i.dtype,
                    crate::tensor::DType::I64 | crate::tensor::DType::I32
                ) => {}
            Some(i) => {
                return Err(Error::plan(format!(
                    "the text section fills input '{name}', which is {}, with token ids",
                    i.dtype
                )))
            }
            None => {
                return Err(Error::plan(format!(
                    "the text section names input '{name}', which the plan does not have"
                )))
            }
        }
    }
    Ok(())
}
