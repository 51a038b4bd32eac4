"""Extra metric logs of a run (``meerkat train --log csv|tensorboard``), fed by the ``on_round`` hook.

``metrics.jsonl`` stays the run's own record; these are copies for other tools, written as the run
goes (one CSV line, or one set of TensorBoard scalars, per row, flushed each round):

- ``csv``: ``RUN/metrics.csv`` with the columns ``CSV_COLUMNS`` (``clients`` is the number of
  participants; ``cum_bytes_*`` add up the rounds so far; an empty cell: not measured that round).
- ``tensorboard``: event files under ``RUN/tensorboard/`` (through ``tensorboardX``, the optional
  extra ``.[tensorboard]``): ``eval/accuracy``, ``eval/loss``, ``train/mean_loss``, ``train/lr``,
  ``comm/bytes_up``, ``comm/bytes_down``, ``comm/cum_bytes``, ``time/round_seconds``, step = round.

Each job (a start or a ``--resume``) first writes the run's history again from ``metrics.jsonl``
(the CSV rewritten atomically; TensorBoard told to drop what it had, ``purge_step=0``), then appends.
So a log added on resume is complete, and the rows of rounds a killed job logged but never committed
are gone. Rows arrive only once the run directory is locked and its inputs checked: a job that fails
its checks writes no log.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from meerkat_core.atomic import write_text_atomic
from meerkat_core.config.choices import RUN_LOGS
from meerkat_core.errors import MeerkatInputError
from meerkat_core.rundir.layout import RunDir

CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
CSV_COLUMNS = ("round", "clients", "steps", "skipped", "mean_loss", "lr", "eval_accuracy", "eval_loss", "eval_n",
               "bytes_up", "bytes_down", "cum_bytes_up", "cum_bytes_down", "seconds", "eval_seconds")
Row = dict[str, Any]


class RunLog(Protocol):
    def write(self, rows: Iterable[Row], first: bool) -> None: ...

    def close(self) -> None: ...


def _with_totals(rows: Iterable[Row], totals: dict[str, int]) -> list[Row]:
    """``rows`` with ``clients`` as a count and the cumulative bytes (``totals`` carries them on)."""
    out = []
    for row in rows:
        r = dict(row)
        if isinstance(r.get("clients"), list):
            r["clients"] = len(r["clients"])
        for key in ("bytes_up", "bytes_down"):
            totals[key] = totals.get(key, 0) + int(r.get(key, 0) or 0)
            r[f"cum_{key}"] = totals[key]
        out.append(r)
    return out


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "" if v is None else str(v)
    return repr(v) if isinstance(v, float) else str(v)  # full precision: the file is data, not display


class CsvLog:
    """``RUN/metrics.csv``: rewritten from the history at a job's first row, then a line per row."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.file(CSV_FILE)

    @staticmethod
    def _lines(rows: Iterable[Row]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in CSV_COLUMNS])
        return buf.getvalue()

    def write(self, rows: Iterable[Row], first: bool) -> None:
        if first:
            write_text_atomic(self.path, ",".join(CSV_COLUMNS) + "\n" + self._lines(rows))
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(self._lines(rows))
            fh.flush()

    def close(self) -> None:
        pass


_SCALARS = (("eval/accuracy", "eval_accuracy"), ("eval/loss", "eval_loss"), ("train/mean_loss", "mean_loss"),
            ("train/lr", "lr"), ("comm/bytes_up", "bytes_up"), ("comm/bytes_down", "bytes_down"),
            ("time/round_seconds", "seconds"))


class TensorBoardLog:
    """TensorBoard scalars under ``RUN/tensorboard/`` (tensorboardX's ``SummaryWriter``)."""

    def __init__(self, run: RunDir) -> None:
        self.dir = run.file(TENSORBOARD_DIR)
        self._writer: Any = None

    def write(self, rows: Iterable[Row], first: bool) -> None:
        if self._writer is None:
            from tensorboardX import SummaryWriter  # the optional extra; checked by open_run_logs

            self._writer = SummaryWriter(logdir=str(self.dir), purge_step=0, flush_secs=10)
        for r in rows:
            step = int(r["round"])
            for tag, key in _SCALARS:
                v = r.get(key)
                if (step > 0 or key.startswith("eval_")) and isinstance(v, (int, float)) and math.isfinite(v):
                    self._writer.add_scalar(tag, float(v), step)
            if step > 0:
                self._writer.add_scalar("comm/cum_bytes", float(r["cum_bytes_up"] + r["cum_bytes_down"]), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def require_tensorboard() -> None:
    if importlib.util.find_spec("tensorboardX") is None:
        raise MeerkatInputError('--log tensorboard needs the tensorboardX package: pip install -c constraints.txt -e '
                                '".[tensorboard]" (or use --log csv)')


class RunLogs:
    """The logs ``kinds`` of the run in ``run_dir``, fed one metrics row at a time (``__call__``); the
    first row of a job brings the run's history from ``metrics.jsonl``. A context manager (closes)."""

    def __init__(self, kinds: Iterable[str], run_dir: str | Path, then: Callable[[Row], None] | None = None) -> None:
        self.run = RunDir(Path(run_dir))
        self.then = then
        kinds = list(dict.fromkeys(kinds))
        for k in kinds:
            if k not in RUN_LOGS:
                raise MeerkatInputError(f"--log {k}: expected one of {', '.join(RUN_LOGS)}")
        if "tensorboard" in kinds:
            require_tensorboard()
        self.logs: list[RunLog] = [CsvLog(self.run) if k == "csv" else TensorBoardLog(self.run) for k in kinds]
        self._totals: dict[str, int] | None = None

    def __call__(self, row: Row) -> None:
        if self.logs:
            first = self._totals is None
            if first:
                self._totals = {}
                history = [m for m in self.run.read_metrics() if int(m.get("round", 0)) < int(row["round"])]
                rows = _with_totals(history + [row], self._totals)
            else:
                rows = _with_totals([row], self._totals)  # type: ignore[arg-type]
            for log in self.logs:
                log.write(rows, first)
        if self.then is not None:
            self.then(row)

    def close(self) -> None:
        for log in self.logs:
            log.close()

    def __enter__(self) -> "RunLogs":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
