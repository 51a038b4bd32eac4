"""``meerkat export``'s configuration (``meerkat_core.api.export``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from meerkat_core.config.settings import setting


@dataclass(kw_only=True)
class ExportConfig:
    """The base model with a run's trained coordinates, written as a Hugging Face model directory."""

    run: str = setting(positional=True, help="Run directory (its latest checkpoint) or a checkpoint file.")
    out: str = setting(help="Directory for the merged model (save_pretrained, safetensors).")
    model: Optional[str] = setting(None, help="Base model (default: the run's).")
    mask: Optional[str] = setting(None, help="The checkpoint's mask file, when its run directory does not say where "
                                             "it is (checked by sha256).")
    overwrite: bool = setting(False, help="Replace an earlier export at --out (never anything else).")
