"""Driver of scripts/bench-anchor (which sets up the venv, the models, the CLI and the audio, and
documents the benchmark): whispernpu's transcribe CLI against faster-whisper int8 and float32.

Two modes:
  * the benchmark (default): runs every system once per round, each in its own child process, in an
    order rotated from round to round; times the whole child process (wall clock, model load
    included) and reads its peak RSS from os.wait4; a "startup" run per system and round (an empty
    WAV: process start, imports, model load, no decoding) estimates the load cost;
  * --worker: one faster-whisper run in this process (what the benchmark starts as a child); prints
    one JSON object on stdout with the text and the in-process split (import, model load,
    transcription).
The same decoding options for both engines: greedy, language en, default temperature fallback,
condition_on_previous_text, no VAD, timestamps on, no word timestamps.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import wave

from speechtext import FW_OPTIONS, normalise, read_wav, wer_percent

# whispernpu with its default compute type (the one the targets are checked on; auto = bf16 on
# AMX machines), with --compute-type f32 and with --compute-type int8; faster-whisper int8 and
# float32.
SYSTEMS = ["whispernpu", "whispernpu-f32", "whispernpu-int8", "fw-int8", "fw-float32"]


def ours(system):
    return system.startswith("whispernpu")

SPEED_FACTOR = 2.0  # whispernpu x realtime >= 2 x faster-whisper int8's
WER_MARGIN = 0.5  # whispernpu WER <= faster-whisper float32's + 0.5 point


# --- worker: one faster-whisper run -----------------------------------------------------------------


def worker(args):
    t0 = time.perf_counter()
    import types

    # faster-whisper imports onnxruntime at module level but only uses it for VAD (off here).
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.modules.setdefault("onnxruntime", types.ModuleType("onnxruntime"))
    import ctranslate2
    import faster_whisper
    from faster_whisper import WhisperModel

    t1 = time.perf_counter()
    model = WhisperModel(args.model_dir, device="cpu", compute_type=args.compute_type,
                         cpu_threads=args.threads, num_workers=1)
    t2 = time.perf_counter()
    audio = read_wav(args.audio)
    segs = []
    if len(audio):  # the startup run (empty WAV) stops after the model load
        options = dict(FW_OPTIONS, condition_on_previous_text=args.condition_on_previous_text == "true")
        segments, _info = model.transcribe(audio, **options)
        segs = [dict(text=s.text, temperature=s.temperature) for s in segments]  # decodes here
    t3 = time.perf_counter()
    json.dump(dict(
        text=" ".join(t for t in (s["text"].strip() for s in segs) if t),
        segments=len(segs),
        fallback_segments=sum(1 for s in segs if s["temperature"] > 0),
        import_s=t1 - t0, load_s=t2 - t1, transcribe_s=t3 - t2,
        versions={"faster_whisper": faster_whisper.__version__,
                  "ctranslate2": ctranslate2.__version__},
    ), sys.stdout)
    sys.stdout.write("\n")


# --- benchmark ------------------------------------------------------------------------------------


def command(system, model_dir, audio, args):
    if system == "whispernpu-onnx":
        # The ONNX Runtime engine (CPU provider) on the model's export.
        return [args.cli, "--backend", "onnx", "--execution-provider", "cpu",
                "--model", args.onnx_dirs[model_dir], "--language", "en", "--beam-size", "1",
                "--condition-on-previous-text", args.condition_on_previous_text,
                "--threads", str(args.threads), "--format", "json", "--quiet", audio]
    if ours(system):
        compute_type = system.split("-", 1)[1] if "-" in system else "auto"
        return [args.cli, "--model", model_dir, "--language", "en", "--beam-size", "1",
                "--condition-on-previous-text", args.condition_on_previous_text,
                "--threads", str(args.threads), "--compute-type", compute_type,
                "--format", "json", "--quiet", audio]
    compute_type = system.split("-", 1)[1]
    return [sys.executable, os.path.abspath(__file__), "--worker", "--model-dir", model_dir,
            "--compute-type", compute_type, "--threads", str(args.threads), "--audio", audio,
            "--condition-on-previous-text", args.condition_on_previous_text]


def run_child(cmd):
    """Runs cmd as a child process; returns (wall seconds, peak RSS KiB, stdout). The RSS is this
    child's own ru_maxrss (wait4 on its pid), not a sum over runs."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        sys.exit(f"bench-anchor: {' '.join(cmd)} failed (exit {proc.returncode}):\n{stderr.strip()}")
    return wall, usage.ru_maxrss, stdout


def parse_output(system, stdout):
    if ours(system):
        doc = json.loads(stdout)
        texts = (s["text"].strip() for s in doc["segments"])
        return dict(text=" ".join(t for t in texts if t), segments=len(doc["segments"]),
                    fallback_segments=sum(1 for s in doc["segments"] if (s["temperature"] or 0) > 0))
    return json.loads(stdout)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def cli_version(cli):
    try:
        head = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse",
                               "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "status",
                                "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return f"{head}{' (+ uncommitted changes)' if dirty else ''}"
    except OSError:
        return "unknown"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def benchmark(args):
    with wave.open(args.audio, "rb") as w:
        duration = w.getnframes() / w.getframerate()
    reference = open(args.reference, encoding="utf-8").read()
    os.makedirs(args.out, exist_ok=True)
    quick_note = "  [QUICK audio: not valid for the targets]" if args.quick else ""

    print(f"bench-anchor: audio {args.audio}: {duration:.1f} s, {len(normalise(reference))} "
          f"reference words{quick_note}")
    print(f"  whispernpu {cli_version(args.cli)} ({args.cli}); {args.espeak_version}; "
          f"{args.sox_version}")
    print(f"  CPU: {cpu_name()}, {os.cpu_count()} logical cores; load average "
          f"{loadavg():.2f}; threads {args.threads}; {args.rounds} round(s); "
          f"condition_on_previous_text {args.condition_on_previous_text} (both engines)")
    busy = loadavg()
    if busy > 0.5:
        print(f"  WARNING: load average {busy:.2f} before the start: the machine is busy, so the "
              "speeds (and their ratios) are not reliable")
    print("  timed: the whole child process, wall clock (start, model load, audio read, "
          "transcription, exit), the same for every system;")
    print("  'startup' = the same command on an empty WAV (start + model load, no decoding); "
          "'net' = wall - startup")
    sys.stdout.flush()

    results = dict(generator="scripts/bench-anchor", audio=dict(file=args.audio, seconds=duration,
                   reference=args.reference, espeak_ng=args.espeak_version, sox=args.sox_version,
                   quick=args.quick), cpu=cpu_name(), cpu_count=os.cpu_count(),
                   threads=args.threads, rounds=args.rounds, whispernpu=cli_version(args.cli),
                   condition_on_previous_text=args.condition_on_previous_text,
                   fw_options=dict(FW_OPTIONS, device="cpu", cpu_threads=args.threads, num_workers=1),
                   models={})
    all_pass = True
    systems = SYSTEMS + (["whispernpu-onnx"] if args.onnx else [])
    for spec in args.model:
        name, model_dir = spec.split("=", 1)
        args.onnx_dirs = {model_dir: d for m, d in (x.split("=", 1) for x in args.onnx) if m == name}
        runs = {s: [] for s in systems}
        startups = {s: [] for s in systems}
        print(f"\n== {name} ({model_dir})")
        for r in range(args.rounds):
            order = systems[r % len(systems):] + systems[:r % len(systems)]
            for system in order:
                wall, _, stdout = run_child(command(system, model_dir, args.empty, args))
                startups[system].append(dict(wall_s=wall, **({} if ours(system)
                                                               else parse_output(system, stdout))))
                wall, rss, stdout = run_child(command(system, model_dir, args.audio, args))
                run = parse_output(system, stdout)
                run.update(wall_s=wall, rss_kib=rss, wer=wer_percent(reference, run["text"]),
                           round=r + 1, loadavg_after=loadavg())
                runs[system].append(run)
                with open(os.path.join(args.out, f"{name}.{system}.txt"), "w",
                          encoding="utf-8") as f:
                    f.write(run["text"] + "\n")
                print(f"  round {r + 1}: {system:<15}  wall {wall:7.2f} s  "
                      f"{duration / wall:6.2f}x realtime  RSS {rss / 1024:7.1f} MiB  "
                      f"WER {run['wer']:6.2f} %  (startup {startups[system][-1]['wall_s']:.2f} s)",
                      flush=True)

        summary = {}
        for system in systems:
            wall = median([x["wall_s"] for x in runs[system]])
            startup = median([x["wall_s"] for x in startups[system]])
            wers = [x["wer"] for x in runs[system]]
            summary[system] = dict(
                wall_s=wall, x_realtime=duration / wall, startup_s=startup,
                net_x_realtime=duration / (wall - startup) if wall > startup else float("nan"),
                peak_rss_mib=max(x["rss_kib"] for x in runs[system]) / 1024,
                wer=median(wers), wer_min=min(wers), wer_max=max(wers))
            if not ours(system):
                summary[system].update(
                    load_s=median([x["load_s"] for x in runs[system]]),
                    transcribe_s=median([x["transcribe_s"] for x in runs[system]]),
                    versions=runs[system][0]["versions"])
                summary[system]["transcribe_x_realtime"] = duration / summary[system]["transcribe_s"]

        print(f"\n{name}: median of {args.rounds} round(s), {duration:.1f} s of audio{quick_note}")
        print(f"  {'system':<15} {'wall s':>8} {'x RT':>7} {'startup s':>9} {'net x RT':>8} "
              f"{'peak RSS MiB':>12} {'WER %':>7}")
        for system in systems:
            s = summary[system]
            wer = f"{s['wer']:7.2f}"
            if s["wer_min"] != s["wer_max"]:
                wer += f" ({s['wer_min']:.2f}..{s['wer_max']:.2f})"
            print(f"  {system:<15} {s['wall_s']:8.2f} {s['x_realtime']:7.2f} {s['startup_s']:9.2f} "
                  f"{s['net_x_realtime']:8.2f} {s['peak_rss_mib']:12.1f} {wer}")
        for system in (x for x in systems if not ours(x)):
            s = summary[system]
            print(f"  {system}: in-process model load {s['load_s']:.2f} s, transcription alone "
                  f"{s['transcribe_s']:.2f} s = {s['transcribe_x_realtime']:.2f}x realtime")

        npu, i8, f32 = summary["whispernpu"], summary["fw-int8"], summary["fw-float32"]
        ratios = dict(
            speed_vs_int8=npu["x_realtime"] / i8["x_realtime"],
            speed_vs_float32=npu["x_realtime"] / f32["x_realtime"],
            net_speed_vs_int8=npu["net_x_realtime"] / i8["net_x_realtime"],
            net_speed_vs_float32=npu["net_x_realtime"] / f32["net_x_realtime"])
        print(f"  speed ratio whispernpu / fw-int8:    {ratios['speed_vs_int8']:.2f}x "
              f"(net of startup {ratios['net_speed_vs_int8']:.2f}x)")
        print(f"  speed ratio whispernpu / fw-float32: {ratios['speed_vs_float32']:.2f}x "
              f"(net of startup {ratios['net_speed_vs_float32']:.2f}x)")
        q8 = summary["whispernpu-int8"]
        ratios["int8_speed_vs_int8"] = q8["x_realtime"] / i8["x_realtime"]
        print(f"  speed ratio whispernpu-int8 / fw-int8: {ratios['int8_speed_vs_int8']:.2f}x "
              f"(WER {q8['wer']:.2f} %, peak RSS {q8['peak_rss_mib']:.1f} MiB; not in the verdicts)")
        verdicts = dict(
            speed=ratios["speed_vs_int8"] >= SPEED_FACTOR,
            wer=npu["wer"] <= f32["wer"] + WER_MARGIN,
            rss=npu["peak_rss_mib"] <= i8["peak_rss_mib"])
        tag = lambda ok: ("PASS" if ok else "FAIL") + (" (quick audio: not valid)" if args.quick else "")
        print(f"  {tag(verdicts['speed'])}  speed: whispernpu {npu['x_realtime']:.2f}x realtime "
              f">= {SPEED_FACTOR} x fw-int8 {i8['x_realtime']:.2f}x = "
              f"{SPEED_FACTOR * i8['x_realtime']:.2f}x  (ratio {ratios['speed_vs_int8']:.2f})")
        print(f"  {tag(verdicts['wer'])}  WER: whispernpu {npu['wer']:.2f} % <= fw-float32 "
              f"{f32['wer']:.2f} % + {WER_MARGIN} = {f32['wer'] + WER_MARGIN:.2f} %")
        print(f"  {tag(verdicts['rss'])}  peak RSS: whispernpu {npu['peak_rss_mib']:.1f} MiB <= "
              f"fw-int8 {i8['peak_rss_mib']:.1f} MiB  (fw-float32 {f32['peak_rss_mib']:.1f} MiB)")
        all_pass &= all(verdicts.values())
        results["models"][name] = dict(model_dir=model_dir, summary=summary, ratios=ratios,
                                       verdicts=verdicts, runs=runs, startup_runs=startups)
        sys.stdout.flush()

    print(f"\nbench-anchor: {'all targets met' if all_pass else 'some targets missed'}"
          f"{quick_note}; transcripts of the last round in {args.out}/; load average now "
          f"{loadavg():.2f}")
    results["all_pass"] = all_pass
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"bench-anchor: wrote {args.json}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help="one faster-whisper run (internal)")
    ap.add_argument("--model-dir")
    ap.add_argument("--compute-type", choices=["int8", "float32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--audio", required=True)
    ap.add_argument("--cli")
    ap.add_argument("--empty")
    ap.add_argument("--reference")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR")
    ap.add_argument("--out")
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--onnx", action="append", default=[], help="NAME=EXPORT_DIR: also run the ONNX engine")
    ap.add_argument("--condition-on-previous-text", choices=["true", "false"], default="true")
    ap.add_argument("--espeak-version", default="")
    ap.add_argument("--sox-version", default="")
    args = ap.parse_args()
    if args.worker:
        if not (args.model_dir and args.compute_type):
            ap.error("--worker needs --model-dir and --compute-type")
        worker(args)
    else:
        if not (args.cli and args.empty and args.reference and args.out and args.model):
            ap.error("run through scripts/bench-anchor")
        benchmark(args)


if __name__ == "__main__":
    main()
