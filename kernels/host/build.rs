//! Compiles the scalar host path of the AIE2 kernels in `kernels/` (one directory up).

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = ["gemm_bf16.cc", "layer_norm.cc", "attention.cc"];
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        // The golden model keeps multiplies and adds apart: no fused multiply-add contraction.
        .flag_if_supported("-ffp-contract=off")
        .flag_if_supported("-fno-fast-math")
        .opt_level(2)
        .warnings(true);
    for s in sources {
        let path = dir.join(s);
        println!("cargo:rerun-if-changed={}", path.display());
        build.file(path);
    }
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("wnpu_common.h").display()
    );
    build.compile("wnpu_kernels_host");
}
