//! fff runtime: loads a compiled plan (`.fff`) and runs it on the CPU.
//!
//! ```no_run
//! let model = fff_runtime::Model::load("model.fff")?;
//! let x = fff_runtime::Tensor::zeros(fff_runtime::DType::F32, &[1, 4, 64]);
//! let outputs = model.run(vec![("x".to_string(), x)])?;
//! # Ok::<(), fff_runtime::Error>(())
//! ```

pub mod buffers;
pub mod error;
pub mod fff_stats;
mod inputs;
pub mod io;
pub mod keep_warm;
pub mod opset;
pub mod panel_width;
pub mod tensor;

/// The op set under the name the plan format and the compiler use for it.
pub use opset as op;

pub use error::{Error, Result};
pub use tensor::{DType, Tensor, TensorView};
pub mod model;
pub mod npy;
pub mod plan;
pub mod pool_choice;

pub use model::Model;
