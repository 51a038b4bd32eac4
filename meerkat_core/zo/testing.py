"""Small builders for tests and benchmarks of the ZO engine (tiny random LLaMA, random masks, losses)."""

from __future__ import annotations

import torch
from torch import nn

from meerkat_core.zo.step import StepLoss

__all__ = ["causal_lm_loss_fn", "random_mask", "tiny_llama"]


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: int) -> nn.Module:
    """A random LlamaForCausalLM (vocab 128, hidden 32, 2 layers, tied embeddings) in eval mode."""
    from transformers import LlamaForCausalLM

    from meerkat_core.models.tiny import tiny_llama_config

    cfg = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, **overrides}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**cfg)).eval()
    return model.to(dtype) if dtype != torch.float32 else model


def random_mask(model: nn.Module, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """k coordinates drawn uniformly over all weights, as {name: sorted flat indices}."""
    named = list(model.named_parameters())
    sizes = torch.tensor([p.numel() for _, p in named])
    d = int(sizes.sum())
    if not 0 < k <= d:
        raise ValueError(f"k must be in [1, {d}], got {k}")
    gen = torch.Generator().manual_seed(seed)
    if k > d // 4:
        flat = torch.randperm(d, generator=gen)[:k].sort().values
    else:  # O(k) memory: draw with replacement until k distinct, then thin to exactly k
        flat = torch.empty(0, dtype=torch.int64)
        while flat.numel() < k:
            cand = torch.randint(0, d, (2 * (k - flat.numel()) + 16,), generator=gen)
            flat = torch.unique(torch.cat((flat, cand)))
        if flat.numel() > k:
            flat = flat[torch.randperm(flat.numel(), generator=gen)[:k]].sort().values
    starts = torch.cumsum(sizes, 0) - sizes
    cuts = torch.searchsorted(flat, torch.cat((starts, sizes.sum().view(1)))).tolist()
    out: dict[str, torch.Tensor] = {}
    for i, ((name, _), s) in enumerate(zip(named, starts.tolist())):
        if cuts[i + 1] > cuts[i]:
            out[name] = flat[cuts[i] : cuts[i + 1]] - s
    return out


def causal_lm_loss_fn(model: nn.Module, input_ids: torch.Tensor) -> StepLoss:
    """loss_fn for zo_step: the causal-LM loss of ``model`` on fixed tokens, computed in fp32 (with
    ``pair``: each half's loss over the tokens twice, for a paired forward)."""

    def losses(ids: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids).logits.float()
        per_token = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        return per_token.view(ids.shape[0], -1)

    def loss() -> torch.Tensor:
        logits = model(input_ids=input_ids).logits.float()
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1)
        )

    def pair() -> tuple[torch.Tensor, torch.Tensor]:
        rows = losses(torch.cat((input_ids, input_ids)))
        n = input_ids.shape[0]
        return rows[:n].mean(), rows[n:].mean()

    return StepLoss(loss, pair)
