"""Who runs the rounds of ``meerkat train``: ``inprocess`` (the simulator, ``meerkat_core.fed``),
``flower`` (a Flower deployment) or ``flower-sim`` (Flower's simulation engine; ``meerkat_core.flower``).
All write the same run directory.

This module sits above ``fed/`` and ``flower/`` (``fed/`` never imports ``flower/``); the Flower engine
is imported only when chosen, because it needs the optional ``flwr`` package.
"""

from __future__ import annotations

from typing import Any, Callable

from meerkat_core.config.choices import ENGINES
from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.training import RoundCallback, run_training
from meerkat_core.flower import require_flwr

EventCallback = Callable[[str], None]


def run_engine(cfg: TrainConfig, on_round: RoundCallback | None = None,
               on_event: EventCallback | None = None) -> dict[str, Any]:
    """Run (or resume) ``cfg`` on ``cfg.engine``; returns the run's summary.

    ``flower``: a local deployment on loopback, or the SuperLink at ``cfg.superlink``; ``flower-sim``:
    Flower's simulation engine (``meerkat_core.flower.deployment``)."""
    if cfg.engine not in ENGINES:
        raise MeerkatInputError(f"--engine {cfg.engine}: expected one of {', '.join(ENGINES)}")
    if (cfg.superlink or cfg.superlink_ca) and cfg.engine != "flower":
        raise MeerkatInputError("--superlink / --superlink-ca: only with --engine flower")
    if cfg.engine == "inprocess":
        return run_training(cfg, on_round=on_round, on_event=on_event)
    require_flwr()
    from meerkat_core.flower.deployment import FlowerOptions, run_flower_training  # needs flwr: only when chosen

    mode = "simulation" if cfg.engine == "flower-sim" else ("superlink" if cfg.superlink else "deployment")
    options = FlowerOptions(mode=mode, superlink=cfg.superlink, root_certificates=cfg.superlink_ca)
    return run_flower_training(cfg, on_round=on_round, on_event=on_event, options=options)
