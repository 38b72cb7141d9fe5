//! Test and benchmark models for fff: the bundled fixtures (real PyTorch exports with reference outputs)
//! and a small builder of ONNX graphs with seeded weights, so that tests and benchmarks need no Python.

pub mod builders;
pub mod fixtures;
pub mod onnx;
pub mod rng;
