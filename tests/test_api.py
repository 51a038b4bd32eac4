"""meerkat_core.api alone (no CLI) trains, evaluates and exports, and writes exactly the CLI's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import meerkat_core
from meerkat_core import api
from meerkat_core.config import EvalConfig, EvalSettings, ExportConfig, InspectConfig, TrainConfig
from tests.conftest import run_cli

SAME = ("ledger.jsonl", "gradip.safetensors", "checkpoints/round-0002.safetensors")


def _train_cfg(mask: Path, part: Path, out: Path) -> TrainConfig:
    return TrainConfig(model="tiny-llama", mask=str(mask), partition=str(part), task="sentiment2", out=str(out),
                       rounds=2, local_steps=2, clients_per_round=2, lr=1e-2, batch_size=2, device="cpu",
                       eval=EvalSettings(limit=8))


CLI_TRAIN = ["--model", "tiny-llama", "--task", "sentiment2", "--rounds", "2", "--local-steps", "2",
             "--clients-per-round", "2", "--lr", "1e-2", "--batch-size", "2", "--device", "cpu", "--eval-limit", "8"]


def test_api_train_evaluate_export_equal_the_cli(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    assert meerkat_core.train is api.train  # re-exported
    done = api.train(_train_cfg(tiny_mask, tiny_partition, tmp_path / "api"))
    assert done.run == tmp_path / "api" and done.summary["total_client_steps"] == 8
    assert done.latest_checkpoint == tmp_path / "api" / "checkpoints" / "round-0002.safetensors"
    run_cli("train", *CLI_TRAIN, "--mask", str(tiny_mask), "--partition", str(tiny_partition),
            "--out", str(tmp_path / "cli"))
    for name in SAME:
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    cfg_api = json.loads((tmp_path / "api" / "config.json").read_text())
    cfg_cli = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert {**cfg_api["train"], "out": ""} == {**cfg_cli["train"], "out": ""}
    toml_api = (tmp_path / "api" / "config.toml").read_text().replace(str(tmp_path / "api"), "OUT")
    assert toml_api == (tmp_path / "cli" / "config.toml").read_text().replace(str(tmp_path / "cli"), "OUT")

    ev = api.evaluate(EvalConfig(model="tiny-llama", checkpoint=str(tmp_path / "api"), limit=8, device="cpu"))
    cli_ev = json.loads(run_cli("eval", "--model", "tiny-llama", "--checkpoint", str(tmp_path / "cli"), "--limit", "8",
                                "--device", "cpu", "--json").stdout)
    assert ev.result.accuracy == cli_ev["accuracy"] == done.final_accuracy
    # --json prints floats to 7 significant digits (meerkat_cli.common.display_floats); the API keeps every bit
    assert float(f"{ev.result.mean_loss:.7g}") == cli_ev["mean_loss"] and ev.result.confusion == cli_ev["confusion"]

    exported = api.export(ExportConfig(run=str(tmp_path / "api"), out=str(tmp_path / "exp-api")))
    assert exported.model == "tiny-llama" and exported.checkpoint.endswith("round-0002.safetensors")
    run_cli("export", str(tmp_path / "cli"), "--out", str(tmp_path / "exp-cli"))
    weights = "model.safetensors"
    assert (tmp_path / "exp-api" / weights).read_bytes() == (tmp_path / "exp-cli" / weights).read_bytes()

    rep = api.inspect_gradip(InspectConfig(run=str(tmp_path / "api"), plot=str(tmp_path / "g.png")))
    shown = json.loads(run_cli("gradip", "inspect", str(tmp_path / "cli"), "--json").stdout)
    assert [r.client for r in rep.rows] == [c["client"] for c in shown["clients"]]
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_api_bad_input_raises_one_line_and_writes_nothing(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    from meerkat_core.errors import MeerkatInputError

    cfg = _train_cfg(tiny_mask, tiny_partition, tmp_path / "bad")
    cfg.lr = 0
    with pytest.raises(MeerkatInputError, match="--lr 0: must be a finite number > 0"):
        api.train(cfg)
    assert not (tmp_path / "bad").exists()
