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

__all__ = ["add_scaled", "apply_update", "fp32", "update_coef"]


def fp32(v: float) -> float | None:
    """Round a Python float to the nearest fp32 value; None when it is not finite there."""
    if not math.isfinite(v):
        return None
    try:
        c = struct.unpack("<f", struct.pack("<f", v))[0]
    except OverflowError:  # |v| beyond fp32 range
        return None
    return c if math.isfinite(c) else None


def update_coef(lr: float, g: float) -> float | None:
    """fp32(-(lr * g)) as a Python float, or None when it is not finite (nothing may be applied)."""
    return fp32(-(float(lr) * float(g)))


def apply_update(x: torch.Tensor, z: torch.Tensor, lr: float, g: float) -> None:
    """In place: ``x += fp32(-(lr * g)) * z`` (fp32 ``x`` and ``z`` of one shape and device).

    Raises ValueError when the coefficient is not finite; callers skip such steps beforehand
    (``update_coef(lr, g) is None``).
    """
    c = update_coef(lr, g)
    if c is None:
        raise ValueError(f"non-finite update coefficient for lr={lr!r}, g={g!r}")
    add_scaled(x, z, c)


def add_scaled(x: torch.Tensor, z: torch.Tensor, coef: float) -> None:
    """In place ``x += fp32(coef) * z``: one correctly rounded multiply, then one add (no FMA), so
    every device, thread count and chunking gives the same bits. The server's aggregation and a
    client's catch-up replay (``coef = -p_c lr g``) use it as ``apply_update`` does."""
    c = fp32(float(coef))
    if c is None:
        raise ValueError(f"non-finite coefficient {coef!r}")
    if x.dtype != torch.float32 or z.dtype != torch.float32:
        raise TypeError(f"add_scaled needs float32 x and z, got {x.dtype} and {z.dtype}")
    x.add_(torch.mul(z, c))
