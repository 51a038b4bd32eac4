"""The Flower engine (issue #8): records, and `meerkat train --engine flower` on a local deployment.

Skipped cleanly without flwr (pip install -e '.[flower]'). The deployment tests start a SuperLink and
3 SuperNodes on loopback and are marked slow (each takes a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

flwr = pytest.importorskip("flwr")

pytestmark = pytest.mark.flower


def train_args(mask: Path, part: Path, out: Path, *extra: str, rounds: int = 2) -> list[str]:
    return ["train", "--model", "tiny-llama", "--mask", str(mask), "--partition", str(part), "--task", "sentiment2",
            "--rounds", str(rounds), "--local-steps", "3", "--clients-per-round", "3", "--lr", "1e-2", "--eps", "1e-3",
            "--batch-size", "4", "--eval-limit", "16", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def part3(workdir: Path) -> Path:
    path = workdir / "part3"
    if not path.exists():
        run_cli("partition", "--task", "sentiment2", "--clients", "3", "--scheme", "dirichlet", "--alpha", "0.5",
                "--seed", "0", "--out", str(path))
    return path


def _ledger(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "ledger.jsonl").read_text().splitlines()]


# -- fast: no deployment ------------------------------------------------------------------------------
def test_records_round_trip_and_sizes() -> None:
    from meerkat_core.fed.protocol import ClientReply, HistoryEntry, RoundInstruction
    from meerkat_core.flower.records import (
        instruction_from_content, instruction_to_content, reply_from_content, reply_to_content,
    )

    instr = RoundInstruction(round=3, client=1, steps=4, seed=7, lr=0.01, eps=1e-3, data_offset=12, sync="replay",
                             synced_round=1, history=[HistoryEntry((1 << 63) - 5, -0.25), HistoryEntry(9, 1e-300)],
                             state_round=2, state_crc=0xFFFFFFFF)
    content = instruction_to_content(instr)
    assert "meerkat.vector" not in content  # replay mode: no weight arrays
    assert instruction_from_content(content).to_bytes() == instr.to_bytes()
    vec = RoundInstruction(round=1, client=0, steps=1, seed=0, lr=1.0, eps=1.0, data_offset=0, sync="vector",
                           synced_round=0, vector=np.arange(5, dtype=np.float32), state_round=0, state_crc=1)
    back = instruction_from_content(instruction_to_content(vec))
    assert back.to_bytes() == vec.to_bytes()
    reply = ClientReply(round=3, client=1, gs=[0.5, float("nan"), -1e-7], losses=[1.1, 2.2, 3.3], state_crc=5)
    got = reply_from_content(reply_to_content(reply))
    assert got.to_bytes() == ClientReply.from_bytes(reply.to_bytes()).to_bytes()  # losses rounded to f4 as on our wire
    assert np.isnan(got.gs[1])


def test_app_dir_is_a_valid_flower_app(tmp_path: Path) -> None:
    from flwr.cli.config_utils import load_and_validate

    from meerkat_core.flower.deployment import write_app_dir

    config, _ = load_and_validate(write_app_dir(tmp_path / "app") / "pyproject.toml")
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"] == "meerkat_core.flower.client_app:app"


def test_unknown_engine_exits_2(tiny_mask: Path, part3: Path, tmp_path: Path) -> None:
    res = run_cli(*train_args(tiny_mask, part3, tmp_path / "x", "--engine", "carrier-pigeon"), check=False)
    assert res.returncode == 2 and "--engine carrier-pigeon" in res.stderr
    assert not (tmp_path / "x").exists()


# -- slow: a real local deployment ----------------------------------------------------------------------
@pytest.mark.slow
def test_flower_engine_matches_inprocess_bitwise(tiny_mask: Path, part3: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    fl = json.loads(run_cli(*train_args(tiny_mask, part3, tmp_path / "flower", "--engine", "flower", "--json")).stdout)
    t_flower = time.perf_counter() - t0
    ref = json.loads(run_cli(*train_args(tiny_mask, part3, tmp_path / "inproc", "--json")).stdout)
    a, b = tmp_path / "flower", tmp_path / "inproc"
    name = "checkpoints/round-0002.safetensors"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "ledger.jsonl").read_bytes() == (b / "ledger.jsonl").read_bytes()  # incl. bytes_up/bytes_down
    assert (a / "gradip.safetensors").read_bytes() == (b / "gradip.safetensors").read_bytes()
    assert fl["final_state_crc"] == ref["final_state_crc"] and fl["engine"] == "flower"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    # bytes on the wire: Flower's encoding of the same messages = ours + framing (metadata, record names)
    rows = [json.loads(ln) for ln in (a / "metrics.jsonl").read_text().splitlines()][1:]
    report = []
    for row in rows:
        n = len(row["clients"])
        over_down = (row["flower_bytes_down"] - row["bytes_down"]) / n
        over_up = (row["flower_bytes_up"] - row["bytes_up"]) / n
        report.append((row["round"], row["bytes_down"], row["flower_bytes_down"], row["bytes_up"], row["flower_bytes_up"]))
        assert 0 < over_down < 1000 and 0 < over_up < 1000
    print(f"\nflower engine {t_flower:.0f} s; per round (round, ours down, flower down, ours up, flower up): {report}")


@pytest.mark.slow
def test_killed_supernode_round_completes_and_run_resumes(tiny_mask: Path, part3: Path, tmp_path: Path) -> None:
    from meerkat_core.config.train import EvalSettings, TrainConfig
    from meerkat_core.flower.deployment import FlowerOptions, run_flower_training

    out, work = tmp_path / "killed", tmp_path / "flower-work"
    cfg = TrainConfig(model="tiny-llama", mask=str(tiny_mask), partition=str(part3), task="sentiment2", out=str(out),
                      rounds=3, local_steps=3, clients_per_round=3, lr=1e-2, eps=1e-3, batch_size=4, eval=EvalSettings(limit=16),
                      device="cpu")
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = run_flower_training(cfg, options=FlowerOptions(work_dir=str(work)))
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    th = threading.Thread(target=target)
    th.start()
    deadline = time.time() + 900
    ledger = out / "ledger.jsonl"
    while time.time() < deadline and th.is_alive():
        if ledger.exists() and ledger.read_text().count('"type":"round"') >= 1:
            break
        time.sleep(0.2)
    pid = json.loads((work / "deployment.json").read_text())["supernodes"]["2"]
    os.kill(pid, signal.SIGKILL)  # client 2's site goes away mid-run
    th.join(timeout=1200)
    assert not th.is_alive()
    assert "error" not in result, result.get("error")
    led = _ledger(out)
    rounds = [x for x in led if x["type"] == "round"]
    assert [x["round"] for x in rounds] == [1, 2, 3]
    per_round = {r: sorted(x["client"] for x in led if x["type"] == "client" and x["round"] == r) for r in (1, 2, 3)}
    assert per_round[1] == [0, 1, 2] and per_round[3] == [0, 1]  # the round completes with the others
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["dropped"] == [2]
    # consistent and resumable: a new deployment re-applies the ledger and client 2 catches up on the history
    summary = json.loads(run_cli(*train_args(tiny_mask, part3, out, "--resume", "--engine", "flower", "--json",
                                             rounds=4)).stdout)
    assert summary["rounds"] == 4 and summary["engine"] == "flower"
    led = _ledger(out)
    assert [x["round"] for x in led if x["type"] == "round"] == [1, 2, 3, 4]
    assert sorted(x["client"] for x in led if x["type"] == "client" and x["round"] == 4) == [0, 1, 2]
    assert (out / "checkpoints" / "round-0004.safetensors").exists()
