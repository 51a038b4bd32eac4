"""The Flower engines (``meerkat train --engine flower`` / ``flower-sim``) and the Flower App.

Optional: needs the ``flower`` extra (flwr >= 1.42 with its simulation engine, Python >= 3.11):
``pip install -c constraints.txt -e ".[flower]"`` in a checkout. Modules, one job each:

- ``run_config``: a configuration dataclass <-> Flower run config keys (flwr-free).
- ``app_config``: the app's ``pyproject.toml`` (``flower_app/``) generated from TrainConfig; the engine's
  settings (``flower.*`` keys) (flwr-free).
- ``records``: RoundInstruction / ClientReply / ClientSetup <-> Flower ConfigRecord / MetricRecord.
- ``site``: a site's setup, files and the cache of built clients (flwr-free).
- ``site_link`` / ``site_server``: ``meerkat site serve`` and the Unix socket the ClientApp forwards
  messages over (flwr-free).
- ``client_app``: the ClientApp (``@app.query`` handshake, ``@app.train`` one round of ZOClient).
- ``strategy``: the Strategy wrapping ZOServer (configure_train / aggregate_train).
- ``rounds``: the RoundRunner that drives the Strategy over a Grid for ``run_training``.
- ``server_app``: the ServerApp; runs ``run_training`` from the run config and writes the run directory.
- ``result``: the result file the ServerApp hands back to ``meerkat train``.
- ``deployment``: the local SuperLink / site servers / SuperNodes (or simulation) behind the engines.
"""

from __future__ import annotations

from meerkat_core.errors import MeerkatInputError

INSTALL_LINE = 'pip install -c constraints.txt -e ".[flower]"'


def require_flwr() -> None:
    """Raise a one-line input error when flwr is missing."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise MeerkatInputError(
            f"the Flower engines need the flower extra (flwr>=1.42, Python>=3.11): {INSTALL_LINE} "
            "in a checkout of meerkat (README, Install)"
        ) from None
