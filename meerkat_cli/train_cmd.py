"""``meerkat train`` (federated sparse ZO fine-tuning) and ``meerkat export`` (merged HF model)."""

from __future__ import annotations

import math
from typing import Any, Optional

from rich.table import Table

from meerkat_cli.common import JSON_PARAM, cli_errors, emit_json, err, fmt_bytes, out
from meerkat_cli.options import config_command
from meerkat_cli.progress import RoundView
from meerkat_core.config import ExportConfig, TrainConfig
from meerkat_core.gradip.classify import classifier_names


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"run {summary['run']}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("algorithm", summary["algorithm"]),
        ("rounds", str(summary["rounds"])),
        ("k / d", f"{summary['k']:,} / {summary['d']:,}"),
        ("accuracy before", _pct(summary["initial_accuracy"])),
        ("accuracy after", _pct(summary["final_accuracy"])),
        ("client steps", f"{summary['total_client_steps']:,} ({summary['skipped_steps']} skipped)"),
        ("uplink total", fmt_bytes(summary["bytes_up"])),
        ("downlink total", fmt_bytes(summary["bytes_down"])),
        ("uplink per step", f"{summary['uplink_bytes_per_step']:.1f} B" if summary["uplink_bytes_per_step"] else "-"),
        ("wall time", f"{summary['seconds_this_invocation']:.1f} s"),
        ("checkpoint", str(summary["latest_checkpoint"])),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def _pct(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _event(message: str) -> None:
    """A progress message on stderr; warnings (a short calibration, ...) stand out."""
    err.print(message, style="yellow" if message.startswith("warning:") else "dim", markup=False)


def _train(cfg: TrainConfig, json_out: bool) -> None:
    from meerkat_core import api  # torch and transformers: imported when a command runs, not for --help

    with cli_errors(json_out), RoundView(cfg.rounds) as view:
        result = api.train(cfg, on_round=view, on_event=_event)
    if json_out:
        emit_json(result.summary)
    else:
        out.print(_summary_table(result.summary))


train_command = config_command(
    TrainConfig, _train, command="train", config_file=True, extras=[JSON_PARAM],
    choices={"vp.classifier": classifier_names},
    doc="Federated sparse zeroth-order fine-tuning (Meerkat): clients send scalars, the server replays them.",
)


def _export(cfg: ExportConfig, json_out: bool) -> None:
    from meerkat_core import api

    with cli_errors(json_out):
        done = api.export(cfg)
    if json_out:
        emit_json(done.to_json())
    else:
        out.print(f"exported {done.checkpoint} onto {done.model} -> {done.out}", markup=False)


export_command = config_command(
    ExportConfig, _export, command="export", extras=[JSON_PARAM],
    doc="Write base model + trained coordinates as a Hugging Face model directory (safetensors).",
)
