"""The ServerApp: ``run_training`` with the Flower RoundRunner; it writes the run directory.

The configuration is the run config (``[tool.flwr.app.config]`` of ``flower_app/pyproject.toml`` with the
``--run-config`` overrides): ``TrainConfig`` under its CLI names, the engine's settings under ``flower.``
(``meerkat_core.flower.app_config``). The server side is the in-process engine's (ZOServer, the ledger,
checkpoints, GradIP, evaluation) but builds no client: the clients' sizes come from the partition
manifest, and no training text is encoded here. Only the rounds travel over Flower.

With ``flower.result`` set (``meerkat train --engine flower*`` sets it), the ServerApp writes the summary
or the error there for the command that submitted it.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from meerkat_core.fed.simulator import build_server_federation
from meerkat_core.fed.training import run_training
from meerkat_core.flower.app_config import settings_from_run_config, train_config_from_run_config
from meerkat_core.flower.result import write_result
from meerkat_core.flower.rounds import FlowerRounds

app = ServerApp()
log = logging.getLogger("meerkat.flower")


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = settings_from_run_config(context.run_config)
    try:
        cfg = train_config_from_run_config(context.run_config)
        summary = run_training(cfg, on_event=log.info, build=build_server_federation,
                               round_runner=FlowerRounds(grid, settings))
    except Exception as exc:  # reported to the command through the result file
        if settings.result:
            write_result(settings.result, error=exc)
        raise
    if settings.result:
        write_result(settings.result, summary=summary)
