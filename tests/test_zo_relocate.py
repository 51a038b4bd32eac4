"""Flattening moves the weights one tensor at a time: values intact, old memory released as it goes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from meerkat_core.zo import SparseCoordinates, derive_key, relocate
from meerkat_core.zo.testing import random_mask, tiny_llama

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5))
LINUX_PROC = sys.platform == "linux" and Path("/proc/self/clear_refs").exists()


def _saved(tmp_path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    tiny_llama().save_pretrained(str(tmp_path))
    return AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=dtype).eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_piecewise_move_keeps_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype) -> None:
    """Pieces far smaller than a tensor (and than a page): the weights, the outputs and a ZO step are
    bitwise as with an unmoved model."""
    monkeypatch.setattr(relocate, "CHUNK", 1000)
    model = _saved(tmp_path, dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = _logits(model)
    mask = random_mask(model, 300, seed=1)
    coords = SparseCoordinates(model, mask, carriers=False)  # relocation alone (carriers change the numerics)
    assert coords.flattened
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    assert torch.equal(_logits(model), ref)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    x0 = coords.values()
    coords.update_key(derive_key(0, 1, 0, 0), 1e-2, 1.0)
    assert not torch.equal(coords.values(), x0)


def test_pages_of_a_storage_used_elsewhere_are_kept(tmp_path: Path) -> None:
    """A tensor that still shares a weight's storage keeps its values, even values written into the
    memory-mapped pages after loading (dropping those pages would bring back the file's)."""
    model = _saved(tmp_path)
    name = "model.layers.0.mlp.up_proj.weight"
    p = dict(model.named_parameters())[name]
    with torch.no_grad():
        p.add_(1.0)  # dirty the copy-on-write pages of the mapping
    held = p.data  # a second user of the storage
    expect = held.clone()
    SparseCoordinates(model, {name: torch.tensor([0, 5]), "model.norm.weight": torch.tensor([1])})
    assert p.data_ptr() != held.data_ptr()  # the parameter moved
    assert torch.equal(held, expect)  # the other user's view is intact
    assert torch.equal(p.detach(), expect)


def test_exclusive_counts_other_users() -> None:
    t = torch.arange(10.0)
    assert relocate._exclusive(t)
    v = t[2:]
    assert not relocate._exclusive(t)
    del v
    assert relocate._exclusive(t)


SETUP_PEAK = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    from meerkat_core.zo import SparseCoordinates, relocate
    from meerkat_core.zo.testing import random_mask

    def kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    path, dtype, disable = sys.argv[1], getattr(torch, sys.argv[2]), sys.argv[3] == "1"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    with torch.inference_mode():
        model(input_ids=torch.randint(0, 1000, (1, 8)))  # every weight page read, as in training
    for p in model.parameters():  # and resident: fault in every page
        float(p.detach().float().sum())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if disable:  # the old way: copy everything, release only when the last copy is made
        relocate.Relocator._drop_pages = lambda self, t, a, b: None
        relocate.Relocator.trim = lambda self: None
    relocate.Relocator().trim()
    base = kib("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    coords = SparseCoordinates(model, random_mask(model, weights // 4000, seed=0), carriers=False)
    print(json.dumps({"weights": weights, "delta": (kib("VmHWM") - base) * 1024}))
    """
)


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc (VmHWM reset)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_setup_never_holds_the_weights_twice(tmp_path: Path, dtype: str) -> None:
    """Peak resident memory while SparseCoordinates flattens a memory-mapped (fp32) or converted (bf16)
    model (~60 MB in fp32) whose pages are all resident: one piece above the weights, not a second copy."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                                   num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    script = tmp_path / "peak.py"
    script.write_text(SETUP_PEAK)

    def run(disable: bool) -> dict:
        out = subprocess.run([sys.executable, str(script), str(tmp_path), dtype, "1" if disable else "0"],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    new = run(False)
    assert new["delta"] < 0.25 * new["weights"], new  # measured 0.01 (fp32) and 0.15 (bf16) of it
    if dtype == "float32":
        old = run(True)
        assert old["delta"] > 0.8 * old["weights"], old  # the measurement sees a second copy when there is one


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_setup_peak_is_one_copy_plus_one_tensor() -> None:
    model = tiny_llama().cuda()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    coords = SparseCoordinates(model, random_mask(model, 500, seed=0))
    torch.cuda.synchronize()
    assert coords.flattened and coords.device.type == "cuda"
    assert torch.cuda.max_memory_allocated() - base <= largest + (1 << 20)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert torch.cuda.memory_allocated() - base < 0.1 * weights + (1 << 20)
