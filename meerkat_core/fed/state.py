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
    """In place ``x += fp32(coef) * z(key)`` for every entry, in order (``add_scaled``)."""
    k = x.numel()
    piece = chunk or rng.default_chunk(x.device)
    for h in history:
        if k <= piece:
            add_scaled(x, rng.normal(h.key, k, device=x.device), h.coef)
        else:
            for lo in range(0, k, piece):
                hi = min(k, lo + piece)
                add_scaled(x[lo:hi], rng.normal(h.key, hi - lo, lo, device=x.device, chunk=hi - lo), h.coef)
    return x
