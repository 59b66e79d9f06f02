//! Native Rust CPU engine: encoder and decoder forward passes.

/// Model weights, converted once to the layout the kernels want.
pub struct Weights {}
