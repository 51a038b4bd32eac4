"""The paired forward: a bf16/fp16 model's L(x + eps z) and L(x - eps z) from ONE forward (issue #20).

With carriers (carriers.py) the two forwards of a ZO step see ``x +- eps z``, but each one rounds its
activations to bf16 at every GEMM's input and output on its own. ``L+ - L-`` is about 1e-3 of L, so
those independent roundings leave g 11% off the fp32 g on SmolLM2 (median over 32 keys; 2.3% with
the paired forward in the same run, benchmarks/RESULTS.md section 10.3), with the inputs' and the
outputs' rounding each worth about half (section 10.2). Here the step's batch runs twice in one forward: rows
``[0, B)`` (the *plus* half) at ``x + eps z`` and rows ``[B, 2B)`` (the *minus* half) at ``x - eps z``.
Activations stay fp32 between layers, and every low-precision linear layer multiplies the sum and the
difference of its two halves instead of the halves themselves::

    s = x+ + x-,  t = x+ - x-          (each rounded once to bf16)
    y_A = (s W^T)/2,  y_B = (t W^T)/2   (bf16 GEMMs, 2B rows, one call)
    y+ = y_A + y_B,  y- = y_A - y_B     (fp32)

The rounding of ``s`` and of ``y_A`` is common to both halves and cancels in ``L+ - L-``; ``t`` is the
small difference itself, which bf16 holds to 2^-9 of *its own* size. So the difference the estimate
needs keeps about bf16's relative precision, not bf16's precision relative to the activations.

The perturbation is symmetric and separate from the values: the model keeps the master x (the
carriers, as after ``restore``), and ``write`` puts ``eps z`` into delta buffers:

* corrected linear layers: ``Delta`` [out, |C|] beside the carriers' ``D`` (same layout and dtype);
  with ``W+- = W + D +- Delta`` the correction rows are ``[s_C, t_C] [D | Delta]^T`` for the y_A rows
  and ``[t_C, s_C] [D | Delta]^T`` for the y_B rows: one small GEMM, added in the main GEMM's fp32
  accumulator (``addmm_``) as in carriers.py;
* 1-D fp32 carriers (norm weights): a dense fp32 delta of the parameter's shape; the module runs once
  per half with its weight at ``w + delta`` and ``w - delta``;
* embedding matrices (the input embedding, the output head, tied or not): an fp32 table of the masked
  rows only; the embedding adds its rows to the plus half and subtracts them from the minus half,
  the head adds ``h Delta_R^T`` to those vocabulary columns with the half's sign;
* biases of low-precision linear layers (Qwen2's q/k/v), which have no carrier (the weights hold
  their rounded master): a dense fp32 delta of the bias's shape, added to the y_B rows (rounded once,
  to its own size), so ``y+-`` get ``bias +- delta``. With two forwards these perturbations are
  rounded away (g 17% off fp32's on tiny-qwen2 with masked biases; 0.56% paired).

Nothing of size d is allocated: the deltas hold the masked rows and columns only (a bias's or a norm
weight's delta: that vector's size). A model the paired forward cannot express exactly (masked
coordinates without a carrier other than linear biases, a low-precision weight outside nn.Linear /
nn.Embedding, a norm weight on a module with children) gets no paired forward from ``paired_or_reason``,
which says why, and keeps the two sequential forwards. The server never sees any of this: z, g and the
update are the fp32 ones and replay is unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from meerkat_core.models.dtypes import LOW_PRECISION
from meerkat_core.zo.carriers import Carriers, CorrectedLinear

__all__ = ["PairedForward", "paired_or_reason"]


@dataclass
class _RowTable:
    """The masked rows of an embedding matrix: ``delta[slot[row]]`` (the last row stays zero)."""

    rows: torch.Tensor  # sorted masked rows (int64)
    slot: torch.Tensor  # [V] int64: the row's place in ``delta``, len(rows) when unmasked
    delta: torch.Tensor  # [len(rows) + 1, D] fp32


@dataclass
class _SumDiff:
    """The last linear input's ``[s; t]`` (q/k/v and gate/up share one input): computed once."""

    x: torch.Tensor | None = None
    st: torch.Tensor | None = None

    def of(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.x is x and self.st is not None and self.st.dtype == dtype:
            return self.st
        x2 = x.reshape(2, -1, x.shape[-1])
        st = torch.empty(x2.shape, dtype=dtype, device=x.device)
        torch.add(x2[0], x2[1], out=st[0])  # fp32 arithmetic, one rounding to the weight's dtype
        torch.sub(x2[0], x2[1], out=st[1])
        self.x, self.st = x, st
        return st

    def clear(self) -> None:
        self.x = self.st = None


def _butterfly(device: torch.device) -> torch.Tensor:
    return torch.tensor([[1.0, 1.0], [1.0, -1.0]], device=device)


def _halves(y: torch.Tensor, n_out: int, butterfly: torch.Tensor) -> torch.Tensor:
    """[y_A; y_B] (2N x out, low precision) -> fp32 [y_A + y_B; y_A - y_B] (2, N, out).

    As a 2 x 2 GEMM (``_butterfly``, made once per layer: no host-to-device copy per call) over the
    fp32 copy: each element is one fp32 sum or difference of two bf16 values (exact but for the one
    rounding), and on a CPU it is faster than copy + add_ + sub_ (0.82 against 1.24 ms for
    2 x 520 x 1536 at one thread)."""
    return torch.mm(butterfly, y.view(2, -1).float()).view(2, -1, n_out)


def _linear_forward(mod: nn.Linear, corrected: CorrectedLinear | None, delta: torch.Tensor | None,
                    bias_delta: torch.Tensor | None, cache: _SumDiff) -> Callable[[torch.Tensor], torch.Tensor]:
    butterfly = _butterfly(mod.weight.device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        w, bias = mod.weight, mod.bias
        n_out = w.shape[0]
        st = cache.of(x, w.dtype)
        n = st.shape[1]
        st2 = st.view(2 * n, -1)
        if corrected is not None:
            stc = st.index_select(2, corrected.cols)
            rows = torch.cat((stc, stc.flip(0)), dim=2).view(2 * n, -1)  # A: [s_C, t_C]; B: [t_C, s_C]
            acc = F.linear(rows, torch.cat((corrected.corr, delta), dim=1))  # 2 [c_A; c_B]
            if bias is not None:
                acc[:n].add_(bias, alpha=2.0)
            if bias_delta is not None:
                acc[n:].add_(bias_delta, alpha=2.0)
            y = acc.addmm_(st2, w.t(), beta=0.5, alpha=0.5)
        elif bias is not None:
            acc = torch.zeros(2 * n, n_out, dtype=w.dtype, device=w.device)
            acc[:n].copy_(bias.expand(n, n_out))
            if bias_delta is not None:  # y_B carries the bias's +- delta (rounded to its own size)
                acc[n:].copy_(bias_delta.expand(n, n_out))
            y = acc.addmm_(st2, w.t(), alpha=0.5)
        else:
            y = torch.empty(2 * n, n_out, dtype=w.dtype, device=w.device).addmm_(st2, w.t(), beta=0.0, alpha=0.5)
        return _halves(y, n_out, butterfly).view(*x.shape[:-1], n_out)

    return forward


def _leaf_forward(orig: Callable[..., Any], params: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]
                  ) -> Callable[..., Any]:
    """Run ``orig`` once per half with each parameter at ``w + delta`` and ``w - delta``."""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        b = x.shape[0] // 2
        saved = [p.data for p, _, _ in params]
        try:
            for (p, delta, scratch), w in zip(params, saved):
                p.data = torch.add(w, delta, out=scratch)
            hi = orig(x[:b], *args, **kwargs)
            for (p, delta, scratch), w in zip(params, saved):
                p.data = torch.sub(w, delta, out=scratch)
            lo = orig(x[b:], *args, **kwargs)
        finally:
            for (p, _, _), w in zip(params, saved):
                p.data = w
        return torch.cat((hi, lo))

    return forward


def _embedding_forward(orig: Callable[..., Any], table: _RowTable) -> Callable[..., Any]:
    def forward(ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        e = orig(ids, *args, **kwargs)
        if not e.is_floating_point() or e.dtype != torch.float32:
            e = e.float()
        de = F.embedding(table.slot[ids], table.delta)
        b = ids.shape[0] // 2
        e[:b].add_(de[:b])
        e[b:].sub_(de[b:])
        return e

    return forward


def _head_forward(mod: nn.Linear, table: _RowTable) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        w = mod.weight
        x = x.to(w.dtype)
        y = F.linear(x, w, mod.bias)
        yr = F.linear(x, table.delta[:-1])
        b = x.shape[0] // 2
        yr[b:].neg_()
        return y.index_add_(-1, table.rows, yr)

    return forward


@dataclass
class _Scatter:
    """``target[index] := dz[kpos]`` (cast to the target's dtype)."""

    target: torch.Tensor  # 1-D
    kpos: torch.Tensor
    index: torch.Tensor


@dataclass
class PairedForward:
    """The paired forward of one model with carriers (see module doc); ``paired_or_reason`` makes it."""

    model: nn.Module
    carriers: Carriers
    forwards: dict[int, tuple[nn.Module, Callable[..., Any]]] = field(default_factory=dict)  # by id(module)
    # modules whose own forward runs inside the paired one: (module, wrapper of its forward), by id(module)
    factories: dict[int, tuple[nn.Module, Callable[[Callable[..., Any]], Callable[..., Any]]]] = field(
        default_factory=dict)
    scatters: list[_Scatter] = field(default_factory=list)
    cache: _SumDiff = field(default_factory=_SumDiff)

    def write(self, dz: torch.Tensor) -> None:
        """The deltas := ``dz`` (fp32 k-vector, canonical order; ``eps z`` for a step)."""
        for s in self.scatters:
            s.target.index_copy_(0, s.index, dz.index_select(0, s.kpos).to(s.target.dtype))

    @contextmanager
    def active(self) -> Iterator[None]:
        """Inside: a forward over a doubled batch gives the plus half at x + delta, the minus half at x - delta."""
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for mod, fwd in self.forwards.values():
                saved.append((mod, mod.__dict__.get("forward")))
                mod.forward = fwd
            for mod, make in self.factories.values():
                saved.append((mod, mod.__dict__.get("forward")))
                mod.forward = make(mod.forward)
            self.carriers.paired = True
            yield
        finally:
            self.carriers.paired = False
            for mod, fwd in reversed(saved):
                if fwd is None:
                    mod.__dict__.pop("forward", None)
                else:
                    mod.forward = fwd
            self.cache.clear()

    def summary(self) -> dict[str, Any]:
        return {"paired_linears": sum(isinstance(m, nn.Linear) for m, _ in self.forwards.values()),
                "paired_modules": len(self.factories)}


class _Unsupported(Exception):
    """Why a model cannot run the paired forward exactly (``paired_or_reason``'s reason)."""


def paired_or_reason(model: nn.Module, carriers: Carriers, runs: list[tuple[nn.Parameter, torch.Tensor, int, int]]
                     ) -> tuple[PairedForward | None, str | None]:
    """(the paired forward of ``model``, carriers installed; None), or (None; one line saying which module or
    parameter keeps the model on two forwards: printed by ``meerkat train``, recorded in the run's provenance)
    where it cannot be exact.

    ``runs``: per masked parameter, in canonical order: (param, its sorted local flat indices, k_start, k_stop).
    """
    try:
        return _build(model, carriers, runs), None
    except _Unsupported as e:
        return None, str(e)


def _build(model: nn.Module, carriers: Carriers, runs: list[tuple[nn.Parameter, torch.Tensor, int, int]]
           ) -> PairedForward:
    names = {id(p): n for n, p in model.named_parameters()}
    holders: dict[int, list[nn.Module]] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            holders.setdefault(id(p), []).append(mod)
            if p.dtype in LOW_PRECISION and p.dim() >= 2 and not isinstance(mod, (nn.Linear, nn.Embedding)):
                raise _Unsupported(f"{names[id(p)]} is a {str(p.dtype).removeprefix('torch.')} weight of a "
                                   f"{type(mod).__name__}, not of an nn.Linear or nn.Embedding")
    device = next(iter(model.parameters())).device
    paired = PairedForward(model, carriers)
    by_target: dict[int, tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]] = {}

    def scatter(target: torch.Tensor, a: int, b: int, index: torch.Tensor) -> None:
        entry = by_target.setdefault(id(target), (target, [], []))
        entry[1].append(torch.arange(a, b, device=device))
        entry[2].append(index.to(target.device))

    delta_buf = None if carriers.buffer is None else torch.zeros_like(carriers.buffer)
    leaf_params: dict[int, list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]] = {}
    bias_deltas: dict[int, torch.Tensor] = {}  # by id(linear module)
    tables: dict[int, _RowTable] = {}
    for p, local, a, b in runs:
        corrected = carriers.corrected.get(id(p))
        if corrected is not None:
            scatter(delta_buf, a, b, corrected.positions(local))
            continue
        mods = holders[id(p)]
        if id(p) not in carriers.fp32:
            # the one rounded kind expressed exactly: a low-precision linear layer's bias (Qwen2's q/k/v)
            if not (p.dim() == 1 and all(isinstance(m, nn.Linear) and m.bias is p and m.weight.dtype in LOW_PRECISION
                                         for m in mods)):
                raise _Unsupported(f"masked {names[id(p)]} has no carrier and is not a low-precision "
                                   "linear layer's bias")
            bias_delta = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            scatter(bias_delta, a, b, local)
            bias_deltas.update((id(m), bias_delta) for m in mods)
            continue
        if p.dim() == 2 and all(isinstance(m, (nn.Embedding, nn.Linear)) for m in mods):
            n_cols = p.shape[1]
            rows = torch.unique(local.to(p.device) // n_cols)
            slot = torch.full((p.shape[0],), rows.numel(), dtype=torch.int64, device=p.device)
            slot[rows] = torch.arange(rows.numel(), device=p.device)
            table = _RowTable(rows, slot, torch.zeros(rows.numel() + 1, n_cols, dtype=torch.float32, device=p.device))
            tables[id(p)] = table
            local = local.to(p.device)
            scatter(table.delta.view(-1), a, b, slot[local // n_cols] * n_cols + local % n_cols)
            for m in mods:
                if isinstance(m, nn.Embedding):
                    paired.factories[id(m)] = (m, lambda orig, t=table: _embedding_forward(orig, t))
                else:
                    paired.forwards[id(m)] = (m, _head_forward(m, table))
            continue
        if p.dim() != 1 or any(len(list(m.children())) for m in mods):
            raise _Unsupported(f"masked {names[id(p)]} ({p.dim()}-D) is held by a module with children "
                               "or outside nn.Linear / nn.Embedding")
        delta = torch.zeros_like(p.data)
        scatter(delta, a, b, local)
        for m in mods:
            leaf_params.setdefault(id(m), []).append((p, delta, torch.empty_like(p.data)))
    leaf_mods = {id(m): m for p, _, _, _ in runs for m in holders[id(p)]}
    for mid, params in leaf_params.items():
        if mid in paired.forwards or mid in paired.factories:
            raise _Unsupported(f"{type(leaf_mods[mid]).__name__} holds both a masked 1-D weight and a masked "
                               "embedding or linear weight")
        paired.factories[mid] = (leaf_mods[mid], lambda orig, ps=params: _leaf_forward(orig, ps))
    by_weight = carriers.corrected
    for mod in model.modules():
        if isinstance(mod, nn.Linear) and mod.weight.dtype in LOW_PRECISION:
            corrected = by_weight.get(id(mod.weight))
            delta = None
            if corrected is not None:
                n = corrected.corr.numel()
                delta = delta_buf[corrected.offset : corrected.offset + n].view_as(corrected.corr)
            paired.forwards[id(mod)] = (mod, _linear_forward(mod, corrected, delta, bias_deltas.get(id(mod)),
                                                             paired.cache))
    paired.scatters = [_Scatter(t, torch.cat(ks), torch.cat(ix)) for t, ks, ix in by_target.values()]
    return paired
