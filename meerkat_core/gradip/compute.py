"""GradIP of one ZO step (METHOD.md section 4): ``gradip = g * <gbar, z>`` and its cosine.

``g`` is the client's projected gradient, ``z`` the step's perturbation and ``gbar`` the mask's mean
pre-training gradient on the k coordinates. The server computes both while it replays a client's path
(``meerkat_core.fed.server``); ``meerkat_core.gradip.recompute`` recomputes ``gradip`` from a ledger.
"""

from __future__ import annotations

import torch


def step_gradip(g: float, gbar: torch.Tensor, gbar_norm: float, z: torch.Tensor) -> tuple[float, float]:
    """(``g <gbar, z>``, ``sign(g) <gbar, z> / (|gbar| |z|)``; 0 when a norm is 0)."""
    dot = float(torch.dot(gbar, z))
    denom = gbar_norm * float(z.norm())
    cosine = (1.0 if g >= 0 else -1.0) * dot / denom if denom > 0 else 0.0
    return g * dot, cosine


def gradip_of(g: float, gbar: torch.Tensor, z: torch.Tensor) -> float:
    """``g <gbar, z>`` alone (in the dtype of ``gbar`` and ``z``)."""
    return g * float(torch.dot(gbar, z))
