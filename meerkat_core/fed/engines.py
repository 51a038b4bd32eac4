"""Which engine runs the rounds of ``meerkat train``: ``inprocess`` (the simulator), ``flower`` (a Flower
deployment: local, or the SuperLink at ``superlink``) or ``flower-sim`` (Flower's simulation engine)."""

from __future__ import annotations

from typing import Any, Callable

from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.config import TrainConfig

ENGINES = ("inprocess", "flower", "flower-sim")


def run_engine(
    engine: str,
    cfg: TrainConfig,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    superlink: str | None = None,
    superlink_ca: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``cfg`` on ``engine``; all of them write the same run directory."""
    if engine not in ENGINES:
        raise MeerkatInputError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if (superlink or superlink_ca) and engine != "flower":
        raise MeerkatInputError("--superlink / --superlink-ca: only with --engine flower")
    if engine == "inprocess":
        from meerkat_core.fed.training import run_training

        return run_training(cfg, on_round=on_round, on_event=on_event)
    from meerkat_core.flower import require_flwr

    require_flwr()
    from meerkat_core.flower.deployment import FlowerOptions, run_flower_training

    mode = "simulation" if engine == "flower-sim" else ("superlink" if superlink else "deployment")
    options = FlowerOptions(mode=mode, superlink=superlink, root_certificates=superlink_ca)
    return run_flower_training(cfg, on_round=on_round, on_event=on_event, options=options)
