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

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rewritten: Vec<Rewritten>,
    pub refused: Vec<Refused>,
    /// Every candidate of `--quantize`, in graph order.
    pub quantized: Vec<Quantized>,
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
