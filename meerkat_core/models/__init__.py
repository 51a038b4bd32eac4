"""Model loading: built-in names, local HF directories, GGUF files and hub ids."""

from meerkat_core.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, BuiltinModel, builtin_model_info
from meerkat_core.models.loading import LoadedModel, load_model, load_tokenizer, resolve_device, resolve_dtype

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModel",
    "DEFAULT_MODEL",
    "LoadedModel",
    "builtin_model_info",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
]
