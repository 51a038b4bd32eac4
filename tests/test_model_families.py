"""The paper's architecture families as tiny random models (Llama-3.2, Qwen2, Gemma-2): each goes through
mask -> partition -> train -> eval -> export; the mask counts a tied weight once; the exported model,
reloaded with plain transformers, gives the logits of the trained model in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meerkat_core.encoding import encode_split
from meerkat_core.models import load_model
from meerkat_core.models.tiny import count_parameters, family_config
from meerkat_core.scoring import class_scores
from meerkat_core.tasks import get_task, load_task_data
from tests.conftest import run_cli

FAMILIES = {"tiny-llama32": "llama32", "tiny-qwen2": "qwen2", "tiny-gemma2": "gemma2"}


def test_family_configs_have_the_architecture_details() -> None:
    g = family_config("gemma2")
    assert (g.final_logit_softcapping, g.attn_logit_softcapping, g.sliding_window) == (30.0, 50.0, 8)
    assert g.tie_word_embeddings and g._attn_implementation == "eager"
    assert family_config("llama32").rope_scaling["rope_type"] == "llama3"
    assert family_config("llama32", hidden_size=128, num_hidden_layers=4).num_hidden_layers == 4  # overrides
    q = load_model("tiny-qwen2", device="cpu").model
    assert q.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases
    assert q.lm_head.weight is q.model.embed_tokens.weight  # tied


def test_models_command_lists_the_families() -> None:
    rows = {r["name"]: r for r in json.loads(run_cli("models", "--json").stdout)}
    for name, fam in FAMILIES.items():
        assert rows[name]["parameters"] == count_parameters(fam)
        assert rows[name]["parameters"] == load_model(name, device="cpu").num_parameters


def test_gemma2_left_padding_and_sliding_window() -> None:
    """Prompts longer than the sliding window (8): a padded batch scores each row as if it were alone."""
    lm = load_model("tiny-gemma2", device="cpu")
    task = get_task("sentiment2")
    enc = encode_split(lm.tokenizer, task, load_task_data(task).test.select(range(6)))
    assert max(len(p) for p in enc.prompts) > 8
    pad = lm.tokenizer.pad_token_id
    with torch.inference_mode():
        batched = class_scores(lm.model, enc, list(range(6)), pad)
        single = torch.cat([class_scores(lm.model, enc, [i], pad) for i in range(6)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_pipeline_and_exported_logits(name: str, tmp_path: Path, tiny_partition: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from meerkat_core.fed.checkpoint import apply_checkpoint

    mask = tmp_path / "mask.safetensors"
    run_cli("mask", "--model", name, "--samples", "8", "--seq-len", "32", "--batch-size", "4", "--density", "1e-3",
            "--out", str(mask))
    with safe_open(str(mask), "pt") as fh:
        meta, keys = fh.metadata(), list(fh.keys())
    assert int(meta["d"]) == count_parameters(FAMILIES[name])  # the tied embedding / LM head counted once
    assert keys and not any(k.startswith("lm_head") for k in keys)
    stats = json.loads(run_cli("mask", "stats", str(mask), "--json").stdout)
    by_type = stats["stats"]["by_type"]
    assert stats["k"] == int(meta["k"]) and "other" not in by_type and "lm_head" not in by_type
    assert sum(g["eligible"] for g in by_type.values()) == int(meta["d"])  # every weight once, in a known group
    run = tmp_path / "run"
    summary = json.loads(run_cli(
        "train", "--model", name, "--mask", str(mask), "--partition", str(tiny_partition), "--task", "sentiment2",
        "--rounds", "2", "--local-steps", "2", "--clients-per-round", "2", "--batch-size", "4", "--lr", "1e-2",
        "--eval-limit", "8", "--device", "cpu", "--out", str(run), "--json").stdout)
    assert summary["total_client_steps"] == 8 and summary["skipped_steps"] == 0
    ev = json.loads(run_cli("eval", "--checkpoint", str(run), "--limit", "8", "--json").stdout)
    assert ev["model"] == name and ev["task"] == "sentiment2"
    assert ev["accuracy"] == pytest.approx(summary["final_accuracy"], abs=1e-9)

    out = tmp_path / "export"
    run_cli("export", str(run), "--out", str(out))
    trained = load_model(name, device="cpu")
    apply_checkpoint(trained, str(run))
    base = load_model(name, device="cpu")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = trained.tokenizer(["The match ended in a draw, and the crowd went home", "Short one"], return_tensors="pt",
                            padding=True)
    with torch.inference_mode():
        want = trained.model(**ids).logits
        got = reloaded(**ids).logits
        before = base.model(**ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (want - before).abs().max() > 0  # training changed the model
