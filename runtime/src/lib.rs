//! fff runtime: loads a compiled plan (`.fff`) and runs it on the CPU.
//!
//! ```no_run
//! let model = fff_runtime::Model::load("model.fff")?;
//! let x = fff_runtime::Tensor::zeros(fff_runtime::DType::F32, &[1, 4, 64]);
//! let outputs = model.run(vec![("x".to_string(), x)])?;
//! # Ok::<(), fff_runtime::Error>(())
//! ```
//!
//! Tensors convert from and to `ndarray` arrays (re-exported as [`ndarray`]) and `Vec`s:
//!
//! ```
//! use fff_runtime::{ndarray::array, Tensor};
//! let x: Tensor = array![[1.0f32, 2.0], [3.0, 4.0]].into();
//! let back: fff_runtime::ndarray::ArrayD<f32> = x.try_into()?;
//! let ids = Tensor::from_shape_vec(&[1, 3], vec![101i64, 2023, 102])?;
//! let flat: Vec<i64> = ids.try_into()?;
//! # assert_eq!(back.shape(), &[2, 2]);
//! # assert_eq!(flat, [101, 2023, 102]);
//! # Ok::<(), fff_runtime::Error>(())
//! ```
//!
//! Features: `io` (JSON and NumPy inputs and outputs, [`io`] and [`npy`]), `text` (the tokenizer of
//! plans compiled with one: [`Model::embed`]) and `cli` (the `fffrun` binary), all on by default;
//! `default-features = false` leaves the library alone.

pub mod budget;
pub mod buffers;
mod convert;
pub mod error;
pub mod fff_stats;
pub mod files;
mod inputs;
#[cfg(feature = "io")]
pub mod io;
pub mod keep_warm;
pub mod opset;
pub mod panel_width;
pub mod tensor;
pub mod text;

pub use convert::Element;
/// The op set under the name the plan format and the compiler use for it.
pub use opset as op;

pub use error::{Error, Result};
pub use tensor::{DType, Tensor, TensorView};
pub mod model;
#[cfg(feature = "io")]
pub mod npy;
pub mod plan;
pub mod pool_choice;

pub use model::Model;
/// The array crate the tensors are made of, so callers build and read them with the same version.
pub use ndarray;
