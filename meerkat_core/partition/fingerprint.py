"""Dataset fingerprints that bind a partition to the exact split it indexes into.

The fingerprint is ``sha256_json({"text": [...], "label": [...]})`` over every row, in row order
(``meerkat_core.hashing.sha256_json``: sorted keys, compact separators), so two datasets share it
exactly when they hold the same texts with the same labels at the same positions. Other columns do
not count. Labels that are integers (or integral floats, or bools) hash as ints; any other label
(e.g. a string in a local csv) hashes as its raw JSON value.

For a ``(text, label:int)`` dataset this equals ``meerkat_core.tasks.sources.dataset_fingerprint``
(a test checks it), so both names give one fingerprint per dataset. ``meerkat partition`` records it
in the manifest; the training command recomputes it on the split it loads and refuses a partition
made from another one (``verify_partition``).
"""

from __future__ import annotations

from typing import Any

import datasets

from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import sha256_json

FINGERPRINT_SCHEME = "sha256_json({text: [...], label: [...]})"


def _label_value(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return str(value)


def _column(ds: datasets.Dataset, column: str, what: str) -> list[Any]:
    if column not in ds.column_names:
        raise MeerkatInputError(
            f"unknown {what} column {column!r}; the data has columns {sorted(ds.column_names)}"
        )
    return ds.select_columns([column]).with_format("arrow")[column].to_pylist()


def dataset_fingerprint(ds: datasets.Dataset, text_column: str, label_column: str) -> str:
    """SHA-256 (hex) over the split's text and label content, row by row, in order."""
    texts = _column(ds, text_column, "text")
    labels = [_label_value(v) for v in _column(ds, label_column, "label")]
    return sha256_json({"text": texts, "label": labels})


def check_texts(ds: datasets.Dataset, text_column: str) -> None:
    """Refuse rows whose text is empty (or only white space): such a row gives a client nothing to
    learn from and an evaluation nothing to score. They are refused, not dropped, so that a
    partition's row indices stay the file's row numbers."""
    texts = _column(ds, text_column, "text")
    empty = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if empty:
        raise MeerkatInputError(
            f"text column {text_column!r} is empty in {len(empty)} rows (the first is row {empty[0]}); "
            "remove those rows from the data"
        )
