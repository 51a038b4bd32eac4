"""The run directory's files: configuration, append-only ledger, metrics, checkpoints, summary.

(The GradIP trajectories, ``gradip.safetensors``, are GradIP's own format: ``meerkat_core.gradip.file``.)

``ledger.jsonl`` is the source of truth. Each round is appended as one block (one line per
participating client, then a ``{"type": "round"}`` line that commits it) with a single write and an
fsync. A reader keeps everything up to the last committed round; ``--resume`` cuts the rest off.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from meerkat_core.atomic import append_bytes, write_bytes_atomic, write_json_atomic, write_text_atomic
from meerkat_core.config.settings import config_toml
from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError

CONFIG = "config.json"
CONFIG_TOML = "config.toml"  # the resolved TrainConfig: `meerkat train --config RUN/config.toml` re-runs it
LEDGER = "ledger.jsonl"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
RUN_FORMAT = "meerkat.run"
RUN_FORMAT_VERSION = 1


def _json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True) + "\n"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- paths
    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint_path(self, round_: int) -> Path:
        return self.path / CHECKPOINTS / f"round-{round_:04d}.safetensors"

    def exists(self) -> bool:
        return self.file(CONFIG).is_file()

    # -- config
    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.file(CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise MeerkatInputError(f"run directory {self.path}: unreadable {CONFIG} ({exc})") from None

    def train_config(self) -> TrainConfig:
        """The TrainConfig the run was made with (from config.json, which every run since format 1 has)."""
        raw = self.read_config().get("train")
        if not isinstance(raw, dict):
            raise MeerkatInputError(f"run directory {self.path}: {CONFIG} has no \"train\" settings; the run is damaged")
        return TrainConfig.from_dict(raw, f"run directory {self.path}: {CONFIG}")

    def write_config(self, cfg: TrainConfig, provenance: dict[str, Any]) -> None:
        """``config.json`` (flat settings + provenance: what --resume, `gradip inspect` and older tools
        read) and ``config.toml`` (the same settings nested, re-runnable with ``--config``)."""
        write_json_atomic(self.file(CONFIG), {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
                                              "train": cfg.to_dict(), "provenance": provenance})
        write_text_atomic(self.file(CONFIG_TOML), config_toml(cfg, "train", provenance))

    # -- ledger
    def read_ledger(self) -> tuple[dict[int, list[dict[str, Any]]], dict[int, dict[str, Any]], int]:
        """(client records by round, round records by round, byte length of the committed prefix)."""
        clients: dict[int, list[dict[str, Any]]] = {}
        rounds: dict[int, dict[str, Any]] = {}
        path = self.file(LEDGER)
        if not path.exists():
            return clients, rounds, 0
        pending: list[dict[str, Any]] = []
        committed = 0
        pos = 0
        with open(path, "rb") as fh:
            for raw in fh:
                pos += len(raw)
                if not raw.endswith(b"\n"):
                    break  # a torn last line
                try:
                    rec = json.loads(raw)
                except ValueError:
                    break
                if rec.get("type") == "client":
                    pending.append(rec)
                elif rec.get("type") == "round":
                    r = int(rec["round"])
                    clients[r] = [p for p in pending if int(p["round"]) == r]
                    rounds[r] = rec
                    pending = []
                    committed = pos
        return clients, rounds, committed

    def truncate_ledger(self, length: int) -> None:
        path = self.file(LEDGER)
        if path.exists() and path.stat().st_size != length:
            with open(path, "rb") as fh:
                head = fh.read(length)
            write_bytes_atomic(path, head)

    def append_round(self, client_records: Iterable[dict[str, Any]], round_record: dict[str, Any]) -> None:
        block = "".join(_json_line({"type": "client", **r}) for r in client_records)
        block += _json_line({"type": "round", **round_record})
        append_bytes(self.file(LEDGER), block.encode())

    # -- metrics
    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break
        return out

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` replaced whole (a run's start, and once per ``--resume``: the committed rows)."""
        write_text_atomic(self.file(METRICS), "".join(_json_line(r) for r in rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One row appended to ``metrics.jsonl`` (each round: O(1), not a rewrite of the history). A kill
        mid-write leaves a torn last line, which ``read_metrics`` drops and ``--resume`` rewrites away."""
        append_bytes(self.file(METRICS), _json_line(row).encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.file(SUMMARY), _finite(summary))


def _finite(obj: Any) -> Any:
    """JSON-safe copy: nan/inf become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
