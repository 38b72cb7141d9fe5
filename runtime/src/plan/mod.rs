//! The plan: what `fffc` writes and the runtime loads. `graph` holds the typed description, `format` the
//! byte layout of a `.fff` file (see `docs/PLAN_FORMAT.md`), `validate` the checks a loaded plan passes
//! before anything runs.

pub mod format;
pub mod graph;
pub mod validate;

pub use format::{decode, encode, WeightsBuilder, FORMAT_VERSION, MAGIC};
pub use graph::{Dim, PlanConstant, PlanGraph, PlanInput, PlanNode, PlanOutput};
