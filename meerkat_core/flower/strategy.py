"""``MeerkatStrategy``: a Flower Strategy that wraps ZOServer.

``configure_train`` asks ``ZOServer.plan_round`` for the round's instructions and turns each one into a
train Message for the SuperNode of that client; ``accept`` takes each reply as it arrives (checks it,
counts its bytes, replays it with ``ZOServer.prepare`` while the other clients still work), and
``aggregate_train`` takes any reply not yet accepted and calls ``ZOServer.complete_round`` (the
aggregation in client order; the same bits as replaying everything there). There are no
model arrays: ``arrays`` is ignored and ``aggregate_train`` returns none. Evaluation is the server's own
(``run_training`` evaluates the global state), so ``configure_evaluate`` sends nothing.

A sampled client whose SuperNode is gone, or whose message comes back with Flower's "node unavailable"
error, counts as dropped: the round completes with the others (``complete_round`` weighs the replies
it got). Any other error reply (the ClientApp raised) stops the run with that client's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from meerkat_core.errors import MeerkatError
from meerkat_core.fed.protocol import RoundInstruction
from meerkat_core.fed.server import PreparedReply, RoundOutcome, ZOServer
from meerkat_core.flower.records import instruction_to_content, message_bytes, reply_from_content

# Flower ErrorCode values meaning "the node or its message is gone" (flwr.common.constant.ErrorCode)
GONE = {3, 4, 5, 8}  # MESSAGE_UNAVAILABLE, REPLY_MESSAGE_UNAVAILABLE, NODE_UNAVAILABLE, CLIENT_APP_CRASHED


@dataclass
class RoundTraffic:
    """One round on the wire: protocol bytes per client (as the ledger counts them) and Flower's."""

    protocol: dict[int, tuple[int, int]] = field(default_factory=dict)
    flower_down: int = 0
    flower_up: int = 0
    dropped: list[int] = field(default_factory=list)


class MeerkatStrategy(Strategy):
    def __init__(self, server: ZOServer, nodes: dict[int, int]) -> None:
        self.server = server
        self.nodes = nodes  # client id -> Flower node id (kept up to date by the caller)
        self._pending: dict[int, RoundInstruction] = {}
        self._sent: list[Message] = []
        self._counted_sent = False
        self._got: dict[int, PreparedReply] = {}  # client -> its reply, replayed on arrival
        self._accepted: set[str] = set()  # message ids of the replies taken so far
        self.outcome: RoundOutcome | None = None
        self.traffic = RoundTraffic()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._pending = {i.client: i for i in self.server.plan_round(server_round)}
        self.traffic = RoundTraffic()
        self._sent = []
        self._counted_sent = False
        self._got, self._accepted = {}, set()
        for c, instr in self._pending.items():
            node = self.nodes.get(c)
            if node is None:
                self.traffic.dropped.append(c)
                continue
            self._sent.append(Message(instruction_to_content(instr), dst_node_id=node, message_type="train",
                                      group_id=str(server_round)))
        return list(self._sent)

    def count_sent(self) -> None:
        """Flower's bytes of the round's train messages (the round calls it while it waits for replies)."""
        self.traffic.flower_down = sum(message_bytes(m) for m in self._sent)
        self._counted_sent = True

    def accept(self, server_round: int, msg: Message) -> None:
        """Take one reply as it arrives: check it, count its bytes, and replay it (``ZOServer.prepare``)
        while the other clients still work; ``aggregate_train`` then only aggregates in client order."""
        c = self._by_node().get(msg.metadata.src_node_id)
        if msg.has_error():
            if msg.error.code in GONE:
                return
            who = f"client {c}" if c is not None else f"node {msg.metadata.src_node_id}"
            raise MeerkatError(f"round {server_round}: {who} failed on its SuperNode: {error_reason(msg.error.reason)}")
        reply = reply_from_content(msg.content)
        if reply.round != server_round or reply.client not in self._pending or reply.client in self._got:
            raise MeerkatError(f"round {server_round}: unexpected reply (round {reply.round}, client {reply.client})")
        self.traffic.flower_up += message_bytes(msg)
        self._got[reply.client] = self.server.prepare(self._pending[reply.client], reply)
        self._accepted.add(msg.metadata.message_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not self._counted_sent:
            self.count_sent()
        for msg in replies:
            if msg.metadata.message_id not in self._accepted:
                self.accept(server_round, msg)
        got = [p.reply for p in self._got.values()]
        self.traffic.dropped = sorted(c for c in self._pending if c not in self._got)
        instructions = [self._pending[c] for c in sorted(self._pending)]
        for r in got:
            self.traffic.protocol[r.client] = (len(self._pending[r.client].to_bytes()), len(r.to_bytes()))
        self.outcome = self.server.complete_round(server_round, instructions, got, prepared=self._got) if got else None
        return None, MetricRecord({"clients": len(got), "dropped": len(self.traffic.dropped)})

    def _by_node(self) -> dict[int, int]:
        return {node: c for c, node in self.nodes.items()}

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        return None


def error_reason(reason: str) -> str:
    """Flower formats a ClientApp exception as "<class 'X'>:<'message'>"; keep the message, on one line."""
    text = " ".join(str(reason).split())
    if ":<'" in text and text.endswith("'>"):
        text = text.split(":<'", 1)[1][:-2]
    return text
