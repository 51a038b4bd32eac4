"""The run directory of ``meerkat train`` (docs/RUN_FORMAT.md): its files (``layout``), the lock that
keeps it to one writer (``lock``), and the checks before a job starts or resumes in it (``resume``)."""

from meerkat_core.rundir.layout import (
    CHECKPOINT_NAME,
    CHECKPOINTS,
    CONFIG,
    CONFIG_TOML,
    LEDGER,
    METRICS,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    SUMMARY,
    LedgerRound,
    RunDir,
)
from meerkat_core.rundir.lock import LOCK, run_dir_lock
from meerkat_core.rundir.resume import check_run_dir

__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINTS", "CONFIG", "CONFIG_TOML", "LEDGER", "LOCK", "METRICS", "RUN_FORMAT", "RUN_FORMAT_VERSION",
    "SUMMARY", "LedgerRound", "RunDir", "check_run_dir", "run_dir_lock",
]
