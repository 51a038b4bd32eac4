"""The built-in test model: a tiny random LLaMA with the real SmolLM2 tokenizer, identical on every run."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_SEED = 1234


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


def tiny_llama_config(vocab_size: int = 49152, **overrides: int) -> LlamaConfig:
    """The built-in tiny-llama's config; ``overrides`` give the engine tests their even smaller ones."""
    return LlamaConfig(**{**TINY_LLAMA, "vocab_size": vocab_size, **overrides})


def build_tiny_llama(seed: int = TINY_SEED, vocab_size: int = 49152) -> LlamaForCausalLM:
    """Weights depend only on ``seed`` (and the torch version); the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(vocab_size))
    model.config.name_or_path = "tiny-llama"
    return model.eval()
