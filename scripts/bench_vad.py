"""Offline VAD benchmark (run by scripts/bench-vad, which prepares the paragraphs and the CLI):
the CLI with and without --vad on speech only and on speech between long non-speech; x realtime,
WER, and the words placed in the non-speech stretches. Standard library only."""

import argparse
import array
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
import wave

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speechtext import normalise, wer_percent  # noqa: E402

RATE = 16000
JFK_TEXT = ("And so my fellow Americans, ask not what your country can do for you, ask what you "
            "can do for your country.")


def read_s16(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        a = array.array("h")
        a.frombytes(w.readframes(w.getnframes()))
    return a


def write_s16(path, samples):
    tmp = path + ".tmp"
    with wave.open(tmp, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())
    os.replace(tmp, path)


def to_s16(values):
    return array.array("h", (max(-32768, min(32767, int(round(v * 32767)))) for v in values))


def pink(seconds, rng, rms=0.05):
    b0 = b1 = b2 = 0.0
    out = []
    for _ in range(int(seconds * RATE)):
        w = rng.uniform(-1, 1)
        b0 = 0.99765 * b0 + w * 0.0990460
        b1 = 0.96300 * b1 + w * 0.2965164
        b2 = 0.57000 * b2 + w * 1.0526913
        out.append(b0 + b1 + b2 + w * 0.1848)
    now = math.sqrt(sum(x * x for x in out) / len(out))
    return [x * rms / now for x in out]


def music(seconds, rng):
    notes = [261.63, 329.63, 392.0, 523.25, 392.0, 329.63, 293.66, 349.23]
    tau = 2 * math.pi
    out = []
    for i in range(int(seconds * RATE)):
        t = i / RATE
        beat = int(t / 0.25)
        since = t - beat * 0.25
        f = notes[beat % len(notes)]
        pluck = sum(math.sin(tau * f * h * since) / h for h in range(1, 5)) * math.exp(-since * 8)
        root = 130.81 if int(t / 2) % 2 == 0 else 110.0
        chord = sum(math.sin(tau * root * r * t) for r in (1.0, 1.25, 1.5))
        out.append(0.12 * pluck + 0.04 * chord)
    return out


def room(seconds, rng):
    return [rng.uniform(-1, 1) * 0.005 for _ in range(int(seconds * RATE))]


def applause(seconds, rng):
    out = [0.0] * int(seconds * RATE)
    claps = int(seconds * 30)
    for _ in range(claps):
        at = rng.randrange(len(out))
        amp = rng.uniform(0.05, 0.3)
        for k in range(min(400, len(out) - at)):
            out[at + k] += rng.uniform(-1, 1) * amp * math.exp(-k / 60)
    return out


def silence(seconds, rng):
    return [0.0] * int(seconds * RATE)


KINDS = [("pink noise", pink), ("music", music), ("room tone", room), ("applause", applause),
         ("digital silence", silence)]


def build(cache):
    """speech.wav (speech only) and mixed.wav (with non-speech), their reference texts and the
    non-speech spans of mixed.wav, cached under cache/ (rebuilt when the paragraphs change)."""
    key = open(os.path.join(cache, "key")).read().strip()
    meta_path = os.path.join(cache, "files.json")
    if os.path.exists(meta_path):
        meta = json.load(open(meta_path))
        if meta.get("key") == key:
            return meta
    speech = read_s16(os.path.join(cache, "speech.wav"))
    jfk = read_s16(os.path.join(cache, "jfk.wav"))
    paragraphs = []
    for line in open(os.path.join(cache, "times.tsv")):
        start, end, text = line.rstrip("\n").split("\t", 2)
        paragraphs.append((float(start), float(end), text))
    texts = [p[2] for p in paragraphs] + [JFK_TEXT]
    reference = " ".join(texts)

    only = array.array("h", speech)
    only.extend(array.array("h", [0] * int(0.6 * RATE)))
    only.extend(jfk)
    write_s16(os.path.join(cache, "speech-only.wav"), only)

    rng = random.Random(1)
    mixed = array.array("h")
    nonspeech = []
    pieces = [speech[int(s * RATE):int(e * RATE)] for s, e, _ in paragraphs] + [jfk]
    for i, piece in enumerate(pieces):
        mixed.extend(piece)
        name, make = KINDS[i % len(KINDS)]
        seconds = 10 + (i * 7) % 11
        start = len(mixed) / RATE
        mixed.extend(to_s16(make(seconds, rng)))
        nonspeech.append((start, len(mixed) / RATE, name))
    write_s16(os.path.join(cache, "mixed.wav"), mixed)
    meta = dict(key=key, reference=reference, nonspeech=nonspeech,
                speech_seconds=len(only) / RATE, mixed_seconds=len(mixed) / RATE)
    json.dump(meta, open(meta_path, "w"))
    return meta


def run_cli(cli, model_dir, audio, threads, vad):
    cmd = [cli, "--model", model_dir, "--language", "en", "--threads", str(threads),
           "--format", "json"] + (["--vad"] if vad else []) + [audio]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"bench-vad: {' '.join(cmd)} failed ({p.returncode}): {p.stderr}")
    segments = json.loads(p.stdout)["segments"]
    m = re.search(r"VAD \((\w+)\): ([\d.]+) s of speech decoded, ([\d.]+) s left out", p.stderr)
    if vad and not m:
        sys.exit(f"bench-vad: no VAD line from the CLI: {p.stderr}")
    if vad and m.group(1) != "silero":
        sys.exit(f"bench-vad: the CLI ran the {m.group(1)} detector, not Silero: {p.stderr}")
    return wall, segments, (float(m.group(2)), float(m.group(3))) if m else None


def in_nonspeech(segment, nonspeech):
    mid = (segment["start"] + segment["end"]) / 2
    return any(a + 0.3 < mid < b - 0.3 for a, b, _ in nonspeech)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR")
    args = ap.parse_args()
    meta = build(args.cache)
    files = [("speech", os.path.join(args.cache, "speech-only.wav"), meta["speech_seconds"], []),
             ("mixed", os.path.join(args.cache, "mixed.wav"), meta["mixed_seconds"],
              meta["nonspeech"])]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} logical cores; load average {os.getloadavg()[0]:.2f}; "
          f"threads {args.threads}; {args.rounds} round(s)")
    print(f"speech: {meta['speech_seconds']:.1f} s; mixed: {meta['mixed_seconds']:.1f} s, "
          f"{sum(b - a for a, b, _ in meta['nonspeech']):.1f} s of it non-speech "
          f"({', '.join(sorted(set(k for _, _, k in meta['nonspeech'])))}); "
          f"{len(normalise(meta['reference']))} reference words")
    results = []
    for spec in args.model:
        name, model_dir = spec.split("=", 1)
        combos = [(f, vad) for f in files for vad in (False, True)]
        runs = {(f[0], vad): [] for f, vad in combos}
        for r in range(args.rounds):
            order = combos[r % len(combos):] + combos[:r % len(combos)]
            for (fname, path, seconds, nonspeech), vad in order:
                wall, segs, vad_split = run_cli(args.cli, model_dir, path, args.threads, vad)
                text = " ".join(s["text"] for s in segs)
                stray = sum(len(normalise(s["text"])) for s in segs if in_nonspeech(s, nonspeech))
                run = dict(wall=wall, x_realtime=seconds / wall,
                           wer=wer_percent(meta["reference"], text), stray_words=stray,
                           vad_split=vad_split)
                runs[(fname, vad)].append(run)
                print(f"  {name} round {r + 1}: {fname:6} vad={'on ' if vad else 'off'} "
                      f"wall {wall:6.2f} s {run['x_realtime']:6.1f}x realtime WER "
                      f"{run['wer']:5.2f} %  words in non-speech {stray}"
                      + (f"  (decoded {vad_split[0]:.1f} s, left out {vad_split[1]:.1f} s)"
                         if vad_split else ""), flush=True)
        print(f"\n{name}: medians of {args.rounds} round(s)")
        print("  audio   vad   x realtime   WER %   words in non-speech   decoded / left out s")
        for (fname, vad), rs in runs.items():
            row = dict(model=name, audio=fname, vad=vad,
                       x_realtime=statistics.median(x["x_realtime"] for x in rs),
                       wer=statistics.median(x["wer"] for x in rs),
                       stray_words=statistics.median(x["stray_words"] for x in rs),
                       vad_split=rs[-1]["vad_split"], runs=rs)
            results.append(row)
            split = (f"{row['vad_split'][0]:.1f} / {row['vad_split'][1]:.1f}"
                     if row["vad_split"] else "-")
            print(f"  {fname:7} {'on ' if vad else 'off'}  {row['x_realtime']:10.1f} "
                  f"{row['wer']:7.2f} {row['stray_words']:21.0f}   {split}")
        print()
    if args.json:
        json.dump(dict(cpu=cpu, rounds=args.rounds, threads=args.threads, results=results),
                  open(args.json, "w"), indent=1)
        print(f"bench-vad: wrote {args.json}")


if __name__ == "__main__":
    main()
