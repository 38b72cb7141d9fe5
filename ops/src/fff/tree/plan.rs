//! How a call is cut up: the level at which rows are bucketed, the tiles above it, how output rows
//! are written, and when a forest goes a chunk of rows at a time.

use super::FffShape;
use crate::simd::Store;

/// Rows per tile of the upper levels: few enough that a tile's inputs (384 KiB at width 768) stay in
/// a 1 MiB L2 beside the upper levels' weights for the tile's four passes, enough that those weights
/// are shared by many rows (larger tiles overflow L2 to L3 and measured slower).
pub(super) const TILE_ROWS: usize = 128;

/// Rows per bucket the split level aims at, before it is rounded down to an even level (so up to twice
/// this many): a bucket's inputs (384–768 KiB at width 768) stay in a 1 MiB L2 while its subtree is
/// walked. Both smaller and larger buckets measured slower, with f32 and bf16 weights.
pub(super) const BUCKET_ROWS: usize = 128;

/// Outputs of at least this many bytes are written around the caches ([`Store::Streaming`]): half a
/// typical L3, beyond which the next op would not find them cached anyway, while their lines would
/// evict the kernel's weights and inputs and each be read from memory before being written.
pub(super) const STREAM_BYTES: usize = 16 << 20;

/// Calls with at least [`FOREST_CHUNK_TREES`] trees go through them a chunk of rows at a time, the
/// chunk's inputs and outputs this many bytes: a share of L3 that leaves room for the trees' weights.
pub(super) const FOREST_CHUNK_BYTES: usize = 12 << 20;

/// With fewer trees, the chunks' lost sharing of weight rows costs more than the rows' traffic they
/// save.
pub(super) const FOREST_CHUNK_TREES: usize = 4;

/// Node sets of at most this many rows walk on alone in interleaved lanes.
pub(super) const LONE_ROWS: usize = 1;

/// The deepest tree the kernel walks: node numbers, and the virtual child below a leaf, fit in `u32`.
pub const MAX_DEPTH: usize = 30;

/// How a call is cut up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The level at which rows are bucketed (0: the whole call is one bucket).
    pub split: usize,
    /// Rows per tile of the levels above the split.
    pub tile: usize,
    /// Node sets of at most this many rows walk on alone.
    pub lone: usize,
    /// How output rows are written.
    pub store: Store,
}

impl Plan {
    pub(super) fn new(rows: usize, shape: FffShape, threads: usize) -> Plan {
        let depth = shape.depth;
        let mut split = 0;
        while split < depth && rows >> split > BUCKET_ROWS {
            split += 1;
        }
        // Routing takes two levels per pass over a set's inputs; an odd split leaves tiles a pass of
        // one level over every row (and, with an even number of levels, buckets another), so buckets
        // take up to twice as many rows instead.
        split -= split % 2;
        if threads > 1 {
            while split < depth && 1 << split < 4 * threads && rows >> split >= 16 {
                split += 1;
            }
        }
        let out_bytes = rows.saturating_mul(shape.d_out).saturating_mul(4);
        Plan {
            split,
            tile: rows.div_ceil(threads).clamp(1, TILE_ROWS),
            lone: LONE_ROWS,
            store: if out_bytes >= STREAM_BYTES {
                Store::Streaming
            } else {
                Store::Cached
            },
        }
    }
}

/// The rows per chunk in which a call of `rows` rows goes through a forest, if it is cut up: a chunk
/// goes through every tree while its inputs and outputs are in L3, instead of each tree reading all
/// inputs twice and reading and writing all outputs in memory.
pub(super) fn forest_chunk(shape: FffShape, rows: usize) -> Option<usize> {
    let row_bytes = (shape.d_in + shape.d_out) * std::mem::size_of::<f32>();
    let chunk = (FOREST_CHUNK_BYTES / row_bytes).max(1);
    (shape.trees >= FOREST_CHUNK_TREES && rows > chunk).then_some(chunk)
}
