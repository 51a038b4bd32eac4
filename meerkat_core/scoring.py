"""Forward passes that score label words: the training loss and the evaluation scores.

Logits are computed only at the positions that predict label tokens (``logits_to_keep``), which
skips the vocabulary projection everywhere else, and they are cast to fp32 before the log-softmax
whatever the model's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from meerkat_core.encoding import Batch, EncodedSet, collate


def target_logprobs(model: Any, batch: Batch) -> torch.Tensor:
    """Sum over each row's target tokens of log p(token | prefix), in fp32, shape [B]."""
    n = batch.target_ids.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=n,
        use_cache=False,
    )
    logp = out.logits[:, -n:, :].float().log_softmax(dim=-1)
    tok = logp.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1)
    return (tok * batch.target_mask).sum(dim=-1)


def last_logits(model: Any, batch: Batch) -> torch.Tensor:
    """fp32 logits at each row's last position (the one that predicts a single-token label), [B, V]."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=1,
        use_cache=False,
    )
    return out.logits[:, -1, :].float()


def label_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the label word(s) given the prompt (fp32 scalar): the training loss."""
    return -target_logprobs(model, batch).mean()


def classification_loss(model: Any, batch: Batch, candidate_ids: list[int]) -> torch.Tensor:
    """Mean cross-entropy of the true label word among the task's label words only (fp32 scalar).

    MeZO's ``train_as_classification``: the softmax runs over the candidate words' logits, so the loss
    is the margin between classes and ignores the mass on the rest of the vocabulary. Needs
    single-token label words (one forward; ``batch.target_ids[:, -1]`` is the true word).
    """
    cand = torch.tensor(candidate_ids, device=batch.target_ids.device)
    logp = last_logits(model, batch)[:, cand].log_softmax(dim=-1)
    true = (batch.target_ids[:, -1:] == cand.unsqueeze(0)).float()  # one-hot [B, C]
    return -(logp * true).sum(dim=-1).mean()




def class_scores(model: Any, enc: EncodedSet, indices: list[int], pad_id: int) -> torch.Tensor:
    """Log-likelihood of every label word after each prompt, fp32 [B, C].

    Single-token label words: one forward over the prompts, read at the last position. Otherwise one
    forward per class over prompt + that class's word.
    """
    words = enc.label_words
    prompts = [enc.prompts[i] for i in indices]
    device = next(model.parameters()).device
    if words.single_token:
        # score the first label token only; collate with a dummy 1-token target gives the last position
        batch = collate(prompts, [(0,)] * len(prompts), pad_id).to(device)
        logp = last_logits(model, batch).log_softmax(dim=-1)
        return logp[:, torch.tensor(words.first_ids, device=device)]
    cols = []
    for word in words.token_ids:
        batch = collate(prompts, [word] * len(prompts), pad_id).to(device)
        cols.append(target_logprobs(model, batch))
    return torch.stack(cols, dim=-1)
