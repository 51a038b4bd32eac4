"""The ``meerkat`` command: a thin Typer app. Every command parses its flags (or ``--config``) into its
configuration (``meerkat_core.config``), calls ONE ``meerkat_core.api`` function, and renders the result."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer

import meerkat_core
from meerkat_cli.common import OneLineErrors, new_app
from meerkat_cli.eval_cmd import eval_command
from meerkat_cli.gradip_cmd import gradip_app
from meerkat_cli.info_cmds import models_command, tasks_app
from meerkat_cli.mask_cmd import mask_app
from meerkat_cli.partition_cmd import partition_command
from meerkat_cli.report_cmd import report_command
from meerkat_cli.site_cmd import site_app
from meerkat_cli.train_cmd import export_command, train_command

app = new_app(
    name="meerkat",
    help="Federated fine-tuning of LLMs with sparse zeroth-order optimization (Meerkat, Meerkat-vp).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meerkat {meerkat_core.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Show the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs on stderr."),
) -> None:
    _quiet_libraries(verbose)


def _quiet_libraries(verbose: bool) -> None:
    """Silence third-party progress bars and warnings unless --verbose; our own progress is rich."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads this one for its own bars
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        # the variables above only act on import; libraries already imported are told directly
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.set_verbosity_error()
            sys.modules["transformers"].utils.logging.disable_progress_bar()


app.add_typer(mask_app, name="mask")
app.command("partition")(partition_command)
app.command("eval")(eval_command)
app.command("models")(models_command)
app.add_typer(tasks_app, name="tasks")
app.command("train")(train_command)
app.command("export")(export_command)
app.command("report")(report_command)
app.add_typer(gradip_app, name="gradip")
app.add_typer(site_app, name="site")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
