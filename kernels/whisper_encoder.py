# whispernpu: IRON (mlir-aie) design of the whole Whisper encoder for one 30 s window.
#
# UNTESTED: mlir-aie and an NPU are not available where this was written. It follows the IRON
# API as used by mlir-aie's programming_examples (ObjectFifo / Worker / Runtime / taplib) but has
# never been run through `aiecc`; expect to fix API details on the first build (kernels/build.sh).
# The numbers (tile sizes, buffer layout, per-core tile assignment, access patterns) are those of
# src/npu/tiling.rs, which the Rust tests check (bounds, BD limits, coverage, memory budgets) and
# the golden model (src/npu/golden.rs) executes; keep the two in step.
#
# One dispatch per window. Runtime-sequence arguments (buffer objects):
#   weights  bf16 matrices in tiled layout + fp32 biases / LN parameters / positions (packed once)
#   mel      bf16 [2 * T_PAD + 2][80]: time-major, a zero row before and after the 3000 frames
#   scratch  conv1 out, residual x (fp32), h, qkv, attn, hidden (bf16): DDR spill space
#   out      fp32 [1500][d]
# Steps: conv1 (+GELU) -> conv2 (+GELU +pos) -> per layer: LN1, QKV | attention | out-proj +
# residual | LN2, FC1 + GELU | FC2 + residual -> final LN. Each core runs one program for the
# whole dispatch; cores specialise: rows 0..2 of every column are GEMM cores, row 3 the column's
# attention + LayerNorm core. Steps are separated by the runtime sequence waiting for the
# previous step's drains (a DDR round trip through `scratch`).
#
# Usage: python3 whisper_encoder.py --d 384 --heads 6 --layers 4 > build/whisper_tiny.mlir
#        python3 whisper_encoder.py --d 384 --heads 6 --layers 4 --layout
# `--layout` prints the byte sizes of the four runtime-sequence buffers as JSON and needs neither
# mlir-aie nor numpy: the Rust tests compare it with the tile plan and the shipped manifests
# (src/npu/manifest.rs, tests/npu_golden.rs `iron_design_buffer_sizes_match_the_plan`), and
# build.sh checks it against the manifest before building.

import argparse
import json

# Tile sizes: src/npu/tiling.rs.
TM, TN, TK, TK_CONV1 = 32, 64, 64, 80
QB, KB, DH, LR = 64, 32, 64, 2
COLS, GEMM_ROWS = 4, 3
N_MELS, T = 80, 1500


def ceil_div(a, b):
    return (a + b - 1) // b


class Layout:
    """Byte offsets of every region of the four buffer objects (same order as tiling.rs)."""

    def __init__(self, d, layers):
        self.d, self.layers = d, layers
        self.t_pad = ceil_div(T, max(QB, TM)) * max(QB, TM)
        self.frames_pad = 2 * self.t_pad
        self.w = {}
        self.next = 0
        self.matrix("conv1", 3 * N_MELS, d)
        self.matrix("conv2", 3 * d, d)
        self.take("pos", self.t_pad * d, 4)
        for l in range(layers):
            self.take(f"l{l}.ln1_gamma", d, 4)
            self.take(f"l{l}.ln1_beta", d, 4)
            self.matrix(f"l{l}.qkv", d, 3 * d)
            self.matrix(f"l{l}.out", d, d)
            self.take(f"l{l}.ln2_gamma", d, 4)
            self.take(f"l{l}.ln2_beta", d, 4)
            self.matrix(f"l{l}.fc1", d, 4 * d)
            self.matrix(f"l{l}.fc2", 4 * d, d)
        self.take("ln_post_gamma", d, 4)
        self.take("ln_post_beta", d, 4)
        self.weights_bytes = self.next
        # Scratch.
        self.s = {}
        off = 0
        for name, n, eb in [
            ("conv1_out", (self.frames_pad + 1) * d, 2),
            ("x", self.t_pad * d, 4),
            ("h", self.t_pad * d, 2),
            ("qkv", self.t_pad * 3 * d, 2),
            ("attn", self.t_pad * d, 2),
            ("hidden", self.t_pad * 4 * d, 2),
        ]:
            self.s[name] = off
            off = (off + n * eb + 63) & ~63
        self.scratch_bytes = off
        self.mel_bytes = (self.frames_pad + 2) * N_MELS * 2
        self.out_bytes = T * d * 4

    def sizes(self):
        """Bytes of the runtime-sequence buffers, named as the manifest's arguments."""
        return {"weights": self.weights_bytes, "mel": self.mel_bytes,
                "scratch": self.scratch_bytes, "encoder_out": self.out_bytes}

    def take(self, name, n, eb):
        self.w[name] = self.next
        self.next = (self.next + n * eb + 63) & ~63

    def matrix(self, name, k, n):
        self.take(name + ".w", k * n, 2)
        self.take(name + ".bias", n, 4)


def encoder(d, heads, layers):
    import numpy as np

    from aie.iron import Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.placers import SequentialPlacer
    from aie.iron.device import NPU1Col4
    from aie.iron.device.tile import Tile
    from aie.iron.controlflow import range_
    from aie.helpers.taplib import TensorAccessPattern

    assert d // heads == DH and d % TN == 0
    L = Layout(d, layers)
    u8 = np.uint8

    # Every object FIFO element is raw bytes sized for its largest use (tiling.rs,
    # program_core_bytes); kernels reinterpret them.
    def fifo_ty(nbytes):
        return np.ndarray[(nbytes,), np.dtype[u8]]

    g_in0 = fifo_ty(TM * TK_CONV1 * 2)  # A tile
    g_in1 = fifo_ty(TK_CONV1 * TN * 2)  # B tile
    g_par = fifo_ty(TN * 4)  # bias
    g_in2 = fifo_ty(TM * TN * 4)  # residual x / positions
    g_out = fifo_ty(TM * TN * 4)  # output tile
    g_acc = fifo_ty(TM * TN * 4)
    a_in0 = fifo_ty(KB * DH * 2)  # K block / LN rows (LR * d * 4 <= 4096)
    a_in1 = fifo_ty(KB * DH * 2)  # V block
    a_par = fifo_ty(2 * d * 4)  # gamma + beta
    a_in2 = fifo_ty(QB * DH * 2)  # Q block
    a_out = fifo_ty(QB * DH * 2)  # attention output / LN rows out
    a_local = fifo_ty(QB * DH * 4 + QB * KB * 4 + 2 * QB * 4)  # o, scores, m, l

    # Kernels (kernels/*.cc, compiled by build.sh into whisper_kernels.o).
    obj = "whisper_kernels.o"
    k_zero = Kernel("wnpu_zero_f32", obj, [g_acc, np.int32])
    k_mm = Kernel("wnpu_mm_32x64x64", obj, [g_in0, g_in1, g_acc])
    k_mm_c1 = Kernel("wnpu_mm_32x80x64", obj, [g_in0, g_in1, g_acc])
    k_bias = Kernel("wnpu_bias_bf16", obj, [g_acc, g_par, g_out])
    k_bias_gelu = Kernel("wnpu_bias_gelu_bf16", obj, [g_acc, g_par, g_out])
    k_bias_gelu_pos = Kernel("wnpu_bias_gelu_pos_f32", obj, [g_acc, g_par, g_in2, g_out])
    k_bias_res = Kernel("wnpu_bias_residual_f32_to", obj, [g_acc, g_par, g_in2, g_out])
    k_ln_bf16 = Kernel("wnpu_layer_norm_bf16_packed", obj, [a_in0, a_par, a_out, np.int32, np.int32])
    k_ln_f32 = Kernel("wnpu_layer_norm_f32_packed", obj, [a_in0, a_par, a_out, np.int32, np.int32])
    k_attn_init = Kernel("wnpu_attn_init_local", obj, [a_local])
    k_attn_block = Kernel("wnpu_attn_block_local", obj, [a_in2, a_in0, a_in1, np.float32, np.int32, a_local])
    k_attn_finish = Kernel("wnpu_attn_finish_local", obj, [a_local, a_out])

    # The GEMM steps of the dispatch, in order: (name, m, k, n, tk, epilogue).
    gemms = [("conv1", L.frames_pad, 3 * N_MELS, d, TK_CONV1, "gelu_bf16"),
             ("conv2", L.t_pad, 3 * d, d, TK, "gelu_pos")]
    per_layer = [("qkv", d, 3 * d, "bias_bf16"), ("out_proj", d, d, "residual"),
                 ("fc1", d, 4 * d, "gelu_bf16"), ("fc2", 4 * d, d, "residual")]

    def n_tiles_of(row, n):
        return len(range(row, n // TN, GEMM_ROWS))

    # Data movement: per GEMM core an A, B, bias, extra-input and output FIFO (shim -> memtile ->
    # core, forwarded through the column's memory tile); per attention/LN core the same shapes.
    gemm_fifos, aux_fifos = [], []
    for col in range(COLS):
        for row in range(GEMM_ROWS):
            mk = lambda ty, nm, depth: ObjectFifo(ty, name=f"{nm}_{col}_{row}", default_depth=depth)
            gemm_fifos.append({
                "in0": mk(g_in0, "g_in0", 2), "in1": mk(g_in1, "g_in1", 2),
                "par": mk(g_par, "g_par", 2), "in2": mk(g_in2, "g_in2", 1),
                "out": mk(g_out, "g_out", 2),
            })
        mk = lambda ty, nm, depth: ObjectFifo(ty, name=f"{nm}_{col}", default_depth=depth)
        aux_fifos.append({
            "in0": mk(a_in0, "a_in0", 2), "in1": mk(a_in1, "a_in1", 2),
            "par": mk(a_par, "a_par", 1), "in2": mk(a_in2, "a_in2", 1),
            "out": mk(a_out, "a_out", 1),
        })

    # GEMM core program: for every GEMM step, its output tiles, K steps, then the epilogue.
    def gemm_core(in0, in1, par, in2, out, acc, zero, mm, mm_c1, bias, bias_gelu, bias_gelu_pos, bias_res, row):
        steps = gemms[:]
        for _ in range(layers):
            steps += [(nm, L.t_pad, k, n, TK, ep) for (nm, k, n, ep) in per_layer]
        for (nm, m, k, n, tk, ep) in steps:
            row_tiles_here = len(range(0, m // TM, COLS))  # same count for every column (m % 128 == 0)
            for _ in range_(row_tiles_here * n_tiles_of(row, n)):
                zero(acc, TM * TN)
                for _ in range_(k // tk):
                    a = in0.acquire(1)
                    b = in1.acquire(1)
                    (mm_c1 if tk == TK_CONV1 else mm)(a, b, acc)
                    in0.release(1)
                    in1.release(1)
                bv = par.acquire(1)
                o = out.acquire(1)
                if ep == "bias_bf16":
                    bias(acc, bv, o)
                elif ep == "gelu_bf16":
                    bias_gelu(acc, bv, o)
                else:
                    extra = in2.acquire(1)
                    (bias_gelu_pos if ep == "gelu_pos" else bias_res)(acc, bv, extra, o)
                    in2.release(1)
                par.release(1)
                out.release(1)

    # Attention / LayerNorm core program.
    def aux_core(in0, in1, par, in2, out, local, ln_bf16, ln_f32, a_init, a_block, a_finish, col):
        scale = 1.0 / np.sqrt(DH)
        n_kb = ceil_div(T, KB)

        def norm(rows, kernel):
            groups = len(range(col, rows // LR, COLS))
            p = par.acquire(1)
            for _ in range_(groups):
                x = in0.acquire(1)
                o = out.acquire(1)
                kernel(x, p, o, LR, d)
                in0.release(1)
                out.release(1)
            par.release(1)

        for _ in range(layers):
            norm(L.t_pad, ln_bf16)  # LN1 (the GEMM cores then run QKV)
            tasks = len(range(col, heads * (L.t_pad // QB), COLS))
            for _ in range_(tasks):
                q = in2.acquire(1)
                a_init(local)
                for kb in range(n_kb):
                    k_blk = in0.acquire(1)
                    v_blk = in1.acquire(1)
                    a_block(q, k_blk, v_blk, scale, min(KB, T - kb * KB), local)
                    in0.release(1)
                    in1.release(1)
                o = out.acquire(1)
                a_finish(local, o)
                out.release(1)
                in2.release(1)
            norm(L.t_pad, ln_bf16)  # LN2
        norm(T, ln_f32)  # final LN

    workers = []
    for col in range(COLS):
        for row in range(GEMM_ROWS):
            f = gemm_fifos[col * GEMM_ROWS + row]
            workers.append(Worker(
                lambda *a, row=row: gemm_core(*a, row=row),
                [f["in0"].cons(), f["in1"].cons(), f["par"].cons(), f["in2"].cons(), f["out"].prod(),
                 np.zeros((TM * TN * 4,), dtype=u8), k_zero, k_mm, k_mm_c1, k_bias, k_bias_gelu,
                 k_bias_gelu_pos, k_bias_res],
                placement=Tile(col, 2 + row),
            ))
        f = aux_fifos[col]
        workers.append(Worker(
            lambda *a, col=col: aux_core(*a, col=col),
            [f["in0"].cons(), f["in1"].cons(), f["par"].cons(), f["in2"].cons(), f["out"].prod(),
             np.zeros((QB * DH * 4 + QB * KB * 4 + 2 * QB * 4,), dtype=u8), k_ln_bf16, k_ln_f32,
             k_attn_init, k_attn_block, k_attn_finish],
            placement=Tile(col, 5),
        ))

    # Runtime sequence: the access patterns of tiling.rs `bds()` (offsets/strides in elements of
    # each region; `tap` converts to the BO's byte view through the element type).
    W_ty = np.ndarray[(L.weights_bytes,), np.dtype[u8]]
    M_ty = np.ndarray[(L.mel_bytes,), np.dtype[u8]]
    S_ty = np.ndarray[(L.scratch_bytes,), np.dtype[u8]]
    O_ty = np.ndarray[(L.out_bytes,), np.dtype[u8]]

    def tap(total_bytes, byte_offset, eb, sizes, strides):
        # Byte-granular pattern for a region of `eb`-byte elements: the inner dimension in bytes.
        sizes = list(sizes[:3]) + [sizes[3] * eb]
        strides = [s * eb for s in strides[:3]] + [1]
        return TensorAccessPattern((total_bytes,), byte_offset, sizes, strides)

    rt = Runtime()
    with rt.sequence(W_ty, M_ty, S_ty, O_ty) as (W, MEL, S, OUT):
        rt.start(*workers)

        def gemm_step(nm, m, k, n, tk, ep, a_buf, a_bytes, a_off, a_mode, b_name, out_off, ldo):
            kt, nt = k // tk, n // TN
            tg = rt.task_group()
            for col in range(COLS):
                for row in range(GEMM_ROWS):
                    f = gemm_fifos[col * GEMM_ROWS + row]
                    n_j = n_tiles_of(row, n)
                    if n_j == 0:
                        continue
                    for i in range(col, m // TM, COLS):
                        t0 = i * TM
                        if a_mode == "rows":
                            a_pat = (a_off + t0 * k * 2, 2, [n_j, kt, TM, tk], [0, tk, k, 1])
                        elif a_mode == "conv1":
                            a_pat = (t0 * N_MELS * 2, 2, [n_j, kt, TM, tk], [0, N_MELS, N_MELS, 1])
                        else:  # conv2: row t reads conv1 rows 2t .. 2t + 2 (tap-major weights)
                            a_pat = (a_off + 2 * t0 * d * 2, 2, [n_j, kt, TM, tk], [0, tk, 2 * d, 1])
                        rt.fill(f["in0"].prod(), a_buf, tap=tap(a_bytes, *a_pat), task_group=tg, placement=Tile(col, 0))
                        rt.fill(f["in1"].prod(), W, tap=tap(L.weights_bytes, L.w[b_name + ".w"] + row * kt * tk * TN * 2, 2,
                                                            [n_j, kt, tk, TN], [GEMM_ROWS * kt * tk * TN, tk * TN, TN, 1]),
                                task_group=tg, placement=Tile(col, 0))
                        rt.fill(f["par"].prod(), W, tap=tap(L.weights_bytes, L.w[b_name + ".bias"] + row * TN * 4, 4,
                                                            [1, 1, n_j, TN], [0, 0, GEMM_ROWS * TN, 1]),
                                task_group=tg, placement=Tile(col, 0))
                        out_eb = 4 if ep in ("gelu_pos", "residual") else 2
                        o_pat = (out_off + (t0 * ldo + row * TN) * out_eb, out_eb, [1, n_j, TM, TN], [0, GEMM_ROWS * TN, ldo, 1])
                        if ep == "residual":
                            rt.fill(f["in2"].prod(), S, tap=tap(L.scratch_bytes, *o_pat), task_group=tg, placement=Tile(col, 0))
                        elif ep == "gelu_pos":
                            rt.fill(f["in2"].prod(), W, tap=tap(L.weights_bytes, L.w["pos"] + (t0 * d + row * TN) * 4, 4,
                                                                [1, n_j, TM, TN], [0, GEMM_ROWS * TN, d, 1]),
                                    task_group=tg, placement=Tile(col, 0))
                        rt.drain(f["out"].cons(), S, tap=tap(L.scratch_bytes, *o_pat), wait=True, task_group=tg, placement=Tile(col, 0))
            rt.finish_task_group(tg)

        def norm_step(rows, x_off, g_name, out_buf, out_bytes, out_off, out_eb):
            tg = rt.task_group()
            for col in range(COLS):
                f = aux_fifos[col]
                groups = len(range(col, rows // LR, COLS))
                rt.fill(f["par"].prod(), W, tap=tap(L.weights_bytes, L.w[g_name + "_gamma"], 4, [1, 1, 2, d],
                                                    [0, 0, L.w[g_name + "_beta"] // 4 - L.w[g_name + "_gamma"] // 4, 1]),
                        task_group=tg, placement=Tile(col, 0))
                pat = ([1, groups, LR, d], [0, COLS * LR * d, d, 1])
                rt.fill(f["in0"].prod(), S, tap=tap(L.scratch_bytes, x_off + col * LR * d * 4, 4, *pat), task_group=tg, placement=Tile(col, 0))
                rt.drain(f["out"].cons(), out_buf, tap=tap(out_bytes, out_off + col * LR * d * out_eb, out_eb, *pat),
                         wait=True, task_group=tg, placement=Tile(col, 0))
            rt.finish_task_group(tg)

        def attention_step():
            ld = 3 * d
            tg = rt.task_group()
            n_kb = ceil_div(T, KB)
            for col in range(COLS):
                f = aux_fifos[col]
                for task in range(col, heads * (L.t_pad // QB), COLS):
                    h, qb = divmod(task, L.t_pad // QB)
                    q0 = L.s["qkv"] + (qb * QB * ld + h * DH) * 2
                    rt.fill(f["in2"].prod(), S, tap=tap(L.scratch_bytes, q0, 2, [1, 1, QB, DH], [0, 0, ld, 1]), task_group=tg, placement=Tile(col, 0))
                    for part, fifo in ((1, "in0"), (2, "in1")):
                        off = L.s["qkv"] + (part * d + h * DH) * 2
                        rt.fill(f[fifo].prod(), S, tap=tap(L.scratch_bytes, off, 2, [1, n_kb, KB, DH], [0, KB * ld, ld, 1]), task_group=tg, placement=Tile(col, 0))
                    o0 = L.s["attn"] + (qb * QB * d + h * DH) * 2
                    rt.drain(f["out"].cons(), S, tap=tap(L.scratch_bytes, o0, 2, [1, 1, QB, DH], [0, 0, d, 1]), wait=True, task_group=tg, placement=Tile(col, 0))
            rt.finish_task_group(tg)

        mel_bytes = L.mel_bytes
        gemm_step("conv1", L.frames_pad, 3 * N_MELS, d, TK_CONV1, "gelu_bf16", MEL, mel_bytes, 0, "conv1", "conv1", L.s["conv1_out"] + d * 2, d)
        gemm_step("conv2", L.t_pad, 3 * d, d, TK, "gelu_pos", S, L.scratch_bytes, L.s["conv1_out"], "conv2", "conv2", L.s["x"], d)
        for l in range(layers):
            norm_step(L.t_pad, L.s["x"], f"l{l}.ln1", S, L.scratch_bytes, L.s["h"], 2)
            gemm_step("qkv", L.t_pad, d, 3 * d, TK, "bias_bf16", S, L.scratch_bytes, L.s["h"], "rows", f"l{l}.qkv", L.s["qkv"], 3 * d)
            attention_step()
            gemm_step("out_proj", L.t_pad, d, d, TK, "residual", S, L.scratch_bytes, L.s["attn"], "rows", f"l{l}.out", L.s["x"], d)
            norm_step(L.t_pad, L.s["x"], f"l{l}.ln2", S, L.scratch_bytes, L.s["h"], 2)
            gemm_step("fc1", L.t_pad, d, 4 * d, TK, "gelu_bf16", S, L.scratch_bytes, L.s["h"], "rows", f"l{l}.fc1", L.s["hidden"], 4 * d)
            gemm_step("fc2", L.t_pad, 4 * d, d, TK, "residual", S, L.scratch_bytes, L.s["hidden"], "rows", f"l{l}.fc2", L.s["x"], d)
        norm_step(T, L.s["x"], "ln_post", OUT, L.out_bytes, 0, 4)

    return Program(NPU1Col4(), rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description="Whisper encoder (one window, one dispatch) for the Phoenix NPU")
    p.add_argument("--d", type=int, default=384, help="model width (tiny 384, base 512)")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--layout", action="store_true",
                   help="print the buffer sizes (bytes) as JSON instead of the design")
    a = p.parse_args()
    if a.layout:
        print(json.dumps(Layout(a.d, a.layers).sizes(), sort_keys=True))
        return
    print(encoder(a.d, a.heads, a.layers))


if __name__ == "__main__":
    main()
