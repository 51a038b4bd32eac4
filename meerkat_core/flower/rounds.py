"""``FlowerRounds``: the RoundRunner that ``run_training`` calls when the engine is Flower.

Before the first round it waits for every client's SuperNode and shakes hands with it (a ``query``
message carrying the ClientSetup; the reply names the site's client id), building the map
client id -> node id. Each round it refreshes that map (a node that left is dropped, a node that joined
is greeted), then sends the Strategy's train messages and aggregates the replies.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.server import RoundOutcome
from meerkat_core.fed.simulator import Federation
from meerkat_core.flower.records import HELLO, SETUP, ClientSetup
from meerkat_core.flower.strategy import MeerkatStrategy, error_reason

log = logging.getLogger("meerkat.flower")


@dataclass(frozen=True)
class RoundTimeouts:
    connect: float = 300.0  # wait this long for every client's SuperNode before round 1
    round: float = 3600.0  # wait this long for a round's replies (dead nodes are reported sooner)
    poll: float = 1.0


def client_setup(fed: Federation) -> ClientSetup:
    cfg = fed.cfg
    return ClientSetup(
        model=cfg.model, task=cfg.task, mask_sha256=str(fed.provenance["mask_sha256"]), k=int(fed.provenance["k"]),
        max_length=cfg.max_length, batch_size=cfg.batch_size, dtype=cfg.dtype,
        loss=cfg.loss, trust_remote_code=cfg.trust_remote_code,
    )


class FlowerRounds:
    def __init__(self, grid: Grid, timeouts: RoundTimeouts = RoundTimeouts()) -> None:
        self.grid = grid
        self.timeouts = timeouts
        self.nodes: dict[int, int] = {}  # client id -> node id
        self._strategy: MeerkatStrategy | None = None

    # -- nodes ------------------------------------------------------------------------------------
    def _greet(self, fed: Federation, node_ids: list[int]) -> None:
        setup = client_setup(fed).to_record()
        msgs = [Message(RecordDict({SETUP: setup}), dst_node_id=n, message_type="query") for n in node_ids]
        for reply in self.grid.send_and_receive(msgs, timeout=self.timeouts.round):
            node = reply.metadata.src_node_id
            if reply.has_error():
                if reply.error.code in (3, 4, 5, 8):
                    continue
                raise MeerkatInputError(f"SuperNode {node} refused the run: {error_reason(reply.error.reason)}")
            c = int(reply.content[HELLO]["client"])
            if c not in fed.server.client_sizes:
                raise MeerkatInputError(f"SuperNode {node} says it is client {c}, which has no data in the partition")
            if c in self.nodes and self.nodes[c] != node and self.nodes[c] in node_ids:
                raise MeerkatInputError(f"SuperNodes {self.nodes[c]} and {node} both say they are client {c}")
            self.nodes[c] = node
            # a (re)started node holds the state it reports; send it the history from there
            fed.server.synced_round[c] = int(reply.content[HELLO]["synced_round"])

    def _refresh(self, fed: Federation) -> None:
        live = set(self.grid.get_node_ids())
        self.nodes = {c: n for c, n in self.nodes.items() if n in live}
        new = sorted(live - set(self.nodes.values()))
        if new:
            self._greet(fed, new)

    def _connect(self, fed: Federation) -> None:
        want = set(fed.server.client_sizes)
        deadline = time.monotonic() + self.timeouts.connect
        while True:
            self._refresh(fed)
            if want <= set(self.nodes):
                return
            if time.monotonic() > deadline:
                missing = sorted(want - set(self.nodes))
                raise MeerkatInputError(
                    f"only {len(self.nodes)} of {len(want)} clients' SuperNodes joined within {self.timeouts.connect:.0f} s "
                    f"(missing clients {', '.join(map(str, missing))})"
                )
            time.sleep(self.timeouts.poll)

    # -- rounds -----------------------------------------------------------------------------------
    def __call__(self, fed: Federation, r: int) -> tuple[RoundOutcome, dict[int, tuple[int, int]], dict[str, Any]]:
        if self._strategy is None:
            self._connect(fed)
            self._strategy = MeerkatStrategy(fed.server, self.nodes)
        else:
            self._refresh(fed)
        strategy = self._strategy
        strategy.nodes = self.nodes
        messages = strategy.configure_train(r, ArrayRecord(), ConfigRecord(), self.grid)
        replies = self.grid.send_and_receive(messages, timeout=self.timeouts.round) if messages else []
        strategy.aggregate_train(r, replies)
        t = strategy.traffic
        if strategy.outcome is None:
            raise MeerkatInputError(
                f"round {r}: no client replied (clients {', '.join(map(str, t.dropped))} unreachable); "
                f"the run directory is complete up to round {r - 1}: restart the SuperNodes and continue with --resume"
            )
        if t.dropped:
            log.warning("round %d: clients %s dropped out; the round completes with the others", r, t.dropped)
        extra = {"flower_bytes_down": t.flower_down, "flower_bytes_up": t.flower_up, "dropped": t.dropped}
        return strategy.outcome, dict(t.protocol), extra

