#!/usr/bin/env python3
"""Reference log-mel values for tests/mel.rs, computed with numpy in float64 following
openai/whisper's algorithm (audio.py): periodic Hann window (400), hop 160, centred STFT with
reflect padding, last frame dropped, |X|^2, Slaney mel filterbank with Slaney normalisation
(librosa's closed form), log10(max(x, 1e-10)), clamp to max - 8, (x + 4) / 4.

Written from the algorithm's description; needs only numpy (`pip install numpy`).

Usage (from the repository root; numpy in a throw-away venv if it is not importable):
    python3 -m venv /tmp/melvenv && /tmp/melvenv/bin/pip install numpy
    /tmp/melvenv/bin/python scripts/mel_reference.py [JFK_WAV] [--mel-filters mel_filters.npz]
JFK_WAV defaults to ../shared/testdata/jfk.wav. Writes tests/fixtures/jfk_mel80.f32
(little-endian f32, [80][n_frames], padding 0) and tests/fixtures/jfk_mel128_first3s.f32
(first 3 s of jfk, 128 bins, padding 0).

--mel-filters compares the closed-form filters with openai's shipped whisper/assets/mel_filters.npz
(e.g. from `pip download --no-deps --no-binary :all: openai-whisper`); last run: max relative
difference 1.05e-7 (80) and 8.7e-8 (128), i.e. the npz's float32 rounding.
"""
import os
import sys
import wave

import numpy as np

SR, N_FFT, HOP = 16000, 400, 160


def hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    linear = f / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, linear)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(n_mels):
    freqs = np.linspace(0, SR / 2, N_FFT // 2 + 1)
    points = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SR / 2), n_mels + 2))
    bank = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        rising = (freqs - points[i]) / (points[i + 1] - points[i])
        falling = (points[i + 2] - freqs) / (points[i + 2] - points[i + 1])
        bank[i] = np.maximum(0.0, np.minimum(rising, falling)) * 2.0 / (points[i + 2] - points[i])
    return bank


def log_mel(audio, n_mels, padding=0):
    x = np.concatenate([audio, np.zeros(padding)])
    x = np.pad(x, N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    n_frames = 1 + (len(x) - N_FFT) // HOP
    frames = np.stack([x[t * HOP : t * HOP + N_FFT] * window for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    power = power[:-1].T  # drop the last frame
    spec = mel_filters(n_mels) @ power
    log_spec = np.log10(np.maximum(spec, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    args = sys.argv[1:]
    npz = None
    if "--mel-filters" in args:
        i = args.index("--mel-filters")
        npz = args[i + 1]
        del args[i : i + 2]
    if npz:
        shipped = np.load(npz)
        for n in (80, 128):
            ref = shipped[f"mel_{n}"].astype(np.float64)
            rel = np.abs(ref - mel_filters(n))[ref > 0] / ref[ref > 0]
            print(f"mel_{n}: max relative difference from {npz}: {rel.max():.2e}")
    wav = args[0] if args else os.path.join(here, "..", "..", "shared", "testdata", "jfk.wav")
    with wave.open(wav) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    out = os.path.join(here, "..", "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    m80 = log_mel(audio, 80)
    m80.astype("<f4").tofile(os.path.join(out, "jfk_mel80.f32"))
    m128 = log_mel(audio[: 3 * SR], 128)
    m128.astype("<f4").tofile(os.path.join(out, "jfk_mel128_first3s.f32"))
    print(f"80 bins: {m80.shape}, range {m80.min():.4f}..{m80.max():.4f}; 128 bins: {m128.shape}")


if __name__ == "__main__":
    main()
