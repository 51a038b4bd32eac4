"""The ServerApp: ``run_training`` with the Flower RoundRunner; it writes the run directory.

The run config key ``job`` names the job file (``meerkat_core.flower.job``). The server side is the
in-process engine's: ZOServer, the ledger, checkpoints, GradIP and evaluation; only the rounds travel
over Flower.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from meerkat_core.fed.training import run_training
from meerkat_core.flower.job import RUN_CONFIG_KEY, FlowerJob, write_result
from meerkat_core.flower.rounds import FlowerRounds

app = ServerApp()
log = logging.getLogger("meerkat.flower")


@app.main()
def main(grid: Grid, context: Context) -> None:
    job = FlowerJob.read(str(context.run_config[RUN_CONFIG_KEY]))
    try:
        summary = run_training(job.config(), on_event=log.info, round_runner=FlowerRounds(grid, job.timeouts))
    except Exception as exc:  # reported to the command through the result file
        write_result(job.result, error=exc)
        raise
    write_result(job.result, summary=summary)
