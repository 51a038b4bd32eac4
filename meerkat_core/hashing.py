"""Fingerprints that bind artifacts to the inputs they were made from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def param_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Fingerprint of a model's trainable layout: parameter names and shapes, in order.

    Two models with the same fingerprint accept the same mask and checkpoints. Weight values and the
    runtime dtype are deliberately not part of it: a fine-tuned copy keeps its fingerprint, and a mask
    made in fp32 on a CPU applies to the same model loaded in bf16 on a GPU (artifacts record the
    dtype separately, for provenance).
    """
    layout = [[name, list(t.shape)] for name, t in named]
    return sha256_json(layout)[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """``param_fingerprint`` over ``model.named_parameters()`` (tied weights counted once)."""
    return param_fingerprint(model.named_parameters())
