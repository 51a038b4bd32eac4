"""The ClientApp: one site's ZOClient on Flower.

``query`` (the handshake) checks the site's files against the server's ClientSetup and answers with the
site's client id and the round its state is at; ``train`` runs one round of ``ZOClient.run_round``.

Where the client lives:

- node config ``site-socket``: in a ``meerkat site serve`` process on the same machine, which holds the
  model and shard between rounds; this module then only forwards each message over that Unix socket
  (``site_link``) and imports nothing heavy (a SuperNode starts a fresh ``flwr-clientapp`` process per
  message);
- otherwise in this process, built by a per-process ``SiteCache`` (model, mask, task data, shard): under
  the simulation engine a Ray worker lives for the whole run, so a client is built once per worker; its
  synchronised state (round, k-vector) is kept in the node's ``context.state``, so any worker can take
  any node's next message; a client catches up from the newest global state another client of the
  worker reached when it can (``fed.catchup``, crc-checked), else by replaying its whole history.
"""

from __future__ import annotations

import os

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from meerkat_core.errors import MeerkatError
from meerkat_core.fed.protocol import ClientReply
from meerkat_core.flower.records import (
    HELLO,
    SETUP,
    instruction_from_content,
    reply_to_content,
    setup_from_record,
    setup_to_record,
)
from meerkat_core.flower.site import SITE_SOCKET, SiteCache, SiteConfig, check_site
from meerkat_core.flower.site_link import SiteLink

# Ray (the simulation engine's backend) binds the machine's interface address unless told it is a
# single-node setup; this module is imported by the simulation process before Ray starts.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

STATE = "meerkat.client_state"
STATE_VECTOR = "meerkat.client_vector"

app = ClientApp()
_cache: list[SiteCache] = []  # this process's SiteCache, made on first use


def _site_cache() -> SiteCache:
    if not _cache:
        _cache.append(SiteCache())
    return _cache[0]


def _socket(context: Context) -> str | None:
    value = context.node_config.get(SITE_SOCKET)
    return str(value) if value else None


@app.query()
def hello(msg: Message, context: Context) -> Message:
    setup = setup_from_record(msg.content[SETUP])
    sock = _socket(context)
    if sock:
        info = SiteLink(sock).hello(context.run_id, setup.to_dict())
    else:
        site = SiteConfig.from_node_config(context.node_config, context.run_config)
        check_site(site, setup)
        context.state[SETUP] = setup_to_record(setup)
        synced = int(context.state[STATE]["synced_round"]) if STATE in context.state else 0
        examples = _site_cache().examples(site)
        if examples:
            _site_cache().get(site, setup)  # build now, so round 1 does not pay for it
        info = {"client": site.partition_id, "synced_round": synced, "examples": examples}
    return Message(RecordDict({HELLO: MetricRecord({k: int(v) for k, v in info.items()})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    instr = instruction_from_content(msg.content)
    sock = _socket(context)
    if sock:
        reply = ClientReply.from_bytes(SiteLink(sock).train(context.run_id, instr.to_bytes()))
        return Message(reply_to_content(reply), reply_to=msg)
    if SETUP not in context.state:
        raise MeerkatError("this SuperNode missed the handshake of the run (restarted?)")
    import torch

    setup = setup_from_record(context.state[SETUP])
    site = SiteConfig.from_node_config(context.node_config, context.run_config)
    built = _site_cache().get(site, setup)
    client = built.client
    if STATE in context.state:
        vec = context.state[STATE_VECTOR]["x"].numpy() if STATE_VECTOR in context.state else None
        client.restore_sync_state(int(context.state[STATE]["synced_round"]),
                                  None if vec is None else torch.from_numpy(vec.copy()))
    else:
        client.restore_sync_state(0, None)
    shared = _site_cache().catch_up
    reply, _ = client.run_round(instr, built.runtime, known_state=shared.state_for(context.run_id, instr))
    synced, state = client.sync_state()
    context.state[STATE] = ConfigRecord({"synced_round": synced})
    if state is not None:
        shared.record(context.run_id, instr, state)
        context.state[STATE_VECTOR] = ArrayRecord({"x": Array(state.detach().cpu().numpy())})
    return Message(reply_to_content(reply), reply_to=msg)
