//! AMD Ryzen AI NPU (XDNA, AIE2) backend: the encoder design's tile schedule and its golden
//! model (this branch); the XRT runtime, manifest and probe come from the other half of the
//! backend.

pub mod golden;
pub mod golden_kernels;
pub mod tiling;
