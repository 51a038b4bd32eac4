"""Watching a run: one plain line per round on stderr when it is not a terminal (a real subprocess with
stderr to a file), plain progress lines for other long work, the live view on a terminal,
``--log csv|tensorboard`` (complete after a resume), and floats rounded for display in ``--json``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from meerkat_cli.common import display_floats
from meerkat_cli.progress import PlainProgress, RoundView, round_line
from tests.conftest import run_cli
from tests.test_train_cli import train_args

ROUND = re.compile(r"^round (\d+)/3 \| (.*)$")


def test_three_round_run_writes_one_line_per_round_to_a_file(tiny_mask: Path, tiny_partition: Path,
                                                              tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "stderr.log"
    with open(log, "w") as fh:  # stderr is a file, as under nohup or in CI
        proc = subprocess.run([sys.executable, "-m", "meerkat_cli.app", *train_args(tiny_mask, tiny_partition, out),
                               "--eval-every", "2", "--json"], stdout=subprocess.PIPE, stderr=fh, text=True,
                              env={**os.environ, "TERM": "xterm-256color"}, timeout=600)
    assert proc.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\x1b[" not in text and "\r" not in text  # no live view, no cursor movement
    rows = {}
    for line in text.splitlines():
        m = ROUND.match(line)
        if m:
            assert m.group(1) not in rows, f"round {m.group(1)} twice:\n{text}"
            rows[m.group(1)] = m.group(2)
    assert sorted(rows) == ["0", "1", "2", "3"], text
    metrics = {m["round"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    for r in ("1", "2", "3"):
        m = metrics[int(r)]
        assert f"clients {len(m['clients'])}" in rows[r] and f"loss {m['mean_loss']:.4f}" in rows[r]
        assert re.search(r"up \d+ bytes \| down [\d.]+ (bytes|kB) \| \d+\.\d s$", rows[r]), rows[r]
    assert "acc" not in rows["1"]  # not evaluated
    for r in ("0", "2", "3"):
        assert f"acc {metrics[int(r)]['eval_accuracy']:.4f} (n=16)" in rows[r]
    assert json.loads(proc.stdout)["rounds"] == 3


def test_round_line_and_plain_progress() -> None:
    row = {"round": 2, "clients": [0, 3], "mean_loss": 1.23456, "bytes_up": 96, "bytes_down": 1500, "seconds": 2.04,
           "eval_accuracy": 0.635, "eval_n": 200}
    assert round_line(row, 5) == "round 2/5 | clients 2 | loss 1.2346 | acc 0.6350 (n=200) | up 96 bytes | down 1.5 kB | 2.0 s"
    assert round_line({"round": 0, "eval_accuracy": 0.5, "eval_n": 8, "eval_seconds": 0.3}, 5) == \
        "round 0/5 | starting point | acc 0.5000 (n=8) | 0.3 s"
    buf, now = io.StringIO(), [0.0]
    plain = PlainProgress(Console(file=buf, width=200), every_s=30.0, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] = done * 0.1
        plain(done, 100, "evaluating")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "evaluating: 1/100 (1%), 0.0 s" and lines[-1] == "evaluating: 100/100 (100%), 9.9 s"
    assert len(lines) == 11  # the first call, then each further tenth
    buf.truncate(0), buf.seek(0)
    plain(1, None, "reading")
    now[0] += 5
    plain(2, None, "reading")  # no total and under every_s: quiet
    now[0] += 30
    plain(3, None, "reading")
    assert buf.getvalue().splitlines() == ["reading: 1, 0.0 s", "reading: 3, 35.0 s"]


def test_live_view_on_a_terminal_keeps_a_table_of_rounds() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with RoundView(3, console=console) as view:
        assert view.live
        view({"round": 0, "eval_accuracy": 0.5, "eval_n": 8})
        for r in (1, 2, 3):
            view({"round": r, "clients": [1, 2], "mean_loss": 2.5 + r, "bytes_up": 72, "bytes_down": 300,
                  "seconds": 1.0, **({"eval_accuracy": 0.625} if r == 3 else {})})
    final = buf.getvalue().split("\x1b[2K")[-1]  # the last frame
    assert "3/3 rounds" in final and "5.5000" in final and "0.6250" in final and "start" in final
    assert not RoundView(3, console=Console(file=io.StringIO())).live  # not a terminal: plain lines


def test_json_floats_are_rounded_for_display_only() -> None:
    doc = {"accuracy": 0.6349999904632568, "loss": 0.6931471824645996, "n": 200, "bad": float("nan"),
           "nested": [{"lr": 1e-4, "crc": 802476138}]}
    assert display_floats(doc) == {"accuracy": 0.635, "loss": 0.6931472, "n": 200, "bad": None,
                                   "nested": [{"lr": 1e-4, "crc": 802476138}]}


def _tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Scalars by tag and step, read the way TensorBoard reads them: a file that starts a session at
    step s drops what earlier files logged at steps >= s (``purge_step``)."""
    from tensorboardX.proto import event_pb2

    tags: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
                for steps in tags.values():
                    for s in [s for s in steps if s >= ev.step]:
                        del steps[s]
            for v in ev.summary.value:
                tags.setdefault(v.tag, {})[ev.step] = v.simple_value
    return tags


def test_log_csv_and_tensorboard_complete_after_resume(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    run_cli(*train_args(tiny_mask, tiny_partition, out, "--log", "csv", rounds=1))
    assert not (out / "tensorboard").exists()
    # resumed with one more round, and TensorBoard added: both logs hold rounds 0..2 once each
    run_cli(*train_args(tiny_mask, tiny_partition, out, "--log", "csv", "--log", "tensorboard", "--resume", rounds=2))
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row, m in zip(rows, metrics):
        assert float(row["eval_accuracy"]) == m["eval_accuracy"]  # every round here was evaluated (the last)
        if m["round"]:
            assert float(row["mean_loss"]) == m["mean_loss"]  # full precision in the file
            assert int(row["clients"]) == len(m["clients"]) and int(row["bytes_up"]) == m["bytes_up"]
    assert int(rows[-1]["cum_bytes_up"]) == sum(m.get("bytes_up", 0) for m in metrics)
    tb = _tensorboard_scalars(out / "tensorboard")
    assert sorted(tb["train/mean_loss"]) == [1, 2] and sorted(tb["eval/accuracy"]) == [0, 1, 2]
    assert tb["train/mean_loss"][2] == pytest.approx(metrics[2]["mean_loss"], rel=1e-6)
    assert tb["comm/cum_bytes"][2] == sum(m.get("bytes_up", 0) + m.get("bytes_down", 0) for m in metrics)


def test_log_rejects_unknown_kind_before_any_work(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli(*train_args(tiny_mask, tiny_partition, out, "--log", "wandb"), check=False)
    assert res.returncode == 2 and "--log wandb: expected one of csv, tensorboard" in res.stderr
    assert not out.exists()
