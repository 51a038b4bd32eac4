"""Operations on the global k-vector shared by server and clients, so both compute the same bits."""

from __future__ import annotations

import zlib
from typing import Sequence

import torch

from meerkat_core.fed.protocol import HistoryEntry
from meerkat_core.zo import rng


def state_crc(x: torch.Tensor) -> int:
    """crc32 of a fp32 k-vector's bytes: a cheap check that two parties hold the same state."""
    return zlib.crc32(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


@torch.no_grad()
def apply_history(x: torch.Tensor, history: Sequence[HistoryEntry], chunk: int | None = None) -> torch.Tensor:
    """In place ``x += fp32(coef) * z(key)`` for every entry, in order (one correctly rounded multiply,
    then one add, so every device and chunking gives the same bits)."""
    k = x.numel()
    piece = chunk or rng.default_chunk(x.device)
    for h in history:
        c = fp32(h.coef)
        if k <= piece:
            x.add_(torch.mul(rng.normal(h.key, k, device=x.device), c))
        else:
            for lo in range(0, k, piece):
                hi = min(k, lo + piece)
                x[lo:hi].add_(torch.mul(rng.normal(h.key, hi - lo, lo, device=x.device, chunk=hi - lo), c))
    return x


def fp32(v: float) -> float:
    """Round a Python float to the nearest fp32 value (as a Python float)."""
    return float(torch.tensor(v, dtype=torch.float32).item())
