"""Computing a mask: calibration gradient statistics, then global top-k.

Gradient statistics (all methods, whenever calibration batches are given): each calibration batch
``b`` (``batch_size`` blocks) gives one loss ``L_b`` (the model's causal-LM loss, the mean token
cross-entropy of that batch) and one gradient by ordinary backprop; per weight
``s_i = mean_b (dL_b/dw_i)^2`` and ``gbar_i = mean_b dL_b/dw_i``, accumulated in float32. A smaller last
batch counts as one ``b`` like the others. Memory: the model, its gradients and two float32
accumulators the size of the eligible weights; everything else is O(k).

Selection: ``sensitivity`` keeps the global top-k by ``s``; ``magnitude`` by ``|w|``; ``random`` k
uniformly drawn coordinates (seeded). Ties: smaller global index first (see ``select``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch

import meerkat_core
from meerkat_core.corpus import CorpusInfo
from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.hashing import model_fingerprint
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


class GradStats:
    """Float32 running sums of g and g^2 per eligible parameter; ``mean``/``mean_sq`` divide by n."""

    def __init__(self, params: Sequence[tuple[str, torch.nn.Parameter]]) -> None:
        self.names = [n for n, _ in params]
        self.sum = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for _, p in params]
        self.sum_sq = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for _, p in params]
        self.n = 0

    def add_grads(self, params: Sequence[tuple[str, torch.nn.Parameter]]) -> None:
        for (name, p), acc, acc_sq in zip(params, self.sum, self.sum_sq):
            g = p.grad
            if g is None:  # a parameter the loss does not reach: gradient 0
                continue
            g = g.detach().to(torch.float32)  # no copy when already float32
            if not torch.isfinite(g).all():
                raise MeerkatError(f"non-finite gradient in {name}: the model or calibration data is broken")
            acc.add_(g)
            g.mul_(g)  # in place: the gradient buffer is discarded after this
            acc_sq.add_(g)
            p.grad = None
        self.n += 1

    def finalize(self) -> None:
        """Turn the sums into means, in place."""
        if self.n == 0:
            raise MeerkatInputError("the calibration data gave no batch: use --samples of at least 1")
        for acc, acc_sq in zip(self.sum, self.sum_sq):
            acc.div_(self.n)
            acc_sq.div_(self.n)


def gradient_stats(
    model: torch.nn.Module,
    params: Sequence[tuple[str, torch.nn.Parameter]],
    batches: Iterable[torch.Tensor],
    total: int | None = None,
    progress: ProgressFn | None = None,
) -> GradStats:
    """Backprop the causal-LM loss of every batch; return per-weight means of g and g^2."""
    stats = GradStats(params)
    device = next(model.parameters()).device
    with _grad_only_for(model, [p for _, p in params]), torch.enable_grad():
        for i, batch in enumerate(batches):
            ids = batch.to(device)
            loss = model(input_ids=ids, labels=ids).loss
            if not torch.isfinite(loss):
                raise MeerkatError(f"calibration batch {i}: the loss is {loss.item()}")
            loss.backward()
            stats.add_grads(params)
            if progress is not None:
                progress(i + 1, total, "calibration backprop")
    stats.finalize()
    return stats


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
) -> Mask:
    """Compute a mask of ``model`` (see the module docstring).

    ``batches`` yields LongTensor [B, L] token ids; it may be ``None`` for ``random``/``magnitude``
    (then ``grad_mean`` is zero and ``score`` of ``random`` is zero). ``corpus``, ``batch_size`` and
    ``model_name`` are recorded in the metadata only.
    """
    density = validate_density(density)
    validate_method(method)
    if method == "sensitivity" and batches is None:
        raise MeerkatInputError("--method sensitivity needs calibration text (--corpus)")
    params = eligible_parameters(model, exclude)
    numels = [p.numel() for _, p in params]
    d = sum(numels)
    k = k_for_density(density, d)

    stats = gradient_stats(model, params, batches, num_batches, progress) if batches is not None else None

    with torch.no_grad():
        if method == "sensitivity":
            assert stats is not None
            sum_sq = stats.sum_sq
            chosen = _select_by_score(lambda j: sum_sq[j], numels, k, progress)
        elif method == "magnitude":
            chosen = _select_by_score(lambda j: params[j][1].detach().abs().to(torch.float32), numels, k, progress)
        else:
            chosen = split_global(random_global(d, k, seed), numels)

        tensors: dict[str, TensorMask] = {}
        for j, ((name, p), local) in enumerate(zip(params, chosen)):
            local = local.to(torch.long).cpu()
            if stats is not None:
                gbar = stats.sum[j].reshape(-1)[local.to(stats.sum[j].device)].cpu()
                msq = stats.sum_sq[j].reshape(-1)[local.to(stats.sum_sq[j].device)].cpu()
            else:
                gbar = torch.zeros(local.numel(), dtype=torch.float32)
                msq = torch.zeros(local.numel(), dtype=torch.float32)
            score = p.detach().reshape(-1)[local.to(p.device)].abs().float().cpu() if method == "magnitude" else msq
            tensors[name] = TensorMask(
                name=name,
                shape=tuple(p.shape),
                indices=local.contiguous(),
                grad_mean=gbar.to(torch.float32).contiguous(),
                score=score.to(torch.float32).contiguous(),
            )
    n_batches = stats.n if stats is not None else 0
    del stats

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
        grad_stats="mean_over_batches" if batches is not None else "none",
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
