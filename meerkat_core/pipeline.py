"""High-level entry points the CLI calls: each loads its inputs, runs the work, returns plain results."""

from __future__ import annotations

from typing import Any, Callable

from meerkat_core.errors import MeerkatInputError

ProgressFn = Callable[[int, int, str], None]


def run_eval(
    model: str,
    task: str,
    checkpoint: str | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 16,
    max_length: int = 128,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Evaluate ``model`` (optionally with a run's checkpoint applied) on ``task``'s ``split``."""
    from meerkat_core.encoding import encode_split
    from meerkat_core.evaluation import evaluate_encoded
    from meerkat_core.models import load_model
    from meerkat_core.tasks import get_task, load_task_data

    if batch_size < 1:
        raise MeerkatInputError(f"--batch-size {batch_size}: must be at least 1")
    spec = get_task(task)
    data = load_task_data(spec)
    ds = data.split(split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    info: dict[str, Any] = {"model": model, "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", "")}
    if checkpoint:
        from meerkat_core.fed.checkpoint import apply_checkpoint

        info["checkpoint"] = apply_checkpoint(loaded, checkpoint)
    enc = encode_split(loaded.tokenizer, spec, ds, max_length=max_length)
    result = evaluate_encoded(
        loaded.model, enc, list(spec.label_names), loaded.tokenizer.pad_token_id,
        batch_size=batch_size, progress=progress, task=spec.name, split=split,
    )
    return result, info
