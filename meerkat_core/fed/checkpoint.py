"""Global checkpoints: only the k trained values, bound to the mask and model they belong to.

File: safetensors with one float32 tensor per masked parameter (``<name>::values``, the values at
that parameter's mask indices, in index order) and string metadata: format ``meerkat.checkpoint``,
version, round, the mask file's sha256 and path, the model's fingerprint and name, k. A full-parameter
run (``--mask all``) stores whole tensors and ``mask_sha256 = "all"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from meerkat_core.atomic import write_bytes_atomic
from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import sha256_file
from meerkat_core.models.dtypes import LOW_PRECISION
from meerkat_core.st_bytes import safetensors_bytes

FORMAT = "meerkat.checkpoint"
FORMAT_VERSION = "1"
SEP = "::values"


def save_checkpoint(path: Path, values: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors = {f"{name}{SEP}": v.detach().to("cpu", torch.float32).contiguous() for name, v in values.items()}
    md = {"format": FORMAT, "format_version": FORMAT_VERSION, **{k: str(v) for k, v in meta.items()}}
    write_bytes_atomic(path, safetensors_bytes(tensors, md))


def read_checkpoint(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise MeerkatInputError(f"checkpoint {path}: no such file")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        md = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, OSError) as exc:
        raise MeerkatInputError(f"checkpoint {path}: not a readable safetensors file ({exc}); re-run training") from None
    if md.get("format") != FORMAT or md.get("format_version") != FORMAT_VERSION:
        raise MeerkatInputError(f"checkpoint {path}: not a meerkat checkpoint (format {md.get('format')!r})")
    values = {k[: -len(SEP)]: v for k, v in tensors.items() if k.endswith(SEP)}
    return md, values


def resolve_checkpoint(spec: str) -> Path:
    """A checkpoint file, or a run directory (its latest checkpoint, from summary.json or the folder)."""
    p = Path(spec)
    if p.is_file():
        return p
    if p.is_dir():
        ckpts = sorted((p / "checkpoints").glob("round-*.safetensors"))
        if not ckpts:
            raise MeerkatInputError(f"run directory {p}: no checkpoints/round-*.safetensors; train first")
        return ckpts[-1]
    raise MeerkatInputError(f"checkpoint {spec}: no such file or run directory")


def apply_checkpoint(loaded: Any, spec: str) -> str:
    """Write a checkpoint's values into ``loaded.model`` (checking model and mask); returns its path."""
    from meerkat_core.mask import load_mask

    path = resolve_checkpoint(spec)
    md, values = read_checkpoint(path)
    if md.get("model_fingerprint") != loaded.fingerprint:
        raise MeerkatInputError(
            f"checkpoint {path}: made for model {md.get('model')!r} (fingerprint {md.get('model_fingerprint')}), "
            f"not this model ({loaded.fingerprint}); pass --model {md.get('model')}"
        )
    params = dict(loaded.model.named_parameters())
    if md.get("mask_sha256") == "all":
        index = {name: None for name in values}
    else:
        mask_path = Path(md.get("mask_path", ""))
        if not mask_path.is_file():
            raise MeerkatInputError(f"checkpoint {path}: its mask {mask_path} is missing; restore the mask file")
        if sha256_file(mask_path) != md.get("mask_sha256"):
            raise MeerkatInputError(f"checkpoint {path}: mask {mask_path} changed since training (sha256 differs)")
        mask = load_mask(mask_path, loaded.model)
        index = {t.name: t.indices for t in mask.nonempty()}
    for name, vals in values.items():
        if name not in params or name not in index:
            raise MeerkatInputError(f"checkpoint {path}: unknown tensor {name}")
        idx = index[name]
        if idx is not None and idx.numel() != vals.numel():
            raise MeerkatInputError(f"checkpoint {path}: {name} has {vals.numel()} values, mask has {idx.numel()}")
    if loaded.dtype in LOW_PRECISION and set(values) == set(index) and all(i is not None for i in index.values()):
        # a bf16/fp16 model computes with the trained fp32 values exactly, as training did (zo/carriers.py)
        from meerkat_core.zo import SparseCoordinates

        coords = SparseCoordinates(loaded.model, index)
        coords.set_values(coords.concat(values))
        return str(path)
    with torch.no_grad():
        for name, vals in values.items():
            flat = params[name].data.view(-1)
            idx = index[name]
            if idx is None:
                flat.copy_(vals.to(flat.dtype).view(-1))
            else:
                flat[idx.to(flat.device)] = vals.to(flat.device, flat.dtype)
    return str(path)
