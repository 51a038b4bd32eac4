"""One configuration per command: declared once, the CLI's options and the TOML files derived from it;
``--config FILE.toml`` with flags on top; a run's saved config.toml re-runs it bit for bit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meerkat_core.config import EvalConfig, MaskConfig, PartitionConfig, TrainConfig, VPSettings
from meerkat_core.config.settings import config_toml, describe, load_config_file
from meerkat_core.config.train import RESUMABLE_CHANGES
from meerkat_core.errors import MeerkatInputError
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_flags_are_the_paths_and_the_legacy_names_stay() -> None:
    flags = {i.dotted: i.flag for i in describe(TrainConfig)}
    assert flags["vp.calibration_steps"] == "--vp-calibration-steps" and flags["eval.every"] == "--eval-every"
    assert flags["checkpoint.every"] == "--checkpoint-every" and flags["z_cache_mb"] == "--z-cache-mb"
    assert {i.ident for i in describe(TrainConfig)} == set(TrainConfig(mask="m", partition="p", out="o").to_dict())


@pytest.mark.parametrize("cls, command", [(TrainConfig, "train"), (MaskConfig, "mask"),
                                          (PartitionConfig, "partition"), (EvalConfig, "eval")])
def test_every_setting_has_its_flag_in_the_help(cls: type, command: str) -> None:
    text = run_cli(*command.split(), "--help", env={"COLUMNS": "300"}).stdout
    for info in describe(cls):
        assert re.search(rf"{re.escape(info.flag)}\b", text), (command, info.flag)
    assert "--config" in text


def test_toml_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = TrainConfig(mask="m.safetensors", partition="p", out="o", rounds=7, vp=VPSettings(rho_later=3.5))
    cfg.eval.limit = None  # TOML has no null: written as "none"
    path = tmp_path / "c.toml"
    path.write_text(config_toml(cfg, "train", {"mask_sha256": "abc"}))
    again = load_config_file(TrainConfig, path, "train")
    assert again == cfg
    assert load_config_file(TrainConfig, path, "train", {("rounds",): 2}).rounds == 2
    with pytest.raises(MeerkatInputError, match="configuration of `meerkat train`, not of `meerkat mask`"):
        load_config_file(MaskConfig, path, "mask")
    path.write_text('mask = "m"\npartition = "p"\nout = "o"\n[vp]\nrho_latr = 3\n')
    with pytest.raises(MeerkatInputError, match=r"unknown key 'vp.rho_latr'; did you mean 'vp.rho_later'\?"):
        load_config_file(TrainConfig, path, "train")
    path.write_text('mask = "m"\npartition = "p"\nout = "o"\nrounds = "many"\n')
    with pytest.raises(MeerkatInputError, match="rounds = 'many' is not a int"):
        load_config_file(TrainConfig, path, "train")
    path.write_text('mask = "m"\nout = "o"\n')
    with pytest.raises(MeerkatInputError, match="--partition is required"):
        load_config_file(TrainConfig, path, "train")


def _train_flags(mask: Path, part: Path) -> list[str]:
    return ["--model", "tiny-llama", "--mask", str(mask), "--partition", str(part), "--task", "sentiment2",
            "--local-steps", "2", "--clients-per-round", "2", "--batch-size", "2", "--device", "cpu", "--eval-limit", "8"]


BITWISE = ("ledger.jsonl", "gradip.safetensors", "checkpoints/round-0002.safetensors")


def test_train_config_file_flag_override_and_rerun_bitwise(tiny_mask: Path, tiny_partition: Path,
                                                           tmp_path: Path) -> None:
    """A TOML file with one flag on top; then that run's own config.toml re-run into a new directory."""
    conf = tmp_path / "exp.toml"
    conf.write_text(f'model = "tiny-llama"\nmask = "{tiny_mask}"\npartition = "{tiny_partition}"\n'
                    f'out = "{tmp_path / "unused"}"\nrounds = 5\nlocal_steps = 2\nclients_per_round = 2\nlr = 1e-2\n'
                    'batch_size = 2\ndevice = "cpu"\n\n[eval]\nlimit = 8\n')
    first = tmp_path / "first"
    run_cli("train", "--config", str(conf), "--rounds", "2", "--out", str(first))
    saved = json.loads((first / "config.json").read_text())["train"]
    assert saved["rounds"] == 2 and saved["lr"] == 0.01 and saved["eval_limit"] == 8  # flag over file, file over default
    ref = tmp_path / "flags"
    run_cli("train", *_train_flags(tiny_mask, tiny_partition), "--rounds", "2", "--lr", "1e-2", "--out", str(ref))
    again = tmp_path / "again"
    run_cli("train", "--config", str(first / "config.toml"), "--out", str(again))
    for name in BITWISE:
        data = (first / name).read_bytes()
        assert data == (again / name).read_bytes() == (ref / name).read_bytes(), name
    def settings(path: Path) -> list[str]:  # why the dtype is what it is differs: "auto: ..." then "--dtype fp32"
        return [ln for ln in path.read_text().splitlines() if not ln.startswith(("reason = ", "dtype_reason = "))]

    assert settings(again / "config.toml") == [ln.replace(str(first), str(again)) for ln in settings(first / "config.toml")]
    # the saved file without --out names the run itself: refused as a new run, resumable with --resume
    res = run_cli("train", "--config", str(first / "config.toml"), check=False)
    assert res.returncode == 2 and "exists and is not empty; pass --resume" in res.stderr
    run_cli("train", "--config", str(first / "config.toml"), "--resume")


def test_unknown_key_in_a_config_file_exits_2_with_the_nearest_name(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('clients = 3\nschem = "iid"\n')
    res = run_cli("partition", "--config", str(conf), "--task", "sentiment2", "--out", str(tmp_path / "p"), check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "unknown key 'schem'; did you mean 'scheme'?" in res.stderr and not (tmp_path / "p").exists()
    res = run_cli("eval", "--config", str(tmp_path / "missing.toml"), check=False)
    assert res.returncode == 2 and "no such file" in res.stderr


def test_run_format_lists_exactly_the_resumable_settings() -> None:
    text = (ROOT / "docs" / "RUN_FORMAT.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("Settings that may change on resume:"))
    listed = set(re.findall(r"`--([a-z0-9-]+)`", line))
    assert listed == {k.replace("_", "-") for k in RESUMABLE_CHANGES}
