"""``meerkat export``: the base model with a run's trained coordinates, as an HF directory.

The target must not exist, or be an empty directory. ``overwrite=True`` also replaces an earlier export
(a directory holding ``meerkat_export.json``) and nothing else: never a run directory, the checkpoint's
own directory or one above it, or the working directory or one above it. The new directory replaces
the old one in one step (``atomic_dir``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meerkat_core.atomic import atomic_dir, check_writable
from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.checkpoint import apply_checkpoint, read_checkpoint, resolve_checkpoint

EXPORT_RECORD = "meerkat_export.json"


def _is_run_dir(path: Path) -> bool:
    from meerkat_core.rundir import CONFIG, LEDGER, RUN_FORMAT

    try:
        fmt = json.loads((path / CONFIG).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    return fmt == RUN_FORMAT or (path / LEDGER).exists()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_export_target(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an export target that holds anything the export did not make (see the module docstring)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MeerkatInputError(f"--out {out}: exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MeerkatInputError(
                f"--out {out}: exists and is not empty; choose another path, or pass --overwrite to replace "
                "an earlier export there"
            )
        real = out.resolve()
        if _is_run_dir(out):
            raise MeerkatInputError(f"--out {out}: is a run directory; --overwrite never replaces one, choose another path")
        if _within(source.resolve(), real):
            raise MeerkatInputError(f"--out {out}: holds the checkpoint being exported ({source}); choose another path")
        if _within(Path.cwd().resolve(), real):
            raise MeerkatInputError(f"--out {out}: is the working directory or one above it; choose another path")
        if not (out / EXPORT_RECORD).is_file():
            raise MeerkatInputError(
                f"--out {out}: is not an earlier meerkat export (no {EXPORT_RECORD}); --overwrite replaces only "
                "those: choose another path or empty it yourself"
            )
    check_writable(out, "--out", kind="dir")


def export_run(run: str, out: str, model: str | None = None, overwrite: bool = False,
               mask: str | None = None) -> dict[str, Any]:
    from meerkat_core.models import load_model

    ckpt = resolve_checkpoint(run)
    target = Path(out)
    check_export_target(target, ckpt, overwrite)
    md, _ = read_checkpoint(ckpt)
    name = model or md.get("model")
    if not name:
        raise MeerkatInputError(f"checkpoint {ckpt}: no model recorded; pass --model")
    loaded = load_model(name, device="cpu", dtype="fp32")
    apply_checkpoint(loaded, str(ckpt), mask=mask)
    with atomic_dir(target, what="--out") as tmp:
        loaded.model.save_pretrained(str(tmp), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(tmp))
        (tmp / EXPORT_RECORD).write_text(json.dumps({"checkpoint": str(ckpt), "base_model": name, **md}, indent=2))
    return {"checkpoint": str(ckpt), "model": name, "out": out}
