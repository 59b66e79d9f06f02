//! AMD Ryzen AI NPU (XDNA1 / Phoenix, AIE2) support: the encoder design's tile schedule and its
//! golden model (`backend=npu-sim`), the cost model of the one-dispatch encoder, the manifest of
//! the built NPU artifacts, and the probe that decides whether the NPU backend can run here. No
//! NPU has run this code yet: see README "NPU status".

pub mod golden;
pub mod golden_kernels;
pub mod manifest;
pub mod plan;
pub mod probe;
pub mod tiling;
