//! Typed access to a node's attributes; every error names the node, op and attribute.

use tract_onnx::pb::{AttributeProto, NodeProto};

use crate::error::CompileError;

/// A node being imported, with the opset of its domain.
pub struct NodeCtx<'a> {
    pub node: &'a NodeProto,
    pub opset: i64,
}

impl<'a> NodeCtx<'a> {
    pub fn err(&self, msg: impl Into<String>) -> CompileError {
        CompileError::Node {
            node: self.node.name.clone(),
            op_type: self.node.op_type.clone(),
            opset: self.opset,
            msg: msg.into(),
        }
    }

    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, CompileError> {
        self.typed(name, 2, |a| a.i)
    }

    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, CompileError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    pub fn float_or(&self, name: &str, default: f32) -> Result<f32, CompileError> {
        let v = self.typed(name, 1, |a| a.f)?.unwrap_or(default);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(self.err(format!("attribute '{name}' is {v}, not a finite number")))
        }
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, CompileError> {
        self.typed(name, 7, |a| a.ints.clone())
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, CompileError> {
        self.typed(name, 6, |a| a.floats.clone())
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, CompileError> {
        self.typed(name, 3, |a| a.s.clone())?
            .map(|s| {
                String::from_utf8(s)
                    .map_err(|_| self.err(format!("attribute '{name}' is not UTF-8")))
            })
            .transpose()
    }

    pub fn tensor(
        &self,
        name: &str,
    ) -> Result<Option<&'a tract_onnx::pb::TensorProto>, CompileError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == 4 || (a.r#type == 0 && a.t.is_some()) => Ok(a.t.as_ref()),
            Some(a) => Err(self.wrong_type(name, a.r#type, 4)),
        }
    }

    /// Reads an attribute of ONNX attribute type `code` (0 is accepted for old files that omit it).
    fn typed<T>(
        &self,
        name: &str,
        code: i32,
        get: impl Fn(&AttributeProto) -> T,
    ) -> Result<Option<T>, CompileError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == code || a.r#type == 0 => Ok(Some(get(a))),
            Some(a) => Err(self.wrong_type(name, a.r#type, code)),
        }
    }

    fn wrong_type(&self, name: &str, got: i32, want: i32) -> CompileError {
        self.err(format!(
            "attribute '{name}' has attribute type {got}, expected {want}"
        ))
    }
}
