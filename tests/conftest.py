"""Shared fixtures: the tiny model, a mask and partitions for it, made once per session via the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# OMP_NUM_THREADS (when set) wins: jobs sharing a 2-core machine run one thread each.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None, in_process: bool = True
) -> subprocess.CompletedProcess:
    """Run the ``meerkat`` app on ``args``: in this process through Typer's runner (fast: no
    re-import of torch), or with ``in_process=False`` as a real subprocess (exit codes, signals)."""
    if in_process:
        from typer.testing import CliRunner

        from meerkat_cli.app import app

        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            res = CliRunner().invoke(app, list(args))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        proc = subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "meerkat_cli.app", *args],
            capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900,
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"meerkat {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("meerkat")


@pytest.fixture(scope="session")
def tiny_mask(workdir: Path) -> Path:
    path = workdir / "tiny.mask.safetensors"
    run_cli("mask", "--model", "tiny-llama", "--samples", "8", "--seq-len", "32", "--batch-size", "4",
            "--density", "1e-3", "--out", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_partition(workdir: Path) -> Path:
    path = workdir / "part-dir"
    run_cli("partition", "--task", "sentiment2", "--clients", "4", "--scheme", "dirichlet", "--alpha", "0.5",
            "--seed", "0", "--out", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_loaded():
    from meerkat_core.models import load_model

    return load_model("tiny-llama", device="cpu")


def train_tiny(mask: Path, part: Path, task: str, out: Path, rounds: int = 1, **extra: str) -> dict:
    """`meerkat train` on tiny-llama with a small budget (2 clients x 2 steps, batch 2); its JSON summary."""
    import json

    flags = [x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", v)]
    return json.loads(run_cli(
        "train", "--model", "tiny-llama", "--mask", str(mask), "--partition", str(part), "--task", task,
        "--rounds", str(rounds), "--local-steps", "2", "--clients-per-round", "2", "--batch-size", "2", "--lr", "1e-2",
        "--device", "cpu", "--out", str(out), *flags, "--json").stdout)
