"""``meerkat site serve``: a site's long-lived process for a Flower deployment (docs/DEPLOY_FLOWER.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from meerkat_cli.common import cli_errors, err

site_app = typer.Typer(help="A site (one client) of a Flower deployment.", no_args_is_help=True)


@site_app.command("serve")
def serve_command(
    socket_path: Path = typer.Option(..., "--socket", help="Unix socket to listen on; give the SuperNode --node-config 'site-socket=\"PATH\"'."),
    partition_id: int = typer.Option(..., "--partition-id", help="This site's client id in the partition manifest."),
    partition_dir: Path = typer.Option(..., "--partition-dir", help="This site's copy of the `meerkat partition` directory."),
    mask: str = typer.Option(..., "--mask", help="This site's copy of the server's mask file, or 'all'."),
    model: Optional[str] = typer.Option(None, "--model", help="Where this site's base model is (default: the server's announced name)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Hold this site's base model and data between rounds; the SuperNode's ClientApp forwards each round here."""
    with cli_errors():
        from meerkat_core.flower.site import SiteConfig
        from meerkat_core.flower.site_server import serve

        site = SiteConfig(partition_id=partition_id, partition_dir=str(partition_dir), mask=mask, model=model,
                          device=device)
        serve(site, str(socket_path), on_event=lambda m: err.print(m, markup=False))
