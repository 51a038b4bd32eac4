"""The run directory's files: configuration, append-only ledger, metrics, checkpoints, summary.

(The GradIP trajectories, ``gradip.safetensors``, are GradIP's own format: ``meerkat_core.gradip.file``.)

``ledger.jsonl`` is the source of truth. Each round is appended as one block (one line per
participating client, then a ``{"type": "round"}`` line that commits it) with a single write and an
fsync. A reader keeps everything up to the last committed round (``--resume`` cuts the rest off) and
refuses anything else that is wrong with a line (``ledger_rounds``): the ledger is replayed, never
guessed at.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from meerkat_core.atomic import append_bytes, os_error, remove_temporaries, write_bytes_atomic, write_json_atomic, write_text_atomic
from meerkat_core.config.settings import config_toml
from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError

CONFIG = "config.json"
CONFIG_TOML = "config.toml"  # the resolved TrainConfig: `meerkat train --config RUN/config.toml` re-runs it
LEDGER = "ledger.jsonl"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RESUME_HINT = "the run is complete up to the round before, continue it with --resume"
CHECKPOINTS = "checkpoints"
CHECKPOINT_NAME = re.compile(r"^round-(\d{4,})\.safetensors$")
RUN_FORMAT = "meerkat.run"
RUN_FORMAT_VERSION = 1


# what a ledger line must hold to be replayed (docs/RUN_FORMAT.md)
CLIENT_FIELDS = ("round", "client", "steps", "seed", "lr", "eps", "data_offset", "gs", "losses")
ROUND_FIELDS = ("round", "state_crc")


@dataclass
class LedgerRound:
    """One committed round of the ledger: its client records, its round record and their line numbers."""

    round: int
    record: dict[str, Any]
    line: int  # 1-based line of the round (commit) record
    clients: list[dict[str, Any]] = field(default_factory=list)
    client_lines: list[int] = field(default_factory=list)


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
            doc = json.loads(self.file(CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise MeerkatInputError(f"run directory {self.path}: unreadable {CONFIG} ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or not isinstance(doc.get("train", {}), dict):
            raise MeerkatInputError(f"run directory {self.path}: {CONFIG} is not a meerkat run configuration")
        return doc

    def train_config(self) -> TrainConfig:
        """The TrainConfig the run was made with (from config.json, which every run since format 1 has)."""
        raw = self.read_config().get("train")
        if not isinstance(raw, dict):
            raise MeerkatInputError(f"run directory {self.path}: {CONFIG} has no \"train\" settings; the run is damaged")
        return TrainConfig.from_dict(raw, f"run directory {self.path}: {CONFIG}")

    def write_config(self, cfg: TrainConfig, provenance: dict[str, Any]) -> None:
        """``config.json`` (flat settings + provenance: what --resume, `gradip inspect` and older tools
        read) and ``config.toml`` (the same settings nested, re-runnable with ``--config``)."""
        train = {k: v for k, v in cfg.to_dict().items() if k != "resume"}  # how it was invoked is no setting
        write_json_atomic(self.file(CONFIG), {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
                                              "train": train, "provenance": provenance})
        write_text_atomic(self.file(CONFIG_TOML), config_toml(cfg, "train", provenance))

    # -- ledger
    def ledger_rounds(self) -> tuple[list[LedgerRound], int]:
        """The committed rounds in order, and the byte length of the committed prefix.

        Everything after the last committed round (a torn block) is left out. Anything else that is
        wrong (a line that is not JSON, a record without a required field, a round out of order, a
        client line inside another round's block) raises ``MeerkatInputError`` naming the line."""
        path = self.file(LEDGER)
        if not path.exists():
            return [], 0
        lines = path.read_bytes().splitlines(keepends=True)
        parsed: list[dict[str, Any] | None] = []
        for raw in lines:
            try:
                rec = json.loads(raw) if raw.endswith(b"\n") else None
            except ValueError:
                rec = None
            parsed.append(rec if isinstance(rec, dict) else None)
        last_commit = max((i for i, rec in enumerate(parsed) if rec is not None and rec.get("type") == "round"),
                          default=-1)
        rounds: list[LedgerRound] = []
        pending: list[tuple[int, dict[str, Any]]] = []
        committed = 0
        pos = 0

        def bad(i: int, why: str) -> MeerkatInputError:
            return MeerkatInputError(f"{path} line {i + 1}: {why}; the run directory is damaged (restore the "
                                     "ledger from a copy, or start a new run)")

        for i, (raw, rec) in enumerate(zip(lines, parsed)):
            pos += len(raw)
            if i > last_commit:
                break  # the torn tail after the last committed round
            if rec is None:
                raise bad(i, "not a complete JSON line" if raw.endswith(b"\n") else "cut short")
            kind = rec.get("type")
            want = len(rounds) + 1
            need = CLIENT_FIELDS if kind == "client" else ROUND_FIELDS if kind == "round" else None
            if need is None:
                raise bad(i, f"unknown record type {kind!r}")
            missing = [k for k in need if k not in rec]
            if missing:
                raise bad(i, f"no {missing[0]!r} field")
            try:
                r = int(rec["round"])
            except (TypeError, ValueError):
                raise bad(i, f"round {rec['round']!r} is not a number") from None
            if r != want:
                raise bad(i, f"a record of round {r} where round {want} was expected (a block is missing, "
                             "repeated or out of order)")
            if kind == "client":
                pending.append((i, rec))
                continue
            if not pending:
                raise bad(i, f"round {r} commits no client records")
            rounds.append(LedgerRound(round=r, record=rec, line=i + 1, clients=[c for _, c in pending],
                                      client_lines=[j + 1 for j, _ in pending]))
            pending = []
            committed = pos
        return rounds, committed

    def read_ledger(self) -> tuple[dict[int, list[dict[str, Any]]], dict[int, dict[str, Any]], int]:
        """(client records by round, round records by round, byte length of the committed prefix);
        ``ledger_rounds`` in another shape."""
        rounds, committed = self.ledger_rounds()
        return {lr.round: lr.clients for lr in rounds}, {lr.round: lr.record for lr in rounds}, committed

    def truncate_ledger(self, length: int) -> None:
        path = self.file(LEDGER)
        if path.exists() and path.stat().st_size != length:
            with open(path, "rb") as fh:
                head = fh.read(length)
            write_bytes_atomic(path, head)

    def create_ledger(self) -> None:
        """An empty ledger at the start of a run: from then on a missing ledger means damage."""
        try:
            fd = os.open(self.file(LEDGER), os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
        except OSError as exc:
            raise os_error(self.file(LEDGER), exc) from None

    def append_round(self, client_records: Iterable[dict[str, Any]], round_record: dict[str, Any]) -> None:
        block = "".join(_json_line({"type": "client", **r}) for r in client_records)
        block += _json_line({"type": "round", **round_record})
        append_bytes(self.file(LEDGER), block.encode(), RESUME_HINT)

    # -- orphans
    def remove_temporaries(self, also: Iterable[str] = ()) -> list[Path]:
        """Delete the temporaries that a killed write left in the run directory (``meerkat_core.atomic``):
        those of its own files, of checkpoints, and of the files named in ``also`` (GradIP's)."""
        names = {CONFIG, CONFIG_TOML, LEDGER, METRICS, SUMMARY, *also}
        removed = remove_temporaries(self.path, lambda n: n in names)
        removed += remove_temporaries(self.path / CHECKPOINTS, lambda n: CHECKPOINT_NAME.match(n) is not None)
        return removed

    # -- metrics
    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not isinstance(row, dict):
                break
            out.append(row)
        return out

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` replaced whole (a run's start, and once per ``--resume``: the committed rows)."""
        write_text_atomic(self.file(METRICS), "".join(_json_line(r) for r in rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One row appended to ``metrics.jsonl`` (each round: O(1), not a rewrite of the history). A kill
        mid-write leaves a torn last line, which ``read_metrics`` drops and ``--resume`` rewrites away."""
        append_bytes(self.file(METRICS), _json_line(row).encode(), RESUME_HINT)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.file(SUMMARY), summary)  # NaN/inf become null (write_json_atomic)

    def read_summary(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.file(SUMMARY).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None
