//! Helpers for the unit tests.

/// Records that the calling unit test cannot run here and why; the test must `return` right
/// after. As `tests/common::skip`: `skipped: WHY` on stderr, and `TEST<tab>WHY` appended to the
/// file `WHISPERNPU_SKIP_LOG` names (scripts/test counts those tests as skipped, not passed).
/// Only for what a machine cannot provide (a CPU feature it lacks).
pub(crate) fn skip(why: &str) {
    eprintln!("skipped: {why}");
    if let Some(log) = std::env::var_os("WHISPERNPU_SKIP_LOG") {
        use std::io::Write;
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("?");
        let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot record the skip in {}: {e}",
                std::path::Path::new(&log).display()
            );
        }
    }
}
