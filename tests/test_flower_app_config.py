"""The Flower App's run config is derived from the configuration dataclasses (issue #17); no flwr needed.

The committed ``flower_app/pyproject.toml`` must be what ``render_app_pyproject`` makes of TrainConfig and
FlowerSettings, so a field added to (or a default changed in) the dataclass shows up here first.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from meerkat_core.errors import MeerkatInputError
from meerkat_core.config.train import EvalSettings, TrainConfig, VPSettings
from meerkat_core.flower.app_config import (
    APP_DIR,
    FlowerSettings,
    app_run_config,
    render_app_pyproject,
    run_config_for,
    settings_from_run_config,
    train_config_from_run_config,
)
from meerkat_core.flower.run_config import config_keys, defaults, from_run_config, to_run_config, toml_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REQUIRED = dict(model="tiny-llama", mask="m.safetensors", partition="part", task="sentiment2", out="runs/x")


def _flatten(d: dict, prefix: str = "") -> dict:
    """Flower's flattening of a nested TOML table into dotted keys."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _leaves(cls: type, prefix: str = ""):
    """(key, default) of every leaf field, written out here independently of run_config.config_keys."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name.replace("_", "-")
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], name + ".")
        else:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            yield name, ",".join(default) if isinstance(default, list) else default  # a list: one comma-joined string


def test_committed_app_pyproject_is_generated_from_the_dataclasses() -> None:
    committed = (APP_DIR / "pyproject.toml").read_text()
    assert committed == render_app_pyproject(), "run `python -m meerkat_core.flower.app_config --write`"


def test_app_config_has_every_field_with_its_default() -> None:
    doc = tomllib.loads(render_app_pyproject())
    config = _flatten(doc["tool"]["flwr"]["app"]["config"])
    assert config == app_run_config()
    leaves = dict(_leaves(TrainConfig))
    assert [k for k in config if not k.startswith("flower.")] == list(leaves)
    for key, default in leaves.items():
        want = "" if default is dataclasses.MISSING else ("none" if default is None else default)
        assert config[key] == want, key
    assert config["local-steps"] == TrainConfig.__dataclass_fields__["local_steps"].default == 10
    assert config["flower.poll"] == FlowerSettings().poll
    assert doc["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "meerkat_core.flower.server_app:app", "clientapp": "meerkat_core.flower.client_app:app"}
    assert doc["project"]["dependencies"] == ["meerkat-zo[flower]"]


def test_run_config_round_trip_is_exact() -> None:
    cfg = TrainConfig(**REQUIRED, rounds=3, lr=1.25e-5, eps=3e-3, eval=EvalSettings(limit=None), vp=VPSettings(rho_quie=0.125),
                      algorithm="meerkat-vp", trust_remote_code=True)
    settings = FlowerSettings(poll=0.01, result="/tmp/r.json")
    flat = run_config_for(cfg, settings)
    assert flat["eval.limit"] == "none" and flat["flower.result"] == "/tmp/r.json"
    # through TOML, as `flwr run --run-config FILE` reads it
    parsed = _flatten(tomllib.loads("\n".join(toml_lines(flat))))
    assert parsed == flat
    assert train_config_from_run_config(parsed) == cfg
    assert settings_from_run_config(parsed) == settings


def test_defaults_plus_required_give_the_dataclass_defaults() -> None:
    run_config = {**app_run_config(), **REQUIRED}
    assert train_config_from_run_config(run_config) == TrainConfig(**REQUIRED)
    assert settings_from_run_config(run_config) == FlowerSettings()


@pytest.mark.parametrize("override, message", [
    ({"local-step": 3}, "unknown key local-step"),
    ({"rounds": "3"}, "rounds = '3': expected int"),
    ({"lr": True}, "lr = True: expected float"),
    ({"eval.limit": "all"}, 'expected int or "none"'),
    ({"mask": ""}, "mask is required"),
])
def test_bad_run_config_is_an_input_error(override: dict, message: str) -> None:
    with pytest.raises(MeerkatInputError, match=message):
        train_config_from_run_config({**app_run_config(), **REQUIRED, **override})


def test_int_given_for_a_float_is_taken() -> None:
    cfg = train_config_from_run_config({**REQUIRED, "lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


# -- the derivation itself, on a nested configuration (a group such as `vp`) -----------------------------
@dataclass
class _Group:
    calibration_steps: int = 100
    classifier: str = "rho"
    limit: Optional[int] = None


@dataclass
class _Nested:
    model: str
    rounds: int = 20
    vp: _Group = field(default_factory=_Group)


def test_nested_groups_become_dotted_keys() -> None:
    keys = [k.key for k in config_keys(_Nested)]
    assert keys == ["model", "rounds", "vp.calibration-steps", "vp.classifier", "vp.limit"]
    assert defaults(_Nested) == {"model": "", "rounds": 20, "vp.calibration-steps": 100, "vp.classifier": "rho",
                                 "vp.limit": "none"}
    obj = _Nested(model="m", vp=_Group(calibration_steps=7, limit=3))
    flat = to_run_config(obj)
    assert _flatten(tomllib.loads("\n".join(toml_lines(flat)))) == flat
    assert from_run_config(_Nested, flat) == obj
    with pytest.raises(MeerkatInputError, match="unknown key vp.calibration"):
        from_run_config(_Nested, {"model": "m", "vp.calibration": 3})


def test_app_dir_matches_the_repository_layout() -> None:
    assert APP_DIR == Path(__file__).resolve().parents[1] / "flower_app"


def test_simulation_workers_get_the_cpus_torch_would_use_but_one() -> None:
    """Ray sets a worker's OMP_NUM_THREADS to the CPUs it was given; the workers share torch's thread
    count less one CPU, which the simulation process (ServerApp, Flower's queue) keeps."""
    from meerkat_core.flower.deployment import simulation_config

    def parts(cfg: str) -> dict[str, str]:
        return dict(p.split("=", 1) for p in cfg.split())

    one = parts(simulation_config(100, 1, "cpu", threads=2))
    assert (one["num-supernodes"], one["init-args-num-cpus"], one["client-resources-num-cpus"]) == ("100", "1", "1")
    solo = parts(simulation_config(100, 1, "cpu", threads=1))  # one CPU: the worker still gets it
    assert (solo["init-args-num-cpus"], solo["client-resources-num-cpus"]) == ("1", "1")
    big = parts(simulation_config(100, 1, "cpu", threads=16))
    assert (big["init-args-num-cpus"], big["client-resources-num-cpus"]) == ("15", "15")
    three = parts(simulation_config(10, 3, "cpu", threads=16))
    assert (three["init-args-num-cpus"], three["client-resources-num-cpus"]) == ("15", "5")
    many = parts(simulation_config(10, 4, "cpu", threads=2))  # more workers than threads: one CPU each
    assert (many["init-args-num-cpus"], many["client-resources-num-cpus"]) == ("4", "1")


def test_local_site_servers_share_the_threads() -> None:
    """The local site servers step at once each round: torch's threads are split between them, at
    least one each, so three sites on two cores do not spin-wait against each other."""
    from meerkat_core.flower.deployment import site_threads

    assert [site_threads(n, threads=2) for n in (1, 2, 3)] == [2, 1, 1]
    assert site_threads(3, threads=16) == 5
    assert site_threads(0, threads=4) == 4
