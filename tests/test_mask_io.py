"""Mask files: deterministic bytes, safetensors compatibility, and validation of bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from meerkat_core.errors import MeerkatInputError
from meerkat_core.mask import FORMAT, compute_mask, load_mask, mask_to_bytes, save_mask
from meerkat_core.mask.io import check_mask_matches

from test_mask_compute import batches, tiny_model


@pytest.fixture(scope="module")
def mask_and_model():
    model = tiny_model()
    return compute_mask(model, batches(), density=0.02, seed=5, model_name="tiny"), model


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    a = compute_mask(tiny_model(), batches(), density=0.02, seed=5, model_name="tiny")
    b = compute_mask(tiny_model(), batches(), density=0.02, seed=5, model_name="tiny")
    save_mask(a, tmp_path / "a.safetensors")
    save_mask(b, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    r1 = compute_mask(tiny_model(), batches(), density=0.02, method="random", seed=5)
    r2 = compute_mask(tiny_model(), batches(), density=0.02, method="random", seed=5)
    assert mask_to_bytes(r1) == mask_to_bytes(r2)


def test_round_trip_and_metadata(mask_and_model, tmp_path: Path) -> None:
    mask, model = mask_and_model
    path = save_mask(mask, tmp_path / "m.safetensors")
    back = load_mask(path, model)
    assert back.meta == mask.meta
    assert list(back.tensors) == list(mask.tensors)
    for name, t in mask.tensors.items():
        u = back.tensors[name]
        assert u.shape == t.shape
        assert torch.equal(u.indices, t.indices) and torch.equal(u.grad_mean, t.grad_mean)
        assert torch.equal(u.score, t.score)
    # Any safetensors reader opens it; the header is all strings.
    tensors = load_file(str(path))
    some = next(t for t in mask.tensors.values() if t.k)
    assert torch.equal(tensors[f"{some.name}::indices"], some.indices)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata()
    assert md["format"] == FORMAT and md["format_version"] == "1"
    for key in ("model_name", "model_fingerprint", "param_dtype", "density", "k", "d", "method", "corpus",
                "corpus_sha256", "n_tokens", "samples", "seq_len", "seed", "exclude", "meerkat_version"):
        assert key in md, key
    assert all(isinstance(v, str) for v in md.values())


def test_empty_tensors_are_not_stored_but_listed(mask_and_model, tmp_path: Path) -> None:
    mask, model = mask_and_model
    path = save_mask(mask, tmp_path / "m.safetensors")
    stored = {k.rsplit("::", 1)[0] for k in load_file(str(path))}
    empty = {n for n, t in mask.tensors.items() if t.k == 0}
    assert empty and not (stored & empty)
    back = load_mask(path)
    assert all(back.tensors[n].k == 0 for n in empty)


def test_load_against_a_different_model_fails(mask_and_model, tmp_path: Path) -> None:
    mask, _ = mask_and_model
    path = save_mask(mask, tmp_path / "m.safetensors")
    torch.manual_seed(0)
    import transformers

    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True))
    with pytest.raises(MeerkatInputError, match="fingerprint") as info:
        load_mask(path, other)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    # Same layout, different weights (a fine-tuned copy): accepted.
    load_mask(path, tiny_model(seed=1))


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1])
def test_truncated_file_is_an_input_error(mask_and_model, tmp_path: Path, keep: int) -> None:
    mask, _ = mask_and_model
    data = mask_to_bytes(mask)
    path = tmp_path / "t.safetensors"
    path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) - 3])
    with pytest.raises(MeerkatInputError) as info:
        load_mask(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg and "meerkat mask" in msg


def test_missing_file_and_other_safetensors(tmp_path: Path) -> None:
    with pytest.raises(MeerkatInputError, match="no such file"):
        load_mask(tmp_path / "none.safetensors")
    weights = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(3)}, str(weights), metadata={"format": "pt"})
    with pytest.raises(MeerkatInputError, match="not a meerkat mask"):
        load_mask(weights)
    with pytest.raises(MeerkatInputError, match="not a file"):
        load_mask(tmp_path)


def _first_nonempty(mask):
    return next(t for t in mask.tensors.values() if t.k >= 2)


@pytest.mark.parametrize("damage", ["unsorted", "duplicate", "out_of_range", "negative", "short_grad"])
def test_inconsistent_content_is_rejected(mask_and_model, tmp_path: Path, damage: str) -> None:
    mask, _ = mask_and_model
    import copy

    bad = copy.deepcopy(mask)
    t = _first_nonempty(bad)
    if damage == "unsorted":
        t.indices = t.indices.flip(0).contiguous()
    elif damage == "duplicate":
        t.indices = t.indices.clone()
        t.indices[1] = t.indices[0]
    elif damage == "out_of_range":
        t.indices = t.indices.clone()
        t.indices[-1] = t.numel
    elif damage == "negative":
        t.indices = t.indices.clone()
        t.indices[0] = -1
    else:
        t.grad_mean = t.grad_mean[:-1].contiguous()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(mask_to_bytes(bad))
    with pytest.raises(MeerkatInputError) as info:
        load_mask(path)
    assert str(path) in str(info.value)


def test_header_tampering_is_rejected(mask_and_model, tmp_path: Path) -> None:
    mask, _ = mask_and_model
    data = mask_to_bytes(mask)
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    for key, value, match in [("format_version", "2", "format_version"), ("k", "7", "k="),
                              ("method", "fisher", "method")]:
        h = json.loads(json.dumps(header))
        h["__metadata__"][key] = value
        raw = json.dumps(h, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path = tmp_path / f"h_{key}.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
        with pytest.raises(MeerkatInputError, match=match):
            load_mask(path)


def test_check_mask_matches_shape_mismatch(mask_and_model) -> None:
    mask, model = mask_and_model
    import copy

    bad = copy.deepcopy(mask)
    name = next(iter(bad.tensors))
    bad.tensors[name].shape = (1, 2, 3)
    with pytest.raises(MeerkatInputError, match="shape"):
        check_mask_matches(bad, model, "x.safetensors")
