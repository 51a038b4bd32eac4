"""Turning task examples into token ids and left-padded batches.

A prompt is ``task.render(row)`` tokenized; when it is longer than ``max_length`` its *first* tokens
are dropped, so the template's cue ("It was") always stays next to the label word. Label words are
tokenized on their own, without special tokens, and appended to the prompt's ids; when every word is
a single token, scoring takes one forward over the prompts (the fast path), otherwise one forward over
prompt + word rows (``candidate_batch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from meerkat_core.errors import MeerkatInputError
from meerkat_core.tasks.spec import TaskSpec, render_prompts

DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class LabelWords:
    token_ids: tuple[tuple[int, ...], ...]  # per class

    @property
    def single_token(self) -> bool:
        return all(len(t) == 1 for t in self.token_ids)

    @property
    def first_ids(self) -> list[int]:
        return [t[0] for t in self.token_ids]


@dataclass
class EncodedSet:
    """A task split, tokenized once: prompt token ids and integer labels."""

    prompts: list[list[int]]
    labels: list[int]
    label_words: LabelWords

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "EncodedSet":
        return EncodedSet([self.prompts[i] for i in indices], [self.labels[i] for i in indices], self.label_words)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L], left padded
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_ids: torch.Tensor  # [B, n] label tokens to score (right aligned), pad 0
    target_mask: torch.Tensor  # [B, n] 1 where target_ids is real

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (
            self.input_ids, self.attention_mask, self.position_ids, self.target_ids, self.target_mask)))

    def doubled(self) -> "Batch":
        """The batch twice, rows [0, B) then the same rows again: a paired forward's two halves."""
        return Batch(*(torch.cat((t, t)) for t in (
            self.input_ids, self.attention_mask, self.position_ids, self.target_ids, self.target_mask)))

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def encode_label_words(tokenizer: Any, task: TaskSpec) -> LabelWords:
    ids = []
    for word in task.label_words:
        toks = tuple(tokenizer(word, add_special_tokens=False).input_ids)
        if not toks:
            raise MeerkatInputError(f"task '{task.name}': label word {word!r} tokenizes to nothing")
        ids.append(toks)
    if len(set(ids)) != len(ids):
        raise MeerkatInputError(f"task '{task.name}': two label words tokenize identically")
    return LabelWords(tuple(ids))


def encode_split(tokenizer: Any, task: TaskSpec, ds: Any, max_length: int = DEFAULT_MAX_LENGTH) -> EncodedSet:
    prompts_text = render_prompts(task, ds)
    enc = tokenizer(prompts_text, add_special_tokens=False)["input_ids"]
    prompts = [list(ids[-max_length:]) for ids in enc]
    return EncodedSet(prompts, [int(y) for y in ds["label"]], encode_label_words(tokenizer, task))


def collate(
    prompts: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    pad_id: int,
) -> Batch:
    """Left-pad ``prompt + target[:-1]`` rows; the model's last ``len(target)`` logits score ``target``."""
    rows = [list(p) + list(t[:-1]) for p, t in zip(prompts, targets)]
    width = max(len(r) for r in rows)
    n = max(len(t) for t in targets)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    target_ids = torch.zeros((b, n), dtype=torch.long)
    target_mask = torch.zeros((b, n), dtype=torch.long)
    for i, (row, tgt) in enumerate(zip(rows, targets)):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attention[i, width - len(row):] = 1
        target_ids[i, n - len(tgt):] = torch.tensor(tgt, dtype=torch.long)
        target_mask[i, n - len(tgt):] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attention, position_ids, target_ids, target_mask)


def candidate_batch(enc: EncodedSet, indices: Sequence[int], pad_id: int) -> Batch:
    """Every (example, class) pair as one row, example-major: row ``b * C + c`` is prompt ``b`` followed by
    class ``c``'s word, so one forward scores all candidates of a batch (multi-token label words)."""
    words = enc.label_words.token_ids
    prompts = [enc.prompts[i] for i in indices for _ in words]
    return collate(prompts, [w for _ in indices for w in words], pad_id)


def label_batch(enc: EncodedSet, indices: Sequence[int], pad_id: int) -> Batch:
    """A training batch: each prompt followed by its true label word."""
    words = enc.label_words.token_ids
    return collate([enc.prompts[i] for i in indices], [words[enc.labels[i]] for i in indices], pad_id)
