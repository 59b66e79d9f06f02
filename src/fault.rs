//! Fault injection for tests: `WHISPERNPU_TEST_FAULT=POINT[,POINT...]` makes the named points
//! panic, so that tests can check that a panic in any thread becomes an error message (element
//! ERROR, CLI exit status 1) and never a hang. Unset in normal use: each point then costs one
//! load of a cached flag.
//!
//! Points: `load` (model loading, on the element's loader thread or the CLI's main thread),
//! `decode` (decoding a window, on the element's worker thread), `npu-encode` (a run on the NPU
//! encoder's worker thread).

use once_cell::sync::Lazy;

static FAULTS: Lazy<Vec<String>> = Lazy::new(|| {
    std::env::var("WHISPERNPU_TEST_FAULT")
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default()
});

/// Panics when `point` is named in `WHISPERNPU_TEST_FAULT`.
pub fn point(point: &str) {
    if !FAULTS.is_empty() && FAULTS.iter().any(|p| p == point) {
        panic!("fault injected at `{point}` (WHISPERNPU_TEST_FAULT)");
    }
}
