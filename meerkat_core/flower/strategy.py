"""``MeerkatStrategy``: a Flower Strategy that wraps ZOServer.

``configure_train`` asks ``ZOServer.plan_round`` for the round's instructions and turns each one into a
train Message for the SuperNode of that client; ``aggregate_train`` turns the replies back into
``ClientReply`` objects and calls ``ZOServer.complete_round`` (replay, GradIP, aggregation). There are no
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
from meerkat_core.fed.protocol import ClientReply, RoundInstruction
from meerkat_core.fed.server import RoundOutcome, ZOServer
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
        self.outcome: RoundOutcome | None = None
        self.traffic = RoundTraffic()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._pending = {i.client: i for i in self.server.plan_round(server_round)}
        self.traffic = RoundTraffic()
        self._sent = []
        for c, instr in self._pending.items():
            node = self.nodes.get(c)
            if node is None:
                self.traffic.dropped.append(c)
                continue
            self._sent.append(Message(instruction_to_content(instr), dst_node_id=node, message_type="train",
                                      group_id=str(server_round)))
        return list(self._sent)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.traffic.flower_down = sum(message_bytes(m) for m in self._sent)
        by_node = {node: c for c, node in self.nodes.items()}
        got: list[ClientReply] = []
        for msg in replies:
            c = by_node.get(msg.metadata.src_node_id)
            if msg.has_error():
                if msg.error.code in GONE:
                    continue
                who = f"client {c}" if c is not None else f"node {msg.metadata.src_node_id}"
                raise MeerkatError(f"round {server_round}: {who} failed on its SuperNode: {error_reason(msg.error.reason)}")
            reply = reply_from_content(msg.content)
            if reply.round != server_round or reply.client not in self._pending:
                raise MeerkatError(f"round {server_round}: unexpected reply (round {reply.round}, client {reply.client})")
            self.traffic.flower_up += message_bytes(msg)
            got.append(reply)
        answered = {r.client for r in got}
        self.traffic.dropped = sorted(c for c in self._pending if c not in answered)
        instructions = [self._pending[c] for c in sorted(self._pending)]
        for r in got:
            self.traffic.protocol[r.client] = (len(self._pending[r.client].to_bytes()), len(r.to_bytes()))
        self.outcome = self.server.complete_round(server_round, instructions, got) if got else None
        return None, MetricRecord({"clients": len(got), "dropped": len(self.traffic.dropped)})

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
