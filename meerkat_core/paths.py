"""Where meerkat keeps its cache (converted models and the like)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants as hub_constants


def meerkat_home() -> Path:
    """``$MEERKAT_HOME`` if set, else ``$XDG_CACHE_HOME/meerkat`` (default ``~/.cache/meerkat``)."""
    env = os.environ.get("MEERKAT_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "meerkat"


def hub_offline() -> bool:
    """True when hub access is off: ``huggingface_hub``'s own reading of ``HF_HUB_OFFLINE`` /
    ``TRANSFORMERS_OFFLINE`` (taken when it was imported, so it is what its downloads obey)."""
    return bool(hub_constants.HF_HUB_OFFLINE)
