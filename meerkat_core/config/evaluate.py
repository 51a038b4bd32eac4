"""``meerkat eval``'s configuration (``meerkat_core.api.evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from meerkat_core.config import settings
from meerkat_core.config.choices import SPLITS
from meerkat_core.config.settings import setting
from meerkat_core.errors import MeerkatInputError


@dataclass(kw_only=True)
class EvalConfig:
    """Accuracy of ``model`` (optionally with a run's checkpoint applied) on a task split. ``model`` and
    ``task`` left out are the checkpoint's run's (``meerkat_core.fed.eval_inputs``)."""

    model: Optional[str] = setting(None, short="-m",
                                   help="Built-in name, local HF directory, .gguf file or hub id (default: the run's "
                                        "with --checkpoint, else smollm2-135m).")
    task: Optional[str] = setting(None, short="-t",
                                  help="Built-in task (see `meerkat tasks`) or a task file (default: the run's with "
                                       "--checkpoint, else sentiment2).")
    checkpoint: Optional[str] = setting(None, help="A run directory or checkpoint file to apply first.")
    mask: Optional[str] = setting(None, help="The checkpoint's mask file, when its run directory does not say where "
                                             "it is (checked by sha256).")
    cross_task: bool = setting(False, help="With --checkpoint: allow a --task other than the run's.")
    split: str = setting("test", choices=SPLITS, help="The task split to score.")
    limit: Optional[int] = setting(None, help="Evaluate the first N examples only.")
    batch_size: int = setting(16, help="Examples per forward pass.")
    max_length: int = setting(128, help="Prompt tokens kept (the end is kept).")
    device: str = setting("auto", help="auto, cpu or cuda[:N].")
    dtype: str = setting("auto", help="auto (fp32 for now), fp32, bf16 or fp16.")
    trust_remote_code: bool = setting(False, help="Allow a hub model's own code to run.")

    def validate(self) -> "EvalConfig":
        for flag, value, least in (("--limit", self.limit, 1), ("--batch-size", self.batch_size, 1),
                                   ("--max-length", self.max_length, 8)):
            if value is not None and value < least:
                raise MeerkatInputError(f"{flag} {value}: must be at least {least}")
        settings.check_choices(self)
        return self
