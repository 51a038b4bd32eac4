"""GradIP: statistics, classifier registry, reading the run's trajectories (and refusing bad files),
and the logged trajectories equal an independent recomputation from the ledger, mask and seeds."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip import (
    PerClientClassifier,
    RhoClassifier,
    Trajectory,
    classifier_names,
    decay_statistics,
    load_trajectories,
    make_classifier,
    phase_slices,
    register_classifier,
)
from meerkat_core.gradip.recompute import mask_gbar, recompute_record, recompute_run
from meerkat_core.gradip.report import sparkline


# -- statistics ----------------------------------------------------------------------------------
def test_phase_slices() -> None:
    assert phase_slices(100, 0.2, 0.5) == (slice(0, 20), slice(50, 100))
    assert phase_slices(40, 0.2, 0.5) == (slice(0, 8), slice(20, 40))
    assert phase_slices(7, 0.2, 0.5) == (slice(0, 2), slice(3, 7))  # ceil, at least one step each
    assert phase_slices(2, 0.2, 0.5) == (slice(0, 1), slice(1, 2))
    assert phase_slices(0, 0.2, 0.5) == (slice(0, 0), slice(0, 0))


def test_decay_statistics_separate_decay_from_oscillation() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(60)
    noise = rng.standard_normal(60) * rng.standard_normal(60)
    decayed = decay_statistics(noise * np.exp(-t / 8), 0.2, 0.5, 0.3)
    steady = decay_statistics(np.sin(t) * 3 + 0.1, 0.2, 0.5, 0.3)
    assert decayed["rho_later"] > 10 and decayed["rho_quie"] > 0.9
    assert 0.5 < steady["rho_later"] < 2 and steady["rho_quie"] < 0.3
    assert decayed["initial_steps"] == 12 and decayed["later_steps"] == 30


def test_decay_statistics_ignore_skipped_steps_and_sign() -> None:
    a = np.array([-4.0, np.nan, 4.0, 1.0, np.nan, -1.0])
    s = decay_statistics(a, 0.5, 0.5, 0.5)  # initial: -4, nan, 4 ; later: 1, nan, -1
    assert s["mean_initial"] == 4.0 and s["mean_later"] == 1.0 and s["rho_later"] == 4.0
    assert s["rho_quie"] == 1.0 and s["sigma"] == 2.0 and s["finite_steps"] == 4
    assert math.isnan(decay_statistics([np.nan] * 5, 0.2, 0.5, 0.3)["rho_later"])
    assert decay_statistics([1.0, 0.0, 0.0], 0.3, 0.6, 0.3)["rho_later"] == math.inf


def test_rho_classifier_needs_both_statistics() -> None:
    clf = make_classifier("rho", {"rho_later": 3.0, "rho_quie": 0.5, "quiet_factor": 0.3})
    assert isinstance(clf, RhoClassifier) and clf.thresholds() == {"rho_later": 3.0, "rho_quie": 0.5}
    assert clf.flag({"rho_later": 3.5, "rho_quie": 0.6})
    assert not clf.flag({"rho_later": 3.5, "rho_quie": 0.5})
    assert not clf.flag({"rho_later": 2.9, "rho_quie": 0.9})
    assert not clf.flag({"rho_later": math.nan, "rho_quie": 0.9})
    assert clf.params()["quiet_factor"] == 0.3 and clf.params()["name"] == "rho"
    assert not make_classifier("none").flag({"rho_later": 1e9, "rho_quie": 1.0})


def test_registry_is_pluggable_and_unknown_names_are_input_errors() -> None:
    @dataclass(frozen=True)
    class LastStepParams:
        zero: float = 0.0

    @register_classifier("test-last-step", params=LastStepParams)
    def _factory(params: LastStepParams):  # a classifier that flags a trajectory ending at `zero`
        class LastStep(PerClientClassifier):
            name = "test-last-step"

            def statistics(self, trajectory: Trajectory) -> dict[str, float]:
                return {"last": float(abs(trajectory.gradip[-1]))}

            def flag(self, stats) -> bool:
                return stats["last"] == params.zero

        return LastStep()

    assert {"population", "rho", "none", "test-last-step"} <= set(classifier_names())
    clf = make_classifier("test-last-step")
    decision = clf.classify({0: Trajectory.from_lists(1, 0, [1.0, 0.0]), 1: Trajectory.from_lists(1, 1, [1.0, 1.0])})
    assert decision.flagged == [0] and decision.outcome == "flagged" and decision.classifier == "test-last-step"
    # its own parameters, from --vp-param (strings cast to the field's type); other classifiers' settings ignored
    one = make_classifier("test-last-step", {"rho_later": 9.0}, {"zero": "1"})
    assert one.classify({0: Trajectory.from_lists(1, 0, [1.0, 1.0])}).flagged == [0]
    with pytest.raises(MeerkatInputError, match="--vp-param nope: classifier test-last-step has no such parameter"):
        make_classifier("test-last-step", explicit={"nope": "1"})
    with pytest.raises(MeerkatInputError, match="--vp-param zero=abc: classifier test-last-step expects a float"):
        make_classifier("test-last-step", explicit={"zero": "abc"})
    with pytest.raises(MeerkatInputError, match="--vp-classifier nope: expected one of"):
        make_classifier("nope")


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, float("nan"), 1.0]) == "█ █"
    assert len(sparkline(np.arange(100.0), width=20)) == 20
    assert sparkline([]) == ""


def test_recompute_record_skips_what_the_client_skipped() -> None:
    gbar = torch.arange(6, dtype=torch.float32)
    rec = {"round": 2, "client": 3, "seed": 7, "lr": 1e-3, "gs": [0.5, float("nan"), 1e300, -2.0]}
    out = recompute_record(rec, gbar)
    assert math.isnan(out[1]) and math.isnan(out[2])  # non-finite g, and a coefficient beyond fp32
    from meerkat_core.zo import derive_key, normal

    z = normal(derive_key(7, 2, 3, 3), 6)
    assert out[3] == pytest.approx(-2.0 * float(torch.dot(gbar, z)), rel=1e-12)


# -- a real (tiny) run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tiny_mask: Path, tiny_partition: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from meerkat_core.config.train import EvalSettings, TrainConfig
    from meerkat_core.fed.training import run_training

    out = tmp_path_factory.mktemp("gradip") / "run"
    cfg = TrainConfig(model="tiny-llama", mask=str(tiny_mask), partition=str(tiny_partition), task="sentiment2",
                      out=str(out), rounds=2, local_steps=5, clients_per_round=3, lr=1e-2, eps=1e-3, batch_size=4,
                      device="cpu", eval=EvalSettings(limit=8), seed=3)
    run_training(cfg)
    return out


def test_logged_gradip_equals_independent_recomputation(tiny_run: Path, tiny_mask: Path) -> None:
    trajs = load_trajectories(tiny_run)
    again = recompute_run(tiny_run)
    assert set(again) == set(trajs.items) and len(again) == 6  # 2 rounds x 3 clients
    assert trajs.rounds() == [1, 2]
    for key, values in again.items():
        logged = trajs.items[key].gradip
        assert logged.shape == values.shape == (5,)
        assert np.isfinite(logged).all()
        np.testing.assert_allclose(logged, values, rtol=1e-6, atol=1e-9 * np.abs(values).max())
    # the same in float64 arithmetic (a fully independent dot product): equal to fp32 rounding
    again64 = recompute_run(tiny_run, dtype=torch.float64)
    for key, values in again64.items():
        np.testing.assert_allclose(trajs.items[key].gradip, values, rtol=1e-4, atol=1e-5 * np.abs(values).max())
    # the ledger's g column is the file's g column
    ledger = [json.loads(ln) for ln in (tiny_run / "ledger.jsonl").read_text().splitlines()]
    for rec in (r for r in ledger if r["type"] == "client"):
        np.testing.assert_array_equal(trajs.items[(rec["round"], rec["client"])].g, rec["gs"])


def test_gbar_is_the_mask_in_canonical_order(tiny_mask: Path, tiny_loaded) -> None:
    from meerkat_core.mask import load_mask
    from meerkat_core.zo import SparseCoordinates

    mask = load_mask(tiny_mask, tiny_loaded.model)
    coords = SparseCoordinates(tiny_loaded.model, {t.name: t.indices for t in mask.nonempty()})
    server = coords.concat({t.name: t.grad_mean for t in mask.nonempty()})
    assert torch.equal(server, mask_gbar(mask)) and mask_gbar(mask).numel() == mask.k


def test_missing_and_corrupt_files_are_one_line_input_errors(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    f = run / "gradip.safetensors"
    data = f.read_bytes()
    f.unlink()
    with pytest.raises(MeerkatInputError, match="has no GradIP trajectories") as exc:
        load_trajectories(run)
    assert "\n" not in str(exc.value)
    for bad in (data[: len(data) // 2], b"garbage", data[:8]):
        f.write_bytes(bad)
        with pytest.raises(MeerkatInputError, match="corrupt or truncated") as exc:
            load_trajectories(run)
        assert "\n" not in str(exc.value)
    save_file({"round": torch.zeros(3, dtype=torch.int32)}, str(f))
    with pytest.raises(MeerkatInputError, match="missing column"):
        load_trajectories(run)
    cols = {c: torch.zeros(3, dtype=torch.int32) for c in ("round", "client", "step")}
    cols.update({c: torch.zeros(2, dtype=torch.float64) for c in ("g", "gradip", "cosine", "loss")})
    save_file(cols, str(f))
    with pytest.raises(MeerkatInputError, match="unequal"):
        load_trajectories(run)
    cols.update({c: torch.zeros(3, dtype=torch.float64) for c in ("g", "gradip", "cosine", "loss")})
    cols["step"] = torch.tensor([0, 0, 1], dtype=torch.int32)
    save_file(cols, str(f))
    with pytest.raises(MeerkatInputError, match="out of sequence"):
        load_trajectories(run)
