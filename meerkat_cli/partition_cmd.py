"""``meerkat partition``: split a task's train split (or local files) over federated clients.

Register with ``app.command("partition")(partition_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from meerkat_cli.common import cli_errors, emit_json, err, out
from meerkat_core.errors import MeerkatInputError

# meerkat_core.partition pulls in datasets/flwr-datasets (seconds to import): imported inside the
# command so that `meerkat --help` stays fast.
if TYPE_CHECKING:  # pragma: no cover
    from meerkat_core.partition.core import PartitionResult

SCHEMES = ("iid", "dirichlet", "pathological", "mixed")

_MAX_LABEL_COLUMNS = 8


def _load_task(name: str) -> tuple[Any, Any, Any]:
    """(task spec, train Dataset, test Dataset or None) for a registered task."""
    try:
        from meerkat_core.tasks import get_task, load_task_data
    except ImportError as exc:  # pragma: no cover - the registry ships with meerkat_core
        raise MeerkatInputError(f"--task needs the task registry (meerkat_core.tasks): {exc}") from None
    task = get_task(name)
    data = load_task_data(task)
    return task, data.train, getattr(data, "test", None)


def load_files(paths: list[str]) -> Any:
    """Local csv/jsonl/parquet files as one ``datasets.Dataset`` (the tasks module's loader)."""
    try:
        from meerkat_core.tasks.sources import load_local_files
    except ImportError as exc:  # pragma: no cover - the loader ships with meerkat_core
        raise MeerkatInputError(f"--data needs meerkat_core.tasks.sources.load_local_files: {exc}") from None
    return load_local_files(paths)


def _label_header(result: "PartitionResult", j: int) -> str:
    names = result.label_names
    return names[j] if names and j < len(names) else str(j)


def render_table(result: "PartitionResult", title: str) -> Table:
    """Per-client size, label counts, TV distance, entropy and the single-label (extreme) flag."""
    table = Table(title=title, title_justify="left")
    table.add_column("client", justify="right")
    table.add_column("size", justify="right")
    wide = result.num_classes <= _MAX_LABEL_COLUMNS
    if wide:
        for j in range(result.num_classes):
            table.add_column(_label_header(result, j), justify="right")
    else:
        table.add_column("label counts (nonzero)")
    table.add_column("TV", justify="right")
    table.add_column("entropy", justify="right")
    table.add_column("extreme", justify="center")

    def counts_cells(counts: list[int]) -> list[str]:
        if wide:
            return [str(c) for c in counts]
        return [" ".join(f"{_label_header(result, j)}:{c}" for j, c in enumerate(counts) if c)]

    for c in result.clients:
        flag = "yes" if c.is_extreme else ""
        if c.is_extreme and c.assigned_label is not None:
            flag = f"yes ({_label_header(result, c.assigned_label)})"
        table.add_row(
            str(c.id), str(c.size), *counts_cells(c.label_counts),
            f"{c.tv_distance:.3f}", f"{c.label_entropy_bits:.3f}", flag,
        )
    s = result.summary()
    table.add_section()
    table.add_row(
        "all", str(result.num_samples), *counts_cells(result.global_label_counts),
        f"mean {s['tv_distance_mean']:.3f}", "", f"{s['num_extreme']}",
    )
    return table


def partition_command(
    task: Optional[str] = typer.Option(None, "--task", help="Registered task whose train split to partition."),
    data: Optional[list[Path]] = typer.Option(
        None, "--data", help="Local data file (csv/jsonl/parquet) instead of --task; repeat for several."
    ),
    label_column: str = typer.Option("label", "--label-column", help="Column holding the labels."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the input text."),
    clients: int = typer.Option(..., "--clients", help="Number of clients N."),
    scheme: str = typer.Option("iid", "--scheme", help="iid | dirichlet | pathological | mixed."),
    alpha: float = typer.Option(0.5, "--alpha", help="Dirichlet concentration (> 0; small = skewed)."),
    labels_per_client: int = typer.Option(1, "--labels-per-client", help="Pathological: labels per client K."),
    extreme_clients: int = typer.Option(0, "--extreme-clients", help="Mixed: number E of single-label clients."),
    min_size: int = typer.Option(1, "--min-size", help="Minimum samples per client (>= 1)."),
    self_balancing: bool = typer.Option(
        False, "--self-balancing/--no-self-balancing", help="Dirichlet: stop filling clients above n/N."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice."),
    out_dir: Path = typer.Option(..., "--out", help="Partition directory to write (manifest.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON document on stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a clients x labels heatmap (PNG) here."),
) -> None:
    """Split the train split over N clients (IID, Dirichlet, pathological or mixed extreme Non-IID)."""
    with cli_errors():
        from meerkat_core.hashing import sha256_file
        from meerkat_core.partition.core import SchemeConfig, partition_dataset
        from meerkat_core.partition.fingerprint import dataset_fingerprint
        from meerkat_core.partition.manifest import (
            MANIFEST_NAME,
            build_manifest,
            check_out_dir,
            write_partition,
        )

        scheme = scheme.strip().lower()
        config = SchemeConfig(
            scheme=scheme,
            num_clients=clients,
            alpha=alpha,
            labels_per_client=labels_per_client,
            extreme_clients=extreme_clients,
            min_size=min_size,
            self_balancing=self_balancing,
        )
        # Everything that needs no data is checked before any loading or writing.
        config.validate()
        if seed < 0:
            raise MeerkatInputError(f"--seed must be >= 0, got {seed}")
        if (task is None) == (not data):
            raise MeerkatInputError("give exactly one of --task NAME or --data FILE [--data FILE ...]")
        check_out_dir(out_dir)
        if plot is not None and plot.exists() and plot.is_dir():
            raise MeerkatInputError(f"--plot {plot} is a directory; give a .png file path")

        test_split: dict[str, Any] | None = None
        label_names = None
        num_classes = None
        with err.status("loading data"):
            if task is not None:
                spec, train, test = _load_task(task)
                source: dict[str, Any] = {"kind": "task", "task": getattr(spec, "name", task)}
                if label_column == "label":
                    label_names = list(getattr(spec, "label_names", None) or []) or None
                    num_classes = getattr(spec, "num_classes", None)
            else:
                paths = [str(p) for p in data or []]
                for p in data or []:
                    if not p.is_file():
                        raise MeerkatInputError(f"--data {p} not found")
                train, test = load_files(paths), None
                source = {
                    "kind": "files",
                    "paths": paths,
                    "sha256": [sha256_file(p) for p in paths],
                }
            for col, what in ((label_column, "--label-column"), (text_column, "--text-column")):
                if col not in train.column_names:
                    raise MeerkatInputError(
                        f"unknown {what} {col!r}; the data has columns {', '.join(train.column_names)}"
                    )

        with err.status("partitioning"):
            result = partition_dataset(
                train, label_column, config, seed, label_names=label_names, num_classes=num_classes
            )
        with err.status("fingerprinting"):
            fp = dataset_fingerprint(train, text_column, label_column)
            if test is not None:
                test_split = {"num_samples": len(test)}
                if text_column in test.column_names and label_column in test.column_names:
                    test_split["dataset_fingerprint"] = dataset_fingerprint(test, text_column, label_column)
            elif source["kind"] == "files":
                test_split = {"num_samples": None, "note_files": "no test split given with --data"}
        doc = build_manifest(
            result,
            dataset_fp=fp,
            source=source,
            text_column=text_column,
            label_column=label_column,
            test_split=test_split,
        )
        png = None
        if plot is not None:
            from meerkat_core.partition.plot import render_heatmap_png

            with err.status("plotting"):
                png = render_heatmap_png(result)

        write_partition(out_dir, doc)
        if png is not None and plot is not None:
            from meerkat_core.partition.plot import write_heatmap

            write_heatmap(plot, png)

        err.print(f"wrote {out_dir / MANIFEST_NAME}" + (f" and {plot}" if plot is not None else ""))
        if json_out:
            emit_json(
                {
                    "out": str(out_dir),
                    "manifest": str(out_dir / MANIFEST_NAME),
                    "plot": None if plot is None else str(plot),
                    "source": source,
                    "dataset_fingerprint": fp,
                    "partition_fingerprint": doc["partition_fingerprint"],
                    "scheme": config.scheme,
                    "params": config.params(),
                    "seed": seed,
                    "num_samples": result.num_samples,
                    "num_classes": result.num_classes,
                    "label_names": result.label_names,
                    "summary": result.summary(),
                    "notes": result.notes,
                    "clients": [c.summary() for c in result.clients],
                }
            )
        else:
            params = ", ".join(f"{k}={v}" for k, v in config.params().items())
            where = source.get("task") or ", ".join(source.get("paths", []))
            out.print(render_table(result, f"{config.scheme} partition of {where} ({params}, seed={seed})"))
            for note in result.notes:
                err.print(f"note: {note}")


__all__ = ["SCHEMES", "partition_command", "render_table"]
