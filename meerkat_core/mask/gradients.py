"""Calibration backprop with each parameter's gradient consumed the moment it is complete, then freed.

Every calibration batch ``b`` gives one loss ``L_b`` (the model's causal-LM loss) and one backward
pass. A hook on each parameter that takes part (``register_post_accumulate_grad_hook``) receives that
parameter's whole gradient of ``L_b`` as soon as autograd has accumulated it (a tied weight: once, the
sum over its uses), passes it to a consumer as float32 and drops it. So the gradients of the whole
model never exist together: besides the weights and the activations, a pass holds what its consumer
keeps, plus the few gradients autograd is still summing.

Consumers (``add(j, g)`` with ``g`` the float32 gradient of eligible parameter ``j``; ``g`` may be
overwritten):

* ``SquaredSums``: per weight of the given parameters the float32 sum of ``g * g`` over the batches
  (a d-sized accumulator when it covers them all): what the sensitivity ranking needs.
* ``KeptSums``: the float32 sums of ``g`` and ``g * g`` on given kept positions only (O(k)).

Both add batch by batch in batch order with the same float32 operations (``g * g``, then ``+``), so
their sums on a position are bitwise equal, and equal to what dense accumulators would hold.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import torch

from meerkat_core import heap
from meerkat_core.errors import MeerkatError, MeerkatInputError

_CHECK_PIECE = 1 << 22  # elements per finiteness check (a bool temporary, not one the size of the tensor)

ProgressFn = Callable[[int, "int | None", str], None]
Named = Sequence[tuple[str, torch.nn.Parameter]]


class GradConsumer(Protocol):
    def add(self, j: int, g: torch.Tensor) -> None: ...


class SquaredSums:
    """Float32 ``sum_b g_b * g_b`` for the eligible parameters ``which`` (default all); ``means(n)``
    divides in place and returns {j: mean of g^2}."""

    def __init__(self, params: Named, which: Sequence[int] | None = None) -> None:
        which = range(len(params)) if which is None else which
        self.sq = {j: torch.zeros(params[j][1].shape, dtype=torch.float32, device=params[j][1].device) for j in which}

    def add(self, j: int, g: torch.Tensor) -> None:
        g.mul_(g)  # in place: the gradient is discarded after this
        self.sq[j].add_(g)

    def means(self, n: int) -> dict[int, torch.Tensor]:
        for s in self.sq.values():
            s.div_(n)
        return self.sq


class KeptSums:
    """Float32 sums of ``g`` and ``g * g`` at the kept flat positions ``local[j]`` of each parameter."""

    def __init__(self, params: Named, local: Sequence[torch.Tensor]) -> None:
        self.index = [idx.to(device=p.device, dtype=torch.long) for (_, p), idx in zip(params, local)]
        self.sum = [torch.zeros(idx.numel(), dtype=torch.float32, device=idx.device) for idx in self.index]
        self.sum_sq = [torch.zeros_like(s) for s in self.sum]

    def owners(self) -> list[int]:
        """The parameters that own kept positions (only their gradients are needed)."""
        return [j for j, idx in enumerate(self.index) if idx.numel()]

    def add(self, j: int, g: torch.Tensor) -> None:
        kept = g.reshape(-1).index_select(0, self.index[j])
        self.sum[j].add_(kept)
        kept.mul_(kept)
        self.sum_sq[j].add_(kept)

    def means(self, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        for s, q in zip(self.sum, self.sum_sq):
            s.div_(n)
            q.div_(n)
        return self.sum, self.sum_sq


@contextmanager
def _grad_only_for(model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
            p.grad = None
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.grad = None
            p.requires_grad_(flag)


@contextmanager
def _streamed(params: Named, which: Sequence[int], consumer: GradConsumer) -> Iterator[None]:
    """Hooks handing each complete gradient of ``params[j]`` (``j`` in ``which``) to ``consumer``."""

    def hook_for(j: int, name: str) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            g = p.grad
            p.grad = None
            if g is None:
                return
            g = g.detach().to(torch.float32)  # no copy when already float32
            if not all(bool(torch.isfinite(piece).all()) for piece in g.view(-1).split(_CHECK_PIECE)):
                raise MeerkatError(f"non-finite gradient in {name}: the model or calibration data is broken")
            consumer.add(j, g)
            del g
            heap.trim()  # freed activations and gradients go back before the next (larger) allocation

        return hook

    handles = [params[j][1].register_post_accumulate_grad_hook(hook_for(j, params[j][0])) for j in which]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global RNG state(s) that a forward pass may draw from (dropout), to replay a pass exactly."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def backprop_batches(
    model: torch.nn.Module,
    params: Named,
    batches: Iterable[torch.Tensor],
    consumer: GradConsumer,
    *,
    which: Sequence[int] | None = None,
    total: int | None = None,
    progress: ProgressFn | None = None,
    label: str = "calibration backprop",
) -> int:
    """Backprop every batch's causal-LM loss, streaming the gradients of ``params[j]`` for ``j`` in
    ``which`` (default: all) into ``consumer``; returns the number of batches.

    Only those parameters require gradients during the pass; the model's ``requires_grad`` flags are
    restored afterwards and no ``.grad`` is left behind.
    """
    which = list(range(len(params))) if which is None else list(which)
    device = next(model.parameters()).device
    n = 0
    with _grad_only_for(model, [params[j][1] for j in which]), _streamed(params, which, consumer), \
            torch.enable_grad():
        for i, batch in enumerate(batches):
            ids = batch.to(device)
            loss = model(input_ids=ids, labels=ids).loss
            if not torch.isfinite(loss):
                raise MeerkatError(f"calibration batch {i}: the loss is {loss.item()}")
            if which:
                loss.backward()
            n += 1
            if progress is not None:
                progress(n, total, label)
    if n == 0:
        raise MeerkatInputError("the calibration data gave no batch: use --samples of at least 1")
    return n
