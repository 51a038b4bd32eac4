"""Learning-rate schedules over rounds (the rate is constant within a round)."""

from __future__ import annotations

import math

from meerkat_core.errors import MeerkatInputError

from meerkat_core.config.choices import SCHEDULES


def lr_at(schedule: str, lr: float, round_: int, rounds: int) -> float:
    """Learning rate of round ``round_`` (1-based) out of ``rounds``; linear and cosine decay to 0."""
    if schedule not in SCHEDULES:
        raise MeerkatInputError(f"--schedule {schedule}: expected one of {', '.join(SCHEDULES)}")
    if schedule == "constant" or rounds <= 1:
        return lr
    frac = (round_ - 1) / rounds
    if schedule == "linear":
        return lr * (1.0 - frac)
    return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
