//! Inference backends. The native CPU engine is the default.

pub mod cpu;
