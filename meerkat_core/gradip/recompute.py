"""GradIP recomputed independently of the server: from the ledger, the mask and the seeds.

``gradip_t = g_t * <gbar, z_t>`` with ``z_t = normal(derive_key(seed, round, client, t), k)`` and
``gbar`` the mask's mean pre-training gradient on its kept coordinates in canonical order (the
concatenation, over the mask's non-empty tensors in ``model.named_parameters()`` order, of
``grad_mean``). Steps whose update coefficient ``update_coef(lr, g)`` is None were skipped by the
client and have no GradIP (nan). Used by the tests to check what ``meerkat train`` logged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from meerkat_core.errors import MeerkatInputError
from meerkat_core.gradip.compute import gradip_of
from meerkat_core.mask import load_mask
from meerkat_core.rundir import RunDir
from meerkat_core.zo import derive_key, normal, update_coef


def mask_gbar(mask: Any) -> torch.Tensor:
    """The mask's pre-training gradient on its k coordinates, canonical order, fp32."""
    parts = [t.grad_mean.reshape(-1).to(torch.float32) for t in mask.tensors.values() if t.k > 0]
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def recompute_record(record: dict[str, Any], gbar: torch.Tensor, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """GradIP per step of one ledger client record (``round``, ``client``, ``seed``, ``lr``, ``gs``)."""
    r, c, seed, lr = int(record["round"]), int(record["client"]), int(record["seed"]), float(record["lr"])
    gb = gbar.to(dtype)
    out = np.full(len(record["gs"]), np.nan)
    for t, g in enumerate(record["gs"]):
        g = float(g) if g is not None else math.nan
        if update_coef(lr, g) is None:
            continue
        z = normal(derive_key(seed, r, c, t), gb.numel(), dtype=torch.float32).to(dtype)
        out[t] = gradip_of(g, gb, z)
    return out


def recompute_records(
    records: Iterable[dict[str, Any]], gbar: torch.Tensor, dtype: torch.dtype = torch.float32
) -> dict[tuple[int, int], np.ndarray]:
    return {(int(rec["round"]), int(rec["client"])): recompute_record(rec, gbar, dtype) for rec in records}


def recompute_run(run_dir: str | Path, mask_path: str | Path | None = None,
                  dtype: torch.dtype = torch.float32) -> dict[tuple[int, int], np.ndarray]:
    """Recompute every committed (round, client) GradIP trajectory of a run from its ledger."""
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    path = mask_path or cfg.get("provenance", {}).get("mask_path") or cfg.get("train", {}).get("mask")
    if not path or path == "all":
        raise MeerkatInputError(f"run {run.path} was trained with --mask all: it has no pre-training gradient for GradIP")
    gbar = mask_gbar(load_mask(path))
    clients, _, _ = run.read_ledger()
    return recompute_records((rec for r in sorted(clients) for rec in clients[r]), gbar, dtype)
