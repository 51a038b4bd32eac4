"""A run's GradIP trajectories per (round, client), read from ``gradip.safetensors`` (its format:
``meerkat_core.gradip.file``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip.file import GRADIP_FILE, bad_file, read_run_columns


@dataclass(frozen=True)
class Trajectory:
    """One client's local steps in one round, in step order (float64 arrays of one length)."""

    round: int
    client: int
    gradip: np.ndarray
    g: np.ndarray
    cosine: np.ndarray
    loss: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.gradip.size)

    @property
    def abs_gradip(self) -> np.ndarray:
        return np.abs(self.gradip)

    @classmethod
    def from_lists(cls, round_: int, client: int, gradip: list[float], g: list[float] | None = None,
                   cosine: list[float] | None = None, loss: list[float] | None = None) -> "Trajectory":
        n = len(gradip)

        def arr(v: list[float] | None) -> np.ndarray:
            return np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64)

        return cls(round_, client, arr(gradip), arr(g), arr(cosine), arr(loss))


@dataclass(frozen=True)
class RunTrajectories:
    """All trajectories of a run, keyed by (round, client)."""

    path: Path
    items: dict[tuple[int, int], Trajectory]

    def rounds(self) -> list[int]:
        return sorted({r for r, _ in self.items})

    def clients(self, round_: int) -> list[int]:
        return sorted(c for r, c in self.items if r == round_)

    def for_round(self, round_: int) -> dict[int, Trajectory]:
        return {c: self.items[(round_, c)] for c in self.clients(round_)}

    def __iter__(self) -> Iterator[Trajectory]:
        return iter(self.items[k] for k in sorted(self.items))

    def has_values(self) -> bool:
        return any(np.isfinite(t.gradip).any() for t in self.items.values())


def load_trajectories(run_dir: str | Path) -> RunTrajectories:
    """Every (round, client) trajectory of the run in ``run_dir``, steps in order."""
    run = Path(run_dir)
    path = run / GRADIP_FILE
    if not run.is_dir():
        raise MeerkatInputError(f"run {run}: no such directory")
    found = read_run_columns(run)  # a job still training (or killed) has rows in the side file too
    if found is None:
        raise MeerkatInputError(
            f"run {run} has no GradIP trajectories ({GRADIP_FILE} missing); it was written by `meerkat train` "
            "after the first round"
        )
    cols = found
    order = np.lexsort((cols["step"], cols["client"], cols["round"]))
    cols = {k: v[order] for k, v in cols.items()}
    items: dict[tuple[int, int], Trajectory] = {}
    keys = np.stack([cols["round"], cols["client"]], axis=1).astype(np.int64)
    if keys.size == 0:
        raise MeerkatInputError(f"run {run} has no GradIP trajectories ({GRADIP_FILE} is empty)")
    breaks = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(keys)]):
        steps = cols["step"][lo:hi]
        if not np.array_equal(steps, np.arange(hi - lo)):
            raise bad_file(path, f"corrupt GradIP file (round {keys[lo, 0]} client {keys[lo, 1]} has steps out of sequence)")
        r, c = int(keys[lo, 0]), int(keys[lo, 1])
        items[(r, c)] = Trajectory(
            r, c, *(cols[name][lo:hi].astype(np.float64) for name in ("gradip", "g", "cosine", "loss"))
        )
    return RunTrajectories(path, items)
