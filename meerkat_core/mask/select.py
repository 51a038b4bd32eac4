"""Which parameters are eligible, and exact global top-k selection in O(k) extra memory.

Order used everywhere: a larger score ranks first; equal scores rank by the smaller *global index*,
the position in the concatenation of the eligible parameters (flattened, row-major) in
``model.named_parameters()`` order.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Iterator, Sequence

import torch

from meerkat_core.errors import MeerkatError, MeerkatInputError

_SCAN_CHUNK = 1 << 20


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise MeerkatInputError(f"--exclude {pattern}: not a valid regular expression ({exc})") from None
    return re.compile(fnmatch.translate(pattern))


def excluded(name: str, patterns: Sequence[str]) -> bool:
    """True when ``name`` matches a pattern.

    A pattern ``re:EXPR`` is a regular expression searched anywhere in the name; any other pattern is a
    shell glob matched against the whole name (``*embed_tokens*``, ``lm_head.weight``,
    ``model.layers.0.*``).
    """
    for pattern in patterns:
        rx = _compile(pattern)
        if (rx.search(name) if pattern.startswith("re:") else rx.fullmatch(name)) is not None:
            return True
    return False


def unmatched_patterns(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The patterns that match none of ``names`` (likely typos)."""
    return [p for p in patterns if not any(excluded(n, [p]) for n in names)]


def _chunks(score: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, score.numel(), _SCAN_CHUNK):
        yield start, score[start : start + _SCAN_CHUNK]


def _positions(
    score: torch.Tensor, pred: Callable[[torch.Tensor], torch.Tensor], limit: int | None = None
) -> torch.Tensor:
    """Ascending positions where ``pred(chunk)`` holds, at most ``limit`` of them; O(chunk) temporaries."""
    found: list[torch.Tensor] = []
    got = 0
    for start, chunk in _chunks(score):
        hits = torch.nonzero(pred(chunk)).squeeze(1)
        if limit is not None:
            hits = hits[: limit - got]
        if hits.numel():
            found.append(hits + start)
            got += hits.numel()
        if limit is not None and got >= limit:
            break
    return torch.cat(found) if found else torch.empty(0, dtype=torch.long, device=score.device)


def _values_above(score: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The entries of ``score`` strictly above ``threshold`` (chunked)."""
    parts = [chunk[chunk > threshold] for _, chunk in _chunks(score)]
    return torch.cat(parts) if parts else score.new_empty(0)


def topk_exact(score: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` best entries of the 1-D ``score`` (ties: smaller position first), ascending."""
    return global_topk(lambda j: score, [score.numel()], k)[0]


def kth_largest(score_of: Callable[[int], torch.Tensor], numels: Sequence[int], k: int) -> torch.Tensor:
    """The k-th largest value over all tensors (pass 1 of ``global_topk``); O(k) memory."""
    best: torch.Tensor | None = None  # the k largest values seen so far (a multiset), unordered
    for j in range(len(numels)):
        s = score_of(j).reshape(-1)
        if s.numel() == 0:
            continue
        if bool(torch.isnan(s.max())):
            raise MeerkatError(f"score tensor {j} contains NaN: the model or its gradients are broken")
        if best is not None and best.numel() >= k:
            # Values equal to the current k-th largest cannot change it: only strictly larger ones matter.
            cand = _values_above(s, best.min())
            if cand.numel() == 0:
                continue
        else:
            cand = torch.topk(s, min(k, s.numel()), sorted=False).values if s.numel() > k else s
        merged = cand.float() if best is None else torch.cat([best, cand.float()])
        best = torch.topk(merged, k, sorted=False).values if merged.numel() > k else merged.clone()
    if best is None or best.numel() < k:
        raise MeerkatInputError(f"cannot select {k} weights from {sum(numels)}")
    return best.min()


def global_topk(score_of: Callable[[int], torch.Tensor], numels: Sequence[int], k: int) -> list[torch.Tensor]:
    """Exact global top-k over tensors: per tensor, the ascending positions selected.

    Order: larger score first, then smaller global index (tensor order, then position). Two passes:
    the k-th largest value ``T`` (running top-k of values), then per tensor the positions above ``T``
    and, in global order, as many positions equal to ``T`` as are still needed. ``score_of(j)`` is
    called twice per tensor; nothing of size d is sorted or copied, temporaries are O(k + chunk).
    """
    k = min(k, sum(numels))
    if k <= 0:
        return [torch.empty(0, dtype=torch.long) for _ in numels]
    threshold = kth_largest(score_of, numels, k)
    above: list[torch.Tensor] = []
    for j in range(len(numels)):
        s = score_of(j).reshape(-1)
        above.append(_positions(s, lambda c: c > threshold.to(c.dtype)))
    need = k - sum(a.numel() for a in above)
    out: list[torch.Tensor] = []
    for j, a in enumerate(above):
        ties = torch.empty(0, dtype=torch.long, device=a.device)
        if need > 0:
            s = score_of(j).reshape(-1)
            ties = _positions(s, lambda c: c == threshold.to(c.dtype), limit=need)
            need -= ties.numel()
        out.append(torch.sort(torch.cat([a, ties])).values.cpu())
    if need != 0:  # cannot happen: T is attained k - |above| times or more
        raise MeerkatError("internal error: top-k selection came up short")
    return out


def split_global(gidx_sorted: torch.Tensor, numels: Sequence[int]) -> list[torch.Tensor]:
    """Split sorted global indices into per-tensor local indices (sorted), given the tensors' sizes."""
    out: list[torch.Tensor] = []
    offset = 0
    for n in numels:
        lo = int(torch.searchsorted(gidx_sorted, offset))
        hi = int(torch.searchsorted(gidx_sorted, offset + n))
        out.append(gidx_sorted[lo:hi] - offset)
        offset += n
    return out


def random_global(d: int, k: int, seed: int) -> torch.Tensor:
    """``k`` distinct global indices drawn uniformly from ``range(d)`` (seeded), sorted; O(k) memory."""
    if k >= d:
        return torch.arange(d)
    gen = torch.Generator().manual_seed(seed)
    take_complement = k > d // 2
    want = d - k if take_complement else k
    chosen = torch.empty(0, dtype=torch.long)
    while chosen.numel() < want:
        draw = torch.randint(0, d, (want - chosen.numel(),), generator=gen)
        chosen = torch.unique(torch.cat([chosen, draw]))  # sorted, distinct
    if not take_complement:
        return chosen
    keep = torch.ones(d, dtype=torch.bool)  # only when k > d/2, where O(d) is O(k)
    keep[chosen] = False
    return torch.nonzero(keep).squeeze(1)
