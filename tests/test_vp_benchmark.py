"""benchmarks/vp_vs_meerkat.py --quick (the CI path): runs every arm on tiny-llama, writes the JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def test_quick_benchmark_writes_results(tmp_path: Path, capsys) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vp_vs_meerkat.py"
    spec = importlib.util.spec_from_file_location("vp_vs_meerkat", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--out", str(tmp_path / "bench")]) == 0
    doc = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert [r["arm"] for r in doc["runs"]] == ["meerkat", "meerkat-vp", "vp-random"]
    vp = doc["runs"][1]
    assert {"flagged", "stopped", "extreme", "detector_exact", "separation", "final_accuracy"} <= set(vp)
    assert len(doc["runs"][2]["stopped"]) == len(doc["runs"][2]["flagged"])
    assert set(doc["summary"]) == {"meerkat", "meerkat-vp", "vp-random"}
    assert "paired_diff_mean" in doc["summary"]["meerkat-vp"]
    assert "mean acc" in capsys.readouterr().out
    # a second call reads the finished runs back instead of training again
    assert mod.main(["--quick", "--out", str(tmp_path / "bench")]) == 0
