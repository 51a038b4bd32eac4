"""The GradIP log ``meerkat train`` keeps (format: ``meerkat_core.gradip.file``).

Each round's rows are appended to the side file ``gradip.pending.jsonl`` (``append``: O(rows of the
round) and an fsync, before the round's ledger commit); ``write`` puts every row into
``gradip.safetensors`` at once and removes the side file. A job calls ``write`` when it ends (and
``--resume`` when it has cut the log back to the committed rounds), so the file is rewritten once per
job, not once per round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from meerkat_core.atomic import append_bytes, write_bytes_atomic
from meerkat_core.gradip.file import (
    COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    GRADIP_FILE,
    GRADIP_PENDING,
    INT_COLUMNS,
    PENDING_FORMAT,
    read_run_columns,
)
from meerkat_core.st_bytes import safetensors_bytes


class GradipLog:
    """The GradIP rows of a run so far (``meerkat train`` adds each round, ``append``s it, and
    ``write``s the whole log when the job ends)."""

    def __init__(self, columns: dict[str, list[Any]] | None = None) -> None:
        self.columns: dict[str, list[Any]] = {c: list((columns or {}).get(c, [])) for c in COLUMNS}
        self._appended = len(self.columns["round"])  # rows already in a file (none: a new log)

    @classmethod
    def read_until(cls, run_dir: Path, last_round: int) -> "GradipLog":
        """The log of a run being resumed: its rows of rounds up to ``last_round`` (none if no file);
        the caller ``write``s it to drop what a killed job logged beyond that."""
        found = read_run_columns(Path(run_dir))
        if found is None:
            return cls()
        cols = {k: v.tolist() for k, v in found.items()}
        keep = [i for i, r in enumerate(cols["round"]) if r <= last_round]
        return cls({c: [cols[c][i] for i in keep] for c in COLUMNS})

    def add_client_round(self, round_: int, outcome: Any) -> None:
        """One client's round (a ``ClientOutcome``: ``gs``, ``gradip``, ``cosine``, ``losses``)."""
        for t in range(len(outcome.gs)):
            row = (round_, outcome.client, t, outcome.gs[t], outcome.gradip[t], outcome.cosine[t], outcome.losses[t])
            for col, val in zip(COLUMNS, row):
                self.columns[col].append(val)

    def append(self, run_dir: Path, run_seed: int, mask_sha256: str) -> None:
        """Append the rows added since the last ``append``/``write`` to the side file, one line per round."""
        start = self._appended
        rounds = self.columns["round"][start:]
        if not rounds:
            return
        path = Path(run_dir) / GRADIP_PENDING
        lines = []
        if not path.exists():
            lines.append({"format": PENDING_FORMAT, "format_version": 1, "run_seed": str(run_seed),
                          "mask_sha256": mask_sha256})
        i = start
        while i < len(self.columns["round"]):
            r = self.columns["round"][i]
            j = i
            while j < len(self.columns["round"]) and self.columns["round"][j] == r:
                j += 1
            lines.append({"round": int(r), "columns": {c: [_plain(v) for v in self.columns[c][i:j]] for c in COLUMNS}})
            i = j
        append_bytes(path, "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines).encode())
        self._appended = len(self.columns["round"])

    def write(self, run_dir: Path, run_seed: int, mask_sha256: str) -> None:
        """Every row into ``gradip.safetensors`` (atomically), then the side file removed."""
        tensors = {
            name: torch.tensor(vals, dtype=torch.int32 if name in INT_COLUMNS else torch.float64)
            for name, vals in self.columns.items()
        }
        md = {"format": FORMAT, "format_version": FORMAT_VERSION, "run_seed": str(run_seed), "mask_sha256": mask_sha256}
        write_bytes_atomic(Path(run_dir) / GRADIP_FILE, safetensors_bytes(tensors, md))
        (Path(run_dir) / GRADIP_PENDING).unlink(missing_ok=True)  # after the rename: no row is ever in neither
        self._appended = len(self.columns["round"])


def _plain(v: Any) -> Any:
    """A JSON number of a value (Python float / int; torch and numpy scalars too)."""
    if isinstance(v, bool) or not hasattr(v, "item"):
        return v
    return v.item()
