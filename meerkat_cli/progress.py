"""Progress that fits where it goes (stderr): a rich live view on a terminal, plain lines elsewhere.

Where stderr is not a terminal (a log file, CI, ``nohup``), a live view would print nothing useful
for the whole job, so:

- ``meerkat train`` writes ONE plain line per round (``round_line``): round, clients, mean loss,
  accuracy when the round was evaluated, bytes up/down, seconds;
- the ``progress(done, total, description)`` callbacks of other long commands (``mask``, ``eval``)
  write a plain line at the start, at every further tenth of the work, at least every
  ``PlainProgress.every_s`` seconds, and at the end;
- status messages (``partition``) are plain lines.

On a terminal ``train`` shows a progress bar with a table of the latest rounds under it (it stays on
screen when the run ends); the others a rich progress bar or spinner.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from meerkat_cli.common import err, fmt_bytes

Row = dict[str, Any]


def make_progress(transient: bool = True, console: Console | None = None) -> Progress:
    """A rich progress bar on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or err,
        transient=transient,
    )


class ProgressCallback:
    """Adapter from meerkat_core's ``progress(done, total, description)`` callbacks to rich."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def __call__(self, done: int, total: int | None, description: str = "working") -> None:
        task = self._tasks.get(description)
        if task is None:
            task = self._progress.add_task(description, total=total)
            self._tasks[description] = task
        self._progress.update(task, completed=done, total=total)


class PlainProgress:
    """``progress(done, total, description)`` as plain lines: the first call of each description, each
    further tenth of ``total``, at least every ``every_s`` seconds, and the last step."""

    def __init__(self, console: Console, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self._every_s = every_s
        self._clock = clock
        self._state: dict[str, tuple[float, float, int]] = {}  # description -> (start, last line at, tenth)

    def __call__(self, done: int, total: int | None, description: str = "working") -> None:
        now = self._clock()
        tenth = int(10 * done / total) if total else -1
        if description not in self._state:
            self._state[description] = (now, now, tenth)
            self._line(description, done, total, 0.0)
            return
        start, last, last_tenth = self._state[description]
        finished = total is not None and done >= total
        if finished or tenth > last_tenth or now - last >= self._every_s:
            self._state[description] = (start, now, tenth)
            self._line(description, done, total, now - start)

    def _line(self, description: str, done: int, total: int | None, seconds: float) -> None:
        share = f" ({done / total:.0%})" if total else ""
        of = f"/{total}" if total is not None else ""
        self._console.print(f"{description}: {done}{of}{share}, {seconds:.1f} s", markup=False, highlight=False)


@contextmanager
def progress_callback(transient: bool = True) -> Iterator[Callable[[int, "int | None", str], None]]:
    """The ``progress`` callback for a long command: a rich bar on a terminal, plain lines otherwise."""
    if not err.is_terminal:
        yield PlainProgress(err)
        return
    with make_progress(transient=transient) as progress:
        yield ProgressCallback(progress)


@contextmanager
def status_callback(first: str = "working") -> Iterator[Callable[[str], None]]:
    """An ``on_event(message)`` callback: a rich spinner on a terminal; nothing otherwise (the phases of a
    command this short are not worth a log line, and a refused input then prints its error line alone)."""
    if not err.is_terminal:
        yield lambda message: None
        return
    with err.status(first) as status:
        yield status.update


# -- meerkat train ---------------------------------------------------------------------------------
def _num(v: Any, fmt: str = "{:.4f}") -> str:
    return "-" if not isinstance(v, (int, float)) or not math.isfinite(v) else fmt.format(v)


def round_line(row: Row, rounds: int) -> str:
    """One round of ``meerkat train`` as one plain line (round 0: the starting point's evaluation)."""
    r = int(row["round"])
    parts = [f"round {r}/{rounds}"]
    if r == 0:
        parts.append("starting point")
    else:
        parts += [f"clients {len(row.get('clients', []))}", f"loss {_num(row.get('mean_loss'))}"]
    if "eval_accuracy" in row:
        parts.append(f"acc {_num(row['eval_accuracy'])} (n={row.get('eval_n', '?')})")
    if r > 0:
        parts += [f"up {fmt_bytes(row.get('bytes_up', 0))}", f"down {fmt_bytes(row.get('bytes_down', 0))}",
                  f"{_num(row.get('seconds'), '{:.1f}')} s"]
    elif "eval_seconds" in row:
        parts.append(f"{_num(row['eval_seconds'], '{:.1f}')} s")
    return " | ".join(parts)


class _RoundsProgress(Progress):
    """A progress bar with a table of the latest rounds under it."""

    def __init__(self, table: Callable[[], RenderableType], *columns: Any, **kw: Any) -> None:
        self._table = table  # before Progress.__init__, which renders once
        super().__init__(*columns, **kw)

    def get_renderables(self) -> Iterator[RenderableType]:
        yield Group(self.make_tasks_table(self.tasks), self._table())


class RoundView:
    """What ``meerkat train`` shows per round: ``__call__(row)`` is the ``on_round`` hook.

    ``live=True``: a progress bar over the rounds and a table of the last ``keep`` rounds (a rich live
    view; use as a context manager); ``live=False``: ``round_line`` per row on ``console``."""

    def __init__(self, rounds: int, console: Console | None = None, live: bool | None = None, keep: int = 8) -> None:
        self.console = console or err
        self.rounds = rounds
        self.live = self.console.is_terminal if live is None else live
        self.keep = keep
        self.rows: list[Row] = []
        self._progress: _RoundsProgress | None = None
        self._task: Any = None

    def __enter__(self) -> "RoundView":
        if self.live:
            self._progress = _RoundsProgress(
                self._table, TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("training", total=self.rounds)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def __call__(self, row: Row) -> None:
        self.rows.append(row)
        if self._progress is None:
            self.console.print(round_line(row, self.rounds), markup=False, highlight=False)
            return
        self._progress.update(self._task, completed=int(row["round"]))

    def _table(self) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold dim")
        for col in ("round", "clients", "mean loss", "accuracy", "up", "down", "seconds"):
            table.add_column(col, justify="right")
        for row in self.rows[-self.keep:]:
            r = int(row["round"])
            table.add_row(
                str(r), str(len(row.get("clients", []))) if r else "start", _num(row.get("mean_loss")),
                _num(row.get("eval_accuracy")), fmt_bytes(row.get("bytes_up", 0)) if r else "-",
                fmt_bytes(row.get("bytes_down", 0)) if r else "-", _num(row.get("seconds"), "{:.1f}"),
            )
        return table
