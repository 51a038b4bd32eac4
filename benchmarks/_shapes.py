"""Random-initialised models of the paper's shapes, written as local Hugging Face directories (scale.py).

Shapes are the published configs' numbers (hidden size, layers, MLP width, heads, KV heads, head
width, norms, RoPE, tied embeddings, Gemma-2's soft-capping and extra norms); nothing is downloaded.
The vocabulary is SmolLM2's (49,152 tokens) for every shape, because the directories use SmolLM2's
tokenizer (the built-in model's): the embedding is therefore smaller than the real model's, and
``real_vocab`` / ``real_d`` say by how much.

Weights are written tensor by tensor straight into ``model.safetensors`` (never the whole model in
memory): matrices ~ N(0, initializer_range), biases 0, norm scales at identity (1; 0 for Gemma-2,
whose norm multiplies by 1 + w). Seeded: the same shape and seed give the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOL_VOCAB = 49152
SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)  # SmolLM2's tokenizer


@dataclass(frozen=True)
class Shape:
    name: str
    model_type: str
    config: dict[str, Any]
    real_vocab: int
    source: str
    norm_identity: float = 1.0

    def hf_config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.for_model(self.model_type, vocab_size=SMOL_VOCAB, tie_word_embeddings=True,
                                    **SPECIAL_IDS, **self.config)

    def layout(self, vocab: int = SMOL_VOCAB) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every parameter (tied weights once), from a meta-device model."""
        import torch
        from transformers import AutoModelForCausalLM

        cfg = self.hf_config()
        cfg.vocab_size = vocab
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        return [(n, tuple(p.shape)) for n, p in model.named_parameters()]

    def d(self, vocab: int = SMOL_VOCAB) -> int:
        return sum(math.prod(s) for _, s in self.layout(vocab))

    def largest(self) -> int:
        return max(math.prod(s) for _, s in self.layout())


_COMMON = dict(hidden_act="silu", attention_bias=False, initializer_range=0.02)

SHAPES: dict[str, Shape] = {
    "quick": Shape("quick", "llama", dict(_COMMON, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                          max_position_embeddings=2048, rms_norm_eps=1e-5),
                   SMOL_VOCAB, "a small Llama for --quick (not a real model)"),
    "smollm2-135m": Shape("smollm2-135m", "llama", dict(_COMMON, hidden_size=576, intermediate_size=1536,
                                                        num_hidden_layers=30, num_attention_heads=9,
                                                        num_key_value_heads=3, head_dim=64,
                                                        max_position_embeddings=8192, rms_norm_eps=1e-5,
                                                        rope_parameters={"rope_type": "default",
                                                                         "rope_theta": 100000.0}),
                          49152, "HuggingFaceTB/SmolLM2-135M"),
    "llama-3.2-1b": Shape("llama-3.2-1b", "llama", dict(_COMMON, hidden_size=2048, intermediate_size=8192,
                                                        num_hidden_layers=16, num_attention_heads=32,
                                                        num_key_value_heads=8, head_dim=64,
                                                        max_position_embeddings=131072, rms_norm_eps=1e-5,
                                                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                                         "factor": 32.0, "low_freq_factor": 1.0,
                                                                         "high_freq_factor": 4.0,
                                                                         "original_max_position_embeddings": 8192}),
                          128256, "meta-llama/Llama-3.2-1B"),
    "qwen2-1.5b": Shape("qwen2-1.5b", "qwen2", dict(hidden_act="silu", initializer_range=0.02, hidden_size=1536,
                                                    intermediate_size=8960, num_hidden_layers=28,
                                                    num_attention_heads=12, num_key_value_heads=2,
                                                    max_position_embeddings=131072, rms_norm_eps=1e-6,
                                                    use_sliding_window=False,
                                                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
                        151936, "Qwen/Qwen2-1.5B (q/k/v biases)"),
    "gemma-2-2b": Shape("gemma-2-2b", "gemma2", dict(hidden_activation="gelu_pytorch_tanh", initializer_range=0.02,
                                                     hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                                     num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                                                     max_position_embeddings=8192, rms_norm_eps=1e-6,
                                                     query_pre_attn_scalar=256, sliding_window=4096,
                                                     final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                                                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                        256000, "google/gemma-2-2b", norm_identity=0.0),
}

_ST_DTYPES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}


def _init_kind(name: str) -> str:
    if name.endswith(".bias"):
        return "zero"
    if "norm" in name.split(".")[-2]:
        return "norm"
    return "normal"


def copy_tokenizer(src: Path, dest: Path) -> None:
    """Copy a model directory's tokenizer files (not its weights) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(f, dest / f.name)


def write_model_dir(shape: Shape, out: Path, dtype: str = "float32", seed: int = 0, tokenizer_dir: Path | None = None,
                    chunk: int = 1 << 24) -> Path:
    """Write ``shape`` as an HF directory at ``out`` (config, weights, SmolLM2's tokenizer); kept if present.

    Memory: one piece of ``chunk`` values at a time. The directory appears only when complete.
    """
    import torch

    out = Path(out)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    tag, size = _ST_DTYPES[dtype]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = shape.hf_config()
    cfg.dtype = dtype
    cfg.save_pretrained(str(tmp))
    layout = shape.layout()
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "meerkat_shape": shape.name, "seed": str(seed)}}
    offset = 0
    for name, s in layout:
        n = math.prod(s) * size
        header[name] = {"dtype": tag, "shape": list(s), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    std = float(shape.config.get("initializer_range", 0.02))
    with open(tmp / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for j, (name, s) in enumerate(layout):
            numel = math.prod(s)
            gen = torch.Generator().manual_seed(seed * 100003 + j)
            kind = _init_kind(name)
            for a in range(0, numel, chunk):
                m = min(chunk, numel - a)
                if kind == "normal":
                    piece = torch.randn(m, generator=gen) * std
                else:
                    piece = torch.full((m,), shape.norm_identity if kind == "norm" else 0.0)
                fh.write(piece.to(getattr(torch, dtype)).view(torch.uint8).numpy().tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), tmp)
    (tmp / "meerkat_shape.json").write_text(json.dumps({"shape": shape.name, "source": shape.source, "dtype": dtype,
                                                         "seed": seed, "vocab": SMOL_VOCAB,
                                                         "real_vocab": shape.real_vocab}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
