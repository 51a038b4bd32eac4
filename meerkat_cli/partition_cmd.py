"""``meerkat partition``: split a task's train split (or local files) over federated clients.

Register with ``app.command("partition")(partition_command)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from meerkat_cli.common import JSON_PARAM, cli_errors, emit_json, err, out
from meerkat_cli.options import config_command
from meerkat_cli.progress import status_callback
from meerkat_core.config import PartitionConfig

if TYPE_CHECKING:  # pragma: no cover
    from meerkat_core.partition.core import PartitionResult

_MAX_LABEL_COLUMNS = 8


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


def _partition(cfg: PartitionConfig, json_out: bool) -> None:
    from meerkat_core import api  # datasets and flwr-datasets: imported when a command runs, not for --help

    with cli_errors(json_out), status_callback() as status:
        made = api.make_partition(cfg, on_event=status)
    err.print(f"wrote {made.manifest_path}" + (f" and {made.plot}" if made.plot is not None else ""), markup=False)
    if json_out:
        emit_json(made.to_json())
        return
    scheme = made.scheme
    params = ", ".join(f"{k}={v}" for k, v in scheme.params().items())
    where = made.source.get("task") or ", ".join(made.source.get("paths", []))
    out.print(render_table(made.result, f"{scheme.scheme} partition of {where} ({params}, seed={made.seed})"))
    for note in made.result.notes:
        err.print(f"note: {note}", markup=False)


partition_command = config_command(
    PartitionConfig, _partition, command="partition", config_file=True, extras=[JSON_PARAM],
    doc="Split the train split over N clients (IID, Dirichlet, pathological or mixed extreme Non-IID).",
)


__all__ = ["partition_command", "render_table"]
