"""Operations on the global k-vector shared by server and clients, so both compute the same bits."""

from __future__ import annotations

import zlib
from typing import Sequence

import torch

from meerkat_core.fed.protocol import HistoryEntry
from meerkat_core.zo import rng
from meerkat_core.zo.update import add_scaled


def state_crc(x: torch.Tensor) -> int:
    """crc32 of a fp32 k-vector's bytes: a cheap check that two parties hold the same state."""
    return zlib.crc32(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


@torch.no_grad()
def apply_history(x: torch.Tensor, history: Sequence[HistoryEntry], chunk: int | None = None) -> torch.Tensor:
    """In place ``x += fp32(coef) * z(key)`` for every entry, in order (``add_scaled``).

    The z of several entries are drawn in one pass (``rng.normal_many``: the same bits, the kernel
    launches shared) while they fit in ``chunk`` draws; the additions stay one entry at a time, in order.
    """
    k = x.numel()
    piece = chunk or rng.default_chunk(x.device)
    if k <= piece:
        per = max(1, piece // max(1, k))
        for j in range(0, len(history), per):
            group = history[j : j + per]
            zs = rng.normal_many([h.key for h in group], k, device=x.device, chunk=piece)
            for h, z in zip(group, zs):
                add_scaled(x, z, h.coef)
        return x
    for h in history:
        for lo in range(0, k, piece):
            hi = min(k, lo + piece)
            add_scaled(x[lo:hi], rng.normal(h.key, hi - lo, lo, device=x.device, chunk=hi - lo), h.coef)
    return x
