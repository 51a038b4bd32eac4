"""GradIP's file, ``RUN/gradip.safetensors``: its format and columns, and reading it (numpy only; the
writer, which needs torch, is ``meerkat_core.gradip.log``).

The file is columnar: one row per (round, client, local step) with the columns ``COLUMNS``:
``round``, ``client``, ``step`` (int32) and ``g``, ``gradip``, ``cosine``, ``loss`` (float64), and the
string metadata ``format = meerkat.gradip``, ``format_version = 1``, ``run_seed``, ``mask_sha256``. A
skipped step (non-finite g) has ``gradip = nan``. Every problem reading it (missing, truncated, wrong
columns) is a one-line ``MeerkatInputError``.
"""

from __future__ import annotations

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
