"""meerkat's library API: one function per command, each taking that command's configuration.

Every ``meerkat`` command parses its flags (or ``--config FILE.toml``) into the configuration below,
calls ONE of these functions and renders what it returns; a notebook or a sweep script does the same
without the CLI and gets the same files::

    from meerkat_core import api
    from meerkat_core.config import MaskConfig, PartitionConfig, TrainConfig, EvalSettings

    api.make_mask(MaskConfig(model="tiny-llama", out="mask.safetensors", samples=8, seq_len=32))
    api.make_partition(PartitionConfig(task="sentiment2", clients=4, scheme="dirichlet", out="part"))
    run = api.train(TrainConfig(model="tiny-llama", mask="mask.safetensors", partition="part", out="run",
                                rounds=3, eval=EvalSettings(limit=16)))
    print(run.final_accuracy)

=================  =====================  ==================================================
function           configuration          writes / returns
=================  =====================  ==================================================
``make_mask``      ``MaskConfig``         ``cfg.out`` (mask .safetensors) / ``MaskMade``
``make_partition`` ``PartitionConfig``    ``cfg.out``/manifest.json (+ ``cfg.plot``) / ``PartitionMade``
``train``          ``TrainConfig``        the run directory ``cfg.out`` / ``TrainResult``
``evaluate``       ``EvalConfig``         nothing / ``Evaluation``
``export``         ``ExportConfig``       an HF model directory ``cfg.out`` / ``Exported``
``inspect_gradip`` ``InspectConfig``      ``cfg.plot`` when set / ``Report``
``report``         ``ReportConfig``       ``cfg.plot`` when set / ``Comparison``
``show_task``      ``TaskShowConfig``     nothing / the document ``meerkat tasks show --json`` prints
=================  =====================  ==================================================

Bad input of any kind raises ``meerkat_core.errors.MeerkatInputError`` (one line, naming the input and
the fix) before anything is written. Long work reports through optional callbacks: ``progress(done,
total, description)`` and ``on_event(message)``; ``train`` also calls ``on_round(row)`` with each
row it appends to ``metrics.jsonl`` (round 0 is the starting point's evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from meerkat_core.atomic import check_writable
from meerkat_core.compare import Comparison, compare_runs
from meerkat_core.compare.plot import plot_comparison
from meerkat_core.config import (
    EvalConfig, ExportConfig, InspectConfig, MaskConfig, PartitionConfig, ReportConfig, TaskShowConfig, TrainConfig,
)
from meerkat_core.encoding import encode_split
from meerkat_core.engines import run_engine
from meerkat_core.evaluation import EvalResult, evaluate_encoded, require_finite
from meerkat_core.fed.checkpoint import apply_checkpoint
from meerkat_core.fed.eval_inputs import resolve_eval_inputs
from meerkat_core.fed.export import export_run
from meerkat_core.gradip.plot import plot_report
from meerkat_core.gradip.report import Report, build_report
from meerkat_core.mask.make import MaskMade
from meerkat_core.mask.make import make_mask as _make_mask
from meerkat_core.models import load_model
from meerkat_core.partition.make import PartitionMade
from meerkat_core.partition.make import make_partition as _make_partition
from meerkat_core.rundir.logs import RunLogs
from meerkat_core.tasks import load_task_data
from meerkat_core.tasks.show import describe_task

ProgressFn = Callable[[int, "int | None", str], None]
EventFn = Callable[[str], None]
RoundFn = Callable[[dict[str, Any]], None]

__all__ = [
    "Comparison", "Evaluation", "Exported", "MaskMade", "PartitionMade", "Report", "TrainResult",
    "evaluate", "export", "inspect_gradip", "make_mask", "make_partition", "report", "show_task", "train",
]


def make_mask(cfg: MaskConfig, progress: ProgressFn | None = None, on_event: EventFn | None = None) -> MaskMade:
    """``meerkat mask``: backprop calibration text through ``cfg.model``, keep the global top-k weights
    (``cfg.density``), write the mask to ``cfg.out``. Returns the mask, its file size and statistics."""
    return _make_mask(cfg, progress=progress, on_event=on_event)


def make_partition(cfg: PartitionConfig, on_event: EventFn | None = None) -> PartitionMade:
    """``meerkat partition``: split a task's train split (``cfg.task``) or local files (``cfg.data``) over
    ``cfg.clients`` clients; write ``cfg.out/manifest.json`` (and the heatmap ``cfg.plot``)."""
    return _make_partition(cfg, on_event=on_event)


@dataclass
class TrainResult:
    """A finished (or resumed-to-the-end) run: its directory and ``summary.json``'s contents."""

    run: Path
    summary: dict[str, Any]

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_accuracy")

    @property
    def latest_checkpoint(self) -> Path | None:
        p = self.summary.get("latest_checkpoint")
        return None if p is None else Path(p)


def train(cfg: TrainConfig, on_round: RoundFn | None = None, on_event: EventFn | None = None) -> TrainResult:
    """``meerkat train``: federated sparse ZO fine-tuning into the run directory ``cfg.out`` (or, with
    ``cfg.resume``, continue it), on ``cfg.engine``. The run directory's files are docs/RUN_FORMAT.md;
    ``cfg.log`` adds ``RUN/metrics.csv`` and/or TensorBoard event files (``meerkat_core.rundir.logs``).

    ``on_round(row)`` is called with each row as soon as it is in ``metrics.jsonl``: round 0 (the
    starting point: ``eval_accuracy``, ``eval_loss``, ``eval_n``, ``eval_seconds``), then per round
    ``round``, ``clients`` (ids), ``mean_loss``, ``lr``, ``steps``, ``skipped``, ``bytes_up``,
    ``bytes_down``, ``seconds`` and, on evaluated rounds, the ``eval_*`` fields. A resumed run calls it
    from the first round it runs. An exception raised by the hook stops the run (its committed rounds
    stay; ``--resume`` continues it)."""
    with RunLogs(cfg.log, cfg.out, then=on_round) as logs:  # a missing tensorboardX: refused before any work
        summary = run_engine(cfg, on_round=logs, on_event=on_event)
    return TrainResult(run=Path(cfg.out), summary=summary)


@dataclass
class Evaluation:
    """``evaluate``'s result: the scores (``EvalResult``), the model and where it ran, the checkpoint."""

    result: EvalResult
    model: str
    device: str
    dtype: str
    checkpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        """What ``meerkat eval --json`` prints."""
        info = {"model": self.model, "device": self.device, "dtype": self.dtype}
        if self.checkpoint:
            info["checkpoint"] = self.checkpoint
        return {**self.result.to_dict(), **info}


def evaluate(cfg: EvalConfig, progress: ProgressFn | None = None) -> Evaluation:
    """``meerkat eval``: accuracy, loss, per-class accuracy and confusion of ``cfg.model`` (with the
    checkpoint ``cfg.checkpoint`` applied, when given) on ``cfg.task``'s ``cfg.split``. With a checkpoint,
    the model and task left out are the run's; another task than the run's needs ``cfg.cross_task``."""
    cfg.validate()
    model, spec = resolve_eval_inputs(cfg)
    data = load_task_data(spec)
    ds = data.split(cfg.split)
    if cfg.limit is not None:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    loaded = load_model(model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    checkpoint = apply_checkpoint(loaded, cfg.checkpoint, mask=cfg.mask) if cfg.checkpoint else None
    enc = encode_split(loaded.tokenizer, spec, ds, max_length=cfg.max_length)
    result = evaluate_encoded(
        loaded.model, enc, list(spec.label_names), loaded.tokenizer.pad_token_id,
        batch_size=cfg.batch_size, progress=progress, task=spec.name, split=cfg.split,
    )
    require_finite(result, f"model {model}" + (f" with checkpoint {checkpoint}" if checkpoint else ""))
    return Evaluation(result=result, model=model, device=str(loaded.device),
                      dtype=str(loaded.dtype).replace("torch.", ""), checkpoint=checkpoint)


@dataclass
class Exported:
    """``export``'s result: which checkpoint went onto which base model, and where the model is."""

    checkpoint: str
    model: str
    out: str

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "model": self.model, "out": self.out}


def export(cfg: ExportConfig) -> Exported:
    """``meerkat export``: write the base model with the run's (latest, or the given) checkpoint applied
    as a Hugging Face model directory (safetensors) at ``cfg.out``."""
    info = export_run(cfg.run, cfg.out, model=cfg.model, overwrite=cfg.overwrite, mask=cfg.mask)
    return Exported(checkpoint=info["checkpoint"], model=info["model"], out=info["out"])


def inspect_gradip(cfg: InspectConfig) -> Report:
    """``meerkat gradip inspect``: per client of one round, the GradIP trajectory statistics, the
    Meerkat-vp classification and whether the run stopped the client; writes the PNG ``cfg.plot``."""
    if cfg.plot is not None:
        check_writable(cfg.plot, "--plot")  # before the report is built
    report = build_report(cfg.run, round_=cfg.round, client=cfg.client, classifier=cfg.classifier)
    if cfg.plot is not None:
        plot_report(report, cfg.plot)
    return report


def report(cfg: ReportConfig) -> Comparison:
    """``meerkat report``: the runs ``cfg.runs`` side by side (task, model, mask, algorithm, T, rounds,
    client steps, accuracy at the start, at the end and at best, bytes up and down, time) from their
    directories, also while they train; writes the PNG ``cfg.plot`` (accuracy against rounds and
    against cumulative bytes, one line per run)."""
    cfg.validate()
    cmp = compare_runs(cfg.runs)
    if cfg.plot is not None:
        plot_comparison(cmp, cfg.plot)
    return cmp


def show_task(cfg: TaskShowConfig) -> dict[str, Any]:
    """``meerkat tasks show``: the prompts ``cfg.task`` builds for its first ``cfg.n`` rows, each label
    word's tokens under ``cfg.model``'s tokenizer, the class counts per split (docs/TASKS.md)."""
    return describe_task(cfg)
