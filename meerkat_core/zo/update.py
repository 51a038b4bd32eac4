"""The ZO update ``x <- x - lr * g * z``, defined so that a replay reproduces it bitwise.

Client (``zo_step``) and server (``replay``) both call :func:`apply_update`. It is a pure function of
(x, z, lr, g) made of two correctly rounded fp32 kernels: ``t = z * c`` then ``x += t``, with the
coefficient ``c = fp32(-(lr * g))`` (Python float64 arithmetic, then one rounding to fp32). Neither
kernel can be contracted into an FMA (``add_(z, alpha=c)`` can, differently on CPU vector/scalar
code paths and CUDA), so the result is the same bits on every device, thread count and chunking,
given the same z. Elementwise, so applying it to slices in pieces equals applying it at once.
"""

from __future__ import annotations

import math
import struct

import torch

__all__ = ["apply_update", "update_coef"]


def update_coef(lr: float, g: float) -> float | None:
    """fp32(-(lr * g)) as a Python float, or None when it is not finite (nothing may be applied)."""
    v = -(float(lr) * float(g))
    if not math.isfinite(v):
        return None
    try:
        c = struct.unpack("<f", struct.pack("<f", v))[0]  # round to nearest fp32
    except OverflowError:  # |v| beyond fp32 range
        return None
    return c if math.isfinite(c) else None


def apply_update(x: torch.Tensor, z: torch.Tensor, lr: float, g: float) -> None:
    """In place: ``x += fp32(-(lr * g)) * z`` (fp32 ``x`` and ``z`` of one shape and device).

    Raises ValueError when the coefficient is not finite; callers skip such steps beforehand
    (``update_coef(lr, g) is None``).
    """
    c = update_coef(lr, g)
    if c is None:
        raise ValueError(f"non-finite update coefficient for lr={lr!r}, g={g!r}")
    if x.dtype != torch.float32 or z.dtype != torch.float32:
        raise TypeError(f"apply_update needs float32 x and z, got {x.dtype} and {z.dtype}")
    x.add_(torch.mul(z, c))
