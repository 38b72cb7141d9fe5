//! The byte layout of a `.fff` plan file. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "FFFPLAN\0"
//!      8     4  format version (u32)
//!     12     4  flags (u32, 0)
//!     16     8  graph section offset (u64)
//!     24     8  graph section length (u64)
//!     32     8  weights section offset (u64, a multiple of 64)
//!     40     8  weights section length (u64)
//!     48     4  CRC-32 of the graph section
//!     52     4  CRC-32 of the weights section
//!     56     8  total file length (u64)
//!     64     .  graph section: the `PlanGraph` as UTF-8 JSON
//!      .     .  zero padding to a multiple of 64
//!      .     .  weights section: every constant at an offset that is a multiple of 64
//! ```
//! The alignment lets the runtime memory-map the file and read weights in place.

use std::ops::Range;

use super::graph::PlanGraph;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub const MAGIC: [u8; 8] = *b"FFFPLAN\0";
/// The newest format version this runtime reads and writes. Version 2 adds quantisation: int8 and
/// uint8 values (constants, inputs, casts) and the ops `QuantLinear`, `QuantizeLinear`,
/// `DequantizeLinear`, `DynamicQuantizeLinear` and `MatMulInteger`; plans without them are written as
/// version 1, which runtimes that predate quantisation still read. A runtime refuses versions newer
/// than its own, naming both.
pub const FORMAT_VERSION: u32 = 2;

/// The version a plan needs: the oldest that has everything it holds.
pub fn version_of(graph: &PlanGraph) -> u32 {
    use crate::opset::Op;
    let quantised = graph.constants.iter().any(|c| c.dtype.is_quantised())
        || graph.inputs.iter().any(|i| i.dtype.is_quantised())
        || graph.nodes.iter().any(|n| match &n.op {
            Op::Cast { to } => to.is_quantised(),
            op => op.is_quantisation(),
        });
    if quantised {
        2
    } else {
        1
    }
}
pub const HEADER_LEN: usize = 64;
pub const ALIGN: usize = 64;

/// Collects constants into a weights section, each aligned to [`ALIGN`].
#[derive(Default)]
pub struct WeightsBuilder {
    bytes: Vec<u8>,
}

impl WeightsBuilder {
    /// Appends a tensor and returns its (offset, length) in bytes.
    pub fn push(&mut self, t: &Tensor) -> (usize, usize) {
        let pad = self.bytes.len().next_multiple_of(ALIGN) - self.bytes.len();
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        let offset = self.bytes.len();
        let data = t.to_le_bytes();
        self.bytes.extend_from_slice(&data);
        (offset, data.len())
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Serialises a plan into the bytes of a `.fff` file.
pub fn encode(graph: &PlanGraph, weights: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(graph).expect("plan graphs always serialise");
    let graph_off = HEADER_LEN;
    let weights_off = (graph_off + json.len()).next_multiple_of(ALIGN);
    let total = weights_off + weights.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version_of(graph).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [graph_off, json.len(), weights_off, weights.len()] {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(weights).to_le_bytes());
    out.extend_from_slice(&(total as u64).to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(&json);
    out.resize(weights_off, 0);
    out.extend_from_slice(weights);
    out
}

/// Where the sections of a checked plan file lie.
#[derive(Clone, Debug)]
pub struct Sections {
    pub graph: PlanGraph,
    pub weights: Range<usize>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> usize {
    usize::try_from(u64::from_le_bytes(
        b[at..at + 8].try_into().expect("8 bytes"),
    ))
    .unwrap_or(usize::MAX)
}

/// Checks the header and both checksums of a plan file's bytes and parses its graph section. The graph
/// itself is checked separately by [`super::validate::validate`].
pub fn decode(bytes: &[u8]) -> Result<Sections> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::plan(format!(
            "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(Error::plan("not an fff plan (bad magic bytes)"));
    }
    let version = u32_at(bytes, 8);
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(Error::plan(format!(
            "format version {version} is not supported (this runtime reads versions 1 to {FORMAT_VERSION}); recompile the model with this fffc"
        )));
    }
    let flags = u32_at(bytes, 12);
    if flags != 0 {
        return Err(Error::plan(format!(
            "unknown flags {flags:#x}: written by a newer fffc?"
        )));
    }
    let total = u64_at(bytes, 56);
    if total != bytes.len() {
        return Err(Error::plan(format!(
            "file is {} bytes but its header says {total}: truncated or padded",
            bytes.len()
        )));
    }
    let section = |off_at: usize, what: &str| -> Result<Range<usize>> {
        let (off, len) = (u64_at(bytes, off_at), u64_at(bytes, off_at + 8));
        match off.checked_add(len) {
            Some(end) if off >= HEADER_LEN && end <= bytes.len() => Ok(off..end),
            _ => Err(Error::plan(format!("{what} section lies outside the file"))),
        }
    };
    let graph_range = section(16, "graph")?;
    let weights = section(32, "weights")?;
    if weights.start % ALIGN != 0 {
        return Err(Error::plan("weights section is not aligned"));
    }
    // The sections follow the header in order, with nothing but zero padding between them.
    if graph_range.start != HEADER_LEN
        || graph_range.end > weights.start
        || weights.end != bytes.len()
    {
        return Err(Error::plan("sections overlap or leave gaps"));
    }
    if bytes[graph_range.end..weights.start]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(Error::plan(
            "padding between sections is not zero: the file is corrupted",
        ));
    }
    if crc32fast::hash(&bytes[graph_range.clone()]) != u32_at(bytes, 48) {
        return Err(Error::plan(
            "graph section is corrupted (checksum mismatch)",
        ));
    }
    if crc32fast::hash(&bytes[weights.clone()]) != u32_at(bytes, 52) {
        return Err(Error::plan(
            "weights section is corrupted (checksum mismatch)",
        ));
    }
    let graph: PlanGraph = serde_json::from_slice(&bytes[graph_range])
        .map_err(|e| Error::plan(format!("graph section does not parse: {e}")))?;
    let needed = version_of(&graph);
    if needed > version {
        return Err(Error::plan(format!(
            "the header says format version {version}, but the graph holds quantised weights, which need version {needed}"
        )));
    }
    Ok(Sections { graph, weights })
}
