"""Inspecting masks: where the kept weights are, and how much two masks agree."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from meerkat_core.errors import MeerkatInputError
from meerkat_core.mask.types import Mask

MODULE_TYPES = (
    "embeddings", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "norm", "lm_head", "other",
)
_PROJ = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_o",
         "gate_proj": "mlp_gate", "up_proj": "mlp_up", "down_proj": "mlp_down"}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def module_type(name: str) -> str:
    """The module type of a parameter, from its (LLaMA-style) name."""
    parts = name.split(".")
    for part in parts:
        if part in _PROJ:
            return _PROJ[part]
    if "lm_head" in parts:
        return "lm_head"
    if any("embed" in part or part in {"wte", "wpe"} for part in parts):
        return "embeddings"
    owner = parts[-2] if len(parts) >= 2 else parts[-1]
    if "norm" in owner or owner.startswith("ln"):
        return "norm"
    return "other"


def layer_of(name: str) -> int | None:
    """The transformer block a parameter belongs to (``model.layers.N.``), or None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


@dataclass
class GroupCount:
    kept: int = 0
    eligible: int = 0
    score_mass: float = 0.0

    @property
    def density(self) -> float:
        return self.kept / self.eligible if self.eligible else 0.0


@dataclass
class MaskStats:
    k: int
    d: int
    density: float
    method: str
    model: str
    by_type: dict[str, GroupCount] = field(default_factory=dict)
    by_layer: dict[str, GroupCount] = field(default_factory=dict)  # "0", "1", ..., and "-" for non-block

    def to_dict(self) -> dict[str, Any]:
        def groups(g: dict[str, GroupCount]) -> dict[str, Any]:
            total_mass = sum(c.score_mass for c in g.values())
            return {key: {**asdict(c), "density": c.density, "share_of_k": c.kept / self.k if self.k else 0.0,
                          "share_of_score": c.score_mass / total_mass if total_mass else 0.0}
                    for key, c in g.items()}

        return {"k": self.k, "d": self.d, "density": self.density, "method": self.method, "model": self.model,
                "by_type": groups(self.by_type), "by_layer": groups(self.by_layer)}


def mask_stats(mask: Mask) -> MaskStats:
    """Kept/eligible counts (and score mass) per module type and per layer."""
    by_type = {t: GroupCount() for t in MODULE_TYPES}
    by_layer: dict[str, GroupCount] = {}
    for t in mask.tensors.values():
        mass = float(t.score.double().sum()) if t.k else 0.0
        layer = layer_of(t.name)
        key = "-" if layer is None else str(layer)
        for group in (by_type[module_type(t.name)], by_layer.setdefault(key, GroupCount())):
            group.kept += t.k
            group.eligible += t.numel
            group.score_mass += mass
    by_type = {key: c for key, c in by_type.items() if c.eligible}
    order = sorted(by_layer, key=lambda s: (s == "-", int(s) if s != "-" else 0))
    k = mask.k
    return MaskStats(k=k, d=mask.meta.d, density=k / mask.meta.d if mask.meta.d else 0.0, method=mask.meta.method,
                     model=mask.meta.model, by_type=by_type, by_layer={key: by_layer[key] for key in order})


@dataclass
class MaskComparison:
    k_a: int
    k_b: int
    intersection: int
    union: int
    jaccard: float
    a_mass_covered_by_b: float | None  # share of A's score mass on coordinates B also keeps
    b_mass_covered_by_a: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_masks(a: Mask, b: Mask) -> MaskComparison:
    """Jaccard of the kept sets, and how much of each mask's score mass the other covers."""
    if a.meta.fingerprint != b.meta.fingerprint:
        raise MeerkatInputError(
            f"the masks belong to different models ({a.meta.model!r} fingerprint {a.meta.fingerprint} vs "
            f"{b.meta.model!r} fingerprint {b.meta.fingerprint}); compare masks of the same model"
        )
    inter = 0
    mass_a = mass_a_cov = mass_b = mass_b_cov = 0.0
    for name, ta in a.tensors.items():
        ia = ta.indices.numpy()
        sa = ta.score.double().numpy()
        mass_a += float(sa.sum())
        tb = b.tensors.get(name)
        if tb is None or not tb.k or not ta.k:
            continue
        ib = tb.indices.numpy()
        common, pos_a, pos_b = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
        inter += int(common.size)
        mass_a_cov += float(sa[pos_a].sum())
        mass_b_cov += float(tb.score.double().numpy()[pos_b].sum())
    mass_b = sum(float(t.score.double().sum()) for t in b.tensors.values())
    union = a.k + b.k - inter
    return MaskComparison(
        k_a=a.k, k_b=b.k, intersection=inter, union=union,
        jaccard=inter / union if union else 1.0,
        a_mass_covered_by_b=mass_a_cov / mass_a if mass_a > 0 else None,
        b_mass_covered_by_a=mass_b_cov / mass_b if mass_b > 0 else None,
    )
