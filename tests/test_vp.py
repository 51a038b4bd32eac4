"""Meerkat-vp's round policy: calibration round, budgets, sampling, random control, ledger record,
resume (the stopped set comes back from the ledger), and nobody is flagged on an all-IID split."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from meerkat_core.config.train import TrainConfig
from meerkat_core.fed.policy import UniformPolicy
from meerkat_core.fed.training import check_config
from meerkat_core.fed.vp import VPPolicy
from meerkat_core.gradip import Trajectory, make_classifier, register_classifier
from tests.conftest import run_cli

CLIENTS = list(range(8))


def _policy(control: str = "none", classifier: str = "rho") -> VPPolicy:
    return VPPolicy(seed=5, clients_per_round=3, local_steps=10, calibration_steps=40, stopped_steps=1,
                    classifier=make_classifier(classifier, {"rho_later": 3.0, "rho_quie": 0.5, "quiet_factor": 0.3}),
                    control=control)


def _outcome(decaying: set[int]) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    t = np.arange(40)
    clients = []
    for c in CLIENTS:
        noise = rng.standard_normal(40) * rng.standard_normal(40) + 0.05
        gradip = noise * (np.exp(-t / 6) if c in decaying else 1.0)
        clients.append(SimpleNamespace(client=c, gradip=list(gradip), gs=list(gradip), cosine=[0.0] * 40,
                                       losses=[1.0] * 40))
    return SimpleNamespace(clients=clients)


def test_calibration_round_takes_everyone_with_the_calibration_budget() -> None:
    p = _policy()
    assert p.participants(1, CLIENTS[::-1]) == CLIENTS
    assert all(p.steps(1, c) == 40 for c in CLIENTS)


def test_flagged_clients_run_one_step_and_sampling_matches_meerkat() -> None:
    p = _policy()
    rec = p.on_round_complete(1, _outcome({2, 5}))["vp"]
    assert rec["flagged"] == [2, 5] == rec["stopped"] and rec["classifier"] == "rho" and rec["control"] == "none"
    assert rec["thresholds"] == {"rho_later": 3.0, "rho_quie": 0.5}
    assert rec["stats"]["2"]["rho_later"] > 3 and rec["margins"]["2"]["rho_later"] > 1
    json.dumps(rec, allow_nan=False)  # the ledger record is plain JSON
    uniform = UniformPolicy(5, 3, 10)
    for r in range(2, 12):
        assert p.participants(r, CLIENTS) == uniform.participants(r, CLIENTS)
    assert [p.steps(4, c) for c in CLIENTS] == [10, 10, 1, 10, 10, 1, 10, 10]
    later = SimpleNamespace(clients=[SimpleNamespace(client=c) for c in (1, 2, 5)])
    assert p.on_round_complete(3, later) == {"vp_stopped": [2, 5]}


def test_random_control_stops_as_many_clients_chosen_by_the_seed() -> None:
    a, b = _policy("random"), _policy("random")
    rec = a.on_round_complete(1, _outcome({2, 5}))["vp"]
    assert rec["flagged"] == [2, 5] and len(rec["stopped"]) == 2 and rec["control"] == "random"
    assert b.on_round_complete(1, _outcome({2, 5}))["vp"]["stopped"] == rec["stopped"]  # seeded
    assert sum(a.steps(2, c) == 1 for c in CLIENTS) == 2
    none = _policy("random").on_round_complete(1, _outcome(set()))["vp"]
    assert none["flagged"] == [] and none["stopped"] == []


def test_restore_rebuilds_the_stopped_set_from_the_ledger_record() -> None:
    p = _policy("random")
    rec = json.loads(json.dumps(p.on_round_complete(1, _outcome({1, 6}))))
    q = _policy("random")
    q.restore({1: {"round": 1, **rec}, 2: {"round": 2, "vp_stopped": []}})
    assert q.flagged == [1, 6] and q.stopped == p.stopped and q.decided
    assert [q.steps(3, c) for c in CLIENTS] == [p.steps(3, c) for c in CLIENTS]
    fresh = _policy()
    fresh.restore({})  # nothing committed yet: nothing decided
    assert not fresh.decided and fresh.stopped == set()


def test_config_validates_the_vp_options() -> None:
    from meerkat_core.errors import MeerkatInputError

    base = dict(model="m", mask="x.mask", partition="p", task="t", out="o", algorithm="meerkat-vp")
    check_config(TrainConfig.from_dict(base))
    for bad, match in (({"vp_control": "sometimes"}, "--vp-control"), ({"vp_classifier": "nope"}, "--vp-classifier"),
                       ({"vp_initial_frac": 0.6, "vp_later_frac": 0.6}, "--vp-initial-frac"),
                       ({"vp_rho_quie": 1.5}, "--vp-rho-quie"), ({"mask": "all"}, "sparse mask")):
        with pytest.raises(MeerkatInputError, match=match):
            check_config(TrainConfig.from_dict({**base, **bad}))
    policy = VPPolicy.from_config(TrainConfig.from_dict({**base, "vp_rho_later": 4.0, "vp_control": "random"}))
    assert policy.classifier.thresholds()["rho_later"] == 4.0 and policy.control == "random"


# -- real (tiny) runs ----------------------------------------------------------------------------
FLAG_ME = {1, 3}


class _ById:
    """Deterministic flags (clients in FLAG_ME), so the resume test does not hang on the trajectories."""

    name = "test-ids"

    def __init__(self, params) -> None:
        self._rho = make_classifier("rho", params)

    def statistics(self, trajectory: Trajectory) -> dict[str, float]:
        return {**self._rho.statistics(trajectory), "client": float(trajectory.client)}

    def flag(self, stats) -> bool:
        return int(stats["client"]) in FLAG_ME

    def params(self) -> dict:
        return {}

    def thresholds(self) -> dict:
        return {}


register_classifier("test-ids")(_ById)


def _cfg(mask: Path, part: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="tiny-llama", mask=str(mask), partition=str(part), task="sentiment2", out=str(out), rounds=3,
                local_steps=4, clients_per_round=3, lr=1e-2, eps=1e-3, batch_size=2, device="cpu", eval_limit=8,
                algorithm="meerkat-vp", vp_calibration_steps=6, vp_classifier="test-ids", seed=1,
                loss="lm")  # the margins below were measured with the LM loss (the default until issue 16)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _ledger(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "ledger.jsonl").read_text().splitlines()]


def test_vp_run_budgets_and_resume(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    from meerkat_core.fed.training import run_training

    straight = tmp_path / "straight"
    run_training(_cfg(tiny_mask, tiny_partition, straight))
    ledger = _ledger(straight)
    r1 = [rec for rec in ledger if rec["type"] == "client" and rec["round"] == 1]
    assert [rec["client"] for rec in r1] == [0, 1, 2, 3] and all(rec["steps"] == 6 for rec in r1)
    round1 = next(rec for rec in ledger if rec["type"] == "round" and rec["round"] == 1)
    assert round1["vp"]["flagged"] == [1, 3] == round1["vp"]["stopped"] and round1["steps"] == 24
    later = [rec for rec in ledger if rec["type"] == "client" and rec["round"] > 1]
    assert later and all(rec["steps"] == (1 if rec["client"] in FLAG_ME else 4) for rec in later)
    assert all(len(rec["gs"]) == rec["steps"] for rec in later)

    # stop after the calibration round, resume: the stopped set comes back from the ledger
    resumed = tmp_path / "resumed"
    run_training(_cfg(tiny_mask, tiny_partition, resumed, rounds=1))
    run_training(_cfg(tiny_mask, tiny_partition, resumed, rounds=3, resume=True))
    a = [(r["round"], r["client"], r["steps"], r["gs"], r["data_offset"]) for r in ledger if r["type"] == "client"]
    b = [(r["round"], r["client"], r["steps"], r["gs"], r["data_offset"]) for r in _ledger(resumed)
         if r["type"] == "client"]
    assert a == b
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["final_state_crc"] == json.loads((straight / "summary.json").read_text())["final_state_crc"]


@pytest.fixture(scope="module")
def iid_partition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vp") / "iid"
    run_cli("partition", "--task", "sentiment2", "--clients", "5", "--scheme", "iid", "--seed", "0", "--out", str(path))
    return path


def test_nobody_is_flagged_on_an_all_iid_split(tiny_mask: Path, iid_partition: Path, tmp_path: Path) -> None:
    """IID clients: with the default classifier nobody is flagged, and not by a hair: both statistics
    stay clearly inside their thresholds for every client (the margins are checked, not only flags)."""
    from meerkat_core.fed.training import run_training

    out = tmp_path / "iid-run"
    run_training(_cfg(tiny_mask, iid_partition, out, rounds=1, vp_calibration_steps=100, vp_classifier="rho",
                      lr=1e-3, batch_size=2))
    rec = next(r for r in _ledger(out) if r["type"] == "round")["vp"]
    print({c: (round(s["rho_later"], 3), round(s["rho_quie"], 3)) for c, s in rec["stats"].items()})
    assert rec["flagged"] == [] and rec["stopped"] == [] and len(rec["stats"]) == 5
    thr = rec["thresholds"]
    assert thr == {"rho_later": 2.0, "rho_quie": 0.5}  # the documented defaults
    for stats in rec["stats"].values():
        assert stats["finite_steps"] == 100
        assert stats["rho_later"] < 0.75 * thr["rho_later"] and stats["rho_quie"] < 0.8 * thr["rho_quie"]
