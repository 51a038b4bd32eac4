"""Model loading: built-ins, local directories, GGUF, hub ids while offline, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meerkat_core.errors import MeerkatInputError
from meerkat_core.models import load_model
from tests.conftest import run_cli


def test_tiny_llama_is_deterministic(tiny_loaded) -> None:
    again = load_model("tiny-llama", device="cpu")
    a = dict(tiny_loaded.model.named_parameters())
    b = dict(again.model.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tiny_loaded.fingerprint == again.fingerprint
    assert tiny_loaded.num_parameters == 3_219_776
    assert tiny_loaded.tokenizer.padding_side == "left"
    assert len(tiny_loaded.tokenizer) == tiny_loaded.model.config.vocab_size


def test_missing_path_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(MeerkatInputError, match="no such file or directory"):
        load_model(str(tmp_path / "nope"))


def test_corrupt_model_dir_is_input_error(tmp_path: Path, tiny_loaded) -> None:
    d = tmp_path / "m"
    tiny_loaded.model.save_pretrained(str(d))
    tiny_loaded.tokenizer.save_pretrained(str(d))
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(MeerkatInputError, match="cannot load"):
        load_model(str(d))


def test_local_dir_roundtrip(tmp_path: Path, tiny_loaded) -> None:
    d = tmp_path / "m"
    tiny_loaded.model.save_pretrained(str(d))
    tiny_loaded.tokenizer.save_pretrained(str(d))
    loaded = load_model(str(d), device="cpu")
    assert loaded.fingerprint == tiny_loaded.fingerprint
    w = dict(loaded.model.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(w, dict(tiny_loaded.model.named_parameters())["model.layers.0.mlp.up_proj.weight"])


def test_hub_id_while_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what the env var sets at import
    with pytest.raises(MeerkatInputError, match="HF_HUB_OFFLINE=1"):
        load_model("someone/no-such-model-xyz")


def test_cli_model_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    cases = [
        ["eval", "--model", str(tmp_path / "missing"), "--limit", "2"],
        ["eval", "--model", str(bad), "--limit", "2"],
        ["eval", "--model", "someone/no-such-model-xyz", "--limit", "2"],
    ]
    for args in cases:
        proc = run_cli(*args, check=False, env={"HF_HUB_OFFLINE": "1"}, in_process=False)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_models_command_json() -> None:
    rows = json.loads(run_cli("models", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["smollm2-135m"]["parameters"] == 134_515_008
    assert by_name["tiny-llama"]["parameters"] == 3_219_776


@pytest.mark.slow
def test_real_smollm2_offline_prefers_great(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pretrained SmolLM2-135M, loaded with the hub switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model("smollm2-135m", device="cpu")
    assert lm.num_parameters == 134_515_008
    tok = lm.tokenizer
    ids = tok("The movie was absolutely wonderful. It was", return_tensors="pt").input_ids
    great = tok(" great", add_special_tokens=False).input_ids
    terrible = tok(" terrible", add_special_tokens=False).input_ids
    assert len(great) == len(terrible) == 1
    with torch.inference_mode():
        logp = lm.model(ids).logits[0, -1].float().log_softmax(-1)
    assert logp[great[0]] > logp[terrible[0]] + 2.0
    assert logp[great[0]].item() == pytest.approx(-5.51, abs=0.05)
    assert logp[terrible[0]].item() == pytest.approx(-8.74, abs=0.05)


def _rotary_buffers(model) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers() if n.endswith("inv_freq")}


@pytest.mark.parametrize("dtype,want", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_loaded_model_is_what_the_fast_path_needs(tmp_path: Path, tiny_loaded, dtype: str, want: torch.dtype) -> None:
    """Times nothing: the loaded model's parameters are in the run dtype, RoPE's inv_freq stays fp32 (a
    cast model rounds it to bf16), and requires_grad is left as loaded (freezing a bf16 model costs a
    6.4x slower linear kernel on AMX CPUs in torch 2.13; every forward runs under inference_mode)."""
    d = tmp_path / "m"
    tiny_loaded.model.save_pretrained(str(d))
    tiny_loaded.tokenizer.save_pretrained(str(d))
    for loaded in (load_model("tiny-llama", device="cpu", dtype=dtype), load_model(str(d), device="cpu", dtype=dtype)):
        assert loaded.dtype == want
        assert {p.dtype for p in loaded.model.parameters()} == {want}
        rot = _rotary_buffers(loaded.model)
        assert rot and all(b.dtype == torch.float32 for b in rot.values())
        assert all(p.requires_grad for p in loaded.model.parameters())
        assert not loaded.model.training
        assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight  # still tied
    ref = _rotary_buffers(tiny_loaded.model)
    assert all(torch.equal(b, ref[n]) for n, b in _rotary_buffers(loaded.model).items())


def test_dtype_auto_rule() -> None:
    from meerkat_core.models import choose_dtype, cpu_bf16_feature

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for feature in ("AMX-BF16", "AVX512-BF16"):  # fp32 until bf16 is shown to learn like it (dtypes.py)
        choice = choose_dtype("auto", cpu, bf16_feature=feature)
        assert choice.name == "fp32" and feature in choice.reason and "--dtype bf16" in choice.reason
    plain = choose_dtype("auto", cpu, bf16_feature=None)
    assert plain.name == "fp32" and "without native bf16" in plain.reason
    assert choose_dtype("auto", cuda).name == "fp32"
    assert choose_dtype("bfloat16", cpu).name == "bf16" and choose_dtype("fp16", cuda).name == "fp16"
    with pytest.raises(MeerkatInputError, match="expected auto, fp32, bf16 or fp16"):
        choose_dtype("int8", cpu)
    assert cpu_bf16_feature({"avx2", "amx_bf16", "amx_tile"}) == "AMX-BF16"
    assert cpu_bf16_feature({"avx512f", "avx512_bf16"}) == "AVX512-BF16"
    assert cpu_bf16_feature({"avx2", "fma"}) is None
    # on this machine: auto is fp32 either way, and its reason names what the probe found
    here = cpu_bf16_feature()
    choice = choose_dtype("auto", cpu)
    assert choice.name == "fp32"
    assert (here in choice.reason) if here else ("without native bf16" in choice.reason)
