"""CLI conventions shared by every command, in one place.

- Logs, warnings and progress bars go to stderr (``err``); tables and JSON go to stdout (``out``).
- Every command that prints results takes ``--json`` and then prints exactly one JSON document
  (floats rounded for reading: ``display_floats``).
- Bad input (``MeerkatInputError``) becomes ``error: <one line>`` on stderr and exit code 2,
  with no traceback.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich import filesize
from rich.console import Console
from rich.markup import escape

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


# Significant digits of the floats ``--json`` prints: float32's precision (most of our numbers are fp32
# values), so an fp32 accuracy 0.6349999904632568 reads 0.635 and a loss 0.6931471824645996 0.6931472.
# The run directory's files keep every bit.
JSON_DIGITS = 7


def display_floats(obj: Any, digits: int = JSON_DIGITS) -> Any:
    """A copy of ``obj`` for display: floats to ``digits`` significant digits, nan and inf as None."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: display_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [display_floats(v, digits) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (plain, no rich markup; floats as ``display_floats`` gives them)."""
    sys.stdout.write(json.dumps(display_floats(obj), indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
