"""``meerkat tasks show``'s configuration (``meerkat_core.api.show_task``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from meerkat_core.config import settings
from meerkat_core.config.choices import SPLITS
from meerkat_core.config.settings import setting
from meerkat_core.errors import MeerkatInputError


@dataclass(kw_only=True)
class TaskShowConfig:
    """Which task to show, how many of its rows, and under which model's tokenizer."""

    task: str = setting(positional=True, help="A built-in task name or a task file (docs/TASKS.md).")
    n: int = setting(3, help="Show the prompts of the first N rows.")
    model: Optional[str] = setting(None, short="-m",
                                   help="Tokenizer to show the label words under (default: smollm2-135m's).")
    split: str = setting("train", choices=SPLITS, help="Where the shown rows come from.")

    def validate(self) -> "TaskShowConfig":
        if self.n < 0:
            raise MeerkatInputError(f"--n {self.n}: must be >= 0")
        settings.check_choices(self)
        return self
