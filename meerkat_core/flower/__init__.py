"""The Flower engine (``meerkat train --engine flower``): our client and server on Flower's Message API.

Optional: needs ``pip install 'meerkat[flower]'`` (flwr >= 1.42, as pyproject.toml says); chosen by
``meerkat_core.engines``. Modules, one job each:

- ``records``: RoundInstruction / ClientReply / client setup <-> Flower ConfigRecord / MetricRecord.
- ``site``: what a site (SuperNode) holds: its node config and the client built from it.
- ``client_app``: the ClientApp (``@app.query`` handshake, ``@app.train`` one round of ZOClient).
- ``strategy``: the Strategy wrapping ZOServer (configure_train / aggregate_train).
- ``rounds``: the RoundRunner that drives the Strategy over a Grid for ``run_training``.
- ``server_app``: the ServerApp; runs ``run_training`` with that runner and writes the run directory.
- ``job``: the job file the command hands to the ServerApp, and the result file it hands back.
- ``deployment``: the local deployment (SuperLink + SuperNodes on loopback) behind ``--engine flower``.
"""

from __future__ import annotations

from meerkat_core.errors import MeerkatInputError


def require_flwr() -> None:
    """Raise a one-line input error when flwr is missing."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise MeerkatInputError(
            "--engine flower needs the Flower framework: pip install 'meerkat[flower]' (flwr>=1.42)"
        ) from None
