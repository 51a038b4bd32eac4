"""The default classifier (``population``) on synthetic calibration rounds: clear outliers flagged, an
all-IID round flags nobody (also over many seeded rounds), a borderline round abstains, too few
clients abstain; margins and the short-calibration flag of the decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip import PopulationParams, Trajectory, make_classifier
from meerkat_core.gradip.population import best_split

STEPS = 100


def round_of(rng: np.random.Generator, n: int = 10, extreme: dict[int, float] | None = None, spread: float = 0.25,
             steps: int = STEPS) -> dict[int, Trajectory]:
    """A synthetic calibration round shaped like the measured ones (docs/GRADIP.md): per step |GradIP| =
    client scale x |N(0,1)| x |N(0,1)| x a shared decay (every client first learns the label words);
    ``extreme[c] = f``: client c's later level falls to f times an IID client's (it learns its one label)."""
    t = np.arange(steps)
    shared = 0.6 + 0.4 * np.exp(-t / 15)
    out = {}
    for c in range(n):
        scale = math.exp(spread * rng.standard_normal())
        curve = shared.copy()
        if extreme and c in extreme:
            curve *= extreme[c] + (1 - extreme[c]) * np.exp(-t / 12)
        g = scale * curve * np.abs(rng.standard_normal(steps))
        out[c] = Trajectory.from_lists(1, c, list(g * rng.standard_normal(steps)), list(g))
    return out


def test_clear_outliers_are_flagged_with_their_margins() -> None:
    rng = np.random.default_rng(1)
    clf = make_classifier("population")
    for ext in ({4: 0.2}, {1: 0.25, 7: 0.2}, {0: 0.2, 5: 0.25, 8: 0.3}):
        d = clf.classify(round_of(rng, extreme=ext))
        assert d.outcome == "flagged" and d.flagged == sorted(ext), (ext, d.reason)
        for c in range(10):
            m = d.margins[c]
            if c in ext:
                assert m["z"] > 1 and m["drop"] > 1 and d.stats[c]["z"] >= clf.p.z_flag
            else:
                assert m["z"] < 1
        assert d.population["split"] == len(ext) and d.population["gap"] >= clf.p.gap_min
        assert not d.short_calibration and d.warning() is None


def test_all_iid_rounds_flag_nobody() -> None:
    """500 seeded all-IID rounds of 10 clients: nobody flagged in any (and most say "none", not abstain)."""
    rng = np.random.default_rng(2)
    clf = make_classifier("population")
    outcomes = [clf.classify(round_of(rng, spread=rng.uniform(0.0, 0.4))) for _ in range(500)]
    assert all(d.flagged == [] for d in outcomes)
    assert sum(d.outcome == "none" for d in outcomes) >= 400  # 426 with the defaults


def test_borderline_round_abstains() -> None:
    """One client clearly lower than the rest but not by a clear gap: nobody flagged, and it says why."""
    rng = np.random.default_rng(3)
    clf = make_classifier("population")
    rounds = [clf.classify(round_of(rng, extreme={3: 0.55})) for _ in range(40)]
    abstained = [d for d in rounds if d.outcome == "abstained"]
    assert len(abstained) >= 10
    for d in abstained:
        assert d.flagged == [] and "separation not clear" in d.reason


def test_too_few_clients_abstain_and_short_calibration_is_reported() -> None:
    rng = np.random.default_rng(4)
    clf = make_classifier("population")
    d = clf.classify(round_of(rng, n=4, extreme={1: 0.1}))
    assert d.outcome == "abstained" and d.flagged == [] and "at least 5" in d.reason
    short = clf.classify(round_of(rng, extreme={1: 0.1}, steps=30))
    assert short.short_calibration and short.calibration_steps == 30
    assert "30 steps is shorter than the 100" in (short.warning() or "")
    assert short.to_json()["short_calibration"] is True


def test_best_split_uses_the_rest_of_the_population_as_reference() -> None:
    levels = np.log(np.array([1.0, 1.1, 5.0, 5.2, 5.5, 6.0, 6.1, 6.3, 7.0, 7.5]))
    s = best_split(levels, floor=0.01)
    assert s.k == 2 and s.centre == pytest.approx(float(np.median(levels[2:])))
    assert s.gap == pytest.approx((levels[2] - levels[1]) / s.scale)
    assert best_split(levels[:2], 0.1) is None  # no split leaves a strict majority


def test_params_are_validated() -> None:
    with pytest.raises(MeerkatInputError, match="z_flag"):
        PopulationParams(z_flag=2.0, z_none=3.0).validate()
    with pytest.raises(MeerkatInputError, match="min_clients"):
        make_classifier("population", explicit={"min_clients": "2"})
    assert make_classifier("population", explicit={"z_flag": "6"}).thresholds()["z"] == 6.0


def loss_round(rng: np.random.Generator, n: int = 10, extreme: dict[int, float] | None = None, spread: float = 0.08,
               steps: int = STEPS) -> dict[int, Trajectory]:
    """A synthetic calibration round of local losses shaped like SmolLM2's on sentiment2 (RESULTS section
    11): an IID client's batch loss ~ 0.6 x a level spread x a shared slow fall x log-normal batch noise;
    ``extreme[c] = f``: client c's loss collapses to f times an IID client's (it learns its one label)."""
    t = np.arange(steps)
    shared = 0.85 + 0.15 * np.exp(-t / 20)
    out = {}
    for c in range(n):
        curve = 0.6 * math.exp(spread * rng.standard_normal()) * shared
        if extreme and c in extreme:
            curve = curve * (extreme[c] + (1 - extreme[c]) * np.exp(-t / 15))
        loss = curve * np.exp(0.5 * rng.standard_normal(steps) - 0.125)
        gradip = rng.standard_normal(steps)  # the loss rule does not read it
        out[c] = Trajectory.from_lists(1, c, list(gradip), list(np.abs(gradip)), loss=list(loss))
    return out


def test_loss_rule_flags_collapsed_losses_and_nobody_on_iid_rounds() -> None:
    rng = np.random.default_rng(5)
    clf = make_classifier("loss")
    assert clf.thresholds() == {"z": 4.0, "drop": 3.0} and clf.min_calibration_steps == 100
    for ext in ({4: 0.12}, {1: 0.15, 7: 0.1}, {0: 0.12, 5: 0.15, 8: 0.2}):
        d = clf.classify(loss_round(rng, extreme=ext))
        assert d.outcome == "flagged" and d.flagged == sorted(ext), (ext, d.reason)
        assert all(d.margins[c]["drop"] > 1 for c in ext) and all(d.margins[c]["drop"] < 1 for c in range(10) if c not in ext)
        assert set(d.stats[4]) >= {"loss_later", "log_level", "mean_later", "rho_later"}  # mean_later stays |GradIP|'s
    iid = [clf.classify(loss_round(rng, spread=rng.uniform(0.0, 0.15))) for _ in range(300)]
    assert all(d.flagged == [] for d in iid)


def test_loss_rule_abstains_on_a_partial_collapse() -> None:
    """A client whose loss fell to half the others': below them, clearly, but not the 3x asked: nobody flagged."""
    rng = np.random.default_rng(6)
    clf = make_classifier("loss")
    rounds = [clf.classify(loss_round(rng, extreme={3: 0.5})) for _ in range(20)]
    assert all(d.flagged == [] for d in rounds)
    assert sum(d.outcome == "abstained" and "drop" in d.reason for d in rounds) >= 15
