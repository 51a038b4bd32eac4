"""meerkat_core: federated sparse zeroth-order fine-tuning (Meerkat / Meerkat-vp).

All logic lives here and is importable without the CLI (``meerkat_cli``).
"""

__version__ = "0.1.0"
