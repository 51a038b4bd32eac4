"""``meerkat export``: the base model with a run's trained coordinates, as an HF directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meerkat_core.atomic import atomic_dir
from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.checkpoint import apply_checkpoint, read_checkpoint, resolve_checkpoint


def export_run(run: str, out: str, model: str | None = None) -> dict[str, Any]:
    from meerkat_core.models import load_model

    ckpt = resolve_checkpoint(run)
    md, _ = read_checkpoint(ckpt)
    name = model or md.get("model")
    if not name:
        raise MeerkatInputError(f"checkpoint {ckpt}: no model recorded; pass --model")
    loaded = load_model(name, device="cpu", dtype="fp32")
    apply_checkpoint(loaded, str(ckpt))
    with atomic_dir(Path(out)) as tmp:
        loaded.model.save_pretrained(str(tmp), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(tmp))
        (tmp / "meerkat_export.json").write_text(json.dumps({"checkpoint": str(ckpt), "base_model": name, **md}, indent=2))
    return {"checkpoint": str(ckpt), "model": name, "out": out}
