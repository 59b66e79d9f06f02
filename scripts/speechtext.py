"""Helpers shared by the Python scripts that compare whispernpu with faster-whisper
(fw_reference.py, bench_anchor.py): reading test WAVs the way tests/common does, and the WER
normalisation of tests/common/mod.rs `wer_percent`."""

import wave

# faster-whisper's transcribe() options matching whispernpu's TranscribeOptions::default() with
# language en and greedy decoding (what the references and the benchmark compare against).
FW_OPTIONS = dict(
    language="en",
    task="transcribe",
    beam_size=1,
    best_of=5,  # only used when sampling at temperature > 0; whispernpu's default
    patience=1.0,
    temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    compression_ratio_threshold=2.4,
    log_prob_threshold=-1.0,
    no_speech_threshold=0.6,
    condition_on_previous_text=True,
    prompt_reset_on_temperature=0.5,
    initial_prompt=None,
    suppress_blank=True,
    suppress_tokens=[-1],
    without_timestamps=False,
    max_initial_timestamp=1.0,
    word_timestamps=False,
    vad_filter=False,
)


def read_wav(path):
    """16-bit PCM 16 kHz WAV -> mono float32 in [-1, 1], scaled by 1/32768 as tests/common
    read_wav does (numpy is imported here, so callers without numpy can use the rest)."""
    import numpy as np

    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2, f"{path}: expected 16-bit PCM"
        assert w.getframerate() == 16000, f"{path}: expected 16 kHz"
        channels = w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = data.astype(np.float32).reshape(-1, channels) * np.float32(1.0 / 32768.0)
    return x.mean(axis=1, dtype=np.float32) if channels > 1 else x[:, 0].copy()


def normalise(s):
    """Lower case; every character but letters, digits and apostrophes becomes a space (so hyphens
    split words); apostrophes at word edges dropped. Mirror of `norm` in tests/common/mod.rs."""
    s = s.lower()
    s = "".join(c if (c.isalnum() or c == "'") else " " for c in s)
    words = (w.strip("'") for w in s.split())
    return [w for w in words if w]


def wer_percent(reference, hyp):
    """Word error rate in percent: word-level Levenshtein distance / reference words."""
    r, h = normalise(reference), normalise(hyp)
    if not r:
        return 0.0 if not h else 100.0
    prev = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        cur = [i] + [0] * len(h)
        for j in range(1, len(h) + 1):
            cur[j] = min(prev[j - 1] + (r[i - 1] != h[j - 1]), prev[j] + 1, cur[j - 1] + 1)
        prev = cur
    return 100.0 * prev[len(h)] / len(r)
