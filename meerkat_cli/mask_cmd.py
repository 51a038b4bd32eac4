"""``meerkat mask``: compute a transferable sparse mask; ``meerkat mask stats|compare`` inspect masks.

Mount with ``app.add_typer(mask_app, name="mask")``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer
from rich.table import Table

from meerkat_cli.common import JsonOption, cli_errors, emit_json, err, fail, out, progress_callback

# torch and transformers take seconds to import: meerkat_core.mask is imported inside the commands.
if TYPE_CHECKING:  # pragma: no cover
    from meerkat_core.mask import Mask, MaskComparison, MaskStats

DEFAULT_DENSITY = 1e-3
DEFAULT_SAMPLES = 64
DEFAULT_SEQ_LEN = 128
DEFAULT_BATCH_SIZE = 4

mask_app = typer.Typer(
    help="Compute a transferable sparse mask from calibration text, or inspect one (stats, compare).",
    no_args_is_help=False,
    add_completion=False,
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


def _make_mask(model_spec: str, corpus: str, text_field: str, density: float, samples: int, seq_len: int,
               batch_size: int, exclude: list[str], method: str, seed: int, device: str, dtype: str,
               trust_remote_code: bool) -> "Mask":
    from meerkat_core.corpus import build_calibration
    from meerkat_core.mask import compute_mask, unmatched_patterns
    from meerkat_core.models import load_model

    err.print(f"loading model {model_spec} ...")
    loaded = load_model(model_spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    names = [n for n, _ in loaded.model.named_parameters()]
    for pattern in unmatched_patterns(names, exclude):
        err.print(f"[yellow]warning:[/] --exclude {pattern} matches no parameter")
    err.print(f"tokenizing calibration corpus {corpus} ...")
    calib = build_calibration(corpus, loaded.tokenizer, samples=samples, seq_len=seq_len, seed=seed,
                              text_field=text_field)
    with progress_callback() as progress:
        return compute_mask(
            loaded.model, calib.batches(batch_size), density=density, method=method, exclude=exclude, seed=seed,
            model_name=loaded.name, corpus=calib.info, batch_size=batch_size,
            num_batches=calib.num_batches(batch_size), progress=progress,
        )


@mask_app.callback(invoke_without_command=True)
def mask_command(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", help="Built-in name (smollm2-135m, tiny-llama), model directory, .gguf or hub id."),
    corpus: str = typer.Option("builtin", "--corpus", help="Calibration text: builtin, FILE.txt, a directory of .txt files, FILE.jsonl, or a hub dataset hf:ID, optionally with :CONFIG and @SPLIT (e.g. hf:allenai/c4:en@validation)."),
    text_field: str = typer.Option("text", "--text-field", help="Field holding the text in .jsonl / hub rows."),
    density: float = typer.Option(DEFAULT_DENSITY, "--density", help="Fraction of eligible weights to keep, in (0, 1]."),
    samples: int = typer.Option(DEFAULT_SAMPLES, "--samples", min=1, help="Calibration blocks."),
    seq_len: int = typer.Option(DEFAULT_SEQ_LEN, "--seq-len", min=1, help="Tokens per calibration block."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Blocks per backprop batch (one term of the mean)."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Parameter names to leave out: a glob over the full name, or re:REGEX (repeatable)."),
    method: str = typer.Option("sensitivity", "--method", help="sensitivity | random | magnitude."),
    seed: int = typer.Option(0, "--seed", help="Seed for corpus sampling and the random method."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16 | fp16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow custom model code from a hub repo."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Where to write the mask (.safetensors)."),
    json_out: bool = JsonOption,
) -> None:
    """Compute a mask: backprop calibration text, keep the global top-k weights, write a .safetensors file."""
    if ctx.invoked_subcommand is not None:
        return
    with cli_errors():
        from meerkat_core.mask import mask_stats, save_mask, validate_density, validate_method

        validate_density(density)
        validate_method(method)
        if model is None:
            raise fail("--model is required (e.g. --model smollm2-135m); see `meerkat mask --help`")
        if out_path is None:
            raise fail("--out FILE is required (e.g. --out mask.safetensors)")
        if out_path.exists() and out_path.is_dir():
            raise fail(f"--out {out_path}: is a directory; pass a file name")
        start = time.perf_counter()
        mask = _make_mask(model, corpus, text_field, density, samples, seq_len, batch_size, list(exclude or []),
                          method, seed, device, dtype, trust_remote_code)
        save_mask(mask, out_path)
        elapsed = time.perf_counter() - start
        stats = mask_stats(mask)
        size = out_path.stat().st_size
        if json_out:
            emit_json({"out": str(out_path), "file_bytes": size, "seconds": round(elapsed, 2),
                       **mask.summary(), "stats": stats.to_dict()})
            return
        out.print(_summary_table(mask, out_path, {"file": f"{_fmt_int(size)} bytes", "time": f"{elapsed:.1f} s"}))
        for table in render_stats(stats, "kept weights"):
            out.print(table)


@mask_app.command("stats")
def stats_command(
    file: Path = typer.Argument(..., help="A mask written by `meerkat mask`."),
    json_out: bool = JsonOption,
) -> None:
    """Where a mask's kept weights are: per module type and per layer."""
    with cli_errors():
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
    with cli_errors():
        from meerkat_core.mask import compare_masks, load_mask

        cmp = compare_masks(load_mask(a), load_mask(b))
        if json_out:
            emit_json({"a": str(a), "b": str(b), **cmp.to_dict()})
            return
        out.print(_comparison_table(cmp, a, b))
