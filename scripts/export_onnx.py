#!/usr/bin/env python3
"""Builds Whisper ONNX files in Hugging Face Optimum's layout from a transformers-named float
checkpoint (the `model.safetensors` + `config.json` + `generation_config.json` directory that
`examples/convert --to safetensors` writes), with the `onnx` package and numpy only (no PyTorch).

Run through `scripts/export-onnx`, which reads any model the crate reads; see its header for the
file layouts, names and shapes. Direct use (a converted directory as input):

    python scripts/export_onnx.py CONVERTED_DIR OUTDIR [--layout merged|split|both] [--static]
        [--decoder-length N] [--no-attentions] [--source MODEL_DIR]

The graphs are written by hand from the model's definition (openai/whisper model.py,
transformers' WhisperModel): pre-LayerNorm transformer blocks, LayerNorm eps 1e-5, exact (erf)
GELU, attention scores scaled by 1/sqrt(head_dim), no bias on key projections, logits tied to
the token embedding.
"""
import argparse
import json
import math
import os
import re
import shutil
import struct
import sys
import time

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # pragma: no cover - the wrapper installs it
    sys.exit(f"export_onnx: cannot import the `onnx` package ({e}); run scripts/export-onnx, which installs it")

OPSET = 17
IR_VERSION = 8  # what ONNX 1.12 (opset 17) writes: readable by older ONNX Runtime builds (Ryzen AI's too)
LN_EPS = 1e-5
NEG = float(np.finfo(np.float32).min)  # additive causal mask value (what transformers uses)
# bytes of weights above which a file keeps them beside it in FILE.onnx_data (protobuf's limit is 2 GiB);
# EXPORT_ONNX_EXTERNAL_DATA_BYTES overrides it (e.g. 0 to try the external-data path on a small model)
EXTERNAL_DATA_LIMIT = int(os.environ.get("EXPORT_ONNX_EXTERNAL_DATA_BYTES", 1_800_000_000))
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def read_safetensors(path):
    """Reads a safetensors file into {name: float32 ndarray}. Header: u64 LE length, JSON."""
    data = np.memmap(path, dtype=np.uint8, mode="r")  # F32 tensors stay views of the file
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8].tobytes())
    header = json.loads(data[8 : 8 + n].tobytes())
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if base + end > len(data):
            raise ValueError(f"{path}: tensor {name} ends past the end of the file")
        raw = data[base + begin : base + end]
        dt = info["dtype"]
        if dt == "F32":
            arr = raw.view("<f4")
        elif dt == "F16":
            arr = raw.view("<f2").astype(np.float32)
        elif dt == "BF16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {dt} (F32, F16, BF16 supported)")
        out[name] = arr.reshape(info["shape"])
    return out


class Weights:
    """Model weights by transformers name; hands out ONNX initializer names and collects the
    initializers a file uses (each once). Linear weights are stored transposed ([in, out]) for
    MatMul under the name `<transformers name>_T`; everything else keeps its transformers name and
    layout."""

    def __init__(self, tensors):
        self.t = tensors
        self.used = {}

    def has(self, name):
        return name in self.t

    def get(self, name):
        if name not in self.used:
            if name.endswith("_T"):
                arr = np.ascontiguousarray(self.t[name[:-2]].T)
            else:
                arr = self.t[name]
            self.used[name] = numpy_helper.from_array(arr, name)
        return name

    def take(self):
        """The initializers used since the last call, then starts a new set."""
        inits = list(self.used.values())
        self.used = {}
        return inits


# ---------------------------------------------------------------------------------------------
# Graph building
# ---------------------------------------------------------------------------------------------

class Graph:
    """Nodes and small constants of one (sub)graph. Every intermediate name gets `prefix` so that
    the two branches of the merged decoder never share a name."""

    def __init__(self, w, prefix=""):
        self.w = w
        self.prefix = prefix
        self.nodes = []
        self.consts = []
        self.count = 0

    def name(self, hint):
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def op(self, op_type, inputs, hint=None, out=None, **attrs):
        hint = hint or op_type
        auto = self.name(hint)
        out = out or auto
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{auto}_{op_type}", **attrs))
        return out

    def const(self, value, dtype=np.int64, hint="const"):
        arr = np.asarray(value, dtype=dtype)
        n = self.name(hint)
        self.consts.append(numpy_helper.from_array(arr, n))
        return n

    # -- building blocks --------------------------------------------------------------------

    def linear(self, x, prefix, bias=True):
        y = self.op("MatMul", [x, self.w.get(prefix + ".weight_T")], hint=prefix.split(".", 3)[-1])
        if bias and self.w.has(prefix + ".bias"):
            y = self.op("Add", [y, self.w.get(prefix + ".bias")])
        return y

    def layer_norm(self, x, prefix, out=None):
        return self.op(
            "LayerNormalization",
            [x, self.w.get(prefix + ".weight"), self.w.get(prefix + ".bias")],
            out=out,
            axis=-1,
            epsilon=LN_EPS,
        )

    def gelu(self, x):
        # exact GELU as torch exports it (ONNX Runtime fuses this pattern into one Gelu kernel)
        t = self.op("Div", [x, self.const(math.sqrt(2.0), np.float32)])
        t = self.op("Erf", [t])
        t = self.op("Add", [t, self.const(1.0, np.float32)])
        t = self.op("Mul", [x, t])
        return self.op("Mul", [t, self.const(0.5, np.float32)])

    def heads(self, x, n_heads, head_dim, perm):
        """[B, T, d] -> [B, T, H, Dh] -> transposed by perm."""
        r = self.op("Reshape", [x, self.const([0, 0, n_heads, head_dim])])
        return self.op("Transpose", [r], perm=perm)

    def merge_heads(self, x, d):
        """[B, H, T, Dh] -> [B, T, d]"""
        t = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.const([0, 0, d])])

    def attend(self, q, k_t, v, scale, mask=None, probs_out=None):
        """softmax(q k^T * scale + mask) v with q [B,H,S,Dh], k_t [B,H,Dh,T], v [B,H,T,Dh]."""
        qs = self.op("Mul", [q, self.const(scale, np.float32)])
        s = self.op("MatMul", [qs, k_t], hint="scores")
        if mask is not None:
            s = self.op("Add", [s, mask])
        p = self.op("Softmax", [s], out=probs_out, axis=-1)
        return self.op("MatMul", [p, v], hint="context")


def dims(cfg):
    d = cfg["d_model"]
    return dict(
        d=d,
        n_mels=cfg["num_mel_bins"],
        enc_layers=cfg["encoder_layers"],
        dec_layers=cfg["decoder_layers"],
        enc_heads=cfg["encoder_attention_heads"],
        dec_heads=cfg["decoder_attention_heads"],
        vocab=cfg["vocab_size"],
        n_audio_ctx=cfg.get("max_source_positions", 1500),
        n_text_ctx=cfg.get("max_target_positions", 448),
    )


def vinfo(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def build_encoder(w, dm, batch):
    g = Graph(w, "encoder")
    d, H = dm["d"], dm["enc_heads"]
    Dh = d // H
    frames = 2 * dm["n_audio_ctx"]
    x = "input_features"
    p = "model.encoder."
    x = g.op("Conv", [x, w.get(p + "conv1.weight"), w.get(p + "conv1.bias")],
             kernel_shape=[3], pads=[1, 1], strides=[1], dilations=[1], group=1)
    x = g.gelu(x)
    x = g.op("Conv", [x, w.get(p + "conv2.weight"), w.get(p + "conv2.bias")],
             kernel_shape=[3], pads=[1, 1], strides=[2], dilations=[1], group=1)
    x = g.gelu(x)
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [B, 1500, d]
    x = g.op("Add", [x, w.get(p + "embed_positions.weight")])
    scale = 1.0 / math.sqrt(Dh)
    for i in range(dm["enc_layers"]):
        lp = f"{p}layers.{i}."
        h = g.layer_norm(x, lp + "self_attn_layer_norm")
        q = g.heads(g.linear(h, lp + "self_attn.q_proj"), H, Dh, [0, 2, 1, 3])
        k_t = g.heads(g.linear(h, lp + "self_attn.k_proj", bias=False), H, Dh, [0, 2, 3, 1])
        v = g.heads(g.linear(h, lp + "self_attn.v_proj"), H, Dh, [0, 2, 1, 3])
        a = g.merge_heads(g.attend(q, k_t, v, scale), d)
        x = g.op("Add", [x, g.linear(a, lp + "self_attn.out_proj")])
        h = g.layer_norm(x, lp + "final_layer_norm")
        h = g.linear(g.gelu(g.linear(h, lp + "fc1")), lp + "fc2")
        x = g.op("Add", [x, h])
    g.layer_norm(x, p + "layer_norm", out="last_hidden_state")
    b = 1 if batch == 1 else "batch_size"
    inputs = [vinfo("input_features", FLOAT, [b, dm["n_mels"], frames])]
    outputs = [vinfo("last_hidden_state", FLOAT, [b, dm["n_audio_ctx"], d])]
    graph = helper.make_graph(g.nodes, "encoder", inputs, outputs, initializer=w.take() + g.consts)
    return graph


def build_decoder(w, dm, mode, attentions, prefix="", static_len=None):
    """mode: "no_past" (decoder_model), "with_past" (decoder_with_past_model), "static"
    (decoder_model of fixed length, no KV outputs). Returns (graph pieces, output names)."""
    g = Graph(w, prefix or mode)
    d, H, V = dm["d"], dm["dec_heads"], dm["vocab"]
    Dh = d // H
    L = dm["dec_layers"]
    scale = 1.0 / math.sqrt(Dh)
    p = "model.decoder."
    pre = prefix + "/" if prefix else ""  # output names inside a merged branch
    outputs = {}

    ids = "input_ids"
    x = g.op("Gather", [w.get(p + "embed_tokens.weight"), ids], axis=0)

    # positions past_len .. past_len + seq - 1 and the causal mask [seq, past_len + seq]
    if mode == "static":
        S = static_len
        pos = g.op("Slice", [w.get(p + "embed_positions.weight"), g.const([0]), g.const([S]), g.const([0])])
        mask_np = np.triu(np.full((S, S), NEG, dtype=np.float32), k=1)
        mask = g.const(mask_np, np.float32, hint="causal_mask")
    else:
        seq = g.op("Shape", [ids], hint="seq_len", start=1, end=2)  # [1]
        if mode == "with_past":
            past = g.op("Shape", ["past_key_values.0.decoder.key"], hint="past_len", start=2, end=3)
            total = g.op("Add", [past, seq], hint="total_len")
        else:
            past = g.const([0], hint="past_len")
            total = seq
        pos = g.op("Slice", [w.get(p + "embed_positions.weight"), past, total, g.const([0])], hint="positions")
        axis0 = g.const([0])
        past_s = g.op("Squeeze", [past, axis0])
        total_s = g.op("Squeeze", [total, axis0])
        one = g.const(1)
        rows = g.op("Range", [past_s, total_s, one], hint="rows")
        rows = g.op("Unsqueeze", [rows, g.const([1])])
        cols = g.op("Range", [g.const(0), total_s, one], hint="cols")
        future = g.op("Greater", [cols, rows])
        mask = g.op("Where", [future, g.const(NEG, np.float32), g.const(0.0, np.float32)], hint="causal_mask")
    x = g.op("Add", [x, pos])

    for i in range(L):
        lp = f"{p}layers.{i}."
        # causal self-attention
        h = g.layer_norm(x, lp + "self_attn_layer_norm")
        q = g.heads(g.linear(h, lp + "self_attn.q_proj"), H, Dh, [0, 2, 1, 3])
        k = g.heads(g.linear(h, lp + "self_attn.k_proj", bias=False), H, Dh, [0, 2, 1, 3])
        v = g.heads(g.linear(h, lp + "self_attn.v_proj"), H, Dh, [0, 2, 1, 3])
        if mode == "static":
            k_all, v_all = k, v
        else:
            kn, vn = f"present.{i}.decoder.key", f"present.{i}.decoder.value"
            if mode == "with_past":
                k_all = g.op("Concat", [f"past_key_values.{i}.decoder.key", k], out=pre + kn, axis=2)
                v_all = g.op("Concat", [f"past_key_values.{i}.decoder.value", v], out=pre + vn, axis=2)
            else:
                k_all = g.op("Identity", [k], out=pre + kn)
                v_all = g.op("Identity", [v], out=pre + vn)
            outputs[kn], outputs[vn] = k_all, v_all
        k_t = g.op("Transpose", [k_all], perm=[0, 1, 3, 2])
        a = g.merge_heads(g.attend(q, k_t, v_all, scale, mask=mask), d)
        x = g.op("Add", [x, g.linear(a, lp + "self_attn.out_proj")])

        # cross-attention on the encoder output
        h = g.layer_norm(x, lp + "encoder_attn_layer_norm")
        q = g.heads(g.linear(h, lp + "encoder_attn.q_proj"), H, Dh, [0, 2, 1, 3])
        kn, vn = f"present.{i}.encoder.key", f"present.{i}.encoder.value"
        if mode == "with_past":
            ck, cv = f"past_key_values.{i}.encoder.key", f"past_key_values.{i}.encoder.value"
        else:
            enc = "encoder_hidden_states"
            ck = g.heads(g.linear(enc, lp + "encoder_attn.k_proj", bias=False), H, Dh, [0, 2, 1, 3])
            cv = g.heads(g.linear(enc, lp + "encoder_attn.v_proj"), H, Dh, [0, 2, 1, 3])
            if mode == "no_past":
                ck = g.op("Identity", [ck], out=pre + kn)
                cv = g.op("Identity", [cv], out=pre + vn)
                outputs[kn], outputs[vn] = ck, cv
        ck_t = g.op("Transpose", [ck], perm=[0, 1, 3, 2])
        an = f"cross_attentions.{i}"
        a = g.attend(q, ck_t, cv, scale, probs_out=(pre + an) if attentions else None)
        if attentions:
            outputs[an] = pre + an
        x = g.op("Add", [x, g.linear(g.merge_heads(a, d), lp + "encoder_attn.out_proj")])

        # feed-forward
        h = g.layer_norm(x, lp + "final_layer_norm")
        h = g.linear(g.gelu(g.linear(h, lp + "fc1")), lp + "fc2")
        x = g.op("Add", [x, h])

    x = g.layer_norm(x, p + "layer_norm")
    # tied output projection: logits = x . embed_tokens^T (Gemm with transB keeps one copy of the table)
    flat = g.op("Reshape", [x, g.const([-1, d])])
    lg = g.op("Gemm", [flat, w.get(p + "embed_tokens.weight")], hint="logits_2d", transB=1)
    if mode == "static":
        out_shape = g.const([1, static_len, V])
    else:
        out_shape = g.op("Concat", [g.op("Shape", [ids]), g.const([V])], axis=0)
    outputs["logits"] = g.op("Reshape", [lg, out_shape], out=pre + "logits")
    return g, outputs


def decoder_io(dm, mode, attentions, static_len=None):
    """Graph inputs and outputs (name -> ValueInfo) in Optimum's order and with its dim names."""
    d, H, V, L = dm["d"], dm["dec_heads"], dm["vocab"], dm["dec_layers"]
    Dh = d // H
    if mode == "static":
        B, S, T = 1, static_len, dm["n_audio_ctx"]
    else:
        B, S, T = "batch_size", "decoder_sequence_length", "encoder_sequence_length"
    past_s, present_s = "past_decoder_sequence_length", "past_decoder_sequence_length + decoder_sequence_length"
    ins = [vinfo("input_ids", INT64, [B, S])]
    if mode in ("no_past", "static", "merged"):
        ins.append(vinfo("encoder_hidden_states", FLOAT, [B, T, d]))
    if mode in ("with_past", "merged"):
        for i in range(L):
            for side, s in (("decoder", past_s), ("encoder", T)):
                for kv in ("key", "value"):
                    ins.append(vinfo(f"past_key_values.{i}.{side}.{kv}", FLOAT, [B, H, s, Dh]))
    if mode == "merged":
        ins.append(vinfo("use_cache_branch", TensorProto.BOOL, [1]))
    outs = [vinfo("logits", FLOAT, [B, S, V])]
    if mode != "static":
        for i in range(L):
            sides = [("decoder", present_s)]
            if mode != "with_past":
                sides.append(("encoder", T))
            for side, s in sides:
                for kv in ("key", "value"):
                    outs.append(vinfo(f"present.{i}.{side}.{kv}", FLOAT, [B, H, s, Dh]))
    if attentions:
        for i in range(L):
            outs.append(vinfo(f"cross_attentions.{i}", FLOAT, [B, H, S, T]))
    return ins, outs


def graph_for(w, dm, mode, attentions, static_len=None):
    g, produced = build_decoder(w, dm, mode, attentions, static_len=static_len)
    ins, outs = decoder_io(dm, mode, attentions, static_len)
    for o in outs:
        assert produced[o.name] == o.name, o.name
    name = {"no_past": "decoder", "with_past": "decoder_with_past", "static": "decoder"}[mode]
    return helper.make_graph(g.nodes, name, ins, outs, initializer=w.take() + g.consts)


def build_merged(w, dm, attentions):
    """Optimum's merged decoder: one `If` on use_cache_branch; else branch = decoder_model,
    then branch = decoder_with_past_model. As Optimum's merge does, the with-past branch outputs
    empty constants ([0, H, 1, Dh]) for present.*.encoder.*: the caller keeps the cross-attention
    K/V from the first (no-cache) run."""
    H, Dh = dm["dec_heads"], dm["d"] // dm["dec_heads"]
    ins, outs = decoder_io(dm, "merged", attentions)
    branches = {}
    for mode, prefix in (("no_past", "no_past"), ("with_past", "with_past")):
        g, produced = build_decoder(w, dm, mode, attentions, prefix=prefix)
        sub_outs = []
        for o in outs:
            if o.name in produced:
                src = produced[o.name]
            else:  # present.*.encoder.* in the with-past branch
                src = f"{prefix}/{o.name}"
                empty = helper.make_tensor(src + "_empty", FLOAT, [0, H, 1, Dh], vals=[])
                g.nodes.append(helper.make_node("Constant", [], [src], name=src + "_const", value=empty))
            t = o.type.tensor_type
            sub_outs.append(helper.make_tensor_value_info(src, t.elem_type, None))
        branches[mode] = helper.make_graph(g.nodes, prefix, [], sub_outs, initializer=g.consts)
    if_node = helper.make_node(
        "If", ["use_cache_branch"], [o.name for o in outs], name="optimum::if",
        then_branch=branches["with_past"], else_branch=branches["no_past"],
    )
    return helper.make_graph([if_node], "merged", ins, outs, initializer=w.take())


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def weight_bytes(graph):
    return sum(len(t.raw_data) for t in graph.initializer)


def save(graph, path, producer):
    model = helper.make_model(
        graph,
        producer_name=producer,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    external = weight_bytes(graph) > EXTERNAL_DATA_LIMIT
    data_name = os.path.basename(path) + "_data"
    for stale in (path, path + "_data"):
        if os.path.exists(stale):
            os.remove(stale)
    if external:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        onnx.checker.check_model(path)
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, path)
    return external


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------

def token_table(conv_dir, source_dir):
    """{token string: id} for special tokens, from tokenizer.json's added tokens or vocabulary.txt."""
    table = {}
    for d in (conv_dir, source_dir):
        if not d:
            continue
        tj = os.path.join(d, "tokenizer.json")
        if os.path.isfile(tj):
            with open(tj, encoding="utf-8") as f:
                for t in json.load(f).get("added_tokens", []):
                    table[t["content"]] = t["id"]
            if table:
                return table
        vt = os.path.join(d, "vocabulary.txt")
        if os.path.isfile(vt):
            with open(vt, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    tok = line.rstrip("\n")
                    if tok.startswith("<|") and tok.endswith("|>"):
                        table[tok] = i
            if table:
                return table
    return table


def byte_level(text):
    """GPT-2's byte-level form of text (each byte as one printable character)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return "".join(chr(table[b]) for b in text.encode("utf-8"))


def read_vocab(*dirs):
    """{byte-level token string: id} from vocabulary.txt or tokenizer.json's model.vocab."""
    for d in dirs:
        if not d:
            continue
        vt = os.path.join(d, "vocabulary.txt")
        if os.path.isfile(vt):
            with open(vt, encoding="utf-8") as f:
                return {line.rstrip("\n"): i for i, line in enumerate(f)}
        tj = os.path.join(d, "tokenizer.json")
        if os.path.isfile(tj):
            with open(tj, encoding="utf-8") as f:
                return dict(json.load(f)["model"]["vocab"])
    return {}


def bpe(vocab, text):
    """Byte-level BPE with the token ids as merge ranks (how tiktoken encodes Whisper's
    vocabulary); text must be one pre-tokenizer piece (true for the symbols below)."""
    parts = list(byte_level(text))
    while len(parts) > 1:
        best = None
        for j in range(len(parts) - 1):
            r = vocab.get(parts[j] + parts[j + 1])
            if r is not None and (best is None or r < best[0]):
                best = (r, j)
        if best is None:
            break
        j = best[1]
        parts[j : j + 2] = [parts[j] + parts[j + 1]]
    return [vocab[p] for p in parts]


def non_speech_tokens(vocab):
    """openai/whisper tokenizer.py `non_speech_tokens` (what suppress_tokens=[-1] means)."""
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
    notes = list("♩♪♫♬♭♮♯")
    result = {bpe(vocab, " -")[0], bpe(vocab, " '")[0]}
    for sym in symbols + notes:
        for toks in (bpe(vocab, sym), bpe(vocab, " " + sym)):
            if len(toks) == 1 or sym in notes:
                result.add(toks[0])
    return sorted(result)


def fill_defaults(gen, tokens, vocab, dm):
    """A GGML source carries no alignment heads or suppression lists (the converter writes empty
    ones): fill in what openai's code uses by default, as the crate does when it loads such a file.
    Returns the names of the fields filled."""
    filled = []
    if not gen.get("alignment_heads"):
        L, H = dm["dec_layers"], dm["dec_heads"]
        gen["alignment_heads"] = [[l, h] for l in range(L // 2, L) for h in range(H)]
        filled.append("alignment_heads (every head of the last half of the decoder layers)")
    eot = gen.get("eos_token_id")
    if not gen.get("begin_suppress_tokens") and vocab and eot is not None:
        gen["begin_suppress_tokens"] = [vocab[byte_level(" ")], eot]
        filled.append("begin_suppress_tokens")
    if not gen.get("suppress_tokens") and vocab:
        ids = set(non_speech_tokens(vocab))
        for name in ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                     "<|startofprev|>", "<|nospeech|>", "<|nocaptions|>"):
            if name in tokens:
                ids.add(tokens[name])
        gen["suppress_tokens"] = sorted(ids)
        filled.append("suppress_tokens (openai's non-speech tokens and the task/start tokens)")
    return filled


def write_configs(conv_dir, source_dir, out_dir, dm):
    with open(os.path.join(conv_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    # fields transformers' WhisperConfig has that the converter leaves to their defaults
    defaults = {
        "is_encoder_decoder": True,
        "use_cache": True,
        "num_hidden_layers": cfg["encoder_layers"],
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "max_source_positions": 1500,
        "max_target_positions": 448,
    }
    for k, v in defaults.items():
        cfg.setdefault(k, v)
    gen_path = os.path.join(conv_dir, "generation_config.json")
    gen = {}
    if os.path.isfile(gen_path):
        with open(gen_path, encoding="utf-8") as f:
            gen = json.load(f)
    tokens = token_table(conv_dir, source_dir)
    eot = cfg.get("eos_token_id")
    gen.setdefault("decoder_start_token_id", cfg.get("decoder_start_token_id"))
    gen.setdefault("eos_token_id", eot)
    gen.setdefault("bos_token_id", cfg.get("bos_token_id", eot))
    gen.setdefault("pad_token_id", cfg.get("pad_token_id", eot))
    gen.setdefault("max_length", cfg["max_target_positions"])
    gen.setdefault("max_initial_timestamp_index", 50)
    gen.setdefault("return_timestamps", False)
    if "<|startofprev|>" in tokens:
        gen.setdefault("prev_sot_token_id", tokens["<|startofprev|>"])
    if "no_timestamps_token_id" not in gen and "<|notimestamps|>" in tokens:
        gen["no_timestamps_token_id"] = tokens["<|notimestamps|>"]
    filled = fill_defaults(gen, tokens, read_vocab(conv_dir, source_dir), dm)
    if filled:
        print(f"export_onnx: the source lists none, so generation_config.json gets openai's default "
              f"{'; '.join(filled)}", file=sys.stderr)
    multilingual = gen.get("is_multilingual", dm["vocab"] >= 51865)
    gen["is_multilingual"] = multilingual
    sot = tokens.get("<|startoftranscript|>", gen.get("decoder_start_token_id"))
    translate = tokens.get("<|translate|>")
    if multilingual and sot is not None and translate is not None:
        langs = {t: i for t, i in tokens.items() if sot < i < translate}
        gen.setdefault("lang_to_id", dict(sorted(langs.items(), key=lambda kv: kv[1])))
        gen.setdefault("task_to_id", {"translate": translate, "transcribe": tokens.get("<|transcribe|>")})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(gen, f, indent=2, sort_keys=True)
        f.write("\n")
    # what transformers' WhisperFeatureExtractor reads (Optimum copies the model's own file)
    pre = {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": dm["n_mels"],
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(pre, f, indent=2, sort_keys=True)
        f.write("\n")
    copied = []
    for name in ("tokenizer.json", "vocabulary.txt"):
        for d in (conv_dir, source_dir):
            if d and os.path.isfile(os.path.join(d, name)):
                shutil.copyfile(os.path.join(d, name), os.path.join(out_dir, name))
                copied.append(name)
                break
    return copied


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("converted", help="directory written by `convert --to safetensors --type f32`")
    ap.add_argument("outdir")
    ap.add_argument("--layout", choices=["merged", "split", "both"], default="both")
    ap.add_argument("--static", action="store_true")
    ap.add_argument("--decoder-length", type=int, default=180)
    ap.add_argument("--no-attentions", action="store_true")
    ap.add_argument("--source", help="the source model directory (for its vocabulary.txt)")
    a = ap.parse_args()

    with open(os.path.join(a.converted, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    dm = dims(cfg)
    if dm["d"] % dm["enc_heads"] or dm["d"] % dm["dec_heads"]:
        sys.exit(f"export_onnx: d_model {dm['d']} is not a multiple of the head counts")
    if a.static and not 1 <= a.decoder_length <= dm["n_text_ctx"]:
        sys.exit(f"export_onnx: --decoder-length must be 1..{dm['n_text_ctx']}, not {a.decoder_length}")
    attentions = not a.no_attentions

    t0 = time.time()
    w = Weights(read_safetensors(os.path.join(a.converted, "model.safetensors")))
    missing = [n for n in ("model.encoder.conv1.weight", "model.decoder.embed_tokens.weight") if not w.has(n)]
    if missing:
        sys.exit(f"export_onnx: {a.converted}/model.safetensors lacks {missing}")
    print(f"export_onnx: read weights in {time.time() - t0:.1f} s "
          f"(d_model {dm['d']}, {dm['enc_layers']}+{dm['dec_layers']} layers, vocab {dm['vocab']})", file=sys.stderr)
    os.makedirs(a.outdir, exist_ok=True)
    producer = "whispernpu scripts/export-onnx"

    jobs = [("encoder_model.onnx", lambda: build_encoder(w, dm, 1 if a.static else None))]
    if a.static:
        jobs.append(("decoder_model.onnx", lambda: graph_for(w, dm, "static", attentions, a.decoder_length)))
    else:
        if a.layout in ("split", "both"):
            jobs.append(("decoder_model.onnx", lambda: graph_for(w, dm, "no_past", attentions)))
            jobs.append(("decoder_with_past_model.onnx", lambda: graph_for(w, dm, "with_past", attentions)))
        if a.layout in ("merged", "both"):
            jobs.append(("decoder_model_merged.onnx", lambda: build_merged(w, dm, attentions)))
    # files of another layout left from an earlier export would confuse layout detection
    wanted = {name for name, _ in jobs}
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx"):
        if name not in wanted:
            for stale in (name, name + "_data"):
                if os.path.exists(os.path.join(a.outdir, stale)):
                    os.remove(os.path.join(a.outdir, stale))
    for name, build in jobs:
        t1 = time.time()
        graph = build()
        path = os.path.join(a.outdir, name)
        external = save(graph, path, producer)
        size = os.path.getsize(path) + (os.path.getsize(path + "_data") if external else 0)
        print(f"export_onnx: {name}: {size / 1e6:.1f} MB{' (weights in ' + name + '_data)' if external else ''}, "
              f"{time.time() - t1:.1f} s", file=sys.stderr)
    copied = write_configs(a.converted, a.source, a.outdir, dm)
    print(f"export_onnx: wrote config.json, generation_config.json, preprocessor_config.json, "
          f"{', '.join(copied) or 'no tokenizer files'}; total {time.time() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
