"""``meerkat train`` (federated sparse ZO fine-tuning) and ``meerkat export`` (merged HF model)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from meerkat_cli.common import JsonOption, cli_errors, emit_json, err, make_progress, out
from meerkat_core.flower import INSTALL_LINE

FLOWER_INSTALL = INSTALL_LINE.replace("[", "\\[")  # rich markup in --help would swallow "[flower]"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


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
        ("uplink total", _fmt_bytes(summary["bytes_up"])),
        ("downlink total", _fmt_bytes(summary["bytes_down"])),
        ("uplink per step", f"{summary['uplink_bytes_per_step']:.1f} B" if summary["uplink_bytes_per_step"] else "-"),
        ("wall time", f"{summary['seconds_this_invocation']:.1f} s"),
        ("checkpoint", str(summary["latest_checkpoint"])),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def _pct(v: Optional[float]) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def train_command(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Built-in name, local HF directory, .gguf or hub id."),
    mask: str = typer.Option(..., "--mask", help="Mask file from `meerkat mask`, or 'all' for full-parameter ZO."),
    partition: Path = typer.Option(..., "--partition", help="Directory written by `meerkat partition`."),
    task: str = typer.Option("sentiment2", "--task", "-t", help="The task the partition was made from."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory to create (or to continue with --resume)."),
    rounds: int = typer.Option(20, "--rounds"),
    local_steps: int = typer.Option(10, "--local-steps", help="ZO steps per client per round (T)."),
    clients_per_round: int = typer.Option(10, "--clients-per-round"),
    lr: float = typer.Option(1e-4, "--lr"),
    eps: float = typer.Option(1e-3, "--eps", help="Perturbation scale."),
    batch_size: int = typer.Option(8, "--batch-size"),
    schedule: str = typer.Option("constant", "--schedule", help="Learning-rate schedule over rounds: constant, linear, cosine."),
    loss: str = typer.Option("lm", "--loss", help="lm: cross-entropy of the label word over the vocabulary (METHOD.md); classification: over the task's label words only (MeZO's train_as_classification)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, fp32, bf16 or fp16."),
    max_length: int = typer.Option(128, "--max-length"),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate every E rounds (0: before and after only)."),
    eval_limit: Optional[int] = typer.Option(200, "--eval-limit", help="Test examples used by the evaluations."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Checkpoint every C rounds (0: final only)."),
    sync: str = typer.Option("auto", "--sync", help="How clients get the global state: replay (seeds+scalars), vector, auto."),
    algorithm: str = typer.Option("meerkat", "--algorithm", help="meerkat or meerkat-vp."),
    vp_calibration_steps: int = typer.Option(100, "--vp-calibration-steps", help="Meerkat-vp: steps per client in the calibration round."),
    vp_stopped_steps: int = typer.Option(1, "--vp-stopped-steps", help="Meerkat-vp: steps per round for flagged clients."),
    vp_classifier: str = typer.Option("rho", "--vp-classifier", help="Meerkat-vp: classifier of calibration trajectories (rho, none); docs/GRADIP.md."),
    vp_initial_frac: float = typer.Option(0.3, "--vp-initial-frac", help="Meerkat-vp: initial phase = this share of the first calibration steps."),
    vp_later_frac: float = typer.Option(0.5, "--vp-later-frac", help="Meerkat-vp: later phase = this share of the last calibration steps."),
    vp_quiet_factor: float = typer.Option(0.3, "--vp-quiet-factor", help="Meerkat-vp: quiet level sigma = this x mean |GradIP| of the initial phase."),
    vp_rho_later: float = typer.Option(2.0, "--vp-rho-later", help="Meerkat-vp: flag needs rho_later above this."),
    vp_rho_quie: float = typer.Option(0.5, "--vp-rho-quie", help="Meerkat-vp: flag needs rho_quie above this."),
    vp_control: str = typer.Option("none", "--vp-control", help="Meerkat-vp: none, or random (stop as many random clients as were flagged)."),
    z_cache_mb: int = typer.Option(128, "--z-cache-mb", help="Memory (MiB) for a step's z: when k x 4 B fits, z is drawn once per step instead of three times (--mask all on a large model: about d x 4 B / 2^20). Results are the same bits."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last complete round."),
    engine: str = typer.Option("inprocess", "--engine", help="inprocess; flower: a Flower deployment (local on loopback, or --superlink); flower-sim: Flower's simulation engine. The Flower engines need the extra: " + FLOWER_INSTALL + " (docs/DEPLOY_FLOWER.md)."),
    superlink: Optional[str] = typer.Option(None, "--superlink", help="--engine flower: submit to the SuperLink at HOST:PORT (on this machine) instead of starting a local deployment."),
    superlink_ca: Optional[Path] = typer.Option(None, "--superlink-ca", help="--superlink: the CA certificate of its TLS (without it the connection is insecure)."),
    json_out: bool = JsonOption,
) -> None:
    """Federated sparse zeroth-order fine-tuning (Meerkat): clients send scalars, the server replays them."""
    with cli_errors():
        from meerkat_core.fed.config import TrainConfig
        from meerkat_core.fed.engines import run_engine

        cfg = TrainConfig(
            model=model, mask=mask, partition=str(partition), task=task, out=str(out_dir), rounds=rounds,
            local_steps=local_steps, clients_per_round=clients_per_round, lr=lr, eps=eps, batch_size=batch_size,
            schedule=schedule, loss=loss, seed=seed, device=device, dtype=dtype, max_length=max_length, eval_every=eval_every,
            eval_limit=eval_limit, checkpoint_every=checkpoint_every, sync=sync, algorithm=algorithm,
            vp_calibration_steps=vp_calibration_steps, vp_stopped_steps=vp_stopped_steps,
            vp_classifier=vp_classifier, vp_initial_frac=vp_initial_frac, vp_later_frac=vp_later_frac,
            vp_quiet_factor=vp_quiet_factor, vp_rho_later=vp_rho_later, vp_rho_quie=vp_rho_quie, vp_control=vp_control,
            z_cache_mb=z_cache_mb, trust_remote_code=trust_remote_code, resume=resume,
        ).validate()
        with make_progress(transient=True) as progress:
            bar = progress.add_task("training", total=rounds)

            def on_round(row: dict[str, Any]) -> None:
                r = row["round"]
                parts = [f"round {r}/{rounds}"]
                if "mean_loss" in row:
                    parts.append(f"loss {row['mean_loss']:.4f}")
                if "eval_accuracy" in row:
                    parts.append(f"acc {row['eval_accuracy']:.4f}")
                if "bytes_up" in row:
                    parts.append(f"↑{_fmt_bytes(row['bytes_up'])} ↓{_fmt_bytes(row['bytes_down'])}")
                progress.update(bar, completed=r, description=" | ".join(parts))

            summary = run_engine(engine, cfg, on_round=on_round, on_event=lambda m: err.print(m, style="dim", markup=False),
                                 superlink=superlink, superlink_ca=None if superlink_ca is None else str(superlink_ca))
    if json_out:
        emit_json(summary)
    else:
        out.print(_summary_table(summary))


def export_command(
    run: Path = typer.Argument(..., help="Run directory (its latest checkpoint) or a checkpoint file."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the merged model (save_pretrained, safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (default: the run's)."),
    json_out: bool = JsonOption,
) -> None:
    """Write base model + trained coordinates as a Hugging Face model directory (safetensors)."""
    with cli_errors():
        from meerkat_core.fed.export import export_run

        info = export_run(str(run), str(out_dir), model=model)
    if json_out:
        emit_json(info)
    else:
        out.print(f"exported {info['checkpoint']} onto {info['model']} -> {info['out']}")
