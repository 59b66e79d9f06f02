//! Compiles the C++ shim where XRT's headers are found, else records why XRT is unavailable.
//!
//! Search order for the include directory: `$XRT_INCLUDE_DIR`, `$XILINX_XRT/include`,
//! `/opt/xilinx/xrt/include`, `/usr/include`. A directory counts only if it has the native C++
//! API with `hw_context` (XRT 2.16 era and newer; Debian 12's libxrt-dev 2.13 has none, and NPU
//! xclbins cannot be loaded without it). Libraries are taken from the sibling `lib` directory.

use std::path::{Path, PathBuf};

fn candidates() -> Vec<(PathBuf, &'static str)> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("XRT_INCLUDE_DIR") {
        dirs.push((PathBuf::from(dir), "$XRT_INCLUDE_DIR"));
    }
    if let Some(root) = std::env::var_os("XILINX_XRT") {
        dirs.push((PathBuf::from(root).join("include"), "$XILINX_XRT/include"));
    }
    dirs.push((PathBuf::from("/opt/xilinx/xrt/include"), "default install"));
    dirs.push((PathBuf::from("/usr/include"), "system headers"));
    dirs
}

/// Why `dir` cannot be used, or None when it can.
fn unusable(dir: &Path) -> Option<String> {
    if !dir.join("xrt/xrt_device.h").is_file() || !dir.join("xrt/xrt_kernel.h").is_file() {
        return Some(format!(
            "{}: no xrt/xrt_device.h and xrt/xrt_kernel.h",
            dir.display()
        ));
    }
    let hw_context = dir.join("xrt/xrt_hw_context.h").is_file()
        || dir.join("xrt/experimental/xrt_hw_context.h").is_file();
    if !hw_context {
        return Some(format!(
            "{}: XRT without xrt_hw_context.h (too old for the NPU; Debian 12's libxrt-dev is 2.13)",
            dir.display()
        ));
    }
    None
}

fn main() {
    println!("cargo::rerun-if-env-changed=XRT_INCLUDE_DIR");
    println!("cargo::rerun-if-env-changed=XILINX_XRT");
    println!("cargo::rerun-if-changed=src/shim.cpp");
    println!("cargo::rerun-if-changed=include/xrt_shim.h");
    println!("cargo::rustc-check-cfg=cfg(xrt_available)");

    let mut reasons = Vec::new();
    let mut found = None;
    for (dir, origin) in candidates() {
        match unusable(&dir) {
            None => {
                found = Some(dir);
                break;
            }
            Some(why) => {
                if dir.join("xrt").exists() || origin.starts_with('$') {
                    reasons.push(why);
                }
            }
        }
    }
    let Some(include) = found else {
        let mut reason = String::from(
            "XRT headers not found when xrt-sys was built (looked in $XRT_INCLUDE_DIR, \
             $XILINX_XRT/include, /opt/xilinx/xrt/include, /usr/include); install XRT for the NPU \
             (amd/xdna-driver builds it) and rebuild",
        );
        if !reasons.is_empty() {
            reason.push_str(": ");
            reason.push_str(&reasons.join("; "));
        }
        println!("cargo::rustc-env=XRT_SYS_UNAVAILABLE={reason}");
        return;
    };

    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include("include")
        .include(&include)
        .file("src/shim.cpp")
        .warnings(true)
        .compile("xrt_shim");
    let lib = include
        .parent()
        .map(|p| p.join("lib"))
        .filter(|p| p.is_dir());
    if let Some(lib) = &lib {
        println!("cargo::rustc-link-search=native={}", lib.display());
    }
    println!("cargo::rustc-link-lib=dylib=xrt_coreutil");
    println!("cargo::rustc-cfg=xrt_available");
    println!("cargo::rustc-env=XRT_SYS_INCLUDE={}", include.display());
}
