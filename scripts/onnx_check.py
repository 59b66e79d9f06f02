#!/usr/bin/env python3
"""Checks a Whisper ONNX export (scripts/export-onnx, or Optimum's) by hand: prints each file's
inputs/outputs (dtype, dims), runs onnx.checker, computes openai's log-mel of a wav (jfk.wav by
default) with numpy, runs the encoder, compares it with a numpy reference encoder computed from
the file's own weights, and greedy-decodes (timestamps off) with every decoder layout present:

  merged-nocache  decoder_model_merged.onnx, use_cache_branch=False at every step (full sequence)
  merged-cache    decoder_model_merged.onnx, first step False (zero-length dummy past), then True
  split           decoder_model.onnx first, then decoder_with_past_model.onnx
  split-nocache   decoder_model.onnx with the full sequence at every step
  static          decoder_model.onnx of fixed length N: input_ids padded to N with <|endoftext|>,
                  next token read from the logits at the last real position

It prints each layout's text and compares the last step's logits and cross_attentions across layouts.
Needs numpy, onnx and onnxruntime (scripts/export-onnx's venv has the first two; add onnxruntime):

    .venv-onnx/bin/pip install onnxruntime
    .venv-onnx/bin/python scripts/onnx_check.py OUTDIR [--wav WAV] [--prompt 50257,50362] [--threads 2]

The default prompt is <|startoftranscript|> (+ <|en|> <|transcribe|> if multilingual) <|notimestamps|>,
from generation_config.json.
"""
import argparse
import json
import os
import sys
import time
import wave

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mel_reference import log_mel  # noqa: E402  (the project's numpy log-mel, openai's algorithm)

try:
    import onnxruntime as ort
except ImportError:
    sys.exit("onnx_check: needs onnxruntime (pip install onnxruntime into the same venv)")

SR = 16000
N_SAMPLES = 30 * SR
N_FRAMES = 3000


# ---------------------------------------------------------------------------------------------

def describe(path):
    m = onnx.load(path, load_external_data=False)
    try:
        onnx.checker.check_model(path)
        ok = "checker ok"
    except Exception as e:  # report, keep going
        ok = f"CHECKER FAILED: {e}"
    print(f"== {os.path.basename(path)}: opset {m.opset_import[0].version}, ir {m.ir_version}, {ok}")

    def fmt(v):
        t = v.type.tensor_type
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim] if t.HasField("shape") else "?"
        return f"{v.name}: {dt} {dims}"

    collapsed = {}
    for kind, vals in (("in ", m.graph.input), ("out", m.graph.output)):
        for v in vals:
            s = fmt(v)
            # one line per family (layer index replaced by i) to keep it short
            parts = v.name.split(".")
            key = (kind, ".".join("i" if p.isdigit() else p for p in parts), s.split(":", 1)[1])
            collapsed.setdefault(key, []).append(parts[1] if len(parts) > 1 and parts[1].isdigit() else None)
    for (kind, name, rest), idx in collapsed.items():
        n = f" (i = {','.join(i for i in idx if i)})" if any(idx) else ""
        print(f"   {kind} {name}:{rest}{n}")


def load_wav(path):
    with wave.open(path) as w:
        if w.getframerate() != SR or w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"onnx_check: {path} is not 16 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


def features(audio, n_mels):
    # openai: log_mel_spectrogram(audio, padding=N_SAMPLES) then pad_or_trim to 3000 frames
    mel = log_mel(audio, n_mels, padding=N_SAMPLES)[:, :N_FRAMES]
    return mel.astype(np.float32)[None]


class Detok:
    def __init__(self, d):
        vocab = None
        tj = os.path.join(d, "tokenizer.json")
        vt = os.path.join(d, "vocabulary.txt")
        if os.path.isfile(tj):
            with open(tj, encoding="utf-8") as f:
                t = json.load(f)
            vocab = {i: s for s, i in t["model"]["vocab"].items()}
        elif os.path.isfile(vt):
            with open(vt, encoding="utf-8") as f:
                vocab = dict(enumerate(line.rstrip("\n") for line in f))
        else:
            sys.exit(f"onnx_check: no tokenizer.json or vocabulary.txt in {d}")
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        self.byte_of = {chr(c): b for b, c in zip(bs, cs)}
        self.vocab = vocab

    def __call__(self, ids):
        out = bytearray()
        for i in ids:
            s = self.vocab.get(i, "")
            out += bytes(self.byte_of[c] for c in s if c in self.byte_of)
        return out.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# numpy reference encoder (openai's formulation), from the ONNX file's own initializers

def np_weights(path):
    m = onnx.load(path)
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}


def erf(x):  # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7 (far below float32 rounding here)
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return s * y


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def softmax(s):
    s = np.exp(s - s.max(-1, keepdims=True))
    return s / s.sum(-1, keepdims=True)


def ln(W, x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * W[p + ".weight"] + W[p + ".bias"]


def lin(W, x, p, bias=True):
    y = x @ W[p + ".weight_T"]
    return y + W[p + ".bias"] if bias and p + ".bias" in W else y


def mha(W, x, kv, p, H, causal):
    """openai's MultiHeadAttention: q and k each scaled by Dh^-0.25; returns (out, weights)."""
    d = x.shape[-1]
    Dh = d // H
    sc = Dh ** -0.25
    q = (lin(W, x, p + ".q_proj") * sc).reshape(-1, H, Dh).transpose(1, 0, 2)
    k = (lin(W, kv, p + ".k_proj", False) * sc).reshape(-1, H, Dh).transpose(1, 2, 0)
    v = lin(W, kv, p + ".v_proj").reshape(-1, H, Dh).transpose(1, 0, 2)
    s = q @ k
    if causal:
        n = s.shape[-1]
        s = s + np.triu(np.full((n, n), -np.inf), 1)
    w = softmax(s)
    a = (w @ v).transpose(1, 0, 2).reshape(-1, d)
    return lin(W, a, p + ".out_proj"), w


def np_decoder(W, tokens, enc, cfg):
    """Full-sequence decoder in float64: (logits [S, V], cross-attention weights per layer [H, S, T])."""
    H = cfg["decoder_attention_heads"]
    p = "model.decoder."
    x = W[p + "embed_tokens.weight"][tokens] + W[p + "embed_positions.weight"][: len(tokens)]
    enc = enc[0].astype(np.float64)
    cross = []
    for i in range(cfg["decoder_layers"]):
        lp = f"{p}layers.{i}."
        h = ln(W, x, lp + "self_attn_layer_norm")
        x = x + mha(W, h, h, lp + "self_attn", H, True)[0]
        h = ln(W, x, lp + "encoder_attn_layer_norm")
        a, w = mha(W, h, enc, lp + "encoder_attn", H, False)
        cross.append(w)
        x = x + a
        h = ln(W, x, lp + "final_layer_norm")
        x = x + lin(W, gelu(lin(W, h, lp + "fc1")), lp + "fc2")
    x = ln(W, x, p + "layer_norm")
    return x @ W[p + "embed_tokens.weight"].T, cross


def np_encoder(path, mel, cfg):
    W = np_weights(path)
    H = cfg["encoder_attention_heads"]

    def conv(x, w, b, stride):  # x [C, T], w [O, C, 3], padding 1
        xp = np.pad(x, ((0, 0), (1, 1)))
        T = (x.shape[1] + 2 - 3) // stride + 1
        cols = np.stack([xp[:, k : k + stride * (T - 1) + 1 : stride] for k in range(3)], 0)  # [3, C, T]
        return np.einsum("ock,kct->ot", w, cols) + b[:, None]

    p = "model.encoder."
    x = gelu(conv(mel[0].astype(np.float64), W[p + "conv1.weight"], W[p + "conv1.bias"], 1))
    x = gelu(conv(x, W[p + "conv2.weight"], W[p + "conv2.bias"], 2)).T + W[p + "embed_positions.weight"]
    for i in range(cfg["encoder_layers"]):
        lp = f"{p}layers.{i}."
        h = ln(W, x, lp + "self_attn_layer_norm")
        x = x + mha(W, h, h, lp + "self_attn", H, False)[0]
        h = ln(W, x, lp + "final_layer_norm")
        x = x + lin(W, gelu(lin(W, h, lp + "fc1")), lp + "fc2")
    return ln(W, x, p + "layer_norm")[None]


# ---------------------------------------------------------------------------------------------

class Decoding:
    def __init__(self, d, gen, cfg, threads):
        self.d = d
        self.cfg = cfg
        self.eot = gen["eos_token_id"]
        self.suppress = [t for t in gen.get("suppress_tokens", []) if t >= 0]
        self.begin_suppress = gen.get("begin_suppress_tokens", [])
        self.opts = ort.SessionOptions()
        self.opts.intra_op_num_threads = threads
        self.opts.inter_op_num_threads = 1
        self.sessions = {}

    def session(self, name):
        if name not in self.sessions:
            t = time.time()
            self.sessions[name] = ort.InferenceSession(os.path.join(self.d, name), self.opts, providers=["CPUExecutionProvider"])
            print(f"   (loaded {name} in {time.time() - t:.1f} s)")
        return self.sessions[name]

    def pick(self, logits, step):
        z = logits.astype(np.float64).copy()
        z[self.eot + 1 :] = -np.inf  # no special or timestamp tokens (timestamps are off)
        z[self.suppress] = -np.inf
        if step == 0:
            z[self.begin_suppress] = -np.inf
        return int(np.argmax(z))

    def run(self, layout, enc, prompt, max_new):
        """Greedy decoding; returns (tokens, last logits row, cross attentions of the last run,
        the tokens that run saw: all but the last token when max_new stopped it before <|endoftext|>)."""
        H = self.cfg["decoder_attention_heads"]
        Dh = self.cfg["d_model"] // H
        L = self.cfg["decoder_layers"]
        tokens = list(prompt)
        past = None
        last = None
        attn = None
        if layout == "static":
            sess = self.session("decoder_model.onnx")
            N = sess.get_inputs()[0].shape[1]
            if not isinstance(N, int):
                raise ValueError("decoder_model.onnx has a dynamic length: not a static export")
            max_new = min(max_new, N - len(prompt))
        for step in range(max_new):
            if layout in ("merged-nocache", "merged-cache"):
                sess = self.session("decoder_model_merged.onnx")
                use_cache = layout == "merged-cache" and past is not None
                feed = {"input_ids": np.array([tokens[-1:] if use_cache else tokens], np.int64),
                        "encoder_hidden_states": enc,
                        "use_cache_branch": np.array([use_cache])}
                for i in range(L):
                    for side in ("decoder", "encoder"):
                        for kv in ("key", "value"):
                            n = f"past_key_values.{i}.{side}.{kv}"
                            feed[n] = past[n] if use_cache else np.zeros((1, H, 0, Dh), np.float32)
                out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
                if layout == "merged-cache":
                    new = {}
                    for i in range(L):
                        for kv in ("key", "value"):
                            new[f"past_key_values.{i}.decoder.{kv}"] = out[f"present.{i}.decoder.{kv}"]
                            # the with-past branch returns empty encoder presents: keep the first ones
                            src = past if use_cache else out
                            key = f"past_key_values.{i}.encoder.{kv}" if use_cache else f"present.{i}.encoder.{kv}"
                            new[f"past_key_values.{i}.encoder.{kv}"] = src[key]
                    past = new
                row = out["logits"][0, -1]
            elif layout in ("split", "split-nocache"):
                if layout == "split" and past is not None:
                    sess = self.session("decoder_with_past_model.onnx")
                    feed = {"input_ids": np.array([tokens[-1:]], np.int64), **past}
                else:
                    sess = self.session("decoder_model.onnx")
                    feed = {"input_ids": np.array([tokens], np.int64), "encoder_hidden_states": enc}
                out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
                if layout == "split":
                    new = {}
                    for i in range(L):
                        for kv in ("key", "value"):
                            new[f"past_key_values.{i}.decoder.{kv}"] = out[f"present.{i}.decoder.{kv}"]
                            n = f"past_key_values.{i}.encoder.{kv}"
                            new[n] = past[n] if past is not None else out[f"present.{i}.encoder.{kv}"]
                    past = new
                row = out["logits"][0, -1]
            elif layout == "static":
                ids = np.full((1, N), self.eot, np.int64)
                ids[0, : len(tokens)] = tokens
                out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input_ids": ids, "encoder_hidden_states": enc})))
                row = out["logits"][0, len(tokens) - 1]
            else:
                raise ValueError(layout)
            if "cross_attentions.0" in out:
                attn = [out[f"cross_attentions.{i}"][0] for i in range(L)]
                if layout == "static":
                    attn = [a[:, : len(tokens)] for a in attn]
            last, fed = row, list(tokens)
            nxt = self.pick(row, step)
            if nxt == self.eot:
                break
            tokens.append(nxt)
        return tokens, last, attn, fed


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--wav", default=os.path.join(here, "..", "..", "shared", "testdata", "jfk.wav"))
    ap.add_argument("--prompt", help="comma-separated token ids")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=224)
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) numpy reference encoder")
    a = ap.parse_args()
    with open(os.path.join(a.dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(a.dir, "generation_config.json")) as f:
        gen = json.load(f)

    files = [f for f in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx",
                         "decoder_model_merged.onnx") if os.path.isfile(os.path.join(a.dir, f))]
    for f in files:
        describe(os.path.join(a.dir, f))

    if a.prompt:
        prompt = [int(t) for t in a.prompt.split(",")]
    else:
        prompt = [gen["decoder_start_token_id"]]
        if gen.get("is_multilingual"):
            prompt += [gen["lang_to_id"]["<|en|>"], gen["task_to_id"]["transcribe"]]
        prompt.append(gen["no_timestamps_token_id"])
    detok = Detok(a.dir)

    t = time.time()
    mel = features(load_wav(a.wav), cfg["num_mel_bins"])
    print(f"\nlog-mel {mel.shape} in {time.time() - t:.1f} s, range {mel.min():.4f}..{mel.max():.4f}")
    dec = Decoding(a.dir, gen, cfg, a.threads)
    enc_sess = dec.session("encoder_model.onnx")
    t = time.time()
    enc = enc_sess.run(None, {"input_features": mel})[0]
    print(f"encoder: last_hidden_state {enc.shape} in {time.time() - t:.2f} s")
    if not a.no_reference:
        t = time.time()
        ref = np_encoder(os.path.join(a.dir, "encoder_model.onnx"), mel, cfg)
        diff = np.abs(enc - ref).max()
        cos = float((enc.ravel() @ ref.ravel()) / np.linalg.norm(enc) / np.linalg.norm(ref))
        print(f"numpy reference encoder (float64): max |diff| {diff:.3e} (values up to {np.abs(ref).max():.1f}), "
              f"cosine {cos:.8f} ({time.time() - t:.0f} s)")

    layouts = []
    if "decoder_model_merged.onnx" in files:
        layouts += ["merged-nocache", "merged-cache"]
    if "decoder_model.onnx" in files:
        n = onnx.load(os.path.join(a.dir, "decoder_model.onnx"), load_external_data=False).graph.input[0]
        static = n.type.tensor_type.shape.dim[1].HasField("dim_value")
        if static:
            layouts.append("static")
        else:
            if "decoder_with_past_model.onnx" in files:
                layouts.append("split")
            layouts.append("split-nocache")
    print(f"prompt {prompt}")
    results = {}
    for lay in layouts:
        t = time.time()
        toks, last, attn, fed = dec.run(lay, enc, prompt, a.max_new)
        text = detok(toks[len(prompt):])
        results[lay] = (toks, last, attn, fed)
        print(f"[{lay}] {len(toks) - len(prompt)} tokens in {time.time() - t:.2f} s: {text!r}")
    base = layouts[0] if layouts else None
    for lay in layouts[1:]:
        ta, la, aa, _ = results[base]
        tb, lb, ab, _ = results[lay]
        same = "same tokens" if ta == tb else "DIFFERENT TOKENS"
        msg = f"{lay} vs {base}: {same}"
        if len(ta) == len(tb):
            msg += f", last logits max |diff| {np.abs(la - lb).max():.2e}"
            if aa is not None and ab is not None:
                # cross attention rows of the last run: compare the rows both have (the last one)
                d = max(np.abs(x[:, -1] - y[:, -1]).max() for x, y in zip(aa, ab))
                msg += f", last cross_attentions row max |diff| {d:.2e}"
        print(msg)
    if base and not a.no_reference:
        t = time.time()
        dec_file = "decoder_model_merged.onnx" if "decoder_model_merged.onnx" in files else "decoder_model.onnx"
        _, last, attn, fed = results[base]
        ref_logits, ref_cross = np_decoder(np_weights(os.path.join(a.dir, dec_file)), fed, enc, cfg)
        msg = (f"numpy reference decoder (float64, {dec_file} weights, the {base} tokens): "
               f"last logits max |diff| {np.abs(ref_logits[-1] - last).max():.2e} "
               f"(logits range {ref_logits[-1].min():.1f}..{ref_logits[-1].max():.1f})")
        if attn is not None:
            d = max(np.abs(r[:, -1] - x[:, -1]).max() for r, x in zip(ref_cross, attn))
            msg += f", last cross_attentions row max |diff| {d:.2e}"
        print(msg + f" ({time.time() - t:.0f} s)")
    # sanity of the alignment heads' cross-attention (static / no-cache layouts carry every row)
    for lay in ("merged-nocache", "split-nocache", "static"):
        if lay in results and results[lay][2] is not None:
            toks, _, attn, _ = results[lay]
            heads = gen.get("alignment_heads", [])
            if not heads:
                break
            w = np.mean([attn[l][h] for l, h in heads], axis=0)  # [rows, 1500]
            rows = w[len(prompt) - 1 : len(toks) - 1]  # row r predicts token r+1
            peak = rows.argmax(-1) * 0.02
            words = [detok([t]) for t in toks[len(prompt):]]
            print(f"alignment heads ({lay}): token -> attention peak (s): "
                  + " ".join(f"{wd.strip()}@{p:.2f}" for wd, p in zip(words, peak)))
            break


if __name__ == "__main__":
    main()
