//! The plugin builds and installs with meson from the source tree (`meson setup`, `meson
//! compile`, `meson install` into a temporary prefix), and `gst-inspect-1.0` finds the installed
//! element through `GST_PLUGIN_PATH`, as the README's install section says.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); scripts/setup installs meson"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

#[test]
fn meson_installs_a_plugin_gst_inspect_finds() {
    let repo = common::repo();
    let tmp = std::env::temp_dir().join(format!("whispernpu-meson-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (build, prefix) = (tmp.join("build"), tmp.join("prefix"));
    // Its own cargo target directory: `cargo test` holds the lock on the one it runs from.
    let target = repo.join("target/meson");
    run(
        "meson setup",
        Command::new("meson")
            .arg("setup")
            .arg(&build)
            .arg(format!("--prefix={}", prefix.display()))
            .arg(format!("-Dcargo_target_dir={}", target.display()))
            .current_dir(&repo),
    );
    run(
        "meson compile",
        Command::new("meson").arg("compile").arg("-C").arg(&build),
    );
    run(
        "meson install",
        Command::new("meson").arg("install").arg("-C").arg(&build),
    );
    let lib =
        find(&prefix, "libgstwhispernpu.so").expect("meson install put no plugin under the prefix");
    let plugin_dir = lib.parent().unwrap();
    assert!(
        plugin_dir.ends_with("gstreamer-1.0"),
        "installed in {}",
        plugin_dir.display()
    );
    let inspect = run(
        "gst-inspect-1.0 whispernpu",
        Command::new("gst-inspect-1.0")
            .arg("whispernpu")
            .env("GST_PLUGIN_PATH", plugin_dir)
            .env("GST_REGISTRY", tmp.join("registry.bin"))
            .env("GST_PLUGIN_SYSTEM_PATH", ""),
    );
    assert!(inspect.contains("whispernpu"), "{inspect}");
    assert!(
        inspect.contains(&lib.display().to_string()),
        "gst-inspect-1.0 did not load the installed file {}:\n{inspect}",
        lib.display()
    );
    // meson's own test (gst-inspect-1.0 on the build directory) passes too.
    run(
        "meson test",
        Command::new("meson").arg("test").arg("-C").arg(&build),
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
