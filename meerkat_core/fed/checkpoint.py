"""Global checkpoints: only the k trained values, bound to the mask and model they belong to.

File: safetensors with one float32 tensor per masked parameter (``<name>::values``, the values at
that parameter's mask indices, in index order) and string metadata: format ``meerkat.checkpoint``,
version, round, the mask file's sha256, the model's fingerprint and name, k, and ``values_crc`` (crc32
of the tensors' bytes, tensors in name order, checked on every read). A full-parameter run (``--mask all``)
stores whole tensors and ``mask_sha256 = "all"``.

No path is stored, so identical runs in different directories write identical checkpoints. The mask
is found by its sha256: the ``--mask`` given to ``eval`` / ``export``, else the mask recorded in the
run directory's ``config.json`` (for a checkpoint inside ``RUN/checkpoints/``), else the ``mask_path``
that checkpoints of older versions carried.
"""

from __future__ import annotations

import json
import zlib
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


def _values_crc(tensors: dict[str, torch.Tensor]) -> int:
    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        crc = zlib.crc32(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes(), crc)
    return crc


def checkpoint_bytes(values: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """The exact bytes ``save_checkpoint`` writes (deterministic: same state and meta, same bytes)."""
    tensors = {f"{name}{SEP}": v.detach().to("cpu", torch.float32).contiguous() for name, v in values.items()}
    md = {"format": FORMAT, "format_version": FORMAT_VERSION, **{k: str(v) for k, v in meta.items()},
          "values_crc": str(_values_crc(tensors))}
    return safetensors_bytes(tensors, md)


def save_checkpoint(path: Path, values: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    write_bytes_atomic(path, checkpoint_bytes(values, meta))


def read_checkpoint(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint: format, ``values_crc`` and finite values (``MeerkatInputError``)."""
    if path.is_dir():
        raise MeerkatInputError(f"checkpoint {path}: is a directory without checkpoints/; pass a run directory or a .safetensors file")
    if not path.is_file():
        raise MeerkatInputError(f"checkpoint {path}: no such file")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        md = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, OSError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MeerkatInputError(f"checkpoint {path}: not a readable safetensors file, truncated or corrupt ({first}); "
                                "re-run training or `meerkat train --resume` to rewrite it") from None
    if not isinstance(md, dict) or md.get("format") != FORMAT or md.get("format_version") != FORMAT_VERSION:
        fmt = md.get("format") if isinstance(md, dict) else None
        raise MeerkatInputError(f"checkpoint {path}: not a meerkat checkpoint (format {fmt!r})")
    if "values_crc" in md and md["values_crc"] != str(_values_crc(tensors)):
        raise MeerkatInputError(f"checkpoint {path}: its values do not match their recorded crc (damaged); "
                                "re-run training or `meerkat train --resume` to rewrite it")
    values = {k[: -len(SEP)]: v for k, v in tensors.items() if k.endswith(SEP)}
    for name, v in values.items():
        bad = int((~torch.isfinite(v)).sum())
        if bad:
            raise MeerkatInputError(f"checkpoint {path}: {bad} values of {name} are not finite (NaN or inf); "
                                    "the checkpoint is damaged or its run diverged")
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


def _run_mask_path(ckpt: Path) -> Path | None:
    """The mask recorded in the config.json of the run directory that holds ``ckpt``, if any."""
    config = ckpt.parent.parent / "config.json"
    try:
        recorded = json.loads(config.read_text()).get("provenance", {}).get("mask_path")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(recorded) if isinstance(recorded, str) and recorded != "all" else None


def find_mask(ckpt: Path, md: dict[str, str], mask: str | None = None) -> Path:
    """The mask file whose sha256 the checkpoint records (module docstring); ``MeerkatInputError`` if none."""
    want = md.get("mask_sha256", "")
    if mask is not None:
        given = Path(mask)
        if not given.is_file():
            raise MeerkatInputError(f"--mask {mask}: no such file")
        if sha256_file(given) != want:
            raise MeerkatInputError(f"--mask {mask}: not the mask of checkpoint {ckpt} (sha256 differs)")
        return given
    tried = [p for p in (_run_mask_path(ckpt), Path(md["mask_path"]) if md.get("mask_path") else None) if p is not None]
    for p in tried:
        if p.is_file() and sha256_file(p) == want:
            return p
    where = ", ".join(str(p) for p in tried) or "nowhere recorded"
    changed = any(p.is_file() for p in tried)
    raise MeerkatInputError(
        f"checkpoint {ckpt}: its mask (sha256 {want[:12]}...) is not at {where}"
        + (" (that file changed since training)" if changed else "") + "; pass --mask FILE"
    )


def apply_checkpoint(loaded: Any, spec: str, mask: str | None = None) -> str:
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
        index: dict[str, Any] = {name: None for name in values}
    else:
        mask_file = load_mask(find_mask(path, md, mask), loaded.model)
        index = {t.name: t.indices for t in mask_file.nonempty()}
    for name, vals in values.items():
        if name not in params or name not in index:
            raise MeerkatInputError(f"checkpoint {path}: unknown tensor {name}")
        idx = index[name]
        want = params[name].numel() if idx is None else idx.numel()
        if vals.numel() != want:
            what = "the parameter" if idx is None else "the mask"
            raise MeerkatInputError(
                f"checkpoint {path}: {name} has {vals.numel()} values, {what} has {want} (mask_sha256 "
                f"{md.get('mask_sha256')!r}); the checkpoint is damaged"
            )
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
