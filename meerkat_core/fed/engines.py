"""Which engine runs the rounds of ``meerkat train``: ``inprocess`` (the simulator) or ``flower``."""

from __future__ import annotations

from typing import Any, Callable

from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.config import TrainConfig

ENGINES = ("inprocess", "flower")


def run_engine(
    engine: str,
    cfg: TrainConfig,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``cfg`` on ``engine``; both write the same run directory."""
    if engine == "inprocess":
        from meerkat_core.fed.training import run_training

        return run_training(cfg, on_round=on_round, on_event=on_event)
    if engine == "flower":
        from meerkat_core.flower import require_flwr

        require_flwr()
        from meerkat_core.flower.deployment import run_flower_training

        return run_flower_training(cfg, on_round=on_round, on_event=on_event)
    raise MeerkatInputError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
