"""``load_model``: one entry point for built-in names, local HF directories, GGUF files and hub ids."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import model_fingerprint
from meerkat_core.models.dtypes import choose_dtype
from meerkat_core.paths import hub_offline

log = logging.getLogger(__name__)



@dataclass
class LoadedModel:
    model: Any  # a transformers causal LM, in eval mode, on ``device``
    tokenizer: Any
    name: str  # what the user passed (built-in name, path or hub id): recorded in artifacts
    source: str  # where the weights came from (a directory, file or hub id)
    device: torch.device
    dtype: torch.dtype
    dtype_reason: str = ""  # why this dtype (``--dtype auto`` says what it picked and why)

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.model)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MeerkatInputError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device not in {"cpu"} and not device.startswith("cuda"):
        raise MeerkatInputError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``--dtype`` as a torch dtype (``auto``: see ``meerkat_core.models.dtypes.choose_dtype``)."""
    return choose_dtype(dtype, device).dtype


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec and Path(spec).expanduser().exists() or (
        spec.endswith(".gguf")
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _load_hf_dir(path: Path, spec: str, trust_remote_code: bool, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise MeerkatInputError(f"model '{spec}': {path} has no config.json; pass a Hugging Face model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code, dtype=dtype)
    except Exception as exc:  # corrupt weights, unknown architecture, ...
        raise MeerkatInputError(f"model '{spec}': cannot load {path} ({_first_line(exc)})") from None
    return model, tokenizer


def _load_gguf_file(path: Path, spec: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as exc:
        raise MeerkatInputError(f"model '{spec}': cannot read GGUF file {path} ({_first_line(exc)})") from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model, tokenizer


def _load_hub(spec: str, trust_remote_code: bool, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=trust_remote_code, dtype=dtype)
    except Exception as exc:
        if offline:
            raise MeerkatInputError(
                f"model '{spec}': not a built-in name (see `meerkat models`), not a local directory, and not in the "
                "hub cache while HF_HUB_OFFLINE=1; pass a local model directory"
            ) from None
        raise MeerkatInputError(
            f"model '{spec}': not a built-in name (see `meerkat models`) or local directory, and the hub did not "
            f"serve it ({_first_line(exc)})"
        ) from None
    return model, tokenizer


def _tokenizer_ready(tokenizer: Any) -> Any:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_tokenizer(spec: str, trust_remote_code: bool = False) -> Any:
    """Only the tokenizer of ``spec`` (built-in name, local directory, .gguf file or hub id), left-padded."""
    from transformers import AutoTokenizer

    from meerkat_core.models.builtin import BUILTIN_MODELS

    try:
        if spec in BUILTIN_MODELS:
            from meerkat_core.models.gguf_cache import ensure_smollm2_dir

            tok = AutoTokenizer.from_pretrained(str(ensure_smollm2_dir()))
        elif _looks_like_path(spec):
            path = Path(spec).expanduser()
            if not path.exists():
                raise MeerkatInputError(f"model '{spec}': no such file or directory")
            tok = (AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name) if path.is_file()
                   else AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code))
        else:
            tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except MeerkatInputError:
        raise
    except Exception as exc:
        raise MeerkatInputError(f"model '{spec}': cannot load its tokenizer ({_first_line(exc)})") from None
    return _tokenizer_ready(tok)


def load_model(
    spec: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load ``spec``: a built-in name (``meerkat models``), a local HF directory, a ``.gguf`` file or a hub id.

    Hub ids are tried only when ``spec`` is neither a built-in name nor an existing path; with
    ``HF_HUB_OFFLINE=1`` only the local hub cache is consulted. ``trust_remote_code`` stays off unless
    the user asks for it.
    """
    from meerkat_core.models.builtin import BUILTIN_MODELS

    dev = resolve_device(device)
    choice = choose_dtype(dtype, dev)
    dt = choice.dtype
    if spec in BUILTIN_MODELS:
        from meerkat_core.models.gguf_cache import ensure_smollm2_dir

        smol_dir = ensure_smollm2_dir()
        family = BUILTIN_MODELS[spec].family
        if family is not None:
            from transformers import AutoTokenizer

            from meerkat_core.models.tiny import build_tiny

            tokenizer = AutoTokenizer.from_pretrained(str(smol_dir))
            model = cast_parameters(build_tiny(family, vocab_size=len(tokenizer), name=spec), dt)
            source = "config (seeded random weights)"
        else:
            try:
                model, tokenizer = _load_hf_dir(smol_dir, spec, False, dt)
            except MeerkatInputError:  # a damaged cache: rebuild it once
                smol_dir = ensure_smollm2_dir(force=True)
                model, tokenizer = _load_hf_dir(smol_dir, spec, False, dt)
            source = str(smol_dir)
    elif _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise MeerkatInputError(
                f"model '{spec}': no such file or directory; pass a built-in name (see `meerkat models`), "
                "a local model directory or a hub id"
            )
        if path.is_file():
            if path.suffix != ".gguf":
                raise MeerkatInputError(f"model '{spec}': a file must be a .gguf; otherwise pass the model's directory")
            model, tokenizer = _load_gguf_file(path, spec, dt)
        else:
            model, tokenizer = _load_hf_dir(path, spec, trust_remote_code, dt)
        source = str(path.resolve())
    else:
        model, tokenizer = _load_hub(spec, trust_remote_code, dt)
        source = f"hub:{spec}"
    # Loaded in the run dtype already: ``.to(dtype)`` here would also cast fp32 buffers (RoPE's
    # inv_freq) to bf16. requires_grad is left as loaded: every forward of the project runs under
    # inference_mode, where it costs nothing, and torch 2.13 on AMX CPUs runs a bf16 linear with a
    # frozen weight 6.4x slower (issue #20). Code that backpropagates sets the flags it needs.
    model = cast_parameters(model, dt).to(device=dev).eval()
    return LoadedModel(
        model=model, tokenizer=_tokenizer_ready(tokenizer), name=spec, source=source, device=dev, dtype=dt,
        dtype_reason=choice.reason,
    )


def cast_parameters(model: Any, dtype: torch.dtype) -> Any:
    """Floating parameters to ``dtype`` in place; buffers (RoPE's fp32 inv_freq) keep their dtype."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype.is_floating_point and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model
