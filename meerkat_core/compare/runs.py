"""Runs side by side (``meerkat report``): each run's settings and results, read from its directory.

Everything comes from ``config.json`` (the settings and provenance) and ``metrics.jsonl`` (one row per
round), so a run that is still training, or was killed, is reported as far as it got (``complete``
False, ``rounds_done`` < ``rounds``). ``summary.json`` is not needed.

- accuracy: the evaluated rows (round 0 is the starting point; with ``--eval-every 0`` only the start
  and the last round are evaluated); ``best`` is the highest evaluated accuracy after round 0;
- bytes: sums of the rounds' ``bytes_up`` / ``bytes_down`` (the protocol encodings, docs/RUN_FORMAT.md);
- time: the rounds' ``seconds`` plus the evaluations' ``eval_seconds`` (loading the model and data is
  not in it; rows written before ``eval_seconds`` existed count the rounds only).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from meerkat_core.errors import MeerkatInputError
from meerkat_core.rundir import CONFIG, METRICS, RunDir


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation of a run: after ``round`` rounds and ``cum_bytes`` bytes (up + down) in all."""

    round: int
    accuracy: float
    loss: float
    cum_bytes: int


@dataclass
class RunRecord:
    """One run's row of the comparison and its accuracy curve."""

    path: str
    label: str  # the shortest distinct tail of the path among the compared runs
    task: str
    model: str
    mask: str  # the mask file's name, or "all"
    k: int | None
    algorithm: str
    local_steps: int  # T
    rounds: int  # planned
    rounds_done: int
    client_steps: int
    skipped_steps: int
    initial_accuracy: float | None
    final_accuracy: float | None
    final_round: int | None  # the round of final_accuracy
    best_accuracy: float | None
    best_round: int | None
    eval_n: int | None
    bytes_up: int
    bytes_down: int
    seconds: float
    curve: list[CurvePoint] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.rounds_done >= self.rounds

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["complete"] = self.complete
        return doc


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def load_run(path: str | Path, label: str | None = None) -> RunRecord:
    """The record of the run in ``path`` (a one-line ``MeerkatInputError`` when it is not a run)."""
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise MeerkatInputError(f"run {run.path}: no such directory")
    if not run.exists():
        raise MeerkatInputError(f"run {run.path}: not a run directory (no {CONFIG}); give a directory written by "
                                "`meerkat train`")
    cfg = run.train_config()
    prov = run.read_config().get("provenance", {})
    metrics = run.read_metrics()
    rounds = [m for m in metrics if int(m.get("round", 0)) > 0]
    cum = 0
    curve: list[CurvePoint] = []
    for m in metrics:
        cum += int(m.get("bytes_up", 0)) + int(m.get("bytes_down", 0))
        acc = _finite(m.get("eval_accuracy"))
        if acc is not None:
            curve.append(CurvePoint(int(m["round"]), acc, _finite(m.get("eval_loss")) or math.nan, cum))
    later = [p for p in curve if p.round > 0]
    best = max(later, key=lambda p: p.accuracy, default=None)  # the first of equals: the earliest round
    start = next((p for p in curve if p.round == 0), None)
    last = later[-1] if later else None
    evals = [m for m in metrics if _finite(m.get("eval_accuracy")) is not None]
    return RunRecord(
        path=str(run.path), label=label or run.path.name, task=cfg.task, model=cfg.model,
        mask="all" if cfg.mask == "all" else Path(cfg.mask).name, k=prov.get("k"), algorithm=cfg.algorithm,
        local_steps=cfg.local_steps, rounds=cfg.rounds, rounds_done=max((int(m["round"]) for m in rounds), default=0),
        client_steps=sum(int(m.get("steps", 0)) for m in rounds), skipped_steps=sum(int(m.get("skipped", 0)) for m in rounds),
        initial_accuracy=start.accuracy if start else None,
        final_accuracy=last.accuracy if last else None, final_round=last.round if last else None,
        best_accuracy=best.accuracy if best else None, best_round=best.round if best else None,
        eval_n=int(evals[-1]["eval_n"]) if evals and "eval_n" in evals[-1] else None,
        bytes_up=sum(int(m.get("bytes_up", 0)) for m in rounds),
        bytes_down=sum(int(m.get("bytes_down", 0)) for m in rounds),
        seconds=sum(float(m.get("seconds", 0.0)) + float(m.get("eval_seconds", 0.0)) for m in metrics),
        curve=curve,
    )


def distinct_labels(paths: Sequence[str | Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (``a/run``, ``b/run``; ``run1``, ``run2``)."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    labels = []
    for i, p in enumerate(parts):
        n = 1
        while n < len(p) and any(q[-n:] == p[-n:] for j, q in enumerate(parts) if j != i):
            n += 1
        labels.append("/".join(p[-n:]))
    return labels


@dataclass
class Comparison:
    runs: list[RunRecord]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"runs": [r.to_json() for r in self.runs], "notes": self.notes}


def compare_runs(paths: Sequence[str | Path]) -> Comparison:
    """The records of ``paths`` in that order, with notes on what makes them hard to compare."""
    if not paths:
        raise MeerkatInputError("give at least one run directory: meerkat report RUN [RUN ...]")
    runs = [load_run(p, label) for p, label in zip(paths, distinct_labels(paths))]
    notes = []
    for r in runs:
        if not r.complete:
            notes.append(f"{r.label}: {r.rounds_done} of {r.rounds} rounds in {METRICS} (still running, or stopped)")
        if r.final_accuracy is None and r.rounds_done:
            notes.append(f"{r.label}: no evaluation after round 0 yet")
    if len({r.eval_n for r in runs if r.eval_n is not None}) > 1:
        notes.append("the runs were evaluated on different numbers of test examples (eval_n): "
                     + ", ".join(f"{r.label} {r.eval_n}" for r in runs))
    if len({r.task for r in runs}) > 1:
        notes.append("the runs are of different tasks: " + ", ".join(f"{r.label} {r.task}" for r in runs))
    return Comparison(runs=runs, notes=notes)
