//! Helpers for the unit and integration tests (`tests/common` calls them).

/// Records that the calling test cannot run here and why; the test must `return` right after.
/// Prints `skipped: WHY` on stderr (shown with `--nocapture`) and, when `WHISPERNPU_SKIP_LOG`
/// names a file (scripts/test sets it), appends `TEST<tab>WHY` to it, so that the summary counts
/// the test as skipped rather than passed (cargo reports a test that returns early as passed).
/// Only for what a machine cannot provide (a device or CPU feature it lacks, a device it has); a
/// missing model, runtime or tool is a failure, never a skip.
pub fn skip(why: &str) {
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
