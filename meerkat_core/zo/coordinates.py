"""The k trainable coordinates of a model, with an fp32 master copy (METHOD.md section 2).

``SparseCoordinates(model, indices)`` owns the k masked weights of ``model``:

* **Canonical order** of the k-vector: tensors in ``model.named_parameters()`` order (tied weights
  once), inside a tensor its sorted flat indices. Every k-vector in the project (master ``x``, ``z``,
  ``gbar`` for GradIP) uses this order; ``spans`` gives each tensor's slice of it.
* **Master**: ``x`` (fp32, on the model's device) holds the true values. Perturbations write
  ``(x + scale * z).to(dtype)`` into the weights; ``restore`` writes ``x.to(dtype)`` back, so a
  restore is exact whatever the model's dtype (weights are never updated by add/subtract).
* **Flattening** (default): the parameters that own coordinates are moved into one contiguous
  buffer per (dtype, device); each ``param.data`` becomes a view of it. Tied weights are one
  Parameter object, so they stay tied. Perturb/restore/update are then one ``index_copy_`` per buffer
  over global flat indices, not one op per tensor. Parameters that cannot be flattened (non-float,
  storage shared between distinct Parameters, tensor subclasses) get per-tensor segments instead;
  ``flatten=False`` forces that everywhere. The move goes one parameter at a time, each one's old
  memory released before the next (``relocate``), so the weights never exist twice, on CPU (memory-
  mapped or not) or on an accelerator (staged through host memory). Build the object after the model
  has its final device and dtype: ``model.to(...)`` afterwards re-allocates the weights (``check_layout`` detects it).
* **Low precision** (bf16/fp16 weights, sparse mask): the coordinates get fp32-exact carriers
  (``carriers.py``) so that the forwards see ``x +- eps z`` rather than its rounding; perturb /
  restore are then two or three index ops on the carriers' buffers. The master, z and the update
  are the same fp32 ones, so the server's replay does not change.
* ``indices=None`` selects every weight (full-parameter ZO baseline, k = d). Then perturb/update
  work on the flat buffer in pieces and, when d exceeds ``z_cache_limit``, redraw z per piece from
  (key, offset) instead of holding a d-sized z.

Perturbations come either as a tensor (``perturb(z, scale)``) or as a key
(``perturb_key(key, scale)``): then ``z = rng.normal(key, k)`` over the canonical order (element i of
the stream is coordinate i), cached for the current key when k <= ``z_cache_limit`` so one ZO step
draws it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.zo import rng
from meerkat_core.zo.relocate import Relocator
from meerkat_core.zo.carriers import LOW_PRECISION, CarriedWrites, Carriers, install_carriers
from meerkat_core.zo.paired import PairedForward, paired_or_reason
from meerkat_core.zo.update import apply_update

__all__ = ["SparseCoordinates", "TensorSpan"]

Z_CACHE_LIMIT = 1 << 25  # elements (128 MiB of fp32)


@dataclass(frozen=True)
class TensorSpan:
    """One parameter's share of the k-vector: ``x[k_start:k_stop]`` are its coordinates."""

    name: str
    shape: tuple[int, ...]
    numel: int
    k_start: int
    k_stop: int
    indices: torch.Tensor | None  # sorted local flat indices (CPU int64); None = every element

    @property
    def k(self) -> int:
        return self.k_stop - self.k_start


@dataclass
class _Segment:
    """A run of coordinates ``x[k_start:k_stop]`` living in one 1-D ``target`` tensor.

    ``index`` (int64 on target's device): their positions in ``target``; None means the contiguous
    range ``target[t_start : t_start + n]``.
    """

    target: torch.Tensor
    k_start: int
    k_stop: int
    index: torch.Tensor | None
    t_start: int = 0

    @property
    def n(self) -> int:
        return self.k_stop - self.k_start

    def read(self) -> torch.Tensor:
        if self.index is None:
            return self.target[self.t_start : self.t_start + self.n]
        return self.target.index_select(0, self.index)

    def write(self, vals: torch.Tensor, a: int, b: int) -> None:
        """Write values of coordinates ``k_start + a .. k_start + b`` (any float dtype; cast here)."""
        if self.index is None:
            self.target[self.t_start + a : self.t_start + b].copy_(vals)
        else:
            idx = self.index if (a == 0 and b == self.n) else self.index[a:b]
            self.target.index_copy_(0, idx, vals.to(device=self.target.device, dtype=self.target.dtype))


@dataclass
class _Flat:
    """A flat buffer and the parameters viewing it (for layout checks and unflattening)."""

    buffer: torch.Tensor
    params: list[tuple[nn.Parameter, int, int]]  # (param, offset, numel)


def _as_index(name: str, value: Any, numel: int) -> torch.Tensor:
    try:
        idx = torch.as_tensor(value)
    except Exception as exc:  # noqa: BLE001 - report any unconvertible value as bad input
        raise MeerkatInputError(f"mask entry {name!r}: indices are not an integer array ({exc})") from exc
    if idx.numel() and (idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex()):
        raise MeerkatInputError(f"mask entry {name!r}: indices must be integers, got {idx.dtype}")
    idx = idx.detach().to(device="cpu", dtype=torch.int64).reshape(-1)
    if idx.numel():
        if int(idx[0]) < 0 or int(idx[-1]) >= numel:
            raise MeerkatInputError(
                f"mask entry {name!r}: indices must lie in [0, {numel}) and be sorted; got first "
                f"{int(idx[0])}, last {int(idx[-1])}"
            )
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise MeerkatInputError(f"mask entry {name!r}: indices must be strictly increasing (sorted, no repeats)")
    return idx


def _flattenable(p: nn.Parameter) -> bool:
    return (
        type(p.data) is torch.Tensor
        and p.dtype.is_floating_point
        and p.device.type != "meta"
        and not p.is_sparse
    )


def _overlapping(params: list[nn.Parameter]) -> set[int]:
    """ids of distinct parameters whose memory overlaps another's (flattening would un-alias them).

    Parameters that merely share a storage without overlapping (e.g. views of an earlier flat
    buffer) may be flattened: copying them changes nothing observable through the parameters.
    """
    ranges: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    for p in params:
        if p.device.type == "meta" or p.numel() == 0:
            continue
        base = p.untyped_storage().data_ptr()
        start = p.data_ptr()
        # a non-contiguous parameter is taken to reach the end of its storage (conservative)
        end = start + p.numel() * p.element_size() if p.is_contiguous() else base + p.untyped_storage().nbytes()
        ranges.setdefault((str(p.device), base), []).append((start, end, id(p)))
    out: set[int] = set()
    for spans in ranges.values():
        spans.sort()
        reach, owner = -1, -1
        for start, end, pid in spans:
            if start < reach:
                out.update((pid, owner))
            if end > reach:
                reach, owner = end, pid
    return out


def _own_cpu_storage(params: list[nn.Parameter], done: set[int], mover: Relocator) -> None:
    """Give the CPU parameters that were not flattened memory of their own.

    Weights loaded from safetensors are views of one memory-mapped file. The parameters that own no
    coordinate would keep the whole mapping alive, and with it every page that flattening read, where
    the pages cannot be dropped one tensor at a time (``relocate``: Linux only): resident memory then
    holds the weights twice (1.9x inference on SmolLM2, benchmarks/memory.py). Moving the rest
    releases the mapping. Aliased parameters are left alone (moving would un-tie them).
    """
    rest = [p for p in params if id(p) not in done and p.device.type == "cpu" and _flattenable(p)]
    aliased = _overlapping(rest)
    for p in rest:
        if id(p) not in aliased:
            mover.move(p, torch.empty_like(p.data, memory_format=torch.contiguous_format))
    mover.trim()


class SparseCoordinates:
    """The k trainable coordinates of ``model`` and their fp32 master copy (see module doc).

    Args:
        model: the model; its parameters are re-pointed into flat buffers (``flatten=True``).
        indices: {param name: sorted int64 flat indices} (names as in ``named_parameters()``; an alias
            of a tied weight, e.g. ``lm_head.weight``, is accepted), or None for every weight.
        flatten: move the parameters owning coordinates into contiguous buffers (fast path).
        device: device of the master copy (default: the first such parameter's device).
        z_cache_limit: keep the last key's z when k <= this; otherwise z is redrawn in pieces.
        chunk: piece length for large k (default ``rng.default_chunk(device)``).
        carriers: give the coordinates of a bf16/fp16 model fp32-exact carriers (``carriers.py``) so
            that its forwards see ``x +- eps z``; None (default): when the masked weights are bf16 or
            fp16, the mask is sparse and z is held for the step (k <= ``z_cache_limit``).
        paired: with carriers, run a step's two forwards as one paired forward (``paired.py``: both
            halves of a doubled batch, every low-precision GEMM on their sum and difference); None
            (default): whenever the model allows it (``self.paired`` is then not None).
    """

    def __init__(
        self,
        model: nn.Module,
        indices: Mapping[str, Any] | None = None,
        *,
        flatten: bool = True,
        device: torch.device | str | None = None,
        z_cache_limit: int = Z_CACHE_LIMIT,
        chunk: int | None = None,
        carriers: bool | None = None,
        paired: bool | None = None,
    ) -> None:
        named = list(model.named_parameters())
        if not named:
            raise MeerkatInputError("the model has no parameters")
        self.d: int = sum(p.numel() for _, p in named)
        self.full: bool = indices is None
        self._spans_params = self._make_spans(model, named, indices)
        self.spans: list[TensorSpan] = [s for s, _ in self._spans_params]
        self.k: int = self.spans[-1].k_stop if self.spans else 0
        if self.k == 0:
            raise MeerkatInputError("the mask selects no coordinates (k = 0)")
        first = self._spans_params[0][1]
        self.device: torch.device = torch.device(device) if device is not None else first.device
        self.z_cache_limit = int(z_cache_limit)
        self.chunk: int = int(chunk) if chunk else rng.default_chunk(self.device)
        self._flats: list[_Flat] = []
        self._segments: list[_Segment] = []
        self._layout: list[tuple[nn.Parameter, int, torch.dtype, torch.device]] = []
        if carriers is None:
            carriers = not self.full and self.k <= self.z_cache_limit and any(
                p.dtype in LOW_PRECISION for _, p in self._spans_params)
        self.carriers: Carriers | None = None
        self._carried: CarriedWrites | None = None
        if carriers:
            self.carriers = install_carriers(model, [(p, s.indices) for s, p in self._spans_params])
        mover = Relocator()
        self._build(flatten, mover)
        if self._flats:
            _own_cpu_storage([p for _, p in named], {id(p) for f in self._flats for p, _, _ in f.params}, mover)
        with torch.no_grad():
            self._x = torch.empty(self.k, dtype=torch.float32, device=self.device)
            if self._carried is not None:
                self._carried.read(self._x)
                self._carried.rebase(self._x)
            else:
                for seg in self._segments:
                    self._x[seg.k_start : seg.k_stop].copy_(seg.read())
        self.paired: PairedForward | None = None
        # with carriers and no paired forward: why (``paired=False``, or what in the model keeps it out)
        self.paired_unavailable: str | None = None
        if self.carriers is not None:
            self.paired_unavailable = "not asked for"
            if paired is not False:
                self.paired, self.paired_unavailable = paired_or_reason(model, self.carriers, [
                    (p, span.indices, span.k_start, span.k_stop) for span, p in self._spans_params])
            if self.paired is None and paired:
                raise MeerkatInputError(f"this model's masked weights cannot run the paired forward (zo/paired.py): "
                                        f"{self.paired_unavailable}; use --zo-forward two or auto")
        self._cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._z_key: int | None = None
        self._z: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------
    # construction
    def _make_spans(
        self,
        model: nn.Module,
        named: list[tuple[str, nn.Parameter]],
        indices: Mapping[str, Any] | None,
    ) -> list[tuple[TensorSpan, nn.Parameter]]:
        canonical = {id(p): n for n, p in named}
        wanted: dict[str, Any] = {}
        if indices is not None:
            alias = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
            unknown = [n for n in indices if n not in alias]
            if unknown:
                raise MeerkatInputError(
                    f"mask names {unknown[:5]} are not parameters of this model (was the mask made for "
                    "another model?)"
                )
            for n, v in indices.items():
                c = alias[n]
                if c in wanted:
                    raise MeerkatInputError(f"mask lists the tied weight {c!r} twice (as {n!r} too)")
                wanted[c] = v
        spans: list[tuple[TensorSpan, nn.Parameter]] = []
        k = 0
        for name, p in named:
            if indices is None:
                idx, cnt = None, p.numel()
            elif name in wanted:
                idx = _as_index(name, wanted[name], p.numel())
                cnt = idx.numel()
            else:
                continue
            if cnt == 0:
                continue
            spans.append((TensorSpan(name, tuple(p.shape), p.numel(), k, k + cnt, idx), p))
            k += cnt
        return spans

    def _build(self, flatten: bool, mover: Relocator | None = None) -> None:
        """Flatten what can be flattened, then derive the segments (merged runs).

        Flattening moves one parameter at a time and releases its old memory before the next
        (``relocate``), so the weights never exist twice; on an accelerator the group is staged
        through host memory first, so the device never holds both copies either.
        """
        mover = mover or Relocator()
        params = [p for _, p in self._spans_params]
        aliased = _overlapping(params)
        groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
        if flatten:
            for p in params:
                if _flattenable(p) and id(p) not in aliased:
                    groups.setdefault((p.dtype, p.device), []).append(p)
        where: dict[int, tuple[torch.Tensor, int]] = {}  # id(param) -> (1-D target, offset)
        with torch.no_grad():
            for (dtype, dev), ps in groups.items():
                if dev.type != "cpu":
                    mover.stage_on_host(ps)
                total = sum(p.numel() for p in ps)
                buf = torch.empty(total, dtype=dtype, device=dev)  # on CPU, pages are committed as filled
                flat = _Flat(buf, [])
                off = 0
                for p in ps:
                    n = p.numel()
                    mover.move(p, buf[off : off + n].view(p.shape))
                    flat.params.append((p, off, n))
                    where[id(p)] = (buf, off)
                    off += n
                self._flats.append(flat)
            mover.trim()
            for p in params:
                if id(p) not in where:
                    if p.device.type == "meta":
                        raise MeerkatInputError("model parameters are on the meta device; load the weights first")
                    if not p.is_contiguous():
                        p.data = p.data.contiguous()
                    where[id(p)] = (p.data.view(-1), 0)
        self._segments = []
        for span, p in self._spans_params:
            target, off = where[id(p)]
            if span.indices is None:
                index = None
            else:
                index = span.indices.to(target.device) + off if off else span.indices.to(target.device)
            last = self._segments[-1] if self._segments else None
            if last is not None and last.target is target and last.k_stop == span.k_start:
                if index is None and last.index is None and last.t_start + last.n == off:
                    last.k_stop = span.k_stop
                    continue
                if index is not None and last.index is not None:
                    last.index = torch.cat((last.index, index))
                    last.k_stop = span.k_stop
                    continue
            self._segments.append(_Segment(target, span.k_start, span.k_stop, index, off if index is None else 0))
        self._layout = [(p, p.data_ptr(), p.dtype, p.device) for _, p in self._spans_params]
        if self.carriers is not None:  # sparse mode only: every span has indices
            self._carried = CarriedWrites.build(self.k, self.device, self.carriers, [
                (p, span.indices, *where[id(p)], span.k_start, span.k_stop) for span, p in self._spans_params])

    # ------------------------------------------------------------------------------------------
    # introspection
    @property
    def flattened(self) -> bool:
        """True when at least one flat buffer is in use."""
        return bool(self._flats)

    @property
    def n_segments(self) -> int:
        """Index ops per perturb/restore (1 for a flattened single-dtype model)."""
        if self._carried is not None:
            return len(self._carried.gathers) + len(self._carried.deltas)
        return len(self._segments)

    @property
    def master(self) -> torch.Tensor:
        """The fp32 master k-vector itself (no copy): read-only for callers, use ``set_values``."""
        return self._x

    def values(self) -> torch.Tensor:
        """A copy of the fp32 master k-vector (canonical order)."""
        return self._x.clone()

    @torch.no_grad()
    def model_values(self) -> torch.Tensor:
        """The values the model computes with at the coordinates now (fp32 k-vector): the master
        rounded to the weights' dtype, or with carriers the master to ~2^-17 relative."""
        out = torch.empty_like(self._x)
        if self._carried is not None:
            self._carried.read(out)
        else:
            for seg in self._segments:
                out[seg.k_start : seg.k_stop].copy_(seg.read())
        return out

    def indices_by_name(self) -> dict[str, torch.Tensor]:
        """{name: sorted local flat indices (CPU int64)}; full mode gives aranges."""
        return {
            s.name: s.indices if s.indices is not None else torch.arange(s.numel, dtype=torch.int64) for s in self.spans
        }

    def split(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cut a canonical k-vector into {name: that tensor's piece} (views)."""
        self._check_vec(vec)
        return {s.name: vec[s.k_start : s.k_stop] for s in self.spans}

    def concat(self, per_tensor: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Canonical k-vector from {name: values on that tensor's coordinates, in index order}."""
        pieces = []
        for s in self.spans:
            if s.name not in per_tensor:
                raise MeerkatInputError(f"missing values for tensor {s.name!r}")
            v = torch.as_tensor(per_tensor[s.name]).reshape(-1)
            if v.numel() != s.k:
                raise MeerkatInputError(f"{s.name!r}: expected {s.k} values, got {v.numel()}")
            pieces.append(v.to(self.device))
        return torch.cat(pieces)

    def check_layout(self) -> None:
        """Raise MeerkatError if a parameter was re-allocated since construction (model.to, load)."""
        for p, ptr, dtype, dev in self._layout:
            if p.data_ptr() != ptr or p.dtype != dtype or p.device != dev:
                raise MeerkatError(
                    "model weights were re-allocated after SparseCoordinates was built (model.to(), "
                    "load_state_dict(assign=True), ...); build it again after the move"
                )

    # ------------------------------------------------------------------------------------------
    # writing
    def _pieces(self) -> Iterator[tuple[_Segment, int, int]]:
        """(segment, a, b): segment-relative ranges of at most ``chunk`` coordinates."""
        for seg in self._segments:
            step = max(self.chunk, 1)
            for a in range(0, seg.n, step):
                yield seg, a, min(seg.n, a + step)

    def _write(self, vals: Callable[[int, int], torch.Tensor]) -> None:
        """Weights := vals(lo, hi) for every piece [lo, hi) of the canonical order."""
        for seg, a, b in self._pieces():
            seg.write(vals(seg.k_start + a, seg.k_start + b), a, b)

    def _cast_of(self, seg: _Segment) -> torch.Tensor | None:
        key = (seg.target.dtype, seg.target.device)
        if self.k > self.z_cache_limit:
            return None
        c = self._cast.get(key)
        if c is None:
            c = self._x.to(device=seg.target.device, dtype=seg.target.dtype)
            self._cast[key] = c
        return c

    @torch.no_grad()
    def restore(self) -> None:
        """Weights at the coordinates := master.to(model dtype): exact, whatever the dtype. With
        carriers: the model computes with the master itself (fp32 carriers, base + correction)."""
        if self._carried is not None:
            self._carried.rebase(self._x)
            return
        for seg, a, b in self._pieces():
            c = self._cast_of(seg)
            lo, hi = seg.k_start + a, seg.k_start + b
            seg.write(c[lo:hi] if c is not None else self._x[lo:hi], a, b)

    @torch.no_grad()
    def set_values(self, x: torch.Tensor) -> None:
        """Master := x (k-vector, any float dtype; stored as fp32) and write it into the weights."""
        self._check_vec(x)
        self._x.copy_(x)
        self._cast.clear()
        self.restore()

    @torch.no_grad()
    def perturb(self, z: torch.Tensor, scale: float) -> None:
        """Weights := (master + scale * z).to(dtype) at the coordinates (fp32 arithmetic)."""
        self._check_vec(z)
        z = z.to(device=self.device, dtype=torch.float32)
        if self._carried is not None:
            self._carried.write(torch.add(self._x, z, alpha=scale))
            return
        self._write(lambda lo, hi: torch.add(self._x[lo:hi], z[lo:hi], alpha=scale))

    @torch.no_grad()
    def perturb_key(self, key: int, scale: float) -> None:
        """``perturb(rng.normal(key, k), scale)``, drawing z once per key (or per piece when large)."""
        z = self.z_for(key) if self.k <= self.z_cache_limit else None
        if z is not None:
            self.perturb(z, scale)
            return
        self._write(
            lambda lo, hi: torch.add(
                self._x[lo:hi], rng.normal(key, hi - lo, lo, device=self.device, chunk=hi - lo), alpha=scale
            )
        )

    @torch.no_grad()
    def perturb_pair(self, key: int, eps: float) -> None:
        """The paired forward's deltas := eps * z (z = ``z_for(key)``); the weights keep the master."""
        if self.paired is None:
            raise RuntimeError("perturb_pair without a paired forward")
        self.paired.write(self.z_for(key) * eps)

    @torch.no_grad()
    def update(self, z: torch.Tensor, lr: float, g: float) -> None:
        """Master := master - lr * g * z (``apply_update``), then write it into the weights."""
        self._check_vec(z)
        apply_update(self._x, z.to(device=self.device, dtype=torch.float32), lr, g)
        self._cast.clear()
        self.restore()

    @torch.no_grad()
    def update_key(self, key: int, lr: float, g: float) -> None:
        """``update(rng.normal(key, k), lr, g)``; in pieces with z redrawn when k is large."""
        if self.k <= self.z_cache_limit:
            self.update(self.z_for(key), lr, g)
            return
        for seg, a, b in self._pieces():
            lo, hi = seg.k_start + a, seg.k_start + b
            xs = self._x[lo:hi]
            apply_update(xs, rng.normal(key, hi - lo, lo, device=self.device, chunk=hi - lo), lr, g)
            seg.write(xs, a, b)
        self._cast.clear()

    def z_for(self, key: int) -> torch.Tensor:
        """z = rng.normal(key, k) on the master's device (fp32, canonical order). Cached for the last
        key when k <= z_cache_limit: do not modify the returned tensor."""
        key = int(key)
        if self._z is not None and self._z_key == key:
            return self._z
        z = rng.normal(key, self.k, device=self.device)
        if self.k <= self.z_cache_limit:
            self._z_key, self._z = key, z
        return z

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def unflatten(self) -> None:
        """Give every flattened parameter its own storage again (e.g. before saving with
        safetensors) and switch to per-tensor segments. The coordinates and master are unchanged."""
        if not self._flats:
            return
        for flat in self._flats:
            for p, _, _ in flat.params:
                p.data = p.data.clone()
        self._flats = []
        self._build(flatten=False)
        if self._carried is not None:
            self.restore()

    def _check_vec(self, v: torch.Tensor) -> None:
        if v.dim() != 1 or v.numel() != self.k:
            raise ValueError(f"expected a 1-D vector of k={self.k} values, got shape {tuple(v.shape)}")

    def __repr__(self) -> str:
        dtypes = sorted({str(s.target.dtype) for s in self._segments})
        return (
            f"SparseCoordinates(k={self.k}, d={self.d}, full={self.full}, segments={self.n_segments}, "
            f"flattened={self.flattened}, dtypes={dtypes}, device={self.device})"
        )
