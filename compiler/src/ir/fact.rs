//! What the compiler knows about a value before running anything. Facts live with the op set, whose
//! shape rules derive them ([`fff_runtime::opset::Op::infer`]).

pub use fff_runtime::opset::{Dim, Fact};
