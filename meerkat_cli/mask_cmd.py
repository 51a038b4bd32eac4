"""``meerkat mask``: compute a transferable sparse mask; ``meerkat mask stats|compare`` inspect masks.

Mount with ``app.add_typer(mask_app, name="mask")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from meerkat_cli.common import JSON_PARAM, JsonOption, cli_errors, emit_json, err, new_app, out
from meerkat_cli.progress import progress_callback
from meerkat_cli.options import config_command
from meerkat_core.config import MaskConfig

# torch and transformers take seconds to import: meerkat_core.mask is imported inside the commands.
if TYPE_CHECKING:  # pragma: no cover
    from meerkat_core.mask import Mask, MaskComparison, MaskStats

mask_app = new_app(
    help="Compute a transferable sparse mask from calibration text, or inspect one (stats, compare).",
    no_args_is_help=False,
)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def render_stats(stats: "MaskStats", title: str) -> list[Table]:
    """Per-module-type and per-layer tables of kept/eligible weights."""
    data = stats.to_dict()
    tables = []
    for key, label in (("by_type", "module"), ("by_layer", "layer")):
        table = Table(title=f"{title}: by {label}", title_justify="left")
        table.add_column(label)
        for col in ("kept", "eligible", "density", "share of k", "share of score"):
            table.add_column(col, justify="right")
        for name, row in data[key].items():
            table.add_row(name, _fmt_int(row["kept"]), _fmt_int(row["eligible"]), f"{row['density']:.2e}",
                          f"{row['share_of_k']:.1%}", f"{row['share_of_score']:.1%}")
        table.add_row("total", _fmt_int(stats.k), _fmt_int(stats.d), f"{stats.density:.2e}", "100.0%", "100.0%",
                      style="bold")
        tables.append(table)
    return tables


def _calibration_text(m: Any) -> str:
    if m.grad_stats == "none":
        return "none (grad_mean is zero)"
    if not m.samples:
        return f"{m.n_batches} batches (no corpus recorded)"
    return (f"{m.samples} x {m.seq_len} tokens, batch {m.batch_size}, {m.n_batches} batches, "
            f"text sha256 {m.corpus_sha256[:16]}")


def _summary_table(mask: "Mask", path: Path, extra: dict[str, Any]) -> Table:
    table = Table(title=f"mask {path}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    m = mask.meta
    rows = {
        "model": f"{m.model} (fingerprint {m.fingerprint}, {m.param_dtype})",
        "method": f"{m.method} (score: {m.score})",
        "k / d": f"{_fmt_int(m.k)} / {_fmt_int(m.d)} (density {m.k / m.d:.3e})",
        "exclude": ", ".join(m.exclude) or "-",
        "corpus": m.corpus or "-",
        "calibration": _calibration_text(m),
        **extra,
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def _say(message: str) -> None:
    if message.startswith("warning: "):
        err.print(f"[yellow]warning:[/] {escape(message[len('warning: '):])}")
    else:
        err.print(message, markup=False)


def _mask(cfg: MaskConfig, json_out: bool) -> None:
    from meerkat_core import api  # torch and transformers: imported when a command runs, not for --help

    with cli_errors(json_out), progress_callback() as progress:
        made = api.make_mask(cfg, progress=progress, on_event=_say)
    mask, path = made.mask, made.path
    if json_out:
        emit_json({"out": str(path), "file_bytes": made.file_bytes, "seconds": round(made.seconds, 2),
                   **mask.summary(), "stats": made.stats.to_dict()})
        return
    out.print(_summary_table(mask, path, {"file": f"{_fmt_int(made.file_bytes)} bytes", "time": f"{made.seconds:.1f} s"}))
    for table in render_stats(made.stats, "kept weights"):
        out.print(table)


mask_app.callback(invoke_without_command=True)(config_command(
    MaskConfig, _mask, command="mask", config_file=True, extras=[JSON_PARAM],
    doc="Compute a mask: backprop calibration text, keep the global top-k weights, write a .safetensors file.",
))


@mask_app.command("stats")
def stats_command(
    file: Path = typer.Argument(..., help="A mask written by `meerkat mask`."),
    json_out: bool = JsonOption,
) -> None:
    """Where a mask's kept weights are: per module type and per layer."""
    with cli_errors(json_out):
        from meerkat_core.mask import load_mask, mask_stats

        mask = load_mask(file)
        stats = mask_stats(mask)
        if json_out:
            emit_json({**mask.summary(), "file": str(file), "stats": stats.to_dict()})
            return
        out.print(_summary_table(mask, file, {}))
        for table in render_stats(stats, "kept weights"):
            out.print(table)


def _comparison_table(cmp: "MaskComparison", a: Path, b: Path) -> Table:
    table = Table(title=f"A = {a}, B = {b}", title_justify="left", show_header=False)
    table.add_column("measure")
    table.add_column("value", justify="right")

    def share(x: float | None) -> str:
        return "n/a (no score mass)" if x is None else f"{x:.4f}"

    table.add_row("k of A / k of B", f"{_fmt_int(cmp.k_a)} / {_fmt_int(cmp.k_b)}")
    table.add_row("kept by both / by either", f"{_fmt_int(cmp.intersection)} / {_fmt_int(cmp.union)}")
    table.add_row("Jaccard", f"{cmp.jaccard:.4f}")
    table.add_row("A's score mass that B keeps", share(cmp.a_mass_covered_by_b))
    table.add_row("B's score mass that A keeps", share(cmp.b_mass_covered_by_a))
    return table


@mask_app.command("compare")
def compare_command(
    a: Path = typer.Argument(..., help="Mask A."),
    b: Path = typer.Argument(..., help="Mask B (same model as A)."),
    json_out: bool = JsonOption,
) -> None:
    """Overlap of two masks of the same model: Jaccard, and the score mass each covers of the other."""
    with cli_errors(json_out):
        from meerkat_core.mask import compare_masks, load_mask

        cmp = compare_masks(load_mask(a), load_mask(b))
        if json_out:
            emit_json({"a": str(a), "b": str(b), **cmp.to_dict()})
            return
        out.print(_comparison_table(cmp, a, b))
