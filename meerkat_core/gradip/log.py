"""The GradIP log ``meerkat train`` keeps: rows appended per round, the file rewritten after each
(format: ``meerkat_core.gradip.file``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from meerkat_core.atomic import write_bytes_atomic
from meerkat_core.gradip.file import COLUMNS, FORMAT, FORMAT_VERSION, GRADIP_FILE, INT_COLUMNS, read_columns
from meerkat_core.st_bytes import safetensors_bytes


class GradipLog:
    """The GradIP rows of a run so far (``meerkat train`` appends each round, then rewrites the file)."""

    def __init__(self, columns: dict[str, list[Any]] | None = None) -> None:
        self.columns: dict[str, list[Any]] = {c: list((columns or {}).get(c, [])) for c in COLUMNS}

    @classmethod
    def read_until(cls, run_dir: Path, last_round: int) -> "GradipLog":
        """The log of a run being resumed: its rows of rounds up to ``last_round`` (none if no file)."""
        path = Path(run_dir) / GRADIP_FILE
        if not path.exists():
            return cls()
        cols = {k: v.tolist() for k, v in read_columns(path).items()}
        keep = [i for i, r in enumerate(cols["round"]) if r <= last_round]
        return cls({c: [cols[c][i] for i in keep] for c in COLUMNS})

    def add_client_round(self, round_: int, outcome: Any) -> None:
        """One client's round (a ``ClientOutcome``: ``gs``, ``gradip``, ``cosine``, ``losses``)."""
        for t in range(len(outcome.gs)):
            row = (round_, outcome.client, t, outcome.gs[t], outcome.gradip[t], outcome.cosine[t], outcome.losses[t])
            for col, val in zip(COLUMNS, row):
                self.columns[col].append(val)

    def write(self, run_dir: Path, run_seed: int, mask_sha256: str) -> None:
        tensors = {
            name: torch.tensor(vals, dtype=torch.int32 if name in INT_COLUMNS else torch.float64)
            for name, vals in self.columns.items()
        }
        md = {"format": FORMAT, "format_version": FORMAT_VERSION, "run_seed": str(run_seed), "mask_sha256": mask_sha256}
        write_bytes_atomic(Path(run_dir) / GRADIP_FILE, safetensors_bytes(tensors, md))
