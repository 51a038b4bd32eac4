"""The files between ``meerkat train --engine flower`` and its ServerApp.

The command writes a job file (``job.json``: the TrainConfig, the timeouts, where to put the result) and
passes its path as the run config key ``job``; the ServerApp writes ``result.json`` next to it:
``{"ok": true, "summary": {...}}`` or ``{"ok": false, "error": "<one line>", "input_error": bool}``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meerkat_core.atomic import write_json_atomic
from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.config.train import TrainConfig
from meerkat_core.flower.rounds import RoundTimeouts

RUN_CONFIG_KEY = "job"


@dataclass
class FlowerJob:
    train: dict[str, Any]
    result: str
    timeouts: RoundTimeouts = field(default_factory=RoundTimeouts)

    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)

    def write(self, path: Path) -> None:
        write_json_atomic(path, {"train": self.train, "result": self.result, "timeouts": asdict(self.timeouts)})

    @classmethod
    def read(cls, path: str | Path) -> "FlowerJob":
        raw = json.loads(Path(path).read_text())
        return cls(train=raw["train"], result=raw["result"], timeouts=RoundTimeouts(**raw.get("timeouts", {})))


def write_result(path: str | Path, summary: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
    if error is None:
        body: dict[str, Any] = {"ok": True, "summary": summary}
    else:
        body = {"ok": False, "error": " ".join(str(error).split()) or type(error).__name__,
                "input_error": isinstance(error, MeerkatInputError)}
    write_json_atomic(Path(path), body)


def read_result(path: str | Path) -> dict[str, Any]:
    """The ServerApp's summary; its error re-raised (MeerkatInputError for input errors)."""
    p = Path(path)
    if not p.is_file():
        raise MeerkatError("the Flower ServerApp ended without a result")
    body = json.loads(p.read_text())
    if body.get("ok"):
        return body["summary"]
    if body.get("input_error"):
        raise MeerkatInputError(body["error"])
    raise MeerkatError(body["error"])
