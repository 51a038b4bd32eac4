"""``meerkat eval``: accuracy of the base model, or of a run's checkpoint, on a task split."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from meerkat_cli.common import JSON_PARAM, cli_errors, emit_json, err, out
from meerkat_cli.progress import progress_callback
from meerkat_cli.options import config_command
from meerkat_core.config import EvalConfig


def render_eval(result: Any, title: str) -> list[Table]:
    summary = Table(title=title, title_justify="left")
    for col in ("task", "split", "n", "accuracy", "mean loss", "seconds"):
        summary.add_column(col, justify="right" if col not in ("task", "split") else "left")
    summary.add_row(
        result.task, result.split, str(result.n), f"{result.accuracy:.4f}", f"{result.mean_loss:.4f}",
        f"{result.seconds:.1f}",
    )
    conf = Table(title="per class (rows: true label, columns: predicted)", title_justify="left")
    conf.add_column("class")
    conf.add_column("accuracy", justify="right")
    for name in result.label_names:
        conf.add_column(f"→ {name}", justify="right")
    for k, name in enumerate(result.label_names):
        acc = result.per_class_accuracy[name]
        conf.add_row(name, f"{acc:.4f}", *(str(v) for v in result.confusion[k]))
    return [summary, conf]


def _eval(cfg: EvalConfig, json_out: bool) -> None:
    from meerkat_core import api  # torch and transformers: imported when a command runs, not for --help

    with cli_errors(json_out), progress_callback() as progress:
        ev = api.evaluate(cfg, progress=progress)
    if json_out:
        emit_json(ev.to_json())
        return
    result = ev.result
    title = f"{ev.model} on {result.task}" + (f" + checkpoint {ev.checkpoint}" if ev.checkpoint else "")
    for table in render_eval(result, title):
        out.print(table)
    err.print(f"device {ev.device}, dtype {ev.dtype}", style="dim", markup=False)


eval_command = config_command(
    EvalConfig, _eval, command="eval", config_file=True, extras=[JSON_PARAM],
    doc="Evaluate a model (or a checkpoint of a run) on a task: accuracy, loss, per-class accuracy, confusion.",
)
