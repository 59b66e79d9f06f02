//! Fault injection for tests: named points that panic on request, so that tests can check that
//! a panic in any thread becomes an error message (element ERROR, CLI exit status 1) and never
//! a hang. Requested with `WHISPERNPU_TEST_FAULT=POINT[,POINT...]` (read once per process) or
//! [`set`]. Unrequested, a point costs one relaxed atomic load.
//!
//! Points: `load` (model loading: the element's loader thread, the CLI's main thread),
//! `decode` (decoding a window: the element's worker thread), `npu-encode` (a run on the NPU
//! encoder's worker thread).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

struct Faults {
    /// `None` until the environment is read or [`set`] is called.
    points: Option<Vec<String>>,
    last_hit: Option<Instant>,
}

static FAULTS: Mutex<Faults> = Mutex::new(Faults {
    points: None,
    last_hit: None,
});
/// Whether any point may be requested (false once known that none is).
static ARMED: AtomicBool = AtomicBool::new(true);

fn lock() -> std::sync::MutexGuard<'static, Faults> {
    FAULTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Requests the named points (replacing the environment's list); an empty list clears them.
pub fn set(points: &[&str]) {
    let mut f = lock();
    f.points = Some(points.iter().map(|p| p.to_string()).collect());
    ARMED.store(!points.is_empty(), Ordering::Release);
}

/// When a requested point last panicked.
pub fn last_hit() -> Option<Instant> {
    lock().last_hit
}

/// Panics when `point` is requested.
pub fn point(point: &str) {
    if !ARMED.load(Ordering::Acquire) {
        return;
    }
    let hit = {
        let mut f = lock();
        let points = f.points.get_or_insert_with(|| {
            std::env::var("WHISPERNPU_TEST_FAULT")
                .map(|v| {
                    v.split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        });
        if points.is_empty() {
            ARMED.store(false, Ordering::Release);
        }
        let hit = points.iter().any(|p| p == point);
        if hit {
            f.last_hit = Some(Instant::now());
        }
        hit
    };
    if hit {
        panic!("fault injected at `{point}` (WHISPERNPU_TEST_FAULT)");
    }
}
