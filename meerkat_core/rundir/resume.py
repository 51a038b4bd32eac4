"""The checks before a job touches a run directory: a new run needs an empty ``--out``; ``--resume``
needs a run directory whose settings match the ones given (``RESUMABLE_CHANGES`` may differ).
``--dtype auto`` is resolved here, once per job, to the run's concrete dtype."""

from __future__ import annotations

from pathlib import Path

from meerkat_core.atomic import check_writable
from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.rundir.layout import CONFIG, LEDGER, RunDir
from meerkat_core.rundir.lock import LOCK


def resolve_run_dtype(cfg: TrainConfig, previous: TrainConfig | None = None) -> str:
    """Set ``cfg.dtype`` to the run's concrete dtype (fp32 | bf16 | fp16) and return why (one line).

    ``auto`` is decided on this machine (``models.dtypes.choose_dtype``) for a new run; a resumed run
    keeps the dtype it was made in (so it resumes bitwise), whatever this machine would pick.
    """
    from meerkat_core.models import choose_dtype, resolve_device

    if cfg.dtype == "auto" and previous is not None:
        if previous.dtype == "auto":  # a run from before the dtype was recorded: the old auto rule
            cfg.dtype = "bf16" if resolve_device(cfg.device).type == "cuda" else "fp32"
        else:
            cfg.dtype = previous.dtype
        return f"auto: {cfg.dtype}, the dtype the run was made in"
    choice = choose_dtype(cfg.dtype, resolve_device(cfg.device))
    cfg.dtype = choice.name
    return choice.reason


def check_run_dir(cfg: TrainConfig) -> tuple[RunDir, str]:
    """The run directory of ``cfg`` after the --out / --resume checks, and why ``cfg.dtype`` is what it
    is now (``resolve_run_dtype``: auto becomes concrete); writes nothing."""
    run = RunDir(Path(cfg.out))
    check_writable(cfg.out, "--out", kind="dir")  # read-only, or a file where the directory belongs
    previous = None
    if cfg.resume:
        if not run.exists():
            raise MeerkatInputError(f"--resume {cfg.out}: not a run directory (no {CONFIG}); drop --resume to start")
        previous = run.train_config()
    reason = resolve_run_dtype(cfg, previous)
    if previous is not None:
        cfg.check_resumable(previous, cfg.out)
    elif run.path.exists() and any(not _left_by_a_start(p) for p in run.path.iterdir()):
        raise MeerkatInputError(f"--out {cfg.out}: exists and is not empty; pass --resume to continue it or choose another path")
    return run, reason


def _left_by_a_start(p: Path) -> bool:
    """What a start killed before config.json leaves: the lock, an empty ledger (a new run may reuse it)."""
    return p.name == LOCK or (p.name == LEDGER and p.is_file() and p.stat().st_size == 0)
