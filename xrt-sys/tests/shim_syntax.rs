//! The C++ shim must at least be well-formed C++17 where XRT is absent: it is compiled with
//! `-fsyntax-only` against stand-in declarations of the XRT members it uses
//! (`tests/xrt_stand_in/`). This catches errors in the shim itself (it caught a most-vexing-parse
//! in the xclbin load), not mismatches with a real XRT release.

use std::path::Path;
use std::process::Command;

#[test]
fn shim_is_well_formed_cpp_against_stand_in_headers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let output = match Command::new(&compiler)
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"])
        .arg("-I")
        .arg(root.join("include"))
        .arg("-I")
        .arg(root.join("tests/xrt_stand_in"))
        .arg(root.join("src/shim.cpp"))
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            skip(&format!("no C++ compiler `{compiler}`: {e}"));
            return;
        }
    };
    assert!(
        output.status.success(),
        "{compiler} rejects src/shim.cpp:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `skipped: WHY` on stderr, and `TEST<tab>WHY` appended to the file `WHISPERNPU_SKIP_LOG` names,
/// so that scripts/test counts the test as skipped, not passed (as the root crate's
/// `tests/common::skip`).
fn skip(why: &str) {
    eprintln!("skipped: {why}");
    if let Some(log) = std::env::var_os("WHISPERNPU_SKIP_LOG") {
        use std::io::Write;
        let thread = std::thread::current();
        let line = format!(
            "{}\t{}\n",
            thread.name().unwrap_or("?"),
            why.replace(['\n', '\t'], " ")
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot record the skip in {}: {e}",
                Path::new(&log).display()
            );
        }
    }
}
