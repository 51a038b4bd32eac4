"""Metrics and GradIP are appended per round, not rewritten: metrics.jsonl keeps its inode and grows by
one line a round; GradIP rows go to gradip.pending.jsonl and into gradip.safetensors once, when the
job ends. A job stopped part-way is read as far as it got (torn last lines dropped), and resumes to the
same GradIP file, byte for byte, as a run that was never stopped."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from meerkat_core import api
from meerkat_core.config import EvalSettings, ReportConfig, TrainConfig
from meerkat_core.gradip import load_trajectories
from meerkat_core.gradip.file import GRADIP_FILE, GRADIP_PENDING, read_run_columns
from meerkat_core.gradip.log import GradipLog


def _cfg(mask: Path, part: Path, out: Path, rounds: int = 3, resume: bool = False) -> TrainConfig:
    return TrainConfig(model="tiny-llama", mask=str(mask), partition=str(part), out=str(out), rounds=rounds,
                       local_steps=3, clients_per_round=3, lr=1e-2, batch_size=4, device="cpu", resume=resume,
                       eval=EvalSettings(limit=8))


class Stop(Exception):
    pass


def test_rounds_append_and_the_job_compacts_gradip_once(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    seen: list[dict] = []

    def watch(row: dict) -> None:
        m = out / "metrics.jsonl"
        seen.append({"round": row["round"], "inode": m.stat().st_ino, "lines": len(m.read_text().splitlines()),
                     "safetensors": (out / GRADIP_FILE).exists(),
                     "pending": (out / GRADIP_PENDING).read_text().count("\n") if (out / GRADIP_PENDING).exists() else 0})

    api.train(_cfg(tiny_mask, tiny_partition, out), on_round=watch)
    assert [s["round"] for s in seen] == [0, 1, 2, 3]
    assert [s["lines"] for s in seen] == [1, 2, 3, 4] and len({s["inode"] for s in seen}) == 1  # appended in place
    assert [s["pending"] for s in seen] == [0, 2, 3, 4]  # a header, then a line per round
    assert not any(s["safetensors"] for s in seen)  # not rewritten during the job...
    assert (out / GRADIP_FILE).exists() and not (out / GRADIP_PENDING).exists()  # ...but once at its end
    assert sorted({r for r, _ in load_trajectories(out).items}) == [1, 2, 3]


def test_stopped_job_is_readable_and_resumes_to_the_same_bytes(tiny_mask: Path, tiny_partition: Path,
                                                                tmp_path: Path) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    api.train(_cfg(tiny_mask, tiny_partition, straight))

    def stop_after_2(row: dict) -> None:
        if row["round"] == 2:
            raise Stop  # as a kill after round 2's commit: nothing of the job's end is written

    with pytest.raises(Stop):
        api.train(_cfg(tiny_mask, tiny_partition, stopped), on_round=stop_after_2)
    assert not (stopped / GRADIP_FILE).exists() and (stopped / GRADIP_PENDING).exists()
    # a kill in the middle of the next appends: torn last lines
    with open(stopped / GRADIP_PENDING, "a") as fh:
        fh.write('{"round":3,"columns":{"round":[3,3')
    with open(stopped / "metrics.jsonl", "a") as fh:
        fh.write('{"round":3,"mean_lo')
    trajs = load_trajectories(stopped)  # what `gradip inspect` and `report` read of a stopped run
    full = load_trajectories(straight)
    assert sorted(trajs.items) == [k for k in sorted(full.items) if k[0] <= 2]
    for k, t in trajs.items.items():
        assert np.array_equal(t.gradip, full.items[k].gradip, equal_nan=True) and np.array_equal(t.g, full.items[k].g)
    rec = api.report(ReportConfig(runs=[str(stopped)])).runs[0]
    assert rec.rounds_done == 2 and not rec.complete
    api.train(_cfg(tiny_mask, tiny_partition, stopped, resume=True))
    assert (stopped / GRADIP_FILE).read_bytes() == (straight / GRADIP_FILE).read_bytes()
    assert not (stopped / GRADIP_PENDING).exists()
    a = [json.loads(x) for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in a] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        for k in ("mean_loss", "eval_accuracy", "steps", "bytes_up"):
            assert (x.get(k) == y.get(k)) or (isinstance(x.get(k), float) and math.isnan(x[k]) and math.isnan(y[k]))


def _outcome(client: int, n: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    gs = rng.normal(size=n).tolist()
    gs[0] = float("nan")  # a skipped step
    return SimpleNamespace(client=client, gs=gs, gradip=rng.normal(size=n).tolist(), cosine=rng.normal(size=n).tolist(),
                           losses=rng.normal(size=n).astype(np.float32).astype(float).tolist())


def test_side_file_round_trips_exactly_and_survives_a_kill_between_compaction_steps(tmp_path: Path) -> None:
    log, whole = GradipLog(), GradipLog()
    for r in (1, 2, 3):
        for c in (0, 2):
            o = _outcome(c, 4, 10 * r + c)
            log.add_client_round(r, o)
            whole.add_client_round(r, o)
        log.append(tmp_path, 7, "abc")
    cols = read_run_columns(tmp_path)
    assert cols is not None and cols["round"].tolist() == [1] * 8 + [2] * 8 + [3] * 8
    for c in ("g", "gradip", "cosine", "loss"):  # JSON numbers read back bit for bit (nan too)
        assert np.array_equal(cols[c], np.asarray(whole.columns[c], dtype=np.float64), equal_nan=True)
    pending = (tmp_path / GRADIP_PENDING).read_bytes()
    log.write(tmp_path, 7, "abc")
    ref = tmp_path / "ref"
    ref.mkdir()
    whole.write(ref, 7, "abc")
    assert (tmp_path / GRADIP_FILE).read_bytes() == (ref / GRADIP_FILE).read_bytes()
    (tmp_path / GRADIP_PENDING).write_bytes(pending)  # killed after the rename, before the unlink
    again = read_run_columns(tmp_path)
    assert again is not None and again["round"].tolist() == cols["round"].tolist()  # no row twice
    (tmp_path / GRADIP_PENDING).write_bytes(b'{"format":"meerkat.gradip.pending"}\nnot json\n{"round":4}\n')
    with pytest.raises(Exception, match="corrupt GradIP side file"):
        read_run_columns(tmp_path)
