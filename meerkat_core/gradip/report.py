"""What ``meerkat gradip inspect`` shows: per client, the trajectory statistics of one round, the
classification (with each statistic beside its threshold), the partition's ground truth when the
partition is still at hand, and, for a Meerkat-vp run, what the run decided (from the ledger).

On a plain Meerkat run the first round's trajectories are classified with the run's (default)
classifier settings: what Meerkat-vp would have decided. The classifier sees the whole round even when
one client is shown (the default classifier decides relative to the round's population).

Beside the classified round, each shown client's history: its trajectory across every round it took
part in (``ClientHistory``), so a plain run of a few local steps per round still shows a trend. When
the classified round had fewer steps than the classifier needs (``min_calibration_steps``), the
report says so (``short_calibration``, ``warning``); when the calibration loss rose for a third of the
clients or more (a step size the task diverges at), it says that too (``loss_warning``), and when the
classifier reads the loss on a run trained with ``--loss lm`` (``lm_warning``). ``classifier["signal"]``
names the per-step trajectory the decision reads; each row holds the round's local loss beside |GradIP|.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip.classify import (
    Classifier,
    Decision,
    classifier_from_settings,
    lm_loss_warning,
    rising_loss_warning,
    short_calibration_warning,
)
from meerkat_core.gradip.trajectories import RunTrajectories, Trajectory, load_trajectories
from meerkat_core.partition import load_partition
from meerkat_core.rundir import RunDir

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: np.ndarray | list[float], width: int = 40) -> str:
    """Unicode bars of ``values`` (bucket means when longer than ``width``), scaled to their max."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return ""
    buckets = np.array_split(a, min(width, a.size))
    means = [float(np.nanmean(b)) if np.isfinite(b).any() else math.nan for b in buckets]
    finite = [m for m in means if math.isfinite(m)]
    top = max(finite) if finite else 0.0
    out = []
    for m in means:
        if not math.isfinite(m):
            out.append(" ")
        else:
            level = 0 if top <= 0 else min(len(BARS) - 1, int(round(m / top * (len(BARS) - 1))))
            out.append(BARS[level])
    return "".join(out)


@dataclass
class ClientHistory:
    """One client's GradIP across every round it took part in (rounds in order, steps in order)."""

    rounds: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # local steps per round taken
    abs_gradip: list[float] = field(default_factory=list)  # the rounds' |GradIP| one after another
    round_means: list[float] = field(default_factory=list)  # mean |GradIP| per round taken (nan steps left out)
    sparkline: str = ""  # of round_means: one bar per round taken (bucket means past 32)


def client_history(trajs: RunTrajectories, client: int) -> ClientHistory:
    h = ClientHistory()
    for t in (trajs.items[k] for k in sorted(trajs.items) if k[1] == client):
        a = t.abs_gradip
        finite = a[np.isfinite(a)]
        h.rounds.append(t.round)
        h.steps.append(t.steps)
        h.abs_gradip.extend(float(v) for v in a)
        h.round_means.append(float(finite.mean()) if finite.size else math.nan)
    h.sparkline = sparkline(h.round_means, width=32)
    return h


@dataclass
class ClientRow:
    client: int
    steps: int
    stats: dict[str, float]
    margins: dict[str, float]
    flagged: bool
    stopped: bool | None = None  # None: not a Meerkat-vp run (nothing was stopped)
    is_extreme: bool | None = None  # None: partition not available
    label_entropy_bits: float | None = None
    assigned_label: int | None = None
    abs_gradip: list[float] = field(default_factory=list)
    sparkline: str = ""  # of abs_gradip
    loss: list[float] = field(default_factory=list)  # the client's local loss per step of the round
    loss_sparkline: str = ""
    history: ClientHistory = field(default_factory=ClientHistory)


@dataclass
class Report:
    run: str
    round: int
    rounds: list[int]
    algorithm: str
    classifier: dict[str, Any]
    decision_source: str  # "ledger" (a Meerkat-vp run's own decision) or "computed"
    rows: list[ClientRow]
    partition: str | None
    outcome: str = "none"  # flagged | none | abstained (Decision.outcome)
    reason: str = ""
    population: dict[str, float] = field(default_factory=dict)
    calibration_steps: int = 0
    min_calibration_steps: int = 0
    notes: list[str] = field(default_factory=list)
    loss_warning: str | None = None  # classify.rising_loss_warning: the calibration loss rose for many clients
    lm_warning: str | None = None  # classify.lm_loss_warning: a loss-reading classifier on a --loss lm run

    @property
    def signal(self) -> str:
        return str(self.classifier.get("signal", "gradip"))

    @property
    def short_calibration(self) -> bool:
        return self.calibration_steps < self.min_calibration_steps

    def warning(self) -> str | None:
        w = short_calibration_warning(self.calibration_steps, self.min_calibration_steps, self.classifier["name"])
        return None if w is None else f"short calibration: {w}"

    @property
    def flagged(self) -> list[int]:
        return [r.client for r in self.rows if r.flagged]

    @property
    def extreme(self) -> list[int] | None:
        if any(r.is_extreme is None for r in self.rows):
            return None
        return [r.client for r in self.rows if r.is_extreme]

    def detector(self) -> dict[str, Any] | None:
        """How the flags compare with the partition's single-label clients, and the separation of each
        thresholded statistic (min over extreme clients vs max over the others)."""
        ext = self.extreme
        if ext is None:
            return None
        flagged, e = set(self.flagged), set(ext)
        sep: dict[str, Any] = {}
        for key, thr in self.classifier["thresholds"].items():
            xs = [r.stats.get(key, math.nan) for r in self.rows if r.is_extreme]
            ys = [r.stats.get(key, math.nan) for r in self.rows if not r.is_extreme]
            sep[key] = {
                "threshold": thr,
                "min_extreme": min(xs) if xs else None,
                "max_other": max(ys) if ys else None,
            }
        return {
            "extreme": sorted(e),
            "flagged": sorted(flagged),
            "true_positives": sorted(flagged & e),
            "false_positives": sorted(flagged - e),
            "false_negatives": sorted(e - flagged),
            "exact": flagged == e,
            "separation": sep,
        }

    def to_json(self) -> dict[str, Any]:
        doc = {
            "run": self.run, "round": self.round, "rounds": self.rounds, "algorithm": self.algorithm,
            "classifier": self.classifier, "decision_source": self.decision_source,
            "partition": self.partition, "flagged": self.flagged, "extreme": self.extreme,
            "stopped": sorted(r.client for r in self.rows if r.stopped) if self.algorithm == "meerkat-vp" else None,
            "outcome": self.outcome, "reason": self.reason, "population": self.population,
            "calibration_steps": self.calibration_steps, "min_calibration_steps": self.min_calibration_steps,
            "short_calibration": self.short_calibration, "warning": self.warning(),
            "loss_warning": self.loss_warning, "lm_warning": self.lm_warning,
            "detector": self.detector(), "notes": self.notes,
            "clients": [asdict(r) for r in self.rows],
        }
        return finite_json(doc)


def finite_json(obj: Any) -> Any:
    """A JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return finite_json(obj.item())
    return obj


def _partition(train_cfg: TrainConfig, notes: list[str]) -> Any | None:
    if not train_cfg.partition:
        return None
    try:
        return load_partition(train_cfg.partition)
    except MeerkatInputError as exc:
        notes.append(f"partition not used ({' '.join(str(exc).split())})")
        return None


def run_classifier(train_cfg: TrainConfig, name: str | None = None) -> Classifier:
    return classifier_from_settings(train_cfg.vp, name)


def _ledger_outcome(vp: dict[str, Any]) -> tuple[str, str]:
    """A ledger record's outcome (records written before the outcome was logged: from its flags)."""
    if "outcome" in vp:
        return str(vp["outcome"]), str(vp.get("reason", ""))
    return ("flagged" if vp["flagged"] else "none"), ""


def build_report(run_dir: str | Path, round_: int | None = None, client: int | None = None,
                 classifier: str | None = None) -> Report:
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise MeerkatInputError(f"run {run.path}: no such directory")
    if not run.exists():
        raise MeerkatInputError(f"run {run.path}: not a run directory (no config.json)")
    trajs: RunTrajectories = load_trajectories(run.path)
    if not trajs.has_values():
        raise MeerkatInputError(
            f"run {run.path} has no GradIP trajectories (every value is nan: trained with --mask all, so the "
            "server holds no pre-training gradient)"
        )
    train_cfg = run.train_config()
    algorithm = train_cfg.algorithm
    rounds = trajs.rounds()
    r = rounds[0] if round_ is None else round_
    if r not in rounds:
        raise MeerkatInputError(f"--round {r}: run {run.path} has GradIP trajectories for rounds {rounds[0]}..{rounds[-1]}")
    items: dict[int, Trajectory] = trajs.for_round(r)
    if client is not None and client not in items:
        raise MeerkatInputError(f"--client {client}: not in round {r} of run {run.path} (clients {sorted(items)})")
    notes: list[str] = []
    clf = run_classifier(train_cfg, classifier)
    decision: Decision = clf.classify(items)  # the whole round, whatever --client shows
    _, round_records, _ = run.read_ledger()
    vp = round_records.get(1, {}).get("vp") if algorithm == "meerkat-vp" else None
    use_ledger = vp is not None and r == 1 and classifier is None
    if algorithm == "meerkat" and r == 1:
        notes.append("plain Meerkat run: flags show what Meerkat-vp would have decided on this round")
    manifest = _partition(train_cfg, notes)
    flagged = {int(c) for c in vp["flagged"]} if use_ledger else set(decision.flagged)
    outcome, reason = _ledger_outcome(vp) if use_ledger else (decision.outcome, decision.reason)
    if use_ledger and set(decision.flagged) != flagged:
        notes.append("the ledger's decision differs from a recomputation with the run's classifier settings")
    rows = []
    for c, t in items.items():
        if client is not None and c != client:
            continue
        info = manifest.clients[c] if manifest is not None and 0 <= c < manifest.num_clients else None
        rows.append(ClientRow(
            client=c, steps=t.steps, stats=decision.stats[c], margins=decision.margins[c], flagged=c in flagged,
            stopped=(int(c) in vp["stopped"]) if vp is not None else None,
            is_extreme=info.is_extreme if info is not None else None,
            label_entropy_bits=info.label_entropy_bits if info is not None else None,
            assigned_label=info.assigned_label if info is not None else None,
            abs_gradip=[float(v) for v in t.abs_gradip], sparkline=sparkline(t.abs_gradip, width=32),
            loss=[float(v) for v in t.loss], loss_sparkline=sparkline(t.loss, width=32),
            history=client_history(trajs, c),
        ))
    report = Report(
        run=str(run.path), round=r, rounds=rounds, algorithm=algorithm,
        classifier={"name": clf.name, "params": clf.params(), "thresholds": clf.thresholds(),
                    "min_calibration_steps": clf.min_calibration_steps, "signal": clf.signal},
        decision_source="ledger" if use_ledger else "computed", rows=rows,
        partition=str(manifest.path) if manifest is not None else None, outcome=outcome, reason=reason,
        population=decision.population, calibration_steps=decision.calibration_steps,
        min_calibration_steps=decision.min_calibration_steps, notes=notes,
        loss_warning=rising_loss_warning(items), lm_warning=lm_loss_warning(clf, train_cfg.loss),
    )
    if report.warning():
        notes.insert(0, report.warning() or "")
    return report
