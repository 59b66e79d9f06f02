"""Reference transcripts from faster-whisper for tests/engine.rs. Run through scripts/fw-reference,
which sets up the venv, the models and the synthesised audio, and documents the outputs."""

import argparse
import hashlib
import json
import os
import re
import sys
import time
import types

# faster-whisper imports onnxruntime at module level but only uses it for VAD (vad_filter=False
# here); tolerate a `pip install --no-deps faster-whisper` environment without it.
try:
    import onnxruntime  # noqa: F401
except ImportError:
    sys.modules.setdefault("onnxruntime", types.ModuleType("onnxruntime"))

import ctranslate2
import faster_whisper
from faster_whisper import WhisperModel

from speechtext import FW_OPTIONS, read_wav, wer_percent


def sha256(path):
    d = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            d.update(block)
    return d.hexdigest()


def transcribe(model, audio):
    t0 = time.perf_counter()
    segments, info = model.transcribe(audio, **FW_OPTIONS)
    segs = [
        dict(
            start=round(s.start, 3),
            end=round(s.end, 3),
            text=s.text,
            avg_logprob=round(s.avg_logprob, 4),
            no_speech_prob=round(s.no_speech_prob, 4),
            temperature=s.temperature,
            compression_ratio=round(s.compression_ratio, 4),
        )
        for s in segments  # a generator: decoding happens here
    ]
    seconds = time.perf_counter() - t0
    text = " ".join(s["text"].strip() for s in segs)
    return text, segs, info, seconds


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {path}: {text}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--jfk", required=True)
    ap.add_argument("--multiwindow", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--espeak-version", required=True)
    ap.add_argument("--sox-version", required=True)
    args = ap.parse_args()

    fx = args.fixtures
    reference = open(os.path.join(fx, "multiwindow.txt"), encoding="utf-8").read()
    jfk = read_wav(args.jfk)
    mw = read_wav(args.multiwindow)
    versions = {
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
    }
    settings = dict(FW_OPTIONS, device="cpu", compute_type="float32", cpu_threads=2, num_workers=1)

    jfk_json = {"generator": "scripts/fw-reference", "versions": versions, "options": settings,
                "audio": {"file": "jfk.wav", "sha256": sha256(args.jfk),
                          "seconds": len(jfk) / 16000}, "models": {}}
    mw_json = {"generator": "scripts/fw-reference", "versions": dict(versions),
               "options": settings,
               "audio": {"text": "tests/fixtures/multiwindow.txt",
                         "synthesiser": "scripts/synth-speech",
                         "espeak_ng": args.espeak_version, "sox": args.sox_version,
                         "seconds": len(mw) / 16000, "sha256": sha256(args.multiwindow)},
               "wer_normalisation": "tests/common/mod.rs wer_percent",
               "models": {}}

    for spec in args.model:
        name, path = spec.split("=", 1)
        model = WhisperModel(path, device="cpu", compute_type="float32", cpu_threads=2, num_workers=1)
        model_sha = sha256(os.path.join(path, "model.bin"))

        text, segs, info, secs = transcribe(model, jfk)
        write_text(os.path.join(fx, f"jfk.{name}.faster-whisper.txt"), text)
        jfk_json["models"][name] = {"model_bin_sha256": model_sha, "text": text, "segments": segs}
        # Segment boundaries alone, for tests/engine.rs (jfk_tiny_en_matches_faster_whisper).
        bounds = [dict(start=s["start"], end=s["end"], text=s["text"]) for s in segs]
        with open(os.path.join(fx, f"jfk.{name}.faster-whisper.json"), "w", encoding="utf-8") as f:
            json.dump(bounds, f, indent=2, ensure_ascii=False)
            f.write("\n")

        text, segs, info, secs = transcribe(model, mw)
        write_text(os.path.join(fx, f"multiwindow.{name}.faster-whisper.txt"), text)
        wer = wer_percent(reference, text)
        print(f"{name}: multiwindow WER {wer:.2f} % ({secs:.1f} s, {len(mw) / 16000 / secs:.1f}x realtime)")
        mw_json["models"][name] = {"model_bin_sha256": model_sha, "wer_percent": round(wer, 3),
                                   "text": text, "segments": segs}

    for path, obj in ((os.path.join(fx, "jfk.faster-whisper.json"), jfk_json),
                      (os.path.join(fx, "multiwindow.faster-whisper.json"), mw_json)):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
