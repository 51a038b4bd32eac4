"""The checks before a job touches a run directory: a new run needs an empty ``--out``; ``--resume``
needs a run directory whose settings match the ones given (``RESUMABLE_CHANGES`` may differ)."""

from __future__ import annotations

from pathlib import Path

from meerkat_core.atomic import check_writable
from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.rundir.layout import CONFIG, LEDGER, RunDir
from meerkat_core.rundir.lock import LOCK


def check_run_dir(cfg: TrainConfig) -> RunDir:
    """The run directory of ``cfg`` after the --out / --resume checks; writes nothing."""
    run = RunDir(Path(cfg.out))
    check_writable(cfg.out, "--out", kind="dir")  # read-only, or a file where the directory belongs
    if cfg.resume:
        if not run.exists():
            raise MeerkatInputError(f"--resume {cfg.out}: not a run directory (no {CONFIG}); drop --resume to start")
        cfg.check_resumable(run.train_config(), cfg.out)
    elif run.path.exists() and any(not _left_by_a_start(p) for p in run.path.iterdir()):
        raise MeerkatInputError(f"--out {cfg.out}: exists and is not empty; pass --resume to continue it or choose another path")
    return run


def _left_by_a_start(p: Path) -> bool:
    """What a start killed before config.json leaves: the lock, an empty ledger (a new run may reuse it)."""
    return p.name == LOCK or (p.name == LEDGER and p.is_file() and p.stat().st_size == 0)
