"""One writer per run directory (meerkat_core.rundir.lock, a filelock) and run_training's use of it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meerkat_core.errors import MeerkatInputError
from meerkat_core.config.train import EvalSettings, TrainConfig
from meerkat_core.rundir import LOCK, run_dir_lock
from meerkat_core.fed.training import run_training


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_dir_lock(run) as lock:
        owner = json.loads(lock.read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
        (run / "config.json").write_text("{}")
        with pytest.raises(MeerkatInputError, match=rf"in use by process {os.getpid()} on .*wait for it to finish"):
            with run_dir_lock(run):
                pass  # pragma: no cover
        assert lock.exists()  # the refused attempt left the holder's lock alone
    assert not (run / LOCK).exists() and (run / "config.json").exists()


def test_empty_directory_it_created_is_removed(tmp_path: Path) -> None:
    with run_dir_lock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with run_dir_lock(tmp_path / "old"):
        pass
    assert (tmp_path / "old").is_dir()  # it existed before: kept


def test_stale_lock_is_taken_over_live_one_of_another_process_refused(tmp_path: Path) -> None:
    """A lock file left by a process that died (the OS released its lock) is taken over, whatever host it
    names; a lock another live process holds is refused, naming that process."""
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    for host in (socket.gethostname(), "some-other-host"):
        (run / LOCK).write_text(json.dumps({"host": host, "pid": dead}))
        with run_dir_lock(run) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not (run / LOCK).exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from meerkat_core.rundir import run_dir_lock\n"
         "with run_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MeerkatInputError, match=rf"in use by process {holder.pid} on {socket.gethostname()}"):
            with run_dir_lock(run):
                pass  # pragma: no cover
        assert json.loads((run / LOCK).read_text())["pid"] == holder.pid  # the refused attempt left it alone
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(run):  # killed: the OS dropped its lock
        pass


def test_run_training_refuses_a_locked_run_dir(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(model="tiny-llama", mask=str(tiny_mask), partition=str(tiny_partition), task="sentiment2",
                      out=str(out), rounds=1, local_steps=1, clients_per_round=1, lr=1e-2, batch_size=2,
                      device="cpu", eval=EvalSettings(limit=4))
    with run_dir_lock(out):  # another job holds it (this process plays both)
        with pytest.raises(MeerkatInputError, match="in use by process"):
            run_training(cfg)
        assert [p.name for p in out.iterdir()] == [LOCK]  # nothing written by the refused job
    summary = run_training(cfg)  # free again: it runs, and releases the lock
    assert summary["total_client_steps"] == 1 and not (out / LOCK).exists()
    assert (out / "summary.json").exists()
