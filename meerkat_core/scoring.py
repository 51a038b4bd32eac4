"""Forward passes that score label words: the training loss and the evaluation scores.

Logits are computed only at the positions that predict label tokens (``logits_to_keep``), which
skips the vocabulary projection everywhere else, and they are cast to fp32 before the log-softmax
whatever the model's dtype.

A class's score is the *mean* log-likelihood of its label word's tokens given the prompt (MeZO's
default, ``one_step_pred``: length-normalised, so a long word is not penalised for its length); for
one-token words it is that token's log-probability. Evaluation takes the arg-max of the scores; the
classification loss is the cross-entropy of the true class over them. The ``paired_*`` losses take a
``Batch.doubled()`` batch and return the mean loss of each half (zo/paired.py).
"""

from __future__ import annotations

from typing import Any

import torch

from meerkat_core.encoding import Batch, EncodedSet, candidate_batch, collate


def target_logprobs(model: Any, batch: Batch, mean: bool = False) -> torch.Tensor:
    """Sum (``mean=True``: mean) over each row's target tokens of log p(token | prefix), in fp32, shape [B]."""
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
    total = (tok * batch.target_mask).sum(dim=-1)
    return total / batch.target_mask.sum(dim=-1) if mean else total


def candidate_scores(model: Any, batch: Batch, num_classes: int) -> torch.Tensor:
    """[B, C] mean token log-likelihood of each class's word, from one forward over a ``candidate_batch``."""
    return target_logprobs(model, batch, mean=True).view(-1, num_classes)


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
    return _classification_rows(model, batch, candidate_ids).mean()


def multi_token_classification_loss(model: Any, batch: Batch, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``classification_loss`` for label words of any length: mean cross-entropy of the true class over
    the classes' ``candidate_scores`` (``batch`` from ``candidate_batch``; one forward of B x C rows)."""
    return _multi_token_rows(model, batch, labels, num_classes).mean()


def paired_label_loss(model: Any, doubled: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``label_loss`` of each half of a doubled batch."""
    return _half_means(-target_logprobs(model, doubled))


def paired_classification_loss(model: Any, doubled: Batch, candidate_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``classification_loss`` of each half of a doubled batch."""
    return _half_means(_classification_rows(model, doubled, candidate_ids))


def paired_multi_token_classification_loss(model: Any, doubled: Batch, labels: torch.Tensor, num_classes: int
                                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``multi_token_classification_loss`` of each half of a doubled ``candidate_batch`` (``labels``: one half's)."""
    return _half_means(_multi_token_rows(model, doubled, torch.cat((labels, labels)), num_classes))


def _classification_rows(model: Any, batch: Batch, candidate_ids: list[int]) -> torch.Tensor:
    """Each row's cross-entropy of its true word over the candidate words, fp32 [B]."""
    cand = torch.tensor(candidate_ids, device=batch.target_ids.device)
    logp = last_logits(model, batch)[:, cand].log_softmax(dim=-1)
    true = (batch.target_ids[:, -1:] == cand.unsqueeze(0)).float()  # one-hot [B, C]
    return -(logp * true).sum(dim=-1)


def _multi_token_rows(model: Any, batch: Batch, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each example's cross-entropy of its true class over the ``candidate_scores``, fp32 [B]."""
    logp = candidate_scores(model, batch, num_classes).log_softmax(dim=-1)
    return -logp.gather(1, labels.view(-1, 1)).squeeze(1)


def _half_means(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = rows.shape[0] // 2
    return rows[:n].mean(), rows[n:].mean()


def class_scores(model: Any, enc: EncodedSet, indices: list[int], pad_id: int) -> torch.Tensor:
    """Log-likelihood of every label word after each prompt, fp32 [B, C].

    Single-token label words: one forward over the prompts, read at the last position. Otherwise one
    forward over every prompt + word row (``candidate_batch``), each scored by its mean token log-likelihood.
    """
    words = enc.label_words
    prompts = [enc.prompts[i] for i in indices]
    device = next(model.parameters()).device
    if words.single_token:
        # score the first label token only; collate with a dummy 1-token target gives the last position
        batch = collate(prompts, [(0,)] * len(prompts), pad_id).to(device)
        logp = last_logits(model, batch).log_softmax(dim=-1)
        return logp[:, torch.tensor(words.first_ids, device=device)]
    batch = candidate_batch(enc, indices, pad_id).to(device)
    return candidate_scores(model, batch, len(words.token_ids))
