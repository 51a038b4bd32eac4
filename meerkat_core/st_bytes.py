"""Deterministic safetensors serialization.

Kept although the ``safetensors`` package writes files: ``safetensors.torch.save`` writes the metadata
map in hash order, so two saves of the same tensors can differ byte for byte (huggingface/safetensors
issue #584). Artifacts here must be reproducible (same inputs and seed -> same file),
so we write the (simple, documented) safetensors layout ourselves: an 8-byte little-endian header
length, a JSON header with sorted metadata and tensors in the given order, padded to 8 bytes, then
the raw little-endian tensor data. Any safetensors reader loads the result.
"""

from __future__ import annotations

import json
import struct
from typing import Mapping

import torch

_TAGS = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize ``tensors`` (in their mapping order) and ``metadata`` (sorted) reproducibly."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    chunks: list[bytes] = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _TAGS:
            raise TypeError(f"{name}: dtype {t.dtype} is not supported")
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _TAGS[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)
