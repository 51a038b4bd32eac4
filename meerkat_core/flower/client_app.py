"""The ClientApp: one site's ZOClient on Flower.

``query`` (the handshake) stores the server's ClientSetup in the run's Context state after checking the
site's files, and answers with the site's client id. ``train`` runs one round of ``ZOClient.run_round``.

Flower runs every message in a fresh ``flwr-clientapp`` process, so what a client keeps between rounds
lives in ``context.state`` (persisted by the SuperNode for the run): the setup, the round the client is
synchronised to and its k-vector (local only, never sent). The base model is reloaded from the site's
files for each message.
"""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from meerkat_core.errors import MeerkatError
from meerkat_core.flower.records import (
    HELLO,
    SETUP,
    ClientSetup,
    instruction_from_content,
    reply_to_content,
)
from meerkat_core.flower.site import SiteConfig, build_site_client, check_site

STATE = "meerkat.client_state"
STATE_VECTOR = "meerkat.client_vector"

app = ClientApp()


@app.query()
def hello(msg: Message, context: Context) -> Message:
    setup = ClientSetup.from_record(msg.content[SETUP])
    site = SiteConfig.from_node_config(context.node_config)
    check_site(site, setup)
    context.state[SETUP] = setup.to_record()
    synced = int(context.state[STATE]["synced_round"]) if STATE in context.state else 0
    return Message(RecordDict({HELLO: MetricRecord({"client": site.partition_id, "synced_round": synced})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if SETUP not in context.state:
        raise MeerkatError("this SuperNode missed the handshake of the run (restarted?)")
    setup = ClientSetup.from_record(context.state[SETUP])
    site = SiteConfig.from_node_config(context.node_config)
    client, runtime = build_site_client(site, setup)
    if STATE in context.state:
        vec = context.state[STATE_VECTOR]["x"].numpy() if STATE_VECTOR in context.state else None
        client.restore_sync_state(int(context.state[STATE]["synced_round"]),
                                  None if vec is None else torch.from_numpy(vec.copy()))
    instr = instruction_from_content(msg.content)
    reply, _ = client.run_round(instr, runtime)
    synced, state = client.sync_state()
    context.state[STATE] = ConfigRecord({"synced_round": synced})
    if state is not None:
        context.state[STATE_VECTOR] = ArrayRecord({"x": Array(state.detach().cpu().numpy())})
    return Message(reply_to_content(reply), reply_to=msg)
