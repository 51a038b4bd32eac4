"""``meerkat mask``'s configuration (``meerkat_core.api.make_mask``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

from meerkat_core.config import settings
from meerkat_core.config.choices import MASK_METHODS
from meerkat_core.config.settings import setting
from meerkat_core.errors import MeerkatInputError


@dataclass(kw_only=True)
class MaskConfig:
    """A sensitivity (or random / magnitude) mask of ``model`` from calibration text, written to ``out``."""

    model: str = setting(help="Built-in name (smollm2-135m, tiny-llama), model directory, .gguf or hub id.")
    corpus: str = setting("builtin", help="Calibration text: builtin, FILE.txt, a directory of .txt files, FILE.jsonl, "
                                          "or a hub dataset hf:ID, optionally with :CONFIG and @SPLIT "
                                          "(e.g. hf:allenai/c4:en@validation).")
    text_field: str = setting("text", help="Field holding the text in .jsonl / hub rows.")
    density: float = setting(1e-3, help="Fraction of eligible weights to keep, in (0, 1].")
    samples: int = setting(64, help="Calibration blocks.")
    seq_len: int = setting(128, help="Tokens per calibration block.")
    batch_size: int = setting(4, help="Blocks per backprop batch (one term of the mean).")
    exclude: List[str] = setting(default_factory=list, help="Parameter names to leave out: a glob over the full "
                                                            "name, or re:REGEX (repeatable).")
    method: str = setting("sensitivity", choices=MASK_METHODS, help="How weights are scored.")
    score_groups: int = setting(1, help="Score the weights in N groups, one pass over the calibration text each: "
                                        "the float32 score buffer shrinks to 1/N of the model (for models near the "
                                        "memory limit); the same mask, N + 1 passes instead of 2.")
    seed: int = setting(0, help="Seed for corpus sampling and the random method.")
    device: str = setting("auto", help="auto | cpu | cuda[:N].")
    dtype: str = setting("auto", help="auto (fp32: the backprop pass is not measured in bf16) | fp32 | bf16 | fp16.")
    trust_remote_code: bool = setting(False, help="Allow custom model code from a hub repo.")
    out: str = setting(help="Where to write the mask (.safetensors).")

    def validate(self) -> "MaskConfig":
        """Checks that need no model or data; raises ``MeerkatInputError`` naming the flag."""
        validate_density(self.density)
        settings.check_choices(self)
        for flag, value in (("--samples", self.samples), ("--seq-len", self.seq_len), ("--batch-size", self.batch_size),
                            ("--score-groups", self.score_groups)):
            if value < 1:
                raise MeerkatInputError(f"{flag} {value}: must be at least 1")
        if Path(self.out).is_dir():
            raise MeerkatInputError(f"--out {self.out}: is a directory; pass a file name")
        return self


def validate_density(density: float) -> float:
    """``density`` must be a number in (0, 1]."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise MeerkatInputError(f"--density {density!r}: expected a number in (0, 1], e.g. 1e-3") from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise MeerkatInputError(f"--density {density}: must be in (0, 1] (a fraction of the weights, e.g. 1e-3)")
    return value
