"""Pluggable classifiers of calibration trajectories (Meerkat-vp, METHOD.md section 5).

A classifier has a ``name``, ``statistics(trajectory) -> dict[str, float]`` and
``flag(stats) -> bool`` (True: the client looks *extreme Non-IID* and is stopped early). For the
reports it also gives ``params()`` (everything that defines it), ``thresholds()``: statistic name
-> the value it must exceed, so a report can print each statistic beside its threshold, and
``min_calibration_steps``: the trajectory length below which its decision is not to be trusted
(``meerkat gradip inspect`` says so in its table and plot).

Register a new one with ``@register_classifier("name")`` on a factory ``f(params) -> Classifier``
(``params`` holds the ``vp_*`` settings of the run: ``initial_frac``, ``later_frac``,
``quiet_factor``, ``rho_later``, ``rho_quie``; a classifier reads what it needs). ``--vp-classifier
NAME`` picks it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

from meerkat_core.config.train import VPSettings
from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip.stats import decay_statistics
from meerkat_core.gradip.trajectories import Trajectory

# Defaults of the "rho" classifier: those of `meerkat train`'s --vp-* settings, declared once in
# VPSettings (docs/GRADIP.md explains them and gives the measured margins).
_VP = VPSettings()
DEFAULT_INITIAL_FRAC = _VP.initial_frac
DEFAULT_LATER_FRAC = _VP.later_frac
DEFAULT_QUIET_FACTOR = _VP.quiet_factor
DEFAULT_RHO_LATER = _VP.rho_later
DEFAULT_RHO_QUIE = _VP.rho_quie
DEFAULT_CLASSIFIER = _VP.classifier
# The paper's T_cal; on SmolLM2 a calibration cut to 40-80 steps lost the detector (docs/GRADIP.md).
RHO_MIN_CALIBRATION_STEPS = 100


@runtime_checkable
class Classifier(Protocol):
    name: str
    min_calibration_steps: int

    def statistics(self, trajectory: Trajectory) -> dict[str, float]: ...

    def flag(self, stats: Mapping[str, float]) -> bool: ...

    def params(self) -> dict[str, Any]: ...

    def thresholds(self) -> dict[str, float]: ...


ClassifierFactory = Callable[[Mapping[str, Any]], Classifier]
_REGISTRY: dict[str, ClassifierFactory] = {}


def register_classifier(name: str) -> Callable[[ClassifierFactory], ClassifierFactory]:
    def deco(factory: ClassifierFactory) -> ClassifierFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def classifier_names() -> list[str]:
    return sorted(_REGISTRY)


def make_classifier(name: str, params: Mapping[str, Any] | None = None) -> Classifier:
    """The registered classifier ``name`` built from ``params`` (missing keys take the defaults)."""
    if name not in _REGISTRY:
        raise MeerkatInputError(f"--vp-classifier {name}: expected one of {', '.join(classifier_names())}")
    return _REGISTRY[name](dict(params or {}))


def margins(clf: Classifier, stats: Mapping[str, float]) -> dict[str, float]:
    """Per thresholded statistic: ``value / threshold`` (> 1 passes). nan when undefined."""
    out = {}
    for key, thr in clf.thresholds().items():
        v = stats.get(key, math.nan)
        out[key] = v / thr if thr and math.isfinite(thr) and not math.isnan(v) else math.nan
    return out


@dataclass(frozen=True)
class DecayClassifier:
    """Base of the classifiers on the paper's |GradIP| decay statistics: computes ``rho_later`` and
    ``rho_quie`` (``meerkat_core.gradip.stats``); subclasses decide what to flag."""

    initial_frac: float = DEFAULT_INITIAL_FRAC
    later_frac: float = DEFAULT_LATER_FRAC
    quiet_factor: float = DEFAULT_QUIET_FACTOR

    def statistics(self, trajectory: Trajectory) -> dict[str, float]:
        return decay_statistics(trajectory.gradip, self.initial_frac, self.later_frac, self.quiet_factor)

    def params(self) -> dict[str, Any]:
        return asdict(self)


def _decay_params(params: Mapping[str, Any]) -> dict[str, float]:
    return {
        "initial_frac": float(params.get("initial_frac", DEFAULT_INITIAL_FRAC)),
        "later_frac": float(params.get("later_frac", DEFAULT_LATER_FRAC)),
        "quiet_factor": float(params.get("quiet_factor", DEFAULT_QUIET_FACTOR)),
    }


@dataclass(frozen=True)
class RhoClassifier(DecayClassifier):
    """The paper's statistics on |GradIP|: flagged when ``rho_later > rho_later_min`` AND
    ``rho_quie > rho_quie_min``."""

    rho_later_min: float = DEFAULT_RHO_LATER
    rho_quie_min: float = DEFAULT_RHO_QUIE
    name: str = "rho"
    min_calibration_steps: ClassVar[int] = RHO_MIN_CALIBRATION_STEPS

    def flag(self, stats: Mapping[str, float]) -> bool:
        a, b = stats.get("rho_later", math.nan), stats.get("rho_quie", math.nan)
        return bool(a > self.rho_later_min and b > self.rho_quie_min)  # nan compares False

    def thresholds(self) -> dict[str, float]:
        return {"rho_later": self.rho_later_min, "rho_quie": self.rho_quie_min}


@register_classifier("rho")
def _rho(params: Mapping[str, Any]) -> Classifier:
    return RhoClassifier(**_decay_params(params),
                         rho_later_min=float(params.get("rho_later", DEFAULT_RHO_LATER)),
                         rho_quie_min=float(params.get("rho_quie", DEFAULT_RHO_QUIE)))


@dataclass(frozen=True)
class NeverClassifier(DecayClassifier):
    """Flags nobody (a control: Meerkat with the calibration round and no early stopping); still
    reports the decay statistics."""

    name: str = "none"
    min_calibration_steps: ClassVar[int] = 0

    def flag(self, stats: Mapping[str, float]) -> bool:
        return False

    def thresholds(self) -> dict[str, float]:
        return {}


@register_classifier("none")
def _never(params: Mapping[str, Any]) -> Classifier:
    return NeverClassifier(**_decay_params(params))


def classify_all(clf: Classifier, trajectories: Mapping[int, Trajectory]) -> tuple[dict[int, dict[str, float]], list[int]]:
    """Statistics per client and the sorted list of flagged clients."""
    stats = {c: clf.statistics(t) for c, t in sorted(trajectories.items())}
    return stats, [c for c, s in stats.items() if clf.flag(s)]
