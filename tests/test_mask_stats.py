"""Mask statistics and comparison on small hand-made masks."""

from __future__ import annotations

import math

import pytest
import torch

from meerkat_core.errors import MeerkatInputError
from meerkat_core.mask import Mask, MaskMeta, TensorMask, compare_masks, layer_of, mask_stats, module_type

SHAPES = {
    "model.embed_tokens.weight": (10, 4),
    "model.layers.0.self_attn.q_proj.weight": (4, 4),
    "model.layers.0.mlp.down_proj.weight": (4, 8),
    "model.layers.1.self_attn.v_proj.weight": (2, 4),
    "model.layers.1.post_attention_layernorm.weight": (4,),
    "model.norm.weight": (4,),
    "lm_head.weight": (10, 4),
}


def make_mask(kept: dict[str, list[int]], scores: dict[str, list[float]] | None = None, fingerprint: str = "fp") -> Mask:
    tensors = {}
    for name, shape in SHAPES.items():
        idx = sorted(kept.get(name, []))
        sc = (scores or {}).get(name, [1.0] * len(idx))
        tensors[name] = TensorMask(name, shape, torch.tensor(idx, dtype=torch.int64),
                                   torch.zeros(len(idx)), torch.tensor(sc, dtype=torch.float32))
    d = sum(math.prod(s) for s in SHAPES.values())
    k = sum(len(v) for v in kept.values())
    meta = MaskMeta(model="hand", fingerprint=fingerprint, param_dtype="float32", method="sensitivity",
                    density=k / d, k=k, d=d, d_total=d, seed=0)
    return Mask(meta=meta, tensors=tensors)


def test_module_types_and_layers() -> None:
    assert module_type("model.layers.3.self_attn.q_proj.weight") == "attn_q"
    assert module_type("model.layers.3.self_attn.k_proj.weight") == "attn_k"
    assert module_type("model.layers.3.self_attn.v_proj.bias") == "attn_v"
    assert module_type("model.layers.3.self_attn.o_proj.weight") == "attn_o"
    assert module_type("model.layers.3.mlp.gate_proj.weight") == "mlp_gate"
    assert module_type("model.layers.3.mlp.up_proj.weight") == "mlp_up"
    assert module_type("model.layers.3.mlp.down_proj.weight") == "mlp_down"
    assert module_type("model.layers.3.input_layernorm.weight") == "norm"
    assert module_type("model.norm.weight") == "norm"
    assert module_type("model.embed_tokens.weight") == "embeddings"
    assert module_type("lm_head.weight") == "lm_head"
    assert module_type("model.rotary_emb.something") == "other"
    assert layer_of("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_of("model.embed_tokens.weight") is None


def test_stats_counts() -> None:
    kept = {
        "model.embed_tokens.weight": [0, 5, 39],
        "model.layers.0.self_attn.q_proj.weight": [1, 2],
        "model.layers.0.mlp.down_proj.weight": [31],
        "model.layers.1.post_attention_layernorm.weight": [0, 1, 2, 3],
        "lm_head.weight": [7],
    }
    scores = {"model.embed_tokens.weight": [1.0, 2.0, 3.0], "lm_head.weight": [4.0]}
    stats = mask_stats(make_mask(kept, scores))
    assert stats.k == 11 and stats.d == 40 + 16 + 32 + 8 + 4 + 4 + 40
    t = stats.by_type
    assert (t["embeddings"].kept, t["embeddings"].eligible) == (3, 40)
    assert (t["attn_q"].kept, t["mlp_down"].kept, t["attn_v"].kept) == (2, 1, 0)
    assert (t["norm"].kept, t["norm"].eligible) == (4, 8)
    assert (t["lm_head"].kept, t["lm_head"].eligible) == (1, 40)
    assert "other" not in t  # no eligible weight of that type
    assert t["embeddings"].score_mass == 6.0 and t["lm_head"].score_mass == 4.0
    layers = stats.by_layer
    assert list(layers) == ["0", "1", "-"]
    assert (layers["0"].kept, layers["0"].eligible) == (3, 48)
    assert (layers["1"].kept, layers["1"].eligible) == (4, 12)
    assert (layers["-"].kept, layers["-"].eligible) == (4, 84)
    d = stats.to_dict()
    assert d["by_type"]["embeddings"]["share_of_k"] == pytest.approx(3 / 11)
    assert sum(v["share_of_score"] for v in d["by_type"].values()) == pytest.approx(1.0)


def test_compare_self_disjoint_and_partial() -> None:
    a = make_mask({"model.embed_tokens.weight": [0, 1, 2], "lm_head.weight": [4]},
                  {"model.embed_tokens.weight": [1.0, 2.0, 3.0], "lm_head.weight": [4.0]})
    same = compare_masks(a, a)
    assert same.jaccard == 1.0 and same.a_mass_covered_by_b == pytest.approx(1.0)
    assert same.intersection == same.union == 4

    disjoint = make_mask({"model.embed_tokens.weight": [3, 4, 5], "model.norm.weight": [0]})
    c = compare_masks(a, disjoint)
    assert c.jaccard == 0.0 and c.intersection == 0 and c.union == 8 and c.a_mass_covered_by_b == 0.0

    partial = make_mask({"model.embed_tokens.weight": [2, 9], "lm_head.weight": [4, 5]})
    p = compare_masks(a, partial)
    assert (p.intersection, p.union) == (2, 6)
    assert p.jaccard == pytest.approx(2 / 6)
    assert p.a_mass_covered_by_b == pytest.approx((3.0 + 4.0) / 10.0)  # coordinates 2 and lm_head 4
    assert p.b_mass_covered_by_a == pytest.approx(2 / 4)


def test_compare_needs_same_model() -> None:
    a = make_mask({"model.embed_tokens.weight": [0]})
    b = make_mask({"model.embed_tokens.weight": [0]}, fingerprint="other")
    with pytest.raises(MeerkatInputError, match="different models"):
        compare_masks(a, b)
