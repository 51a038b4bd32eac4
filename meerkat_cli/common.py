"""CLI conventions shared by every command, in one place.

- Logs, warnings and progress bars go to stderr (``err``); tables and JSON go to stdout (``out``).
- Every command that prints results takes ``--json`` and then prints exactly one JSON document
  (floats rounded for reading: ``display_floats``).
- Bad input (``MeerkatInputError``, a file-system ``OSError``, a usage error) becomes
  ``error: <one line>`` on stderr and exit code 2, with no traceback; with ``--json`` stdout also gets
  ``{"error": "<the line>", "exit_code": 2}``.
- JSON output is always valid JSON: NaN and infinities are written as null.
- Progress (bars, the round view, plain lines off a terminal) lives in ``meerkat_cli.progress``.
"""

from __future__ import annotations

import inspect
import math
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich import filesize
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape

from meerkat_core.errors import MeerkatInputError
from meerkat_core.jsonsafe import dumps_safe

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


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def fail(message: str, json_out: bool = False) -> typer.Exit:
    """Print a one-line error (and with ``json_out`` a JSON error object on stdout); return the Exit to
    raise (exit code 2)."""
    line = one_line(message)
    err.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False)  # "[flower]" is text
    if json_out:
        emit_json({"error": line, "exit_code": BAD_INPUT_EXIT})
    return typer.Exit(code=BAD_INPUT_EXIT)


def _os_message(exc: OSError) -> str:
    from meerkat_core.atomic import os_error

    where = exc.filename if exc.filename is not None else "a file"
    return str(os_error(where, exc, action="read or write"))


@contextmanager
def cli_errors(json_out: bool = False) -> Iterator[None]:
    """Turn meerkat's input errors (and the file system's) into the one-line, exit-2 convention."""
    try:
        yield
    except MeerkatInputError as exc:
        raise fail(str(exc), json_out) from None
    except OSError as exc:  # a read-only or full disk met somewhere no helper converted it
        raise fail(_os_message(exc), json_out) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(code=130) from None


class OneLineErrors(TyperGroup):
    """The root command group: Typer's usage errors (a missing option, a bad value) as one line too.

    Typer prints them as a usage line, a hint and the message (or a boxed panel); here they become
    ``error: <message> (see `meerkat ... --help`)`` on stderr, exit code 2, plus the JSON error object
    under ``--json``.
    """

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.Abort:
            err.print("aborted")
            rv = 1
        except Exception as exc:
            # Typer >= 0.22 vendors click: its ClickException is known by its interface (Typer itself
            # tells NoArgsIsHelpError by name), not imported from a private module
            if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":
                rv = exc.exit_code  # the help text is already printed
            else:
                ctx = getattr(exc, "ctx", None)
                where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                fail(f"{exc.format_message()}{where}", json_out="--json" in argv)
                rv = exc.exit_code
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


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
    """Print ``obj`` as valid JSON on stdout (plain, no rich markup; floats as ``display_floats`` gives
    them, NaN/inf as null)."""
    sys.stdout.write(dumps_safe(display_floats(obj), indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_table(table: Any) -> None:
    """Print a rich table on stdout at its natural width, also when stdout is piped (rich would squeeze
    it into 80 columns there)."""
    width = out.width
    if not out.is_terminal:
        out.width = max(width, out.measure(table, options=out.options.update_width(400)).maximum)
    try:
        out.print(table)
    finally:
        out.width = width
