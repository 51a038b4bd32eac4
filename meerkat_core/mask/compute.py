"""Computing a mask: calibration gradient statistics, then global top-k.

Gradient statistics (all methods, whenever calibration batches are given): each calibration batch
``b`` (``batch_size`` blocks) gives one loss ``L_b`` (the model's causal-LM loss, the mean token
cross-entropy of that batch) and one gradient by ordinary backprop; per weight
``s_i = mean_b (dL_b/dw_i)^2`` and ``gbar_i = mean_b dL_b/dw_i``, accumulated in float32. A smaller last
batch counts as one ``b`` like the others.

Selection: ``sensitivity`` keeps the global top-k by ``s``; ``magnitude`` by ``|w|``; ``random`` k
uniformly drawn coordinates (seeded). Ties: smaller global index first (see ``select``).

Memory (``gradients``: each parameter's gradient is consumed as soon as autograd completes it, then
freed). ``sensitivity`` makes two passes over the calibration batches: the first sums ``g * g`` into one
float32 accumulator the size of the eligible weights and ranks by it; the second backprops the same
batches again (same order, same RNG state) and sums ``g`` on the k kept weights only. Peak: the model,
that accumulator, the activations and a few gradients in flight; ``grad_mean`` costs one more backward
per batch instead of a second d-sized accumulator. ``random`` and ``magnitude`` choose first, then make
one pass that keeps O(k). The results are bitwise those of dense accumulators (tests/test_mask_compute.py)
when the backward pass is deterministic (on CPU it is; CUDA's atomic adds may change the last bits of
``grad_mean``, never the ranking, which comes from one pass).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

import meerkat_core
from meerkat_core.corpus import CorpusInfo
from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import model_fingerprint
from meerkat_core.mask.gradients import KeptSums, SquaredSums, backprop_batches, rng_state, set_rng_state
from meerkat_core.mask.select import excluded, global_topk, random_global, split_global
from meerkat_core.mask.types import Mask, MaskMeta, TensorMask, k_for_density, validate_density, validate_method

ProgressFn = Callable[[int, "int | None", str], None]


def eligible_parameters(
    model: torch.nn.Module, exclude: Sequence[str] = ()
) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters not matched by ``exclude``, in ``named_parameters()`` order (tied weights once)."""
    chosen = [(n, p) for n, p in model.named_parameters() if not excluded(n, exclude)]
    if not chosen:
        raise MeerkatInputError(f"--exclude {' '.join(exclude)}: the patterns exclude every parameter")
    return chosen


def _replayable(batches: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    """``batches`` as something that can be iterated twice (an iterator is materialised: token ids only)."""
    return list(batches) if iter(batches) is batches else batches


def _select_by_score(
    score_of: Callable[[int], torch.Tensor],
    numels: Sequence[int],
    k: int,
    progress: ProgressFn | None = None,
) -> list[torch.Tensor]:
    """Global top-k over per-tensor scores (exact, ties by smaller global index); see ``select.global_topk``.

    ``score_of(j)`` gives tensor j's scores; a score computed on the fly (``|w|``) costs one tensor's
    worth of memory at a time.
    """
    total = 2 * len(numels)
    calls = 0

    def counted(j: int) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if progress is not None:
            progress(min(calls, total), total, "top-k")
        return score_of(j)

    return global_topk(counted, numels, k)


def split_groups(numels: Sequence[int], groups: int) -> list[list[int]]:
    """Consecutive runs of parameter indices with about ``sum(numels) / groups`` weights each (none empty)."""
    groups = max(1, min(groups, len(numels)))
    total = sum(numels)
    out: list[list[int]] = [[]]
    acc = 0
    for j, n in enumerate(numels):
        need = groups - len(out)  # groups still to open
        if out[-1] and need > 0 and (acc >= total * len(out) / groups or len(numels) - j <= need):
            out.append([])
        out[-1].append(j)
        acc += n
    return out


def _sensitivity_topk(
    model: torch.nn.Module,
    params: Sequence[tuple[str, torch.nn.Parameter]],
    data: Iterable[torch.Tensor],
    k: int,
    groups: int,
    total: int | None,
    progress: ProgressFn | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Per tensor: the kept positions (exact global top-k of the mean squared gradient, ties to the
    smaller global index) and their mean squared gradients; and the number of batches.

    Each group of parameters gets its own pass (same batches, same RNG state) and contributes its own
    top-k candidates: every member of the global top-k is in its group's top-k under the same order,
    so the best k of the union (score descending, global index ascending) is the global answer.
    """
    numels = [p.numel() for _, p in params]
    offsets = [0]
    for n in numels[:-1]:
        offsets.append(offsets[-1] + n)
    device = next(model.parameters()).device
    start = rng_state(device)
    parts = split_groups(numels, groups)
    cand_idx: list[torch.Tensor] = []
    cand_val: list[torch.Tensor] = []
    n_batches = 0
    for g, js in enumerate(parts):
        set_rng_state(device, start)  # every pass sees the same dropout draws
        squares = SquaredSums(params, js)
        label = "calibration backprop" if len(parts) == 1 else f"calibration backprop, group {g + 1}/{len(parts)}"
        n_batches = backprop_batches(model, params, data, squares, which=js, total=total, progress=progress,
                                     label=label)
        mean_sq = squares.means(n_batches)
        with torch.no_grad():
            local = _select_by_score(lambda i: mean_sq[js[i]], [numels[j] for j in js], k, progress)
            for j, pos in zip(js, local):
                pos = pos.to(torch.long).cpu()
                cand_idx.append(pos + offsets[j])
                cand_val.append(mean_sq[j].reshape(-1)[pos.to(mean_sq[j].device)].cpu())
        del squares, mean_sq  # free this group's accumulator before the next pass
    set_rng_state(device, start)  # the grad_mean pass sees exactly these gradients too
    gidx, vals = torch.cat(cand_idx), torch.cat(cand_val)
    by_index = torch.argsort(gidx, stable=True)
    gidx, vals = gidx[by_index], vals[by_index]
    best = torch.sort(vals, descending=True, stable=True).indices[:k]  # ties: smaller global index first
    keep = torch.sort(gidx[best]).indices
    gidx, vals = gidx[best][keep], vals[best][keep]
    chosen = split_global(gidx, numels)
    sizes = [c.numel() for c in chosen]
    return chosen, list(torch.split(vals, sizes)), n_batches


def compute_mask(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor] | None,
    *,
    density: float,
    method: str = "sensitivity",
    exclude: Sequence[str] = (),
    seed: int = 0,
    model_name: str = "",
    corpus: CorpusInfo | None = None,
    batch_size: int = 0,
    num_batches: int | None = None,
    progress: ProgressFn | None = None,
    score_groups: int = 1,
) -> Mask:
    """Compute a mask of ``model`` (see the module docstring).

    ``batches`` yields LongTensor [B, L] token ids; it may be ``None`` for ``random``/``magnitude``
    (then ``grad_mean`` is zero and ``score`` of ``random`` is zero). ``corpus``, ``batch_size`` and
    ``model_name`` are recorded in the metadata only. ``score_groups`` (sensitivity): split the
    eligible parameters into that many groups and score one group per pass over the batches, so the
    float32 score accumulator is 1/``score_groups`` of d; the mask is the same, bit for bit.
    """
    if not isinstance(score_groups, int) or isinstance(score_groups, bool) or score_groups < 1:
        raise MeerkatInputError(f"--score-groups {score_groups}: must be a whole number of at least 1")
    density = validate_density(density)
    validate_method(method)
    if method == "sensitivity" and batches is None:
        raise MeerkatInputError("--method sensitivity needs calibration text (--corpus)")
    params = eligible_parameters(model, exclude)
    numels = [p.numel() for _, p in params]
    d = sum(numels)
    k = k_for_density(density, d)

    data = _replayable(batches) if batches is not None and method == "sensitivity" else batches
    n_batches = 0
    msq_kept: list[torch.Tensor] | None = None
    if method == "sensitivity":
        assert data is not None
        chosen, msq_kept, n_batches = _sensitivity_topk(model, params, data, k, score_groups, num_batches, progress)
        label = "mean gradient on the kept weights"
    else:
        with torch.no_grad():
            if method == "magnitude":
                chosen = _select_by_score(lambda j: params[j][1].detach().abs().to(torch.float32), numels, k, progress)
            else:
                chosen = split_global(random_global(d, k, seed), numels)
        label = "calibration backprop"
    chosen = [c.to(torch.long).cpu() for c in chosen]

    gbar_kept: list[torch.Tensor] | None = None
    if data is not None:
        kept = KeptSums(params, chosen)
        n_batches = backprop_batches(model, params, data, kept, which=kept.owners(), total=num_batches,
                                     progress=progress, label=label)
        gbar_kept, sq_kept = kept.means(n_batches)
        msq_kept = msq_kept if msq_kept is not None else sq_kept

    with torch.no_grad():
        tensors: dict[str, TensorMask] = {}
        for j, ((name, p), local) in enumerate(zip(params, chosen)):
            zeros = torch.zeros(local.numel(), dtype=torch.float32)
            gbar = gbar_kept[j].cpu() if gbar_kept is not None else zeros
            msq = msq_kept[j].cpu() if msq_kept is not None else zeros
            score = p.detach().reshape(-1)[local.to(p.device)].abs().float().cpu() if method == "magnitude" else msq
            tensors[name] = TensorMask(
                name=name,
                shape=tuple(p.shape),
                indices=local.contiguous(),
                grad_mean=gbar.to(torch.float32).contiguous(),
                score=score.to(torch.float32).contiguous(),
            )

    dtypes = sorted({str(p.dtype).replace("torch.", "") for _, p in params})
    meta = MaskMeta(
        model=model_name or str(getattr(getattr(model, "config", None), "name_or_path", "") or ""),
        fingerprint=model_fingerprint(model),
        param_dtype=",".join(dtypes),
        method=method,
        density=density,
        k=k,
        d=d,
        d_total=sum(p.numel() for _, p in model.named_parameters()),
        seed=seed,
        exclude=tuple(exclude),
        score="abs_weight" if method == "magnitude" else "mean_sq_grad",
        grad_stats="mean_over_batches" if data is not None else "none",
        batch_size=batch_size,
        n_batches=n_batches,
        meerkat_version=meerkat_core.__version__,
    )
    if corpus is not None:
        meta.corpus = corpus.description
        meta.corpus_source = corpus.source
        meta.corpus_sha256 = corpus.text_sha256
        meta.n_tokens = corpus.n_tokens
        meta.samples = corpus.samples
        meta.seq_len = corpus.seq_len
        meta.corpus_seed = corpus.seed
    mask = Mask(meta=meta, tensors=tensors)
    assert mask.k == k, (mask.k, k)
    return mask
