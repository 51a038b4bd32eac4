"""The mask's data model: per-tensor kept coordinates with their gradient statistics, plus metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from meerkat_core.config.choices import MASK_METHODS as METHODS
from meerkat_core.config.mask import validate_density
from meerkat_core.errors import MeerkatInputError

FORMAT = "meerkat.mask"
FORMAT_VERSION = "1"


@dataclass
class TensorMask:
    """The kept coordinates of one parameter tensor.

    ``indices`` are flat (row-major) positions into the tensor, int64, strictly increasing.
    ``grad_mean`` is the mean calibration gradient there (float32; zeros when no corpus was used) and
    ``score`` the ranking score: the mean squared gradient (``sensitivity`` and ``random``) or
    ``|w|`` (``magnitude``), float32.
    """

    name: str
    shape: tuple[int, ...]
    indices: torch.Tensor
    grad_mean: torch.Tensor
    score: torch.Tensor

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))

    @property
    def k(self) -> int:
        return int(self.indices.numel())


@dataclass
class MaskMeta:
    """Provenance of a mask (written to the file header as strings)."""

    model: str
    fingerprint: str
    param_dtype: str
    method: str
    density: float
    k: int
    d: int  # eligible coordinates (after --exclude)
    d_total: int  # all of the model's coordinates
    seed: int
    exclude: tuple[str, ...] = ()
    score: str = "mean_sq_grad"  # or "abs_weight"
    grad_stats: str = "mean_over_batches"  # or "none" (no corpus: grad_mean is zero)
    batch_size: int = 0
    n_batches: int = 0
    corpus: str = ""
    corpus_source: str = ""
    corpus_sha256: str = ""
    n_tokens: int = 0
    samples: int = 0
    seq_len: int = 0
    corpus_seed: int = 0
    meerkat_version: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Mask:
    """A sparse mask: every eligible tensor of the model, in ``model.named_parameters()`` order.

    Tensors that keep no coordinate are present with empty arrays, so ``tensors`` also records which
    parameters were eligible (not excluded).
    """

    meta: MaskMeta
    tensors: dict[str, TensorMask]

    @property
    def k(self) -> int:
        return sum(t.k for t in self.tensors.values())

    def __iter__(self) -> Iterator[TensorMask]:
        return iter(self.tensors.values())

    def nonempty(self) -> Iterator[TensorMask]:
        return (t for t in self.tensors.values() if t.k > 0)

    def summary(self) -> dict[str, Any]:
        m = self.meta
        return {
            "model": m.model,
            "fingerprint": m.fingerprint,
            "method": m.method,
            "density": m.density,
            "k": m.k,
            "d": m.d,
            "d_total": m.d_total,
            "seed": m.seed,
            "exclude": list(m.exclude),
            "corpus": m.corpus,
            "corpus_sha256": m.corpus_sha256,
            "n_tokens": m.n_tokens,
        }


def validate_method(method: str) -> str:
    if method not in METHODS:
        raise MeerkatInputError(f"--method {method}: expected one of {', '.join(METHODS)}")
    return method


def k_for_density(density: float, d: int) -> int:
    """``k = round(density * d)`` (round half to even), at least 1 and at most ``d``."""
    return max(1, min(d, int(round(validate_density(density) * d))))
