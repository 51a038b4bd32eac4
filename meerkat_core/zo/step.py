"""One sparse ZO step (client) and the replay of a step sequence (server), METHOD.md sections 2-3.

``zo_step``: z = normal(key, k); L+ = loss(x + eps z); L- = loss(x - eps z); restore;
g = (L+ - L-) / (2 eps) in float64 (a bf16/fp16 model with a paired forward computes L+ and L- in
one forward over the doubled batch instead, ``StepLoss.pair`` and zo/paired.py); if L+, L-, g (or the fp32 update coefficient) are not finite the
step is skipped (``applied=False``), else x <- x - lr g z via ``apply_update``.

``replay``: the server's virtual path from x0 given the keys, the clients' g values (the exact
Python floats the client used) and the learning rates: bitwise the client's master, on any device
(z and ``apply_update`` are device-independent; see rng.py and update.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from meerkat_core.zo import rng
from meerkat_core.zo.coordinates import SparseCoordinates
from meerkat_core.zo.update import apply_update, update_coef

__all__ = ["StepLoss", "StepResult", "projected_grad", "replay", "two_losses", "zo_step"]

LossFn = Callable[[], "torch.Tensor | float"]
PairFn = Callable[[], "tuple[torch.Tensor | float, torch.Tensor | float]"]
StepCallback = Callable[[int, torch.Tensor, float], None]


@dataclass(frozen=True)
class StepLoss:
    """A step's mini-batch loss. Calling it: the loss of the model as it currently is. ``pair()``: the
    losses of the two halves of the doubled batch, (plus half, minus half), one forward; used by
    ``zo_step`` when the coordinates have a paired forward (zo/paired.py)."""

    single: LossFn
    pair: PairFn | None = None

    def __call__(self) -> "torch.Tensor | float":
        return self.single()


@dataclass(frozen=True)
class StepResult:
    """Outcome of one ZO step. ``g`` is what the client transmits (nan when not finite)."""

    g: float
    loss_plus: float
    loss_minus: float
    applied: bool


def _scalar(v: torch.Tensor | float) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(v.shape)}")
        return float(v.detach().float().item())  # the fp32 loss, exactly, as a float64
    return float(v)


def projected_grad(loss_plus: float, loss_minus: float, eps: float) -> float:
    """g = (L+ - L-) / (2 eps) in float64; nan when any input or the result is not finite."""
    if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
        return math.nan
    g = (loss_plus - loss_minus) / (2.0 * eps)
    return g if math.isfinite(g) else math.nan


def two_losses(coords: SparseCoordinates, loss_fn: LossFn, key: int, eps: float) -> tuple[float, float]:
    """(L(x + eps z), L(x - eps z)) with z = normal(key, k): one paired forward when the coordinates
    have one and ``loss_fn`` is a ``StepLoss`` with ``pair``, else two forwards; the weights are at x
    again afterwards, even if ``loss_fn`` raises. Call under ``torch.inference_mode``."""
    pair = getattr(loss_fn, "pair", None)
    if coords.paired is not None and pair is not None:
        coords.perturb_pair(key, eps)
        with coords.paired.active():
            lp, lm = pair()
        return _scalar(lp), _scalar(lm)
    try:
        coords.perturb_key(key, eps)
        loss_plus = _scalar(loss_fn())
        coords.perturb_key(key, -eps)
        loss_minus = _scalar(loss_fn())
    finally:
        coords.restore()
    return loss_plus, loss_minus


def zo_step(coords: SparseCoordinates, loss_fn: LossFn, key: int, lr: float, eps: float) -> StepResult:
    """One two-point ZO step on ``coords`` with the stream ``key`` (see module doc).

    ``loss_fn()`` evaluates the mini-batch loss of the model as it currently is (it is called twice,
    under ``torch.inference_mode``). The weights are restored even if ``loss_fn`` raises. When the
    step is skipped the master and the weights are exactly as before.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    coords.check_layout()
    with torch.inference_mode():
        loss_plus, loss_minus = two_losses(coords, loss_fn, key, eps)
        g = projected_grad(loss_plus, loss_minus, eps)
        if math.isnan(g) or update_coef(lr, g) is None:
            return StepResult(g=g, loss_plus=loss_plus, loss_minus=loss_minus, applied=False)
        coords.update_key(key, lr, g)
    return StepResult(g=g, loss_plus=loss_plus, loss_minus=loss_minus, applied=True)


def _per_step(value: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n
    out = [float(v) for v in value]
    if len(out) != n:
        raise ValueError(f"{what}: expected {n} values, got {len(out)}")
    return out


@torch.no_grad()
def replay(
    x0: torch.Tensor,
    keys: Sequence[int],
    gs: Sequence[float],
    lr: float | Sequence[float],
    applied: Sequence[bool] | None = None,
    *,
    callback: StepCallback | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """End point of the virtual path ``x_{t+1} = x_t - lr_t g_t z_t`` from ``x0`` (not modified).

    Args:
        x0: fp32 k-vector the client started from (canonical order); the result is on its device.
        keys, gs: per step, the stream key and the client's transmitted g.
        lr: one learning rate or one per step (schedules).
        applied: per step, whether the client applied it; steps with False, or whose update
            coefficient is not finite (as ``zo_step`` decides), are skipped.
        callback: ``callback(t, z, g)`` for every applied step, before the update, with the step's
            full z (for GradIP: ``g * <gbar, z>`` at O(k) without drawing z again).
        chunk: without a callback, k-vectors longer than this are updated piecewise with z redrawn
            per piece (full-parameter mode); the result is the same bits.
    """
    n = len(keys)
    if len(gs) != n:
        raise ValueError(f"replay: {n} keys but {len(gs)} g values")
    lrs = _per_step(lr, n, "lr")
    flags = [True] * n if applied is None else [bool(a) for a in applied]
    if len(flags) != n:
        raise ValueError(f"replay: {n} keys but {len(flags)} applied flags")
    if x0.dtype != torch.float32 or x0.dim() != 1:
        raise TypeError(f"replay needs a 1-D float32 x0, got {x0.dtype} of shape {tuple(x0.shape)}")
    x = x0.clone()
    k = x.numel()
    piece = chunk or rng.default_chunk(x.device)
    for t in range(n):
        g = float(gs[t])
        if not flags[t] or update_coef(lrs[t], g) is None:
            continue
        if callback is not None or k <= piece:
            z = rng.normal(keys[t], k, device=x.device)
            if callback is not None:
                callback(t, z, g)
            apply_update(x, z, lrs[t], g)
        else:
            for lo in range(0, k, piece):
                hi = min(k, lo + piece)
                apply_update(x[lo:hi], rng.normal(keys[t], hi - lo, lo, device=x.device, chunk=hi - lo), lrs[t], g)
    return x
