"""``meerkat gradip inspect`` (not built yet: see the GradIP issue)."""

from __future__ import annotations

import typer

from meerkat_cli.common import fail

gradip_app = typer.Typer(help="GradIP trajectories of a run.", no_args_is_help=True)


@gradip_app.command("inspect")
def inspect_command() -> None:
    """Show a run's GradIP trajectories per client. NOT BUILT YET: lands with the GradIP issue; exits non-zero."""
    raise fail("`meerkat gradip inspect` is not built yet (GradIP issue)")
