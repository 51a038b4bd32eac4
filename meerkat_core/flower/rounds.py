"""``FlowerRounds``: the RoundRunner that ``run_training`` calls when the engine is Flower.

Before the first round it waits for every client's SuperNode and shakes hands with it (a ``query``
message carrying the ClientSetup; the reply names the site's client id), building the map
client id -> node id. Each round it refreshes that map (a node that left is dropped, a node that joined
is greeted), then sends the Strategy's train messages and aggregates the replies.

Messages go out with ``Grid.push_messages`` and replies come back with ``Grid.pull_messages``, first
``FlowerSettings.poll_min`` s apart, backing off to ``FlowerSettings.poll`` s while none comes
(``Grid.send_and_receive`` sleeps a fixed 3 s between pulls on a deployment, which would cost up to 3 s
per round for nothing). Each reply is taken as it comes (``MeerkatStrategy.accept``: checked, counted,
replayed), so the server's replay overlaps the clients that are still working.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.server import RoundOutcome
from meerkat_core.fed.simulator import Federation
from meerkat_core.flower.app_config import FlowerSettings
from meerkat_core.flower.records import HELLO, SETUP, setup_to_record
from meerkat_core.flower.site import client_setup
from meerkat_core.flower.strategy import GONE, MeerkatStrategy, error_reason

log = logging.getLogger("meerkat.flower")


def exchange(
    grid: Grid, messages: Iterable[Message], timeout: float, poll: float, poll_min: float | None = None,
    on_reply: Callable[[Message], None] | None = None, while_waiting: Callable[[], None] | None = None,
) -> list[Message]:
    """Push ``messages`` and pull their replies until all came back or ``timeout`` s passed.

    The wait between pulls starts at ``poll_min`` s after the push and after every pull that brought a
    reply, and doubles up to ``poll`` s while none comes (replies of one round arrive close together).
    ``on_reply`` is called with each reply as it is pulled, ``while_waiting`` once right after the push:
    the server's own work overlaps the clients'.
    """
    pending = set(grid.push_messages(messages))
    if while_waiting is not None:
        while_waiting()
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    fastest = poll if poll_min is None else min(poll_min, poll)
    wait = fastest
    while pending:
        got = list(grid.pull_messages(pending))
        for msg in got:
            if on_reply is not None:
                on_reply(msg)
            replies.append(msg)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or time.monotonic() > deadline:
            break
        if got:
            wait = fastest
        time.sleep(wait)
        wait = min(poll, wait * 2)
    return replies


class FlowerRounds:
    def __init__(self, grid: Grid, settings: FlowerSettings = FlowerSettings()) -> None:
        self.grid = grid
        self.settings = settings
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.idle: set[int] = set()  # nodes whose client has no data (they sit the run out)
        self._strategy: MeerkatStrategy | None = None

    # -- nodes ------------------------------------------------------------------------------------
    def _greet(self, fed: Federation, node_ids: list[int]) -> None:
        setup = setup_to_record(client_setup(fed))
        msgs = [Message(RecordDict({SETUP: setup}), dst_node_id=n, message_type="query") for n in node_ids]
        for reply in exchange(self.grid, msgs, self.settings.round_timeout, self.settings.poll):
            node = reply.metadata.src_node_id
            if reply.has_error():
                if reply.error.code in GONE:
                    continue
                raise MeerkatInputError(f"SuperNode {node} refused the run: {error_reason(reply.error.reason)}")
            hello = reply.content[HELLO]
            c = int(hello["client"])
            if c not in fed.server.client_sizes:
                if int(hello.get("examples", 0)) == 0:
                    self.idle.add(node)
                    continue
                raise MeerkatInputError(f"SuperNode {node} says it is client {c}, which has no data in the partition")
            if c in self.nodes and self.nodes[c] != node and self.nodes[c] in node_ids:
                raise MeerkatInputError(f"SuperNodes {self.nodes[c]} and {node} both say they are client {c}")
            self.nodes[c] = node
            # a (re)started node holds the state it reports; send it the history from there
            fed.server.synced_round[c] = int(hello["synced_round"])

    def _refresh(self, fed: Federation) -> None:
        live = set(self.grid.get_node_ids())
        self.nodes = {c: n for c, n in self.nodes.items() if n in live}
        self.idle &= live
        new = sorted(live - set(self.nodes.values()) - self.idle)
        if new:
            self._greet(fed, new)

    def _connect(self, fed: Federation) -> None:
        want = set(fed.server.client_sizes)
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            self._refresh(fed)
            if want <= set(self.nodes):
                return
            if time.monotonic() > deadline:
                missing = sorted(want - set(self.nodes))
                raise MeerkatInputError(
                    f"only {len(self.nodes)} of {len(want)} clients' SuperNodes joined within "
                    f"{self.settings.connect_timeout:.0f} s (missing clients {', '.join(map(str, missing))})"
                )
            time.sleep(max(self.settings.poll, 0.2))

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
        replies = exchange(self.grid, messages, self.settings.round_timeout, self.settings.poll, self.settings.poll_min,
                           on_reply=lambda m: strategy.accept(r, m), while_waiting=strategy.count_sent) if messages else []
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
