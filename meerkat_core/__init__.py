"""meerkat_core: federated sparse zeroth-order fine-tuning (Meerkat / Meerkat-vp).

All logic lives here and is importable without the CLI (``meerkat_cli``). The library API is
``meerkat_core.api`` (``make_mask``, ``make_partition``, ``train``, ``evaluate``, ``export``,
``inspect_gradip``, ``report``), re-exported here; the configurations they take are in
``meerkat_core.config``. The API is loaded on first use (PEP 562), so ``import meerkat_core.errors``
stays light: the API pulls in torch and transformers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API = ("make_mask", "make_partition", "train", "evaluate", "export", "inspect_gradip", "report")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from meerkat_core import api  # the top layer, loaded on first use (see the module docstring)

        return getattr(api, name)
    raise AttributeError(f"module 'meerkat_core' has no attribute {name!r}")
