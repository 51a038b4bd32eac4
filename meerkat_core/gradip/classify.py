"""Pluggable classifiers of a calibration round's trajectories (Meerkat-vp, METHOD.md section 5).

A classifier looks at the whole round at once, ``classify(trajectories) -> Decision``, so it can decide
relative to the population of clients (the default ``loss`` and ``population``) or client by client (the
paper's rule, ``rho``). ``Classifier.signal`` names the per-step trajectory the decision reads
(``"loss"``: the client's local loss; ``"gradip"``: |GradIP|; ``SIGNAL_LABELS`` says them), so reports
and plots show that one. A ``Decision`` holds per client the statistics and margins (``value /
threshold``, oriented so that > 1 passes), the flagged clients, the outcome (``flagged``, ``none``:
nobody stands out, ``abstained``: the separation is not clear, nobody flagged) and its reason, and
whether the calibration was shorter than the classifier needs (``min_calibration_steps``).

Each classifier is registered with its own small parameter dataclass:
``@register_classifier("name", params=MyParams)`` on a factory ``f(params: MyParams) -> Classifier``.
``make_classifier(name, settings, explicit)`` builds the params from a flat mapping (the run's ``--vp-*``
settings, ``VPSettings.classifier_params``) plus ``explicit`` (``--vp-param KEY=VALUE``); a key of
``settings`` that the classifier's params lack is ignored (it belongs to another classifier), one of
``explicit`` is an input error. ``classifier_from_settings(cfg.vp)`` does both for a run.

How many calibration steps a classifier needs is ``Classifier.min_calibration_steps`` (each built-in
classifier's params dataclass declares it; ``Decision.short_calibration`` / ``Decision.warning``
compare a round against it): the one source for every warning about a short calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from meerkat_core.config.train import VPSettings
from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip.trajectories import Trajectory

DEFAULT_CLASSIFIER = VPSettings().classifier  # declared once, in `meerkat train`'s settings
OUTCOMES = ("flagged", "none", "abstained")
SIGNAL_LABELS = {"gradip": "|GradIP|", "loss": "local loss"}  # Classifier.signal -> how reports name it


def short_calibration_warning(steps: int, needed: int, classifier: str) -> str | None:
    """The one wording of a calibration shorter than its classifier needs (None when it is not)."""
    if steps >= needed:
        return None
    return (f"calibration of {steps} steps is shorter than the {needed} the {classifier} classifier needs "
            "(docs/GRADIP.md): its decision is unreliable")


def lm_loss_warning(classifier: "Classifier", loss: str) -> str | None:
    """The one wording of a classifier that reads the loss on ``--loss lm`` (None otherwise): its
    thresholds were set on the classification loss, and the LM loss of every client first falls a long way
    while it learns to name a label word at all (4.0 -> 1.2-2.3 for the IID clients, -> 0.25-0.72 for the
    single-label ones in docs/GRADIP.md's lm run: under the 3x the ``loss`` rule asks for)."""
    if classifier.signal != "loss" or loss != "lm":
        return None
    return (f"--vp-classifier {classifier.name} was set on --loss classification; with --loss lm every client's "
            "loss falls while it learns the label words, so single-label clients stand out less (docs/GRADIP.md): "
            "use --loss classification, or --vp-classifier rho")


LOSS_WINDOW_MIN_STEPS = 8  # fewer calibration steps: too short to tell a rising loss from noise
LOSS_RISE = 1.10  # a client's loss "rose": its last quarter's mean above 1.1x its first quarter's
LOSS_RISE_SHARE = 1 / 3  # warn when at least this share of the clients' loss rose (and at least 2)


def rising_loss_warning(trajectories: Mapping[int, Trajectory]) -> str | None:
    """One line when the calibration's local loss rose for many clients, else None.

    Per client with at least ``LOSS_WINDOW_MIN_STEPS`` finite losses: the mean of the last quarter of its
    steps against ``LOSS_RISE`` x the mean of the first quarter. Both classifiers read how |GradIP| decays
    as a client's local training converges; when the loss rises instead for a third of the clients or
    more (a step size too large for the task), that decay is not there and a decision is unreliable.
    Seen on SmolLM2 (benchmarks/RESULTS.md section 11, 100 steps): sotu_era at lr 1e-4, 6 of 13 clients in
    each of two seeds; sentiment3 at the same lr, none of 13 in three seeds.
    """
    rose = total = 0
    for t in trajectories.values():
        loss = t.loss[np.isfinite(t.loss)]
        if loss.size < LOSS_WINDOW_MIN_STEPS:
            continue
        q = loss.size // 4
        total += 1
        rose += int(loss[-q:].mean() > LOSS_RISE * loss[:q].mean())
    if total == 0 or rose < 2 or rose < LOSS_RISE_SHARE * total:
        return None
    return (f"the calibration loss rose by over {LOSS_RISE - 1:.0%} for {rose} of {total} clients (last quarter "
            "of the steps against the first): local training diverges at this lr, so the |GradIP| decay "
            "Meerkat-vp reads is not there and its decision is unreliable (try a smaller --lr)")


@dataclass(frozen=True)
class Decision:
    """What a classifier decided on one round."""

    classifier: str
    params: dict[str, Any]
    thresholds: dict[str, float]  # statistic -> threshold; a client's margin on it is value / threshold
    stats: dict[int, dict[str, float]]
    margins: dict[int, dict[str, float]]
    flagged: list[int]
    outcome: str  # one of OUTCOMES
    reason: str
    min_calibration_steps: int
    calibration_steps: int  # the fewest steps any client ran in the round
    population: dict[str, float] = field(default_factory=dict)  # round-level statistics (centre, scale, gap)

    @property
    def short_calibration(self) -> bool:
        return self.calibration_steps < self.min_calibration_steps

    def warning(self) -> str | None:
        """One line when the calibration was shorter than the classifier needs, else None."""
        return short_calibration_warning(self.calibration_steps, self.min_calibration_steps, self.classifier)

    def to_json(self) -> dict[str, Any]:
        def fin(v: float) -> float | None:
            return v if isinstance(v, (int, float)) and math.isfinite(v) else None

        return {
            "classifier": self.classifier, "params": self.params, "thresholds": self.thresholds,
            "outcome": self.outcome, "reason": self.reason, "flagged": list(self.flagged),
            "min_calibration_steps": self.min_calibration_steps, "calibration_steps": self.calibration_steps,
            "short_calibration": self.short_calibration,
            "population": {k: fin(v) for k, v in self.population.items()},
            "stats": {str(c): {k: fin(v) for k, v in s.items()} for c, s in self.stats.items()},
            "margins": {str(c): {k: fin(v) for k, v in m.items()} for c, m in self.margins.items()},
        }


@runtime_checkable
class Classifier(Protocol):
    name: str
    min_calibration_steps: int
    signal: str  # the per-step trajectory the decision reads: a key of SIGNAL_LABELS

    def classify(self, trajectories: Mapping[int, Trajectory]) -> Decision: ...

    def params(self) -> dict[str, Any]: ...

    def thresholds(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass(frozen=True)
class Registration:
    name: str
    params_type: type
    factory: Callable[[Any], Classifier]


_REGISTRY: dict[str, Registration] = {}


def register_classifier(name: str, params: type = NoParams) -> Callable[[Callable[[Any], Classifier]], Callable[[Any], Classifier]]:
    def deco(factory: Callable[[Any], Classifier]) -> Callable[[Any], Classifier]:
        _REGISTRY[name] = Registration(name, params, factory)
        return factory

    return deco


def classifier_names() -> list[str]:
    return sorted(_REGISTRY)


def classifier_params_type(name: str) -> type:
    return _registration(name).params_type


def _registration(name: str) -> Registration:
    if name not in _REGISTRY:
        raise MeerkatInputError(f"--vp-classifier {name}: expected one of {', '.join(classifier_names())}")
    return _REGISTRY[name]


def _cast(kind: Any, value: Any, name: str, key: str) -> Any:
    target = {"int": int, "float": float, "str": str, "bool": bool}.get(kind if isinstance(kind, str) else kind.__name__)
    if target is None or isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    try:
        if target is bool:
            if str(value).lower() in ("1", "true", "yes"):
                return True
            if str(value).lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
        out = target(value)
        if target is int and isinstance(value, float) and out != value:
            raise ValueError(value)
        return out
    except (TypeError, ValueError):
        raise MeerkatInputError(f"--vp-param {key}={value}: classifier {name} expects a {target.__name__}") from None


def build_params(name: str, settings: Mapping[str, Any] | None = None, explicit: Mapping[str, Any] | None = None) -> Any:
    """The params dataclass of classifier ``name``: defaults, then the matching keys of ``settings``
    (other keys are ignored: they belong to other classifiers), then ``explicit`` (every key must be
    one of the classifier's params)."""
    reg = _registration(name)
    known = {f.name: f for f in fields(reg.params_type)}
    values: dict[str, Any] = {}
    for k, v in (settings or {}).items():
        if k in known:
            values[k] = _cast(known[k].type, v, name, k)
    for k, v in (explicit or {}).items():
        if k not in known:
            valid = ", ".join(sorted(known)) or "none"
            raise MeerkatInputError(f"--vp-param {k}: classifier {name} has no such parameter (its parameters: {valid})")
        values[k] = _cast(known[k].type, v, name, k)
    params = reg.params_type(**values)
    check = getattr(params, "validate", None)
    if check is not None:
        check()
    return params


def make_classifier(name: str, settings: Mapping[str, Any] | None = None,
                    explicit: Mapping[str, Any] | None = None) -> Classifier:
    """The registered classifier ``name`` (see ``build_params`` for ``settings`` and ``explicit``)."""
    return _registration(name).factory(build_params(name, settings, explicit))


def parse_vp_params(items: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--vp-param`` (``"KEY=VALUE,KEY=VALUE"``, or a mapping) -> a dict (values still strings)."""
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in (items or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MeerkatInputError(f"--vp-param {item.strip()}: expected KEY=VALUE (e.g. --vp-param z_flag=5,gap_min=2)")
        out[key.strip()] = value.strip()
    return out


def classifier_from_settings(vp: VPSettings, name: str | None = None) -> Classifier:
    """The classifier of a run's Meerkat-vp settings (``TrainConfig.vp``): ``vp.classifier`` (or ``name``
    instead) with the flat ``--vp-*`` values that its params hold; ``--vp-param`` values (``vp.params``)
    apply only to the run's own classifier."""
    chosen = name or vp.classifier
    explicit = parse_vp_params(vp.params) if chosen == vp.classifier else None
    return make_classifier(chosen, vp.classifier_params(), explicit)


def margin(value: float, threshold: float) -> float:
    """``value / threshold`` (> 1 passes); nan when undefined."""
    if not (threshold and math.isfinite(threshold)) or math.isnan(value):
        return math.nan
    return value / threshold


def calibration_length(trajectories: Mapping[int, Trajectory]) -> int:
    return min((t.steps for t in trajectories.values()), default=0)


class PerClientClassifier:
    """Base of classifiers that decide client by client: subclasses give ``statistics(trajectory)`` and
    ``flag(stats)``; ``classify`` applies them to every client (outcome ``flagged`` or ``none``)."""

    name: str = "per-client"
    min_calibration_steps: int = 0
    signal: str = "gradip"

    def statistics(self, trajectory: Trajectory) -> dict[str, float]:
        raise NotImplementedError

    def flag(self, stats: Mapping[str, float]) -> bool:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def thresholds(self) -> dict[str, float]:
        return {}

    def classify(self, trajectories: Mapping[int, Trajectory]) -> Decision:
        stats = {c: self.statistics(t) for c, t in sorted(trajectories.items())}
        flagged = [c for c, s in stats.items() if self.flag(s)]
        thr = self.thresholds()
        return Decision(
            classifier=self.name, params=self.params(), thresholds=thr, stats=stats,
            margins={c: {k: margin(s.get(k, math.nan), v) for k, v in thr.items()} for c, s in stats.items()},
            flagged=flagged, outcome="flagged" if flagged else "none",
            reason=f"{len(flagged)} client(s) above every threshold" if flagged else "no client above every threshold",
            min_calibration_steps=self.min_calibration_steps, calibration_steps=calibration_length(trajectories),
        )
