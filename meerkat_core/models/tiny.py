"""Tiny random-initialised models of the paper's architectures, with the real SmolLM2 tokenizer.

``family_config(family, vocab_size, **overrides)`` builds a transformers config of one architecture
family from its defaults here plus any overrides (sizes, heads, ...), so other code (large random-init
shapes for memory benchmarks, say) can reuse it; ``build_tiny`` makes a model from it with weights that
depend only on the seed. Families and what each exercises:

- ``llama``: the original 2-layer ``tiny-llama`` (tied embeddings; unchanged, tests rely on its bits);
- ``llama32``: Llama-3.2 style: tied input/output embeddings, grouped-query attention, llama3 RoPE scaling;
- ``qwen2``: Qwen2 style: biases on the q/k/v projections, tied embeddings (as Qwen2-1.5B);
- ``gemma2``: Gemma-2 style: embeddings scaled by sqrt(hidden), RMSNorm weights applied as (1 + w),
  attention and final-logit soft-capping, alternating sliding-window / full attention (window 8 here,
  shorter than the test prompts), GeGLU MLP, tied embeddings; eager attention (soft-capping needs it).
"""

from __future__ import annotations

from typing import Any

import torch

TINY_SEED = 1234
SMOLLM2_VOCAB = 49152

TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    rms_norm_eps=1e-5,
)

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": TINY_LLAMA,
    "llama32": {
        **TINY_LLAMA,
        "num_hidden_layers": 2,
        "head_dim": 16,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 256},
    },
    "qwen2": {
        **TINY_LLAMA,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
    },
    "gemma2": {
        **TINY_LLAMA,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
    },
}


def _config_class(family: str) -> Any:
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    return {"llama": LlamaConfig, "llama32": LlamaConfig, "qwen2": Qwen2Config, "gemma2": Gemma2Config}[family]


def family_config(family: str, vocab_size: int = SMOLLM2_VOCAB, **overrides: Any) -> Any:
    """A transformers config of ``family`` (a key of ``FAMILIES``): its defaults, then ``overrides``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    cfg = _config_class(family)(**{**FAMILIES[family], "vocab_size": vocab_size, **overrides})
    if family == "gemma2":
        cfg._attn_implementation = "eager"
    return cfg


def tiny_llama_config(vocab_size: int = SMOLLM2_VOCAB, **overrides: Any) -> Any:
    """The built-in tiny-llama's config; ``overrides`` give the engine tests their even smaller ones."""
    return family_config("llama", vocab_size, **overrides)


def build_tiny(family: str = "llama", seed: int = TINY_SEED, vocab_size: int = SMOLLM2_VOCAB, name: str = "tiny-llama",
               **overrides: Any) -> Any:
    """Weights depend only on ``seed`` (and the torch version); the global RNG is left untouched."""
    from transformers import AutoModelForCausalLM

    cfg = family_config(family, vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=cfg._attn_implementation)
    model.config.name_or_path = name
    return model.eval()


def build_tiny_llama(seed: int = TINY_SEED, vocab_size: int = SMOLLM2_VOCAB) -> Any:
    return build_tiny("llama", seed, vocab_size)


def count_parameters(family: str, vocab_size: int = SMOLLM2_VOCAB, **overrides: Any) -> int:
    """Distinct parameters of a ``family`` model (a tied weight once), built on the meta device."""
    from transformers import AutoModelForCausalLM

    cfg = family_config(family, vocab_size, **overrides)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())
