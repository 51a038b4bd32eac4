"""Model loading: built-in names, local HF directories, GGUF files and hub ids."""

from meerkat_core.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, BuiltinModel, builtin_model_info
from meerkat_core.models.dtypes import DtypeChoice, choose_dtype, cpu_bf16_feature
from meerkat_core.models.loading import LoadedModel, load_model, load_tokenizer, resolve_device, resolve_dtype

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModel",
    "DEFAULT_MODEL",
    "DtypeChoice",
    "LoadedModel",
    "builtin_model_info",
    "choose_dtype",
    "cpu_bf16_feature",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
]
