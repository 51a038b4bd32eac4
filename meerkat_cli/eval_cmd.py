"""``meerkat eval``: accuracy of the base model, or of a run's checkpoint, on a task split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from meerkat_cli.common import JsonOption, cli_errors, emit_json, err, out, progress_callback


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


def eval_command(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Built-in name, local HF directory, .gguf file or hub id."),
    task: str = typer.Option("sentiment2", "--task", "-t", help="Built-in task (see `meerkat tasks`) or a task JSON file."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A run directory or checkpoint file to apply first."),
    split: str = typer.Option("test", "--split", help="test or train."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N examples only."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_length: int = typer.Option(128, "--max-length", min=8, help="Prompt tokens kept (the end is kept)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a hub model's own code to run."),
    json_out: bool = JsonOption,
) -> None:
    """Evaluate a model (or a checkpoint of a run) on a task: accuracy, loss, per-class accuracy, confusion."""
    with cli_errors():
        from meerkat_core.pipeline import run_eval

        with progress_callback() as progress:
            result, info = run_eval(
                model=model, task=task, checkpoint=str(checkpoint) if checkpoint else None, split=split,
                limit=limit, batch_size=batch_size, max_length=max_length, device=device, dtype=dtype,
                trust_remote_code=trust_remote_code, progress=progress,
            )
    if json_out:
        emit_json({**result.to_dict(), **info})
        return
    title = f"{info['model']} on {result.task}" + (f" + checkpoint {info['checkpoint']}" if info.get("checkpoint") else "")
    for table in render_eval(result, title):
        out.print(table)
    err.print(f"[dim]device {info['device']}, dtype {info['dtype']}[/]")
