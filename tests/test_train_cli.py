"""`meerkat train` / `eval --checkpoint` / `export` end to end, resume after SIGKILL, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli


def train_args(mask: Path, part: Path, out: Path, *extra: str, rounds: int = 3) -> list[str]:
    return ["train", "--model", "tiny-llama", "--mask", str(mask), "--partition", str(part), "--task", "sentiment2",
            "--rounds", str(rounds), "--local-steps", "3", "--clients-per-round", "3", "--lr", "1e-2", "--eps", "1e-3",
            "--batch-size", "4", "--eval-limit", "16", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def finished_run(tiny_mask: Path, tiny_partition: Path, workdir: Path) -> tuple[Path, dict]:
    out = workdir / "run-e2e"
    summary = json.loads(run_cli(*train_args(tiny_mask, tiny_partition, out, "--checkpoint-every", "2", "--json")).stdout)
    return out, summary


def test_run_directory_contents(finished_run: tuple[Path, dict], tiny_mask: Path) -> None:
    out, summary = finished_run
    assert summary["rounds"] == 3 and summary["total_client_steps"] == 27 and summary["skipped_steps"] == 0
    assert summary["uplink_bytes_per_step"] < 60  # 12 bytes per step + a header per message
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "meerkat.run" and config["train"]["lr"] == 0.01
    lines = [json.loads(ln) for ln in (out / "ledger.jsonl").read_text().splitlines()]
    clients = [ln for ln in lines if ln["type"] == "client"]
    rounds = [ln for ln in lines if ln["type"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and len(clients) == 9
    assert all(len(c["gs"]) == 3 and c["bytes_up"] > 0 and c["bytes_down"] > 0 for c in clients)
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    assert "eval_accuracy" in metrics[0] and "eval_accuracy" in metrics[-1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round-0002.safetensors", "round-0003.safetensors"]
    ckpt = load_file(str(out / "checkpoints" / "round-0003.safetensors"))
    assert sum(v.numel() for v in ckpt.values()) == summary["k"]  # only the k values
    gradip = load_file(str(out / "gradip.safetensors"))
    assert gradip["gradip"].numel() == 27 and torch.isfinite(gradip["gradip"]).all()


def test_eval_checkpoint_matches_training_eval(finished_run: tuple[Path, dict]) -> None:
    out, summary = finished_run
    res = json.loads(run_cli("eval", "--model", "tiny-llama", "--checkpoint", str(out), "--limit", "16", "--json").stdout)
    assert res["checkpoint"].endswith("round-0003.safetensors")
    assert res["accuracy"] == pytest.approx(summary["final_accuracy"], abs=1e-9)
    base = json.loads(run_cli("eval", "--model", "tiny-llama", "--limit", "16", "--json").stdout)
    assert res["mean_loss"] != base["mean_loss"]  # the checkpoint changed the model


def test_export_writes_merged_model(finished_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = finished_run
    dest = tmp_path / "merged"
    run_cli("export", str(out), "--out", str(dest))
    from meerkat_core.models import load_model

    merged = load_model(str(dest), device="cpu")
    base = load_model("tiny-llama", device="cpu")
    ckpt = load_file(str(out / "checkpoints" / "round-0003.safetensors"))
    changed = 0
    for name, p in merged.model.named_parameters():
        diff = (p != dict(base.model.named_parameters())[name]).sum().item()
        changed += diff
    assert 0 < changed <= sum(v.numel() for v in ckpt.values())


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    rounds = 8
    ref = tmp_path / "ref"
    run_cli(*train_args(tiny_mask, tiny_partition, ref, rounds=rounds), in_process=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "meerkat_cli.app", *train_args(tiny_mask, tiny_partition, out, rounds=rounds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = out / "ledger.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        text = ledger.read_text() if ledger.exists() else ""
        if text.count('"type":"round"') >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = ledger.read_text().count('"type":"round"')
    assert 3 <= killed_at < rounds, "the run must be killed before it finished"
    run_cli(*train_args(tiny_mask, tiny_partition, out, "--resume", rounds=rounds), in_process=False)
    name = f"round-{rounds:04d}.safetensors"
    assert (out / "checkpoints" / name).read_bytes() == (ref / "checkpoints" / name).read_bytes()
    led = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert [x["round"] for x in led if x["type"] == "round"] == list(range(1, rounds + 1))


def test_resume_discards_a_torn_round(finished_run: tuple[Path, dict], tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    """A ledger cut in the middle of a round's block: the partial block is dropped and redone."""
    src, _ = finished_run
    out = tmp_path / "torn"
    out.mkdir()
    for f in ("config.json", "gradip.safetensors"):
        (out / f).write_bytes((src / f).read_bytes())
    # metrics are written after a round's ledger commit: a kill inside round 2's block leaves rows 0-1
    rows = (src / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(rows[:2]))
    lines = (src / "ledger.jsonl").read_text().splitlines(keepends=True)
    cut = [i for i, ln in enumerate(lines) if '"type":"round"' in ln][1]  # keep round 1 + part of round 2
    (out / "ledger.jsonl").write_text("".join(lines[: cut - 1]) + lines[cut - 1][:20])
    run_cli(*train_args(tiny_mask, tiny_partition, out, "--resume", "--checkpoint-every", "2"))
    for name in ("round-0002.safetensors", "round-0003.safetensors"):
        assert (out / "checkpoints" / name).read_bytes() == (src / "checkpoints" / name).read_bytes()


def test_train_bad_inputs_exit_2_and_write_nothing(tiny_mask: Path, tiny_partition: Path, tmp_path: Path, workdir: Path,
                                                   tiny_loaded) -> None:
    other_part = workdir / "part-s3"
    run_cli("partition", "--task", "sentiment3", "--clients", "3", "--scheme", "iid", "--out", str(other_part))
    other_model = tmp_path / "other-model"
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**tiny_loaded.model.config.to_dict(), "num_hidden_layers": 1})
    LlamaForCausalLM(cfg).save_pretrained(str(other_model))
    tiny_loaded.tokenizer.save_pretrained(str(other_model))
    cases = {
        "lr": ["--lr", "0"],
        "eps": ["--eps", "-1"],
        "rounds": ["--rounds", "0"],
        "partition of another dataset": ["--partition", str(other_part)],
        "mask for another model": ["--model", str(other_model)],
        "missing mask": ["--mask", str(tmp_path / "nope.safetensors")],
    }
    for i, (what, extra) in enumerate(cases.items()):
        out = tmp_path / f"bad{i}"
        args = train_args(tiny_mask, tiny_partition, out)
        for j in range(0, len(extra), 2):
            pos = args.index(extra[j])
            args[pos + 1] = extra[j + 1]
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2, (what, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.strip().startswith("error:"), (what, proc.stderr)
        assert not out.exists(), what


def test_checkpoint_of_another_mask_is_refused(finished_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = finished_run
    config = json.loads((out / "config.json").read_text())
    other = tmp_path / "other.mask"
    run_cli("mask", "--model", "tiny-llama", "--method", "random", "--samples", "4", "--seq-len", "16",
            "--batch-size", "4", "--seed", "3", "--out", str(other))
    ckpt = out / "checkpoints" / "round-0003.safetensors"
    mask_path = Path(config["provenance"]["mask_path"])
    saved = mask_path.read_bytes()
    try:
        mask_path.write_bytes(other.read_bytes())
        proc = run_cli("eval", "--model", "tiny-llama", "--checkpoint", str(ckpt), "--limit", "4", check=False)
    finally:
        mask_path.write_bytes(saved)
    assert proc.returncode == 2 and "mask" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_classification_loss_runs_and_is_recorded(tiny_mask: Path, tiny_partition: Path, tmp_path: Path,
                                                  finished_run: tuple[Path, dict]) -> None:
    """The default loss is classification, the two-way CE (about ln 2 on the untrained tiny model, where the
    vocabulary-wide CE of --loss lm is about ln 32000); an unknown --loss is refused before anything is written."""
    def losses(run: Path) -> list[float]:
        return [x for r in map(json.loads, (run / "ledger.jsonl").read_text().splitlines()) for x in r.get("losses", [])]

    assert json.loads((finished_run[0] / "config.json").read_text())["train"]["loss"] == "classification"  # no --loss
    cls = losses(finished_run[0])
    assert cls and all(0.3 < x < 1.2 for x in cls), cls
    out = tmp_path / "lm"
    run_cli(*train_args(tiny_mask, tiny_partition, out, "--loss", "lm", rounds=1))
    assert json.loads((out / "config.json").read_text())["train"]["loss"] == "lm"
    assert min(losses(out)) > 5.0
    bad = run_cli(*train_args(tiny_mask, tiny_partition, tmp_path / "bad", "--loss", "hinge"), check=False)
    assert bad.returncode == 2 and "--loss hinge" in bad.stderr and not (tmp_path / "bad").exists()


def test_train_refuses_a_run_dir_in_use(finished_run: tuple[Path, dict], tiny_mask: Path, tiny_partition: Path) -> None:
    """`meerkat train --resume` on a run another live process holds: one-line error, exit 2, run untouched."""
    from meerkat_core.rundir import LOCK, run_dir_lock

    out = finished_run[0]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with run_dir_lock(out):
        res = run_cli(*train_args(tiny_mask, tiny_partition, out, "--resume", rounds=4), check=False)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and f"in use by process {os.getpid()}" in res.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before and not (out / LOCK).exists()


def test_default_dtype_is_resolved_and_recorded(finished_run: tuple[Path, dict]) -> None:
    """--dtype auto is decided once, recorded concretely in config.json with the reason."""
    from meerkat_core.models import choose_dtype

    out, _ = finished_run
    config = json.loads((out / "config.json").read_text())
    here = choose_dtype("auto", torch.device("cpu"))
    assert config["train"]["dtype"] == here.name
    assert config["provenance"]["dtype"] == str(here.dtype).removeprefix("torch.")
    assert config["provenance"]["dtype_reason"] == here.reason


def test_bf16_run_resumes_bitwise(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    """A bf16 run (low-precision carriers) stopped after round 1 and resumed with --dtype auto ends on
    the same bytes as the uninterrupted run: auto adopts the run's recorded dtype."""
    ref, out = tmp_path / "ref", tmp_path / "cut"
    run_cli(*train_args(tiny_mask, tiny_partition, ref, "--dtype", "bf16", rounds=2))
    run_cli(*train_args(tiny_mask, tiny_partition, out, "--dtype", "bf16", rounds=1))
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["dtype"] == "bf16" and config["provenance"]["carriers"]["corrected_linears"] > 0
    run_cli(*train_args(tiny_mask, tiny_partition, out, "--resume", rounds=2))  # --dtype auto
    name = "round-0002.safetensors"
    assert (out / "checkpoints" / name).read_bytes() == (ref / "checkpoints" / name).read_bytes()
    assert json.loads((out / "config.json").read_text())["train"]["dtype"] == "bf16"
    res = run_cli(*train_args(tiny_mask, tiny_partition, out, "--resume", "--dtype", "fp32", rounds=3), check=False)
    assert res.returncode == 2 and "--dtype is 'fp32' but the run used 'bf16'" in res.stderr
    res = run_cli(*train_args(tiny_mask, tiny_partition, out, "--resume", "--zo-forward", "two", rounds=3), check=False)
    assert res.returncode == 2 and "--zo-forward is 'two' but the run used 'auto'" in res.stderr


def test_bf16_zo_forward_is_recorded_and_changes_the_steps(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    """--zo-forward auto runs a bf16 step as one paired forward, --zo-forward two as two forwards: both are
    recorded in the provenance and printed (with why a low-precision run is not paired), and their steps differ
    (g from different roundings), so the choice is real."""
    runs = {}
    said = {"auto": ("zo forward: paired", None), "two": ("zo forward: two forwards (paired forward: not asked for)",
                                                        "not asked for")}
    for mode in ("auto", "two"):
        out = tmp_path / mode
        res = run_cli(*train_args(tiny_mask, tiny_partition, out, "--dtype", "bf16", "--zo-forward", mode, rounds=1))
        config = json.loads((out / "config.json").read_text())
        assert config["train"]["zo_forward"] == mode
        line, reason = said[mode]
        assert line in res.stdout + res.stderr and config["provenance"]["zo_forward_reason"] == reason
        runs[config["provenance"]["zo_forward"]] = (out / "checkpoints" / "round-0001.safetensors").read_bytes()
    assert set(runs) == {"paired", "two forwards"}
    assert runs["paired"] != runs["two forwards"]


def test_eval_checkpoint_refuses_another_task_unless_cross_task(finished_run: tuple[Path, dict]) -> None:
    out, _ = finished_run
    proc = run_cli("eval", "--checkpoint", str(out), "--task", "sentiment3", "--limit", "4", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "trained on task 'sentiment2'" in lines[0] and "--cross-task" in lines[0]
    same = json.loads(run_cli("eval", "--checkpoint", str(out), "--task", "sentiment2", "--limit", "4", "--json").stdout)
    assert same["task"] == "sentiment2" and same["model"] == "tiny-llama"
    cross = json.loads(run_cli("eval", "--checkpoint", str(out), "--task", "sentiment3", "--cross-task", "--limit", "6",
                               "--json").stdout)
    assert cross["task"] == "sentiment3" and cross["n"] == 6 and len(cross["confusion"]) == 3
