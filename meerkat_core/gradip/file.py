"""GradIP's file, ``RUN/gradip.safetensors``: its format and columns, and reading it (numpy only; the
writer, which needs torch, is ``meerkat_core.gradip.log``). While a job trains, each round's rows go to
the append-only side file ``RUN/gradip.pending.jsonl`` (``read_run_columns`` reads both).

The file is columnar: one row per (round, client, local step) with the columns ``COLUMNS``:
``round``, ``client``, ``step`` (int32) and ``g``, ``gradip``, ``cosine``, ``loss`` (float64), and the
string metadata ``format = meerkat.gradip``, ``format_version = 1``, ``run_seed``, ``mask_sha256``. A
skipped step (non-finite g) has ``gradip = nan``. Every problem reading it (missing, truncated, wrong
columns) is a one-line ``MeerkatInputError``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from meerkat_core.errors import MeerkatInputError

GRADIP_FILE = "gradip.safetensors"
FORMAT = "meerkat.gradip"
FORMAT_VERSION = "1"
INT_COLUMNS = ("round", "client", "step")
FLOAT_COLUMNS = ("g", "gradip", "cosine", "loss")
COLUMNS = ("round", "client", "step", "g", "gradip", "cosine", "loss")  # the order rows are appended in


def bad_file(path: Path, why: str) -> MeerkatInputError:
    return MeerkatInputError(f"{path}: {why}; re-run `meerkat train --resume` on the run to rewrite it")


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """The file's columns as numpy arrays, checked (names, dtypes, equal lengths, format tag)."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            cols = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types (and OSError) for bad files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise bad_file(path, f"corrupt or truncated GradIP file ({why})") from None
    if meta.get("format", FORMAT) != FORMAT:
        raise bad_file(path, f"not a GradIP file (format {meta.get('format')!r})")
    missing = [c for c in INT_COLUMNS + FLOAT_COLUMNS if c not in cols]
    if missing:
        raise bad_file(path, f"corrupt GradIP file (missing column {missing[0]!r})")
    lengths = {c: cols[c].shape for c in INT_COLUMNS + FLOAT_COLUMNS}
    if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
        raise bad_file(path, f"corrupt GradIP file (columns of unequal shapes {sorted(set(lengths.values()))})")
    for c in INT_COLUMNS:
        if cols[c].dtype.kind not in "iu":
            raise bad_file(path, f"corrupt GradIP file (column {c!r} is {cols[c].dtype}, expected int32)")
    for c in FLOAT_COLUMNS:
        if cols[c].dtype.kind != "f":
            raise bad_file(path, f"corrupt GradIP file (column {c!r} is {cols[c].dtype}, expected float64)")
    return {c: cols[c] for c in INT_COLUMNS + FLOAT_COLUMNS}


# -- the side file of a job in progress -------------------------------------------------------------
# ``gradip.pending.jsonl``: a header line {"format": "meerkat.gradip.pending", "format_version": 1,
# "run_seed", "mask_sha256"}, then one line per round {"round": r, "columns": {column: [values]}}
# (the float columns as JSON numbers, exact: Python writes the shortest repr that reads back bit for
# bit; NaN as NaN). A job appends a line per round (O(rows of the round), fsync) and, when it ends,
# rewrites gradip.safetensors with every row and deletes the side file. A job killed in between
# leaves both: the reader takes the safetensors' rows, then the side file's rows of later rounds
# (those of rounds the safetensors already holds were compacted before the kill), and drops a torn
# last line.
GRADIP_PENDING = "gradip.pending.jsonl"
PENDING_FORMAT = "meerkat.gradip.pending"


def read_pending(path: Path, after_round: int = 0) -> dict[str, list]:
    """The side file's columns (rows of rounds > ``after_round``), checked; a torn last line is dropped."""
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    lines = path.read_bytes().split(b"\n")
    last = len(lines) - 1  # after the final newline: b"" (or a torn line)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            if i == last:
                break  # torn: the job was killed while appending this round
            raise bad_file(path, f"corrupt GradIP side file (line {i + 1} is not JSON)") from None
        if i == 0:
            if not isinstance(rec, dict) or rec.get("format") != PENDING_FORMAT:
                raise bad_file(path, "not a GradIP side file")
            continue
        if i == last:
            break  # no newline after it: torn, even though it parses
        try:
            r, block = int(rec["round"]), rec["columns"]
            n = len(block["step"])
            if any(len(block[c]) != n for c in COLUMNS):
                raise ValueError("columns of unequal length")
        except (KeyError, TypeError, ValueError) as exc:
            raise bad_file(path, f"corrupt GradIP side file (line {i + 1}: {exc})") from None
        if r > after_round:
            for c in COLUMNS:
                cols[c].extend(block[c])
    return cols


def read_run_columns(run_dir: Path) -> dict[str, np.ndarray] | None:
    """Every GradIP row of the run in ``run_dir``: gradip.safetensors, then the side file of a job that
    is training or was killed. None when the run has neither."""
    path, pending = Path(run_dir) / GRADIP_FILE, Path(run_dir) / GRADIP_PENDING
    if not path.is_file() and not pending.is_file():
        return None
    cols = read_columns(path) if path.is_file() else {c: np.zeros(0, np.int32 if c in INT_COLUMNS else np.float64)
                                                       for c in COLUMNS}
    if pending.is_file():
        done = int(cols["round"].max()) if cols["round"].size else 0
        extra = read_pending(pending, after_round=done)
        cols = {c: np.concatenate([cols[c], np.asarray(extra[c], dtype=cols[c].dtype)]) for c in COLUMNS}
    return cols
