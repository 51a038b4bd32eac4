"""Where a bf16/fp16 model's masked coordinates live, so that its forward sees x +- eps z (METHOD.md section 2).

In a reduced-precision model a perturbation written into the weights is rounded away: bf16 keeps
8 significant bits, so ``bf16(x + eps z) == bf16(x)`` on many of SmolLM2's masked coordinates at
eps = 1e-3, and the estimate g is far off the fp32 one (benchmarks/RESULTS.md, "Reduced precision").
Here every masked coordinate gets a *carrier* that holds its value to (near) fp32 precision inside
the computation, while everything else keeps running in the low-precision dtype:

* ``fp32`` carriers: the parameter itself is kept in fp32. For 1-D parameters of non-linear modules
  (norm weights: 35k weights in SmolLM2, 59% of them masked) and for embedding matrices (the input
  embedding and the output head; tied in SmolLM2). An fp32 input embedding makes the residual stream
  fp32 (PyTorch's type promotion in ``residual + h``); an fp32 head makes the logits fp32 (bf16 logits
  of magnitude ~16 are rounded to 1/16, coarser than the loss differences a ZO step measures).
* ``corrected`` linear layers: an ``nn.Linear`` weight ``W`` with masked coordinates keeps its dtype
  and holds the base ``b = round(x)`` there; a small matrix ``D`` (out x |C|, over the layer's masked
  input features ``C``) holds the remainder ``round(value - b)``, a small number that the
  low-precision dtype represents to 2^-9 of itself. The forward is ``(x_C D^T + bias).addmm_(x, W^T)``:
  the GEMM adds the correction to its fp32 accumulator before the one rounding of the output (checked
  by ``tests/test_zo_carriers.py`` on the machine's kernel), exactly where a perturbation of W itself
  would enter. SmolLM2's mask concentrates on few input channels (2,447 over its 210 linear layers),
  so the correction GEMMs add 1.2% to the linear layers' multiply-adds.
* ``rounded``: anything else (biases of linear layers, convolutions, ...) is written rounded to the
  model's dtype, as before; ``Carriers.rounded_k`` counts them. The paired forward (``paired.py``)
  still carries the perturbation of linear biases exactly, in a delta of its own.

Hooks keep dtypes consistent: every ``nn.Linear`` casts its input to its weight's dtype (so the fp32
residual stream enters bf16 layers as bf16 and the fp32 head sees fp32), and rotary-embedding modules
return the compute dtype (their cos/sin follow the fp32 residual stream otherwise). The server never
sees any of this: the client's master, z and the update are the fp32 ones, and replay is unchanged.

The carriers make the masked coordinates exact, but two forwards still round every activation on their
own, which leaves g about 11% off on SmolLM2 in bf16. ``paired.py`` builds on the carriers to run both
forwards as one, where that rounding cancels (2.3%); the hooks above stand aside inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from meerkat_core.errors import MeerkatInputError
from meerkat_core.models.dtypes import LOW_PRECISION

__all__ = ["CarriedWrites", "Carriers", "CorrectedLinear", "install_carriers"]


@dataclass
class CorrectedLinear:
    """``y = x W^T + x[..., cols] D^T (+ bias)``, with one rounding of the output."""

    module: nn.Linear
    cols: torch.Tensor  # sorted masked input features (int64, on the weight's device)
    corr: torch.Tensor  # D: [out, len(cols)], the weight's dtype, a view of ``Carriers.buffer``
    offset: int  # of ``corr`` in that buffer

    def positions(self, local: torch.Tensor) -> torch.Tensor:
        """Positions in the correction buffer of the sorted local flat indices ``local`` of W."""
        n_in = self.module.weight.shape[1]
        local = local.to(self.corr.device)
        return self.offset + (local // n_in) * self.cols.numel() + torch.searchsorted(self.cols, local % n_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.module.weight
        if x.dtype != w.dtype:
            x = x.to(w.dtype)
        x2 = x.reshape(-1, x.shape[-1])
        corr = F.linear(x2.index_select(1, self.cols), self.corr, self.module.bias)
        # in place: the same bits as torch.addmm(corr, ...) without copying corr into a new output
        # (two bf16 SmolLM2 forwards 2.8-4.4% faster with AMX-BF16, benchmarks/RESULTS.md section 10.2)
        return corr.addmm_(x2, w.t()).view(*x.shape[:-1], w.shape[0])


@dataclass
class Carriers:
    """What ``install_carriers`` did to a model (ids are ``id(parameter)``)."""

    compute_dtype: torch.dtype
    fp32: set[int] = field(default_factory=set)
    corrected: dict[int, CorrectedLinear] = field(default_factory=dict)  # by id(weight)
    buffer: torch.Tensor | None = None  # every layer's D, flat
    rounded_k: int = 0  # masked coordinates that are written rounded (no carrier)
    fp32_embedding: bool = False  # an fp32 input embedding: the residual stream is fp32
    hooks: list[Any] = field(default_factory=list)
    paired: bool = False  # inside a paired forward (paired.py): the hooks below stand aside

    def summary(self) -> dict[str, Any]:
        return {"compute_dtype": str(self.compute_dtype).removeprefix("torch."), "fp32_tensors": len(self.fp32),
                "corrected_linears": len(self.corrected),
                "correction_columns": sum(c.cols.numel() for c in self.corrected.values()),
                "correction_elements": int(self.buffer.numel()) if self.buffer is not None else 0,
                "rounded_k": self.rounded_k}


def _cast_inputs(carriers: Carriers) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return None if carriers.paired else _cast_inputs_to_weight(module, args)

    return hook


def _cast_inputs_to_weight(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    w = getattr(module, "weight", None)
    if w is None or not args or not torch.is_tensor(args[0]) or not args[0].is_floating_point():
        return None
    if args[0].dtype == w.dtype:
        return None
    return (args[0].to(w.dtype), *args[1:])


def _cast_outputs(carriers: Carriers, dtype: torch.dtype) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if carriers.paired:
            return out
        if torch.is_tensor(out):
            return out.to(dtype) if out.is_floating_point() else out
        if isinstance(out, tuple):
            return tuple(t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t for t in out)
        return out

    return hook


def _owners(model: nn.Module) -> dict[int, nn.Module]:
    """id(param) -> the module that holds it directly (the first one, for tied weights)."""
    out: dict[int, nn.Module] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            out.setdefault(id(p), mod)
    return out


def _corrections(carriers: Carriers, linears: list[tuple[nn.Linear, torch.Tensor]], cd: torch.dtype) -> None:
    """One zeroed flat buffer holds every layer's D (out x |C|)."""
    if not linears:
        return
    devices = {m.weight.device for m, _ in linears}
    if len(devices) != 1:
        raise MeerkatInputError(f"low-precision carriers need the model on one device, got {sorted(map(str, devices))}")
    total = sum(m.weight.shape[0] * cols.numel() for m, cols in linears)
    buf = torch.zeros(total, dtype=cd, device=devices.pop())
    carriers.buffer = buf
    off = 0
    for mod, cols in linears:
        n = mod.weight.shape[0] * cols.numel()
        carriers.corrected[id(mod.weight)] = CorrectedLinear(mod, cols, buf[off : off + n].view(-1, cols.numel()), off)
        off += n


def install_carriers(model: nn.Module, masked: list[tuple[nn.Parameter, torch.Tensor]]) -> Carriers:
    """Give each masked parameter of a bf16/fp16 ``model`` a carrier (see module doc), in place.

    ``masked``: (parameter, its sorted local flat indices) for every parameter holding coordinates.
    Call before building the coordinates' segments: it changes the dtype of some parameters.
    """
    dtypes = {p.dtype for p, _ in masked}
    low = [d for d in dtypes if d in LOW_PRECISION]
    if len(low) != 1:
        raise MeerkatInputError(f"low-precision carriers need one bf16 or fp16 dtype, got {sorted(map(str, dtypes))}")
    cd = low[0]
    carriers = Carriers(cd)
    owners = _owners(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if getattr(head, "weight", None) is not None:
        embeddings.add(id(head.weight))
    linears: list[tuple[nn.Linear, torch.Tensor]] = []
    with torch.no_grad():
        for p, idx in masked:
            if p.dtype != cd:
                continue  # fp32 already (exact writes)
            owner = owners.get(id(p))
            if id(p) in embeddings or (p.dim() == 1 and not isinstance(owner, nn.Linear)):
                p.data = p.data.float()
                carriers.fp32.add(id(p))
                carriers.fp32_embedding |= id(p) in embeddings and owner is not head
            elif isinstance(owner, nn.Linear) and owner.weight is p and p.dim() == 2:
                linears.append((owner, torch.unique(idx.to(p.device) % p.shape[1])))
            else:
                carriers.rounded_k += int(idx.numel())
        _corrections(carriers, linears, cd)
    by_module = {id(c.module): c for c in carriers.corrected.values()}
    for mod in model.modules():
        corrected = by_module.get(id(mod))
        if corrected is not None:
            mod.forward = corrected.forward  # an instance attribute: nn.Module.__call__ runs it, hooks included
        elif isinstance(mod, nn.Linear):
            carriers.hooks.append(mod.register_forward_pre_hook(_cast_inputs(carriers)))
        if carriers.fp32_embedding and "Rotary" in type(mod).__name__:
            carriers.hooks.append(mod.register_forward_hook(_cast_outputs(carriers, cd)))
    return carriers


# ---------------------------------------------------------------------------------------------------
@dataclass
class _Gather:
    """Coordinates ``kpos`` of the k-vector stored at ``target[index]`` (cast to its dtype: exact for
    fp32 targets). ``base_only``: the weight of a corrected linear layer, written on ``rebase`` only."""

    target: torch.Tensor  # 1-D
    kpos: torch.Tensor | None  # None: the whole k-vector in order
    index: torch.Tensor
    base_only: bool = False


@dataclass
class _Delta:
    """Coordinates ``kpos`` of corrected linear layers: ``target[index]`` holds ``round(value - b)``,
    ``b = round(x)`` being in the weight (``base``: b in fp32, set by ``rebase``)."""

    target: torch.Tensor
    kpos: torch.Tensor | None
    index: torch.Tensor
    base: torch.Tensor | None = None


def _pick(vec: torch.Tensor, kpos: torch.Tensor | None) -> torch.Tensor:
    return vec if kpos is None else vec.index_select(0, kpos)


def _kpos(parts: list[torch.Tensor], k: int) -> torch.Tensor | None:
    kp = torch.cat(parts)
    if kp.numel() == k and bool((kp == torch.arange(k, device=kp.device)).all()):
        return None
    return kp


class CarriedWrites:
    """Reads and writes of the k-vector through the carriers: one index op per buffer and role."""

    def __init__(self, gathers: list[_Gather], deltas: list[_Delta]) -> None:
        self.gathers, self.deltas = gathers, deltas

    @classmethod
    def build(
        cls,
        k: int,
        device: torch.device,
        carriers: Carriers,
        runs: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor, int, int, int]],
    ) -> "CarriedWrites":
        """``runs``: per masked parameter, in canonical order: (param, its sorted local flat indices,
        the 1-D tensor holding it, its offset there, k_start, k_stop)."""
        groups: dict[tuple[int, bool], tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]] = {}
        dk: list[torch.Tensor] = []
        dpos: list[torch.Tensor] = []
        for p, local, target, off, a, b in runs:
            corrected = carriers.corrected.get(id(p))
            entry = groups.setdefault((id(target), corrected is not None), (target, [], []))
            entry[1].append(torch.arange(a, b, device=device))
            entry[2].append(local.to(target.device) + off)
            if corrected is not None:
                dk.append(torch.arange(a, b, device=device))
                dpos.append(corrected.positions(local))
        gathers = [_Gather(t, _kpos(ks, k), torch.cat(ix), base_only) for (_, base_only), (t, ks, ix) in groups.items()]
        deltas = [_Delta(carriers.buffer, _kpos(dk, k), torch.cat(dpos))] if dk else []
        return cls(gathers, deltas)

    def read(self, out: torch.Tensor) -> None:
        """out (fp32 k-vector) := the values the model currently computes with."""
        for g in self.gathers:
            vals = g.target.index_select(0, g.index).to(out.dtype)
            _put(out, g.kpos, vals)
        for dl in self.deltas:
            _put(out, dl.kpos, _pick(out, dl.kpos) + dl.target.index_select(0, dl.index).float())

    def write(self, vals: torch.Tensor) -> None:
        """The model computes with ``vals`` (fp32 k-vector) at the coordinates; bases unchanged."""
        for g in self.gathers:
            if not g.base_only:
                g.target.index_copy_(0, g.index, _pick(vals, g.kpos).to(g.target.dtype))
        for dl in self.deltas:
            if dl.base is None:
                raise RuntimeError("CarriedWrites.write before rebase")
            dl.target.index_copy_(0, dl.index, (_pick(vals, dl.kpos) - dl.base).to(dl.target.dtype))

    def rebase(self, x: torch.Tensor) -> None:
        """Bases := round(x), corrections := round(x - base): the model computes with x."""
        for g in self.gathers:
            g.target.index_copy_(0, g.index, _pick(x, g.kpos).to(g.target.dtype))
        for dl in self.deltas:
            xs = _pick(x, dl.kpos)
            dl.base = xs.to(dl.target.dtype).float()
            dl.target.index_copy_(0, dl.index, (xs - dl.base).to(dl.target.dtype))


def _put(out: torch.Tensor, kpos: torch.Tensor | None, vals: torch.Tensor) -> None:
    if kpos is None:
        out.copy_(vals)
    else:
        out.index_copy_(0, kpos, vals)
