"""CLI conventions shared by every command, in one place.

- Logs, warnings and progress bars go to stderr (``err``); tables and JSON go to stdout (``out``).
- Every command that prints results takes ``--json`` and then prints exactly one JSON document.
- Bad input (``MeerkatInputError``) becomes ``error: <one line>`` on stderr and exit code 2,
  with no traceback.
"""

from __future__ import annotations

import inspect
import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich import filesize
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from meerkat_core.errors import MeerkatInputError

BAD_INPUT_EXIT = 2

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

JsonOption = typer.Option(False, "--json", help="Print the result as one JSON document on stdout.")
# ``--json`` as a parameter of the commands that ``meerkat_cli.options.config_command`` generates
JSON_PARAM = inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=JsonOption, annotation=bool)


def new_app(**kw: Any) -> typer.Typer:
    """A Typer app whose help prints every text literally: no rich markup (``'meerkat[flower]'`` stays,
    it was once swallowed as a style tag) and no emoji codes (``hf:ID:CONFIG``)."""
    return typer.Typer(rich_markup_mode=None, add_completion=False, **kw)


def fmt_bytes(n: float) -> str:
    """Decimal units (kB, MB: powers of 1000, as benchmarks/RESULTS.md writes them)."""
    return filesize.decimal(int(n))


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (exit code 2)."""
    first_line = escape(" ".join(str(message).split()))  # a message's "[flower]" is text, not markup
    err.print(f"[bold red]error:[/] {first_line}", markup=True, highlight=False)
    return typer.Exit(code=BAD_INPUT_EXIT)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn meerkat's input errors into the one-line, exit-2 convention."""
    try:
        yield
    except MeerkatInputError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(code=130) from None


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (plain, no rich markup)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def make_progress(transient: bool = True) -> Progress:
    """A rich progress bar on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
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


@contextmanager
def progress_callback(transient: bool = True) -> Iterator[ProgressCallback]:
    with make_progress(transient=transient) as progress:
        yield ProgressCallback(progress)
