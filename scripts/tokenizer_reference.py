#!/usr/bin/env python3
"""Reference token ids for tests/tokenizer.rs, produced by HuggingFace `tokenizers` from the
models' own tokenizer.json (an independent implementation of the same byte-level BPE).

Usage: pip install tokenizers   (in a venv)
       python3 scripts/tokenizer_reference.py
Needs the models installed: scripts/fetch-model tiny.en; scripts/fetch-model base.
Writes tests/fixtures/tokenizer_reference.json.
"""
import json
import os

from tokenizers import Tokenizer

TEXTS = [
    " And so my fellow Americans, ask not what your country can do for you",
    " Hello world! It's 3.14 o'clock — ok?",
    " 你好，世界。今天天气很好。",
    " Le garçon a mangé l'éléphant à côté de l'église.",
    " 다람쥐 헌 쳇바퀴에 타고파",
    "   multiple   spaces\tand\nnewlines  ",
    " don't we'll they're I'm you've he'd",
]

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.join(here, "..")
out = {"texts": TEXTS, "models": {}}
for name in ["tiny.en", "base"]:
    tok = Tokenizer.from_file(os.path.join(repo, "models", name, "tokenizer.json"))
    out["models"][name] = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
with open(os.path.join(repo, "tests", "fixtures", "tokenizer_reference.json"), "w") as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
print("wrote tests/fixtures/tokenizer_reference.json")
