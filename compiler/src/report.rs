//! What the compiler tells its user about feedforward blocks: each one rewritten into a
//! `FastFeedForward` op, and each candidate left as it was, with the reason.

use std::collections::HashSet;
use std::fmt;

use crate::ir::NodeId;

/// A feedforward block that became one `FastFeedForward` op.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewritten {
    /// The node the block was found at (its output projection or last weight gather).
    pub anchor: String,
    /// How the block was written: `masking`, `gather`, `dense` or `direct`.
    pub form: &'static str,
    pub trees: usize,
    pub depth: usize,
    pub d_in: usize,
    pub d_out: usize,
    /// Probe rows compared during validation, and how many of them sat on a branch boundary.
    pub probe_rows: usize,
    pub boundary_rows: usize,
}

impl Rewritten {
    pub fn neurons(&self) -> usize {
        self.trees * ((1usize << (self.depth + 1)) - 1)
    }

    pub fn neurons_per_row(&self) -> usize {
        self.trees * (self.depth + 1)
    }
}

impl fmt::Display for Rewritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.depth == 0 {
            write!(f, "dense {}, {} -> {}", self.trees, self.d_in, self.d_out)?;
        } else {
            write!(
                f,
                "FFF {}x{}, {} -> {}, {} of {} neurons per row",
                self.trees,
                self.depth,
                self.d_in,
                self.d_out,
                self.neurons_per_row(),
                self.neurons()
            )?;
        }
        write!(f, " ({} form, at '{}')", self.form, self.anchor)?;
        if self.boundary_rows > 0 {
            write!(
                f,
                "; {} of {} probe rows on a branch boundary",
                self.boundary_rows, self.probe_rows
            )?;
        }
        Ok(())
    }
}

/// A candidate that was not rewritten.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub anchor: String,
    pub reason: String,
}

/// What `--quantize` did with one projection or dense feedforward layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// The node's name.
    pub node: String,
    /// `k -> n` of each product it holds (two for a dense feedforward layer).
    pub products: Vec<(usize, usize)>,
    /// The precision its weights are stored in, or `None` when they were kept in float32.
    pub precision: Option<&'static str>,
    /// Why it was kept in float32.
    pub reason: Option<String>,
}

/// What the `integer-products` rewrite did with one product of a model quantised before import (or
/// with an activation it could not fuse into one).
#[derive(Clone, Debug, PartialEq)]
pub struct IntegerProduct {
    /// The node's name.
    pub node: String,
    /// How the model wrote it: `MatMulInteger` (dynamic quantisation) or `QDQ MatMul`.
    pub form: &'static str,
    /// `k -> n`, where known (0 when the operands did not get that far).
    pub k: usize,
    pub n: usize,
    /// Whether it became an `IntegerLinear`.
    pub lowered: bool,
    /// What it became, or why it stayed as the model wrote it.
    pub detail: String,
}

impl fmt::Display for IntegerProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' ({}", self.node, self.form)?;
        if self.k > 0 {
            write!(f, ", {} -> {}", self.k, self.n)?;
        }
        let verb = if self.lowered {
            "became"
        } else {
            "kept as written"
        };
        write!(f, "): {verb}: {}", self.detail)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rewritten: Vec<Rewritten>,
    pub refused: Vec<Refused>,
    /// Every candidate of `--quantize`, in graph order.
    pub quantized: Vec<Quantized>,
    /// Every product of an already quantised model, in the order they were judged.
    pub integer_products: Vec<IntegerProduct>,
    /// Candidates already judged (their anchor nodes), so later rounds of the pipeline skip them. Keyed
    /// on node ids, which are never reused: a node made later at a removed anchor's index is new.
    considered: HashSet<NodeId>,
}

impl Report {
    /// Records that the candidate anchored at node `id` has been judged.
    pub fn consider(&mut self, id: NodeId) {
        self.considered.insert(id);
    }

    /// Whether the candidate anchored at node `id` has been judged.
    pub fn was_considered(&self, id: NodeId) -> bool {
        self.considered.contains(&id)
    }
}
