#!/usr/bin/env bash
# Builds the NPU encoder: the AIE2 kernels (kernels/*.cc, AIE path) with llvm-aie (peano) and
# the IRON design (kernels/whisper_encoder.py) with mlir-aie's aiecc.py, into the files the
# manifests name: xclbin/whisper_encoder_<model>.xclbin and .insts.bin, for tiny.en (d 384,
# 6 heads, 4 layers) and base (d 512, 8 heads, 6 layers). Before building, the design's buffer
# sizes (`whisper_encoder.py --layout`) are checked against the manifest's arguments
# (xclbin/whisper_encoder_<model>.json, generated from the tile plan by `npu_plan --manifest`).
#
# Needs: mlir-aie's Python package (`import aie`, with aiecc.py on PATH) and llvm-aie (peano):
# PEANO_INSTALL_DIR pointing at it (bin/clang++ with --target=aie2-none-unknown-elf). Neither is
# installed on the development machines of this project; there the script says so and exits 1.
# The design has never been compiled (see the header of whisper_encoder.py).
#
# Usage: kernels/build.sh [tiny|base|all]   (default all)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="$root/xclbin"
build="$here/build"
which_models="${1:-all}"

missing=()
python3 -c 'import aie.iron' 2>/dev/null || missing+=("mlir-aie Python package (import aie.iron)")
command -v aiecc.py >/dev/null 2>&1 || missing+=("aiecc.py (mlir-aie) on PATH")
if [[ -z "${PEANO_INSTALL_DIR:-}" || ! -x "${PEANO_INSTALL_DIR:-/nonexistent}/bin/clang++" ]]; then
    missing+=("llvm-aie / peano (set PEANO_INSTALL_DIR to its install directory)")
fi
if (( ${#missing[@]} )); then
    echo "kernels/build.sh: cannot build the NPU encoder here; missing:" >&2
    for m in "${missing[@]}"; do echo "  - $m" >&2; done
    echo "Install mlir-aie and llvm-aie (see https://github.com/Xilinx/mlir-aie#getting-started)," >&2
    echo "then rerun. The host (scalar) kernels are tested without them: cargo test --release --test npu_golden" >&2
    exit 1
fi

case "$which_models" in
    tiny) models=("tiny.en 384 6 4") ;;
    base) models=("base 512 8 6") ;;
    all) models=("tiny.en 384 6 4" "base 512 8 6") ;;
    *) echo "usage: $0 [tiny|base|all]" >&2; exit 2 ;;
esac

mkdir -p "$build" "$out"
cxx="$PEANO_INSTALL_DIR/bin/clang++"
aie_include="$(python3 -c 'import aie, os; print(os.path.join(os.path.dirname(aie.__file__), "..", "..", "include"))')"
kernel_flags=(--target=aie2-none-unknown-elf -std=c++20 -O2 -D__AIENGINE__ -DNDEBUG
    -Wno-parentheses -Wno-attributes -Wno-macro-redefined -I "$aie_include")
objs=()
for src in gemm_bf16 layer_norm attention; do
    "$cxx" "${kernel_flags[@]}" -c "$here/$src.cc" -o "$build/$src.o"
    objs+=("$build/$src.o")
done
# One object holding every kernel, as the design's Kernel(...) declarations name it.
"$PEANO_INSTALL_DIR/bin/ld.lld" -r "${objs[@]}" -o "$build/whisper_kernels.o"

for m in "${models[@]}"; do
    read -r name d heads layers <<<"$m"
    artifact="whisper_encoder_$name"
    layout="$(python3 "$here/whisper_encoder.py" --d "$d" --heads "$heads" --layers "$layers" --layout)"
    python3 - "$out/$artifact.json" "$layout" <<'PY'
import json, sys
manifest = json.load(open(sys.argv[1]))
design = json.loads(sys.argv[2])
declared = {a["name"]: a.get("bytes") for a in manifest["args"] if a["kind"] == "buffer"}
if declared != design:
    sys.exit(f"kernels/build.sh: {sys.argv[1]} declares buffer sizes {declared}, the design "
             f"{design}: regenerate the manifest (npu_plan --manifest) or fix the design")
PY
    python3 "$here/whisper_encoder.py" --d "$d" --heads "$heads" --layers "$layers" >"$build/$artifact.mlir"
    (cd "$build" && aiecc.py --no-aiesim --no-xchesscc --no-xbridge --peano "$PEANO_INSTALL_DIR" \
        --aie-generate-xclbin --xclbin-name="$out/$artifact.xclbin" \
        --aie-generate-npu-insts --npu-insts-name="$out/$artifact.insts.bin" \
        "$artifact.mlir")
    echo "built $out/$artifact.xclbin and $out/$artifact.insts.bin (record the tool versions in $out/$artifact.json)"
done
