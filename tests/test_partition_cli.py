"""`meerkat partition` end to end through Typer's CliRunner: outputs, --json, --plot, bad input."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from meerkat_cli.partition_cmd import partition_command
from meerkat_core.partition import dataset_fingerprint, load_partition, verify_partition

app = typer.Typer()
app.command("partition")(partition_command)


@app.callback()
def _root() -> None:
    """Group mode, so the command is invoked as `partition ...` like under the real app."""


runner = CliRunner()


LABELS = ["neg", "neutral", "pos"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> tuple[Path, list[dict]]:
    rng = random.Random(0)
    rows = [{"text": f"sample number {i}", "sentiment": rng.choice(LABELS), "id": i} for i in range(90)]
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def run(*args: str):
    return runner.invoke(app, ["partition", *args])


def one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_end_to_end_manifest_json_and_plot(tmp_path, data_file):
    path, rows = data_file
    out = tmp_path / "part"
    plot = tmp_path / "plots" / "heat.png"
    res = run(
        "--data", str(path), "--label-column", "sentiment", "--clients", "6", "--scheme", "mixed",
        "--extreme-clients", "2", "--seed", "3", "--out", str(out), "--json", "--plot", str(plot),
    )
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)  # --json: exactly one JSON document on stdout

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "meerkat.partition" and manifest["format_version"] == 1
    assert manifest["source"]["kind"] == "files" and manifest["source"]["paths"] == [str(path)]
    assert manifest["scheme"] == "mixed" and manifest["params"]["extreme_clients"] == 2
    assert manifest["seed"] == 3 and manifest["num_samples"] == len(rows) == 90
    assert manifest["label_column"] == "sentiment" and manifest["label_names"] == LABELS
    assert manifest["test_split"]["partitioned"] is False

    clients = manifest["clients"]
    assert len(clients) == 6
    assert sum(c["size"] for c in clients) == 90
    seen = sorted(i for c in clients for i in c["indices"])
    assert seen == list(range(90))
    for c in clients:
        counts = Counter(rows[i]["sentiment"] for i in c["indices"])
        assert c["label_counts"] == [counts.get(lab, 0) for lab in LABELS]
        assert c["size"] == len(c["indices"])
    assert sum(c["assigned_label"] is not None for c in clients) == 2
    assert [c["label_counts"] for c in shown["clients"]] == [c["label_counts"] for c in clients]
    assert shown["dataset_fingerprint"] == manifest["dataset_fingerprint"]

    # The training side: load, recompute the fingerprint, read a client's rows.
    from meerkat_core.tasks.sources import load_local_files

    ds = load_local_files([str(path)])
    m = load_partition(out)
    verify_partition(m, dataset_fingerprint(ds, "text", "sentiment"))
    assert m.client_indices(0) == clients[0]["indices"]

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in plot.parent.iterdir() if p.name != "heat.png"]  # no temp files left


def test_table_output_on_stdout(tmp_path, data_file):
    path, _ = data_file
    res = run("--data", str(path), "--label-column", "sentiment", "--clients", "3", "--scheme", "dirichlet",
              "--alpha", "1", "--out", str(tmp_path / "p"))
    assert res.exit_code == 0, res.output
    for word in ("client", "size", "TV", "extreme", *LABELS):
        assert word in res.stdout
    assert "wrote" in res.stderr and "wrote" not in res.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--clients", "500"], "exceeds the 90 samples"),
        (["--clients", "3", "--label-column", "nope"], "--label-column 'nope'"),
        (["--clients", "3", "--scheme", "dirichlet", "--alpha", "0"], "--alpha"),
        (["--clients", "3", "--scheme", "dirichlet", "--alpha", "-0.5"], "--alpha"),
        (["--clients", "3", "--scheme", "mixed", "--extreme-clients", "4"], "exceeds --clients 3"),
        (["--clients", "3", "--scheme", "iid", "--extreme-clients", "1"], "only to --scheme mixed"),
        (["--clients", "3", "--scheme", "pathological", "--labels-per-client", "4"], "--labels-per-client 4"),
        (["--clients", "10", "--min-size", "10"], "--min-size 10"),
        (["--clients", "3", "--scheme", "nope"], "unknown --scheme"),
        (["--clients", "3", "--text-column", "body"], "--text-column 'body'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, data_file, args, fragment):
    path, _ = data_file
    out = tmp_path / "part"
    plot = tmp_path / "heat.png"
    base = ["--data", str(path)] + ([] if "--label-column" in args else ["--label-column", "sentiment"])
    res = run(*base, *args, "--out", str(out), "--plot", str(plot))
    assert res.exit_code == 2, res.output
    assert fragment in one_error_line(res)
    assert not out.exists()
    assert not plot.exists()
    assert list(tmp_path.iterdir()) == []


def test_needs_exactly_one_data_source(tmp_path, data_file):
    path, _ = data_file
    res = run("--clients", "2", "--out", str(tmp_path / "p"))
    assert res.exit_code == 2 and "exactly one of --task" in one_error_line(res)
    res = run("--task", "sentiment2", "--data", str(path), "--clients", "2", "--out", str(tmp_path / "p"))
    assert res.exit_code == 2 and "exactly one of --task" in one_error_line(res)
    assert not (tmp_path / "p").exists()


def test_refuses_to_replace_a_directory_that_is_not_a_partition(tmp_path, data_file):
    path, _ = data_file
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file.txt").write_text("mine")
    res = run("--data", str(path), "--label-column", "sentiment", "--clients", "2", "--out", str(keep))
    assert res.exit_code == 2 and "not a meerkat partition" in one_error_line(res)
    assert (keep / "file.txt").read_text() == "mine"


def test_builtin_task_when_available(tmp_path):
    tasks = pytest.importorskip("meerkat_core.tasks")
    from meerkat_core.errors import MeerkatInputError

    try:
        data = tasks.load_task_data(tasks.get_task("sentiment2"))
    except MeerkatInputError as exc:  # the offline asset package is not installed
        pytest.skip(str(exc))
    out = tmp_path / "p"
    res = run("--task", "sentiment2", "--clients", "10", "--scheme", "mixed", "--extreme-clients", "3",
              "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    m = load_partition(out)
    verify_partition(m, dataset_fingerprint(data.train, "text", "label"))
    assert m.num_samples == data.train.num_rows
    assert m.label_names == list(tasks.get_task("sentiment2").label_names)
    assert m.source == {"kind": "task", "task": "sentiment2"}
    assert m.raw["test_split"]["num_samples"] == data.test.num_rows
    assert sum(1 for c in m.clients if c.assigned_label is not None) == 3
    sizes = np.asarray(m.client_sizes())
    assert sizes.sum() == data.train.num_rows
