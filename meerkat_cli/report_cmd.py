"""``meerkat report RUN [RUN ...]``: runs side by side, a table (or ``--json``) and a plot."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from meerkat_cli.common import JSON_PARAM, cli_errors, emit_json, err, fmt_bytes, out, print_table
from meerkat_cli.options import config_command
from meerkat_core.config import ReportConfig

COLUMNS = ("run", "task", "model", "mask", "algorithm", "T", "rounds", "client steps", "acc start", "acc final",
           "acc best (round)", "bytes up", "bytes down", "time")


def _acc(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h")


def render_table(cmp: Any) -> Table:
    table = Table(title="runs side by side (test accuracy; time = rounds + evaluations)", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("run", "task", "model", "mask", "algorithm") else "right")
    for r in cmp.runs:
        mask = r.mask if r.k is None else f"{r.mask} (k={r.k:,})"
        rounds = str(r.rounds_done) if r.complete else f"{r.rounds_done}/{r.rounds}"
        best = "-" if r.best_accuracy is None else f"{r.best_accuracy:.4f} ({r.best_round})"
        table.add_row(r.label, r.task, r.model, mask, r.algorithm, str(r.local_steps), rounds, f"{r.client_steps:,}",
                      _acc(r.initial_accuracy), _acc(r.final_accuracy), best, fmt_bytes(r.bytes_up),
                      fmt_bytes(r.bytes_down), _duration(r.seconds))
    return table


def _report(cfg: ReportConfig, json_out: bool) -> None:
    from meerkat_core import api  # matplotlib: imported when the command runs, not for --help

    with cli_errors(json_out):
        cmp = api.report(cfg)
    if cfg.plot is not None:
        err.print(f"wrote {cfg.plot}", markup=False)
    if json_out:
        emit_json(cmp.to_json())
        return
    print_table(render_table(cmp))
    for note in cmp.notes:
        out.print(f"note: {note}", markup=False)


report_command = config_command(
    ReportConfig, _report, command="report", extras=[JSON_PARAM],
    doc="""Runs side by side: task, model, mask, algorithm, T, rounds, client steps, accuracy (start, final,
    best), bytes up and down, time. --plot FILE.png draws accuracy against rounds and against cumulative
    bytes [up + down], one line per run. Works on runs still training.""",
)
