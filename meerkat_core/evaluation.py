"""Evaluation of a model on a task split: accuracy, mean loss, per-class accuracy, confusion counts."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from meerkat_core.encoding import EncodedSet
from meerkat_core.errors import MeerkatInputError
from meerkat_core.scoring import class_scores

ProgressFn = Callable[[int, int, str], None]


@dataclass
class EvalResult:
    task: str
    split: str
    n: int
    accuracy: float
    mean_loss: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]  # confusion[true][pred]
    label_names: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_encoded(
    model: Any,
    enc: EncodedSet,
    label_names: list[str],
    pad_id: int,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    task: str = "",
    split: str = "test",
) -> EvalResult:
    """Score every label word of every example and take the arg-max; batches are length-sorted."""
    start = time.perf_counter()
    n = len(enc)
    order = sorted(range(n), key=lambda i: len(enc.prompts[i]))
    scores = torch.empty((n, len(label_names)), dtype=torch.float32)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            scores[torch.tensor(idx)] = class_scores(model, enc, idx, pad_id).cpu()
            if progress:
                progress(min(s + batch_size, n), n, "evaluating")
    labels = torch.tensor(enc.labels, dtype=torch.long)
    pred = scores.argmax(dim=-1)
    c = len(label_names)
    confusion = torch.zeros((c, c), dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = {
        label_names[k]: (float(confusion[k, k]) / float(confusion[k].sum())) if confusion[k].sum() > 0 else float("nan")
        for k in range(c)
    }
    losses = -scores.gather(1, labels.unsqueeze(1)).squeeze(1)
    return EvalResult(
        task=task,
        split=split,
        n=n,
        accuracy=int((pred == labels).sum()) / n if n else float("nan"),  # a ratio of counts: 0.635, not fp32 0.634999...
        mean_loss=float(losses.mean()) if n else float("nan"),
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        label_names=list(label_names),
        seconds=time.perf_counter() - start,
    )


def require_finite(result: Any, what: str) -> None:
    """Refuse an evaluation whose loss is not finite (``require_finite_loss``)."""
    require_finite_loss(result.n, result.mean_loss, what)


def require_finite_loss(n: int, mean_loss: float, what: str) -> None:
    """Refuse an evaluation whose loss is not finite: the model's outputs are NaN or inf, so its
    arg-max accuracy would be meaningless (a NaN model scores every example as class 0)."""
    if n and not math.isfinite(mean_loss):
        raise MeerkatInputError(
            f"{what}: the evaluation loss is {mean_loss} (the model's outputs are not finite); "
            "the weights are damaged or the run diverged"
        )
