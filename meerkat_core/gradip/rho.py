"""The paper's rule (``rho``) and the never-flag control (``none``), client by client.

``rho`` flags a client when ``rho_later > rho_later_min`` AND ``rho_quie > rho_quie_min``
(``meerkat_core.gradip.stats.decay_statistics``); its thresholds were set on sentiment2 (docs/GRADIP.md)
and do not transfer to other tasks, which is why it is no longer the default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from meerkat_core.config.train import VPSettings
from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip.classify import PerClientClassifier, register_classifier
from meerkat_core.gradip.stats import decay_statistics
from meerkat_core.gradip.trajectories import Trajectory

# Defaults of the phases and of the "rho" thresholds: those of `meerkat train`'s --vp-* settings,
# declared once in VPSettings (docs/GRADIP.md explains them and gives the measured margins).
_VP = VPSettings()
DEFAULT_INITIAL_FRAC = _VP.initial_frac
DEFAULT_LATER_FRAC = _VP.later_frac
DEFAULT_QUIET_FACTOR = _VP.quiet_factor
DEFAULT_RHO_LATER = _VP.rho_later
DEFAULT_RHO_QUIE = _VP.rho_quie
# At 40-80 steps the rule missed single-label clients on sentiment2 (docs/GRADIP.md, "fewer steps").
RHO_MIN_CALIBRATION_STEPS = 100


@dataclass(frozen=True)
class DecayParams:
    """The phases of the decay statistics (``--vp-initial-frac``, ``--vp-later-frac``, ``--vp-quiet-factor``)."""

    initial_frac: float = DEFAULT_INITIAL_FRAC
    later_frac: float = DEFAULT_LATER_FRAC
    quiet_factor: float = DEFAULT_QUIET_FACTOR
    min_calibration_steps: int = RHO_MIN_CALIBRATION_STEPS

    def validate(self) -> None:
        if not (0 < self.initial_frac <= 1 and 0 < self.later_frac <= 1 and self.initial_frac + self.later_frac <= 1):
            raise MeerkatInputError(f"--vp-initial-frac {self.initial_frac} / --vp-later-frac {self.later_frac}: "
                                    "each in (0, 1], sum <= 1")
        if not self.quiet_factor > 0:
            raise MeerkatInputError(f"--vp-quiet-factor {self.quiet_factor}: must be > 0")
        if self.min_calibration_steps < 0:
            raise MeerkatInputError(f"--vp-param min_calibration_steps={self.min_calibration_steps}: must be >= 0")


@dataclass(frozen=True)
class RhoParams(DecayParams):
    """The paper's thresholds (``--vp-rho-later``, ``--vp-rho-quie``)."""

    rho_later: float = DEFAULT_RHO_LATER
    rho_quie: float = DEFAULT_RHO_QUIE

    def validate(self) -> None:
        super().validate()
        if not (self.rho_later > 0 and 0 <= self.rho_quie < 1):
            raise MeerkatInputError(f"--vp-rho-later {self.rho_later} / --vp-rho-quie {self.rho_quie}: "
                                    "need rho-later > 0, rho-quie in [0, 1)")


class DecayClassifier(PerClientClassifier):
    """Computes the paper's ``rho_later`` and ``rho_quie`` per client; subclasses decide what to flag."""

    def __init__(self, p: DecayParams) -> None:
        self.p = p
        self.min_calibration_steps = p.min_calibration_steps

    def statistics(self, trajectory: Trajectory) -> dict[str, float]:
        return decay_statistics(trajectory.gradip, self.p.initial_frac, self.p.later_frac, self.p.quiet_factor)

    def params(self) -> dict[str, Any]:
        return {**asdict(self.p), "name": self.name}


class RhoClassifier(DecayClassifier):
    """Flags a client when ``rho_later > p.rho_later`` AND ``rho_quie > p.rho_quie``."""

    name = "rho"
    p: RhoParams

    def flag(self, stats: Mapping[str, float]) -> bool:
        a, b = stats.get("rho_later", math.nan), stats.get("rho_quie", math.nan)
        return bool(a > self.p.rho_later and b > self.p.rho_quie)  # nan compares False

    def thresholds(self) -> dict[str, float]:
        return {"rho_later": self.p.rho_later, "rho_quie": self.p.rho_quie}


@register_classifier("rho", params=RhoParams)
def _rho(p: RhoParams) -> RhoClassifier:
    return RhoClassifier(p)


class NeverClassifier(DecayClassifier):
    """Flags nobody (a control: Meerkat with the calibration round and no early stopping); still
    reports the decay statistics."""

    name = "none"

    def flag(self, stats: Mapping[str, float]) -> bool:
        return False


@register_classifier("none", params=DecayParams)
def _never(p: DecayParams) -> NeverClassifier:
    return NeverClassifier(DecayParams(p.initial_frac, p.later_frac, p.quiet_factor, min_calibration_steps=0))
