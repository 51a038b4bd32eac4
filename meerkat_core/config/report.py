"""``meerkat report``'s configuration (``meerkat_core.api.report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from meerkat_core.config.settings import setting
from meerkat_core.errors import MeerkatInputError


@dataclass(kw_only=True)
class ReportConfig:
    """Runs side by side: their settings, accuracy, bytes and time, and (``plot``) their curves."""

    runs: List[str] = setting(positional=True, metavar="RUN",
                              help="Run directories written by `meerkat train` (in the order to list them).")
    plot: Optional[str] = setting(None, help="Write a PNG: accuracy against rounds and against cumulative bytes "
                                             "(up + down), one line per run.")

    def validate(self) -> "ReportConfig":
        if not self.runs:
            raise MeerkatInputError("give at least one run directory: meerkat report RUN [RUN ...]")
        if self.plot is not None and Path(self.plot).is_dir():
            raise MeerkatInputError(f"--plot {self.plot}: is a directory; give a .png file path")
        return self
