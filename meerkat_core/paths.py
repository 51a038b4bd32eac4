"""Where meerkat keeps its cache (converted models and the like)."""

from __future__ import annotations

import os
from pathlib import Path


def meerkat_home() -> Path:
    """``$MEERKAT_HOME`` if set, else ``$XDG_CACHE_HOME/meerkat`` (default ``~/.cache/meerkat``)."""
    env = os.environ.get("MEERKAT_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "meerkat"


def hub_offline() -> bool:
    """True when the user asked for no hub access (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False
