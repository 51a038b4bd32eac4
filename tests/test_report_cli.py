"""`meerkat report RUN [RUN ...]`: two real tiny-llama runs side by side (the table's numbers against
their metrics.jsonl, --json, the PNG), a run killed part-way, and the one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from meerkat_core.compare.runs import distinct_labels
from tests.conftest import run_cli
from tests.test_train_cli import train_args


@pytest.fixture(scope="module")
def two_runs(tiny_mask: Path, tiny_partition: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    a, b = root / "a" / "run", root / "b" / "run"  # the same name: the labels must tell them apart
    run_cli(*train_args(tiny_mask, tiny_partition, a, "--eval-every", "1"))
    run_cli(*train_args(tiny_mask, tiny_partition, b, "--eval-every", "2", "--local-steps", "2", "--lr", "5e-2"))
    return a, b


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_report_table_numbers_and_png(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_runs
    png = tmp_path / "plots" / "compare.png"
    doc = json.loads(run_cli("report", str(a), str(b), "--json", "--plot", str(png)).stdout)
    assert [r["label"] for r in doc["runs"]] == ["a/run", "b/run"] and doc["notes"] == []
    for rec, run, steps in zip(doc["runs"], (a, b), (3, 2)):
        m = _metrics(run)
        evals = [x for x in m if "eval_accuracy" in x]
        assert rec["task"] == "sentiment2" and rec["model"] == "tiny-llama" and rec["mask"] == "tiny.mask.safetensors"
        assert rec["algorithm"] == "meerkat" and rec["local_steps"] == steps and rec["complete"]
        assert rec["rounds"] == rec["rounds_done"] == 3
        assert rec["client_steps"] == sum(x.get("steps", 0) for x in m) == 3 * 3 * steps
        assert rec["bytes_up"] == sum(x.get("bytes_up", 0) for x in m) > 0
        assert rec["bytes_down"] == sum(x.get("bytes_down", 0) for x in m) > 0
        assert rec["initial_accuracy"] == evals[0]["eval_accuracy"] and rec["final_accuracy"] == evals[-1]["eval_accuracy"]
        assert rec["best_accuracy"] == max(x["eval_accuracy"] for x in evals[1:])
        assert [p["round"] for p in rec["curve"]] == [x["round"] for x in evals]
        assert rec["curve"][-1]["cum_bytes"] == rec["bytes_up"] + rec["bytes_down"]
        assert rec["seconds"] == pytest.approx(sum(x.get("seconds", 0) + x.get("eval_seconds", 0) for x in m), rel=1e-4)
    assert [p["round"] for p in doc["runs"][0]["curve"]] == [0, 1, 2, 3]
    assert [p["round"] for p in doc["runs"][1]["curve"]] == [0, 2, 3]
    data = png.read_bytes()
    assert len(data) > 10_000 and data[:8] == b"\x89PNG\r\n\x1a\n" and not list(png.parent.glob(".*tmp"))
    table = run_cli("report", str(a), str(b)).stdout
    lines = {ln.split()[1]: ln for ln in table.splitlines() if "/run " in ln}
    assert set(lines) == {"a/run", "b/run"}
    for rec in doc["runs"]:
        line = lines[rec["label"]]
        assert f"{rec['final_accuracy']:.4f}" in line and f"{rec['best_accuracy']:.4f} ({rec['best_round']})" in line
        assert f" {rec['client_steps']} " in line and "tiny.mask.safetensors (k=" in line


def test_report_on_a_run_stopped_part_way(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = two_runs
    run = tmp_path / "killed"
    shutil.copytree(a, run)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(rows[:3]) + "\n" + rows[3][:20])  # rounds 0-2, a torn line
    (run / "summary.json").unlink()
    doc = json.loads(run_cli("report", str(run), "--json").stdout)
    rec = doc["runs"][0]
    assert rec["rounds_done"] == 2 and not rec["complete"] and rec["final_round"] == 2
    assert any("2 of 3 rounds" in n for n in doc["notes"])
    assert "2/3" in run_cli("report", str(run)).stdout


def test_report_bad_input_is_one_line(tmp_path: Path) -> None:
    for args, words in ((["report", str(tmp_path / "none")], "no such directory"),
                        (["report", str(tmp_path)], "not a run directory")):
        res = run_cli(*args, check=False)
        assert res.returncode == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    png = tmp_path / "x.png"
    res = run_cli("report", str(tmp_path / "none"), "--plot", str(png), check=False)
    assert res.returncode == 2 and not png.exists()


def test_distinct_labels() -> None:
    assert distinct_labels(["x/a/run", "x/b/run"]) == ["a/run", "b/run"]
    assert distinct_labels(["r1", "r2"]) == ["r1", "r2"]
    assert distinct_labels(["/p/run"]) == ["run"]


def test_bytes_panel_starts_at_round_zero(two_runs: tuple[Path, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 0 (0 bytes) is on the bytes panel too: a symlog axis, linear below the first round's bytes."""
    import matplotlib.axes

    from meerkat_core.compare.plot import bytes_linthresh, plot_comparison
    from meerkat_core.compare.runs import compare_runs

    cmp = compare_runs(list(two_runs))
    lines: list[tuple[list, list]] = []
    scales: list[tuple[str, dict]] = []
    real_plot, real_scale = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_xscale
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, xs, ys, *a, **k: lines.append((list(xs), list(ys))) or real_plot(ax, xs, ys, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xscale",
                        lambda ax, v, **k: scales.append((v, k)) or real_scale(ax, v, **k))
    plot_comparison(cmp, tmp_path / "c.png")
    first_sent = min(p.cum_bytes for r in cmp.runs for p in r.curve if p.cum_bytes > 0)
    assert bytes_linthresh(cmp) == first_sent > 0
    assert scales == [("symlog", {"linthresh": first_sent, "linscale": 0.5})]
    for run in cmp.runs:
        assert ([p.cum_bytes for p in run.curve], [p.accuracy for p in run.curve]) in lines
        assert run.curve[0].round == 0 and run.curve[0].cum_bytes == 0
