"""`meerkat eval` end to end through the CLI, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_eval_tiny_json() -> None:
    res = json.loads(run_cli("eval", "--model", "tiny-llama", "--task", "sentiment2", "--limit", "24",
                             "--batch-size", "5", "--json").stdout)
    assert res["n"] == 24 and res["task"] == "sentiment2" and res["split"] == "test"
    conf = res["confusion"]
    assert sum(map(sum, conf)) == 24 and [sum(r) for r in conf] == [12, 12]
    correct = conf[0][0] + conf[1][1]
    assert abs(res["accuracy"] - correct / 24) < 1e-9
    assert set(res["per_class_accuracy"]) == {"negative", "positive"}
    assert abs(res["per_class_accuracy"]["negative"] - conf[0][0] / 12) < 1e-9
    assert res["mean_loss"] > 0 and res["device"] == "cpu"


def test_eval_table_output() -> None:
    proc = run_cli("eval", "--model", "tiny-llama", "--limit", "4")
    assert "accuracy" in proc.stdout and "negative" in proc.stdout


def test_eval_bad_inputs_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "t.json"
    (tmp_path / "a.csv").write_text("text,lbl\nx,0\n")
    spec.write_text(json.dumps({"label_names": ["a", "b"], "label_words": [" a", " b"],
                                "train_files": "a.csv", "test_files": "a.csv"}))
    for args in (["--task", "nope"], ["--task", str(spec)], ["--split", "dev"]):
        proc = run_cli("eval", "--model", "tiny-llama", "--limit", "2", *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "error:" in proc.stderr
