"""Which model and task ``meerkat eval`` scores: the given ones, else the checkpoint's run's, else the
defaults (``DEFAULT_MODEL``, ``DEFAULT_TASK``).

A run records its task's name and identity (``provenance.task_identity``, a hash of the definition);
evaluating a checkpoint on another task, or on a task file that changed since training, is refused
unless the user asks for it (``cross_task``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meerkat_core.config.evaluate import EvalConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.checkpoint import read_checkpoint, resolve_checkpoint
from meerkat_core.models import DEFAULT_MODEL
from meerkat_core.rundir import RunDir
from meerkat_core.tasks import DEFAULT_TASK, TaskSpec, get_task


def run_record(checkpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train settings, provenance) of the run a checkpoint belongs to (the run directory itself, or the
    one a ``RUN/checkpoints/round-*.safetensors`` file is in); empty when there is no config.json."""
    ckpt = resolve_checkpoint(checkpoint)
    for d in (Path(checkpoint), ckpt.parent.parent):
        run = RunDir(d)
        if run.exists():
            doc = run.read_config()
            return dict(doc.get("train", {})), dict(doc.get("provenance", {}))
    return {}, {}


def resolve_eval_inputs(cfg: EvalConfig) -> tuple[str, TaskSpec]:
    """(model spec, TaskSpec) for ``cfg``: ``cfg.model`` / ``cfg.task`` when given, else the run's (with
    ``cfg.checkpoint``), else the defaults. A ``cfg.task`` other than the run's needs ``cfg.cross_task``."""
    checkpoint, model, task = cfg.checkpoint, cfg.model, cfg.task
    if checkpoint is None:
        if cfg.cross_task:
            raise MeerkatInputError("--cross-task: only meaningful with --checkpoint RUN")
        return model or DEFAULT_MODEL, get_task(task or DEFAULT_TASK)
    train, prov = run_record(checkpoint)
    meta, _ = read_checkpoint(resolve_checkpoint(checkpoint))
    model = model or train.get("model") or meta.get("model") or DEFAULT_MODEL
    run_task = train.get("task")
    if task is None:
        if run_task is None:
            return model, get_task(DEFAULT_TASK)
        try:
            spec = get_task(run_task)
        except MeerkatInputError as exc:
            raise MeerkatInputError(f"--checkpoint {checkpoint}: the run's task {run_task!r} cannot be read here ({exc}); "
                                    "pass --task") from None
        if prov.get("task_identity") not in (None, spec.identity()):
            raise MeerkatInputError(f"--checkpoint {checkpoint}: task {run_task!r} changed since the run was trained; "
                                    "pass --task (and --cross-task) to evaluate on it as it is now")
        return model, spec
    spec = get_task(task)
    if run_task is not None and not cfg.cross_task:
        same = prov.get("task_identity") == spec.identity() if "task_identity" in prov else run_task == task
        if not same:
            raise MeerkatInputError(
                f"--task {task}: the run {checkpoint} was trained on task {prov.get('task_name', run_task)!r}; "
                "drop --task to evaluate on it, or pass --cross-task to evaluate on another task"
            )
    return model, spec
