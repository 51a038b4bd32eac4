"""Mask files: safetensors with a string header (see docs/MASK_FORMAT.md).

The bytes come from ``meerkat_core.st_bytes.safetensors_bytes`` (the safetensors layout written
deterministically): metadata keys are sorted, tensors follow the model's parameter order, and no
timestamp is written, so the bytes depend only on the mask. Any safetensors reader opens it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from meerkat_core.atomic import write_bytes_atomic
from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import model_fingerprint
from meerkat_core.mask.types import FORMAT, FORMAT_VERSION, METHODS, Mask, MaskMeta, TensorMask
from meerkat_core.st_bytes import safetensors_bytes

SEP = "::"
KINDS = ("indices", "grad_mean", "score")
_DTYPES = {"indices": torch.int64, "grad_mean": torch.float32, "score": torch.float32}
_INT_FIELDS = ("k", "d", "d_total", "seed", "batch_size", "n_batches", "n_tokens", "samples", "seq_len", "corpus_seed")
_STR_FIELDS = ("model", "fingerprint", "param_dtype", "method", "score", "grad_stats", "corpus", "corpus_source",
               "corpus_sha256", "meerkat_version")
_HEADER_NAMES = {"fingerprint": "model_fingerprint", "model": "model_name", "score": "score_kind"}
RECOMPUTE = "recompute it with `meerkat mask --model MODEL --out FILE`"


def _header_key(field: str) -> str:
    return _HEADER_NAMES.get(field, field)


def mask_metadata(mask: Mask) -> dict[str, str]:
    """The safetensors ``__metadata__`` of ``mask`` (all values strings), keys sorted."""
    m = mask.meta
    md: dict[str, str] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    for f in _INT_FIELDS:
        md[_header_key(f)] = str(int(getattr(m, f)))
    for f in _STR_FIELDS:
        md[_header_key(f)] = str(getattr(m, f))
    md["density"] = repr(float(m.density))
    md["exclude"] = json.dumps(list(m.exclude))
    md["tensors"] = json.dumps([[t.name, list(t.shape)] for t in mask.tensors.values()], separators=(",", ":"))
    for key, value in m.extra.items():
        md.setdefault(f"x_{key}", str(value))
    return dict(sorted(md.items()))


def mask_to_bytes(mask: Mask) -> bytes:
    """Serialize ``mask``; the same mask always gives the same bytes."""
    tensors: dict[str, torch.Tensor] = {}
    for t in mask.nonempty():
        for kind in KINDS:
            tensors[f"{t.name}{SEP}{kind}"] = getattr(t, kind).detach().to("cpu", _DTYPES[kind]).reshape(-1)
    return safetensors_bytes(tensors, mask_metadata(mask))


def save_mask(mask: Mask, path: str | Path) -> Path:
    """Write ``mask`` to ``path`` atomically (a reader never sees a partial file)."""
    write_bytes_atomic(path, mask_to_bytes(mask))
    return Path(path)


def _bad(path: Path, why: str, fix: str = RECOMPUTE) -> MeerkatInputError:
    return MeerkatInputError(f"mask {path}: {why}; {fix}")


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if not path.exists():
        raise MeerkatInputError(
            f"mask {path}: no such file; compute one with `meerkat mask --model MODEL --out {path}`"
        )
    if not path.is_file():
        raise MeerkatInputError(f"mask {path}: not a file; pass the .safetensors file written by `meerkat mask`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _bad(path, f"not a readable safetensors file, truncated or corrupt ({first})") from None
    return metadata, tensors


def _meta_from_header(path: Path, md: dict[str, str]) -> tuple[MaskMeta, list[tuple[str, tuple[int, ...]]]]:
    if md.get("format") != FORMAT:
        raise _bad(path, f"not a meerkat mask (header format is {md.get('format')!r}, expected {FORMAT!r})",
                   "pass a file written by `meerkat mask`")
    if md.get("format_version") != FORMAT_VERSION:
        raise _bad(path, f"format_version {md.get('format_version')!r} is not supported (this meerkat reads "
                   f"{FORMAT_VERSION!r})", "recompute it with this meerkat version's `meerkat mask`")
    try:
        values: dict[str, Any] = {f: int(md[_header_key(f)]) for f in _INT_FIELDS}
        values.update({f: md[_header_key(f)] for f in _STR_FIELDS})
        values["density"] = float(md["density"])
        values["exclude"] = tuple(json.loads(md["exclude"]))
        listing = [(str(n), tuple(int(x) for x in shape)) for n, shape in json.loads(md["tensors"])]
    except (KeyError, ValueError, TypeError) as exc:
        raise _bad(path, f"its header is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    values["extra"] = {k[2:]: v for k, v in md.items() if k.startswith("x_")}
    meta = MaskMeta(**values)
    if meta.method not in METHODS:
        raise _bad(path, f"unknown method {meta.method!r}")
    return meta, listing


def _check_tensor(path: Path, t: TensorMask) -> None:
    idx = t.indices
    if idx.dtype != torch.int64 or idx.dim() != 1:
        raise _bad(path, f"{t.name}{SEP}indices must be a 1-D int64 tensor")
    for kind in ("grad_mean", "score"):
        v = getattr(t, kind)
        if v.dtype != torch.float32 or v.shape != idx.shape:
            raise _bad(path, f"{t.name}{SEP}{kind} must be float32 with one value per index ({idx.numel()})")
    if idx.numel():
        if int(idx[0]) < 0 or int(idx[-1]) >= t.numel:
            raise _bad(path, f"{t.name}: an index is out of range for its {t.numel} weights")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise _bad(path, f"{t.name}: indices are not strictly increasing (unsorted or duplicated)")


def load_mask(path: str | Path, model: torch.nn.Module | None = None) -> Mask:
    """Read and validate a mask file; with ``model``, also check that it belongs to that model.

    Every problem raises ``MeerkatInputError`` with a one-line message naming the file and the fix.
    """
    p = Path(path)
    md, raw = _read(p)
    meta, listing = _meta_from_header(p, md)
    names = {n for n, _ in listing}
    for key in raw:
        name, sep, kind = key.rpartition(SEP)
        if not sep or kind not in KINDS or name not in names:
            raise _bad(p, f"unexpected tensor {key!r}")
    tensors: dict[str, TensorMask] = {}
    for name, shape in listing:
        present = [f"{name}{SEP}{kind}" in raw for kind in KINDS]
        if any(present) and not all(present):
            raise _bad(p, f"{name} lacks one of {', '.join(KINDS)}")
        if all(present):
            parts = [raw[f"{name}{SEP}{kind}"] for kind in KINDS]
        else:
            parts = [torch.empty(0, dtype=torch.int64), torch.empty(0), torch.empty(0)]
        t = TensorMask(name, shape, *parts)
        _check_tensor(p, t)
        tensors[name] = t
    mask = Mask(meta=meta, tensors=tensors)
    if mask.k != meta.k:
        raise _bad(p, f"it holds {mask.k} coordinates but its header says k={meta.k}")
    if sum(math.prod(s) for _, s in listing) != meta.d:
        held = sum(math.prod(s) for _, s in listing)
        raise _bad(p, f"its tensors hold {held} weights but its header says d={meta.d}")
    if model is not None:
        check_mask_matches(mask, model, p)
    return mask


def check_mask_matches(mask: Mask, model: torch.nn.Module, path: str | Path = "<mask>") -> None:
    """Raise ``MeerkatInputError`` unless ``mask`` was made for a model of ``model``'s layout."""
    p = Path(path)
    fp = model_fingerprint(model)
    fix = "compute a mask for this model with `meerkat mask --model MODEL --out FILE`"
    if fp != mask.meta.fingerprint:
        raise _bad(p, f"it was made for model {mask.meta.model!r} (fingerprint {mask.meta.fingerprint}), not for "
                   f"this model (fingerprint {fp})", fix)
    shapes = {n: tuple(q.shape) for n, q in model.named_parameters()}
    for t in mask.tensors.values():
        if t.name not in shapes:
            raise _bad(p, f"the model has no parameter {t.name}", fix)
        if shapes[t.name] != t.shape:
            raise _bad(p, f"{t.name} has shape {list(t.shape)} in the mask but {list(shapes[t.name])} in the model",
                       fix)
