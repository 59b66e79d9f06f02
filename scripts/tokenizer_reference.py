#!/usr/bin/env python3
"""Reference token ids for tests/tokenizer.rs, from two independent implementations of
Whisper's byte-level BPE:

- "huggingface": HuggingFace `tokenizers` on each model's own tokenizer.json (what faster-whisper
  uses; our Tokenizer with tokenizer.json must give these ids);
- "tiktoken": OpenAI `tiktoken` with the vocabulary order as merge ranks, which is how
  openai/whisper encodes (its assets gpt2.tiktoken / multilingual.tiktoken hold exactly the
  vocabulary.txt tokens with rank = id; set OPENAI_WHISPER_ASSETS to the `whisper/assets` folder
  of the openai-whisper source package to have that checked). Our Tokenizer without
  tokenizer.json must give these ids.

This script installs nothing. Set up once, in a throwaway venv:
    python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers tiktoken
then, with the models installed (scripts/fetch-model tiny.en; scripts/fetch-model base):
    /tmp/tokvenv/bin/python scripts/tokenizer_reference.py
It writes tests/fixtures/tokenizer_reference.json. Made with tokenizers 0.23.3, tiktoken 0.14.0.
"""
import base64
import json
import os

import tiktoken
from tokenizers import Tokenizer

TEXTS = [
    " And so my fellow Americans, ask not what your country can do for you",
    " Hello world! It's 3.14 o'clock — ok?",
    " 你好，世界。今天天气很好。",
    " Le garçon a mangé l'éléphant à côté de l'église.",
    " 다람쥐 헌 쳇바퀴에 타고파",
    "   multiple   spaces\tand\nnewlines  ",
    " don't we'll they're I'm you've he'd",
    " DON'T SHOUT'S, y'all",
    "",
    "a",
    " ",
    "\n\n",
    " Sie sagte: „Das ist schön“ – und ging.",
    " Это проверка связи, раз-два-три.",
    " e\u0301te\u0301 combining marks, ٣٤٥ and ⅷ numbers, x²",
    " emoji 👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷",
    " nbsp\u00a0here, ideographic\u3000space, line\u2028sep, vt\x0bff\x0cfs\x1cend",
    " 東京は日本の首都です。人口は約千四百万人で、世界で最も人口の多い都市圏の一つです。",
    "   leading and trailing   ",
    " ...!!! ??? --- 12345678901234567890 $1,000.00 100%",
]

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.join(here, "..")


def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def vocabulary_ranks(model_dir, eot):
    decoder = byte_decoder()
    with open(os.path.join(model_dir, "vocabulary.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    ranks = {}
    for rank, token in enumerate(lines[:eot]):
        data = bytes(decoder[c] for c in token)
        if data:
            ranks.setdefault(data, rank)
    return ranks


def check_openai_assets(ranks, asset):
    assets = os.environ.get("OPENAI_WHISPER_ASSETS")
    if not assets:
        return
    with open(os.path.join(assets, asset)) as f:
        theirs = {
            base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())
        }
    theirs = {k: v for k, v in theirs.items() if k}
    assert theirs == ranks, f"{asset} differs from the vocabulary order"
    print(f"{asset}: identical to the vocabulary order")


PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

out = {"texts": TEXTS, "huggingface": {}, "tiktoken": {}}
for name, eot, asset in [("tiny.en", 50256, "gpt2.tiktoken"), ("base", 50257, "multilingual.tiktoken")]:
    model_dir = os.path.join(repo, "models", name)
    hf = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    out["huggingface"][name] = [hf.encode(t, add_special_tokens=False).ids for t in TEXTS]
    ranks = vocabulary_ranks(model_dir, eot)
    check_openai_assets(ranks, asset)
    tk = tiktoken.Encoding(name=name, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={})
    out["tiktoken"][name] = [tk.encode_ordinary(t) for t in TEXTS]
    for t, a, b in zip(TEXTS, out["huggingface"][name], out["tiktoken"][name]):
        assert hf.decode(a) == t and tk.decode(b) == t, (name, t)
        if a != b:
            print(f"{name}: tokenizers and tiktoken differ on {t!r}")

with open(os.path.join(repo, "tests", "fixtures", "tokenizer_reference.json"), "w") as f:
    # One line per text, so that a change shows as a readable diff.
    f.write('{\n "texts": [\n')
    f.write(",\n".join("  " + json.dumps(t, ensure_ascii=False) for t in TEXTS))
    f.write("\n ]")
    for impl in ["huggingface", "tiktoken"]:
        f.write(f',\n "{impl}": {{')
        models = []
        for name, ids in out[impl].items():
            rows = ",\n".join("   " + json.dumps(row) for row in ids)
            models.append(f'\n  "{name}": [\n{rows}\n  ]')
        f.write(",".join(models) + "\n }")
    f.write("\n}\n")
print("wrote tests/fixtures/tokenizer_reference.json")
