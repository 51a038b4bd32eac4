"""The federated server: samples clients, sends seeds, replays every client's virtual path from the
returned scalars, computes GradIP on the way, and aggregates the end points by sample count.

Aggregation is the weighted average of the replayed end points, computed as
``x <- x + sum_c p_c (x_c^T - x)`` accumulated step by step: every client step contributes the
global update ``x += fp32(-p_c * lr * g_c^t) * z_c^t`` (clients in id order, steps in order). That
sequence is also the history a client replays to catch up, so server and clients hold the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from meerkat_core.fed.policy import RoundPolicy, UniformPolicy
from meerkat_core.fed.schedule import lr_at
from meerkat_core.fed.protocol import ClientReply, HistoryEntry, RoundInstruction
from meerkat_core.fed.state import state_crc
from meerkat_core.gradip.compute import step_gradip
from meerkat_core.zo import derive_key, replay, rng
from meerkat_core.zo.update import add_scaled


@dataclass
class ServerConfig:
    seed: int
    rounds: int
    local_steps: int
    clients_per_round: int
    lr: float
    eps: float
    batch_size: int
    schedule: str = "constant"
    # "replay": always the missed history; "vector": always the k-vector; "auto": per message, the
    # history unless it would be larger than the k-vector (a client away for many rounds)
    sync: str = "replay"


HISTORY_ENTRY_BYTES = 16  # a missed update on the wire: uint64 key + float64 coefficient
VECTOR_ENTRY_BYTES = 4  # one fp32 coordinate


@dataclass
class ClientOutcome:
    client: int
    steps: int
    seed: int
    lr: float
    eps: float
    data_offset: int
    weight: float
    gs: list[float]
    losses: list[float]
    skipped: int
    gradip: list[float] = field(default_factory=list)  # g * <gbar, z> per step (nan when skipped)
    cosine: list[float] = field(default_factory=list)  # sign(g) <gbar, z> / (|gbar| |z|)
    end_state: torch.Tensor | None = None  # the replayed virtual path's end point


# a reply prepared ahead of the aggregation keeps its z's when they take at most this many bytes
PREPARED_Z_BYTES = 64 << 20


@dataclass
class PreparedReply:
    """One client's reply replayed ahead of the round's aggregation (``ZOServer.prepare``)."""

    instruction: RoundInstruction
    reply: ClientReply
    keys: list[int]  # the stream key of each step
    gradip: list[float]
    cosine: list[float]
    applied: list[int] = field(default_factory=list)  # the steps that update (finite coefficient), in order
    zs: list[torch.Tensor] | None = None  # their z's; None: drawn again when the round aggregates
    end_state: torch.Tensor | None = None  # the client's replayed end point (when asked for)


@dataclass
class RoundOutcome:
    round: int
    clients: list[ClientOutcome]
    state_crc: int


class ZOServer:
    """Holds the global k-vector and the update history; knows nothing of the model or the data."""

    def __init__(
        self,
        config: ServerConfig,
        x0: torch.Tensor,
        client_sizes: dict[int, int],
        gbar: torch.Tensor | None = None,
        policy: RoundPolicy | None = None,
    ) -> None:
        self.cfg = config
        self.x = x0.clone()
        self.round = 0  # rounds completed; self.x is the state after it
        self.client_sizes = dict(client_sizes)
        self.history: dict[int, list[HistoryEntry]] = {}  # round -> global updates of that round
        self.data_offset = {c: 0 for c in client_sizes}
        self.synced_round = {c: 0 for c in client_sizes}  # what the server believes each client holds
        self.gbar = gbar.to(x0.device, torch.float32) if gbar is not None else None
        self._gbar_norm = float(self.gbar.norm()) if self.gbar is not None else 0.0
        self.policy: RoundPolicy = policy or UniformPolicy(config.seed, config.clients_per_round, config.local_steps)

    # -- planning ---------------------------------------------------------------------------------
    def lr_for(self, round_: int) -> float:
        return lr_at(self.cfg.schedule, self.cfg.lr, round_, self.cfg.rounds)

    def sample_clients(self, round_: int) -> list[int]:
        return self.policy.participants(round_, sorted(self.client_sizes))

    def instruction(self, round_: int, client: int) -> RoundInstruction:
        steps = int(self.policy.steps(round_, client))
        common = dict(
            round=round_, client=client, steps=steps, seed=self.cfg.seed, lr=self.lr_for(round_),
            eps=self.cfg.eps, data_offset=self.data_offset[client], state_round=self.round,
            state_crc=state_crc(self.x),
        )
        since = self.synced_round[client]
        history: list[HistoryEntry] = []
        if self.cfg.sync != "vector":
            history = [h for r in range(since + 1, self.round + 1) for h in self.history.get(r, [])]
        if self.cfg.sync == "vector" or (
            self.cfg.sync == "auto" and len(history) * HISTORY_ENTRY_BYTES > self.x.numel() * VECTOR_ENTRY_BYTES
        ):
            return RoundInstruction(sync="vector", synced_round=self.round,
                                    vector=self.x.detach().cpu().numpy(), **common)
        return RoundInstruction(sync="replay", synced_round=since, history=history, **common)

    def plan_round(self, round_: int) -> list[RoundInstruction]:
        return [self.instruction(round_, c) for c in self.sample_clients(round_)]

    # -- aggregation ------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, instr: RoundInstruction, reply: ClientReply, keep_end_state: bool = False,
                x_start: torch.Tensor | None = None) -> PreparedReply:
        """One reply's replay ahead of the round's aggregation: its GradIP, the steps that update, and
        their z's when they fit in ``PREPARED_Z_BYTES`` (else ``complete_round`` draws them again).

        A Flower round calls it for each reply as it arrives, while the other clients still work;
        ``x_start`` is the state the round started from (default: the current state, which the round
        changes only in ``complete_round``)."""
        x0 = self.x if x_start is None else x_start
        keep_z = len(reply.gs) * x0.numel() * 4 <= PREPARED_Z_BYTES
        zs: list[torch.Tensor] = []
        prep = self._replay(instr, reply, x0, keep_end_state, on_z=(lambda t, z, g: zs.append(z)) if keep_z else None)
        prep.zs = zs if keep_z else None
        return prep

    def _replay(self, instr: RoundInstruction, reply: ClientReply, x0: torch.Tensor, keep_end_state: bool,
                on_z: Callable[[int, torch.Tensor, float], None] | None) -> PreparedReply:
        """Replay one client's virtual path from ``x0`` (GradIP on the way), calling ``on_z`` with the z of
        every step that updates, in order."""
        n = len(reply.gs)
        keys = [derive_key(instr.seed, instr.round, instr.client, t) for t in range(n)]
        prep = PreparedReply(instr, reply, keys, gradip=[float("nan")] * n, cosine=[float("nan")] * n)

        def on_step(t: int, z: torch.Tensor, g: float) -> None:
            prep.applied.append(t)
            if self.gbar is not None:
                prep.gradip[t], prep.cosine[t] = step_gradip(g, self.gbar, self._gbar_norm, z)
            if on_z is not None:
                on_z(t, z, g)

        end = replay(x0, keys, reply.gs, instr.lr, callback=on_step)
        prep.end_state = end if keep_end_state else None
        return prep

    @torch.no_grad()
    def complete_round(
        self, round_: int, instructions: Sequence[RoundInstruction], replies: Sequence[ClientReply],
        keep_end_states: bool = False, prepared: Mapping[int, PreparedReply] | None = None,
    ) -> RoundOutcome:
        """Replay each reply's steps (virtual path + GradIP) and aggregate into the global state.

        ``prepared``: client -> ``prepare``'s result for that client's reply (its replay done while the
        round waited for the others); the aggregation is the same bits either way."""
        by_client = {r.client: r for r in replies}
        total = sum(self.client_sizes[i.client] for i in instructions if i.client in by_client)
        x_start = self.x.clone()
        updates: list[HistoryEntry] = []
        outcomes: list[ClientOutcome] = []
        for instr in sorted(instructions, key=lambda i: i.client):
            reply = by_client.get(instr.client)
            if reply is None:
                continue  # a dropped client: the round goes on with the others
            if instr.round != round_:
                raise ValueError(f"round {round_}: an instruction of round {instr.round}")
            p = self.client_sizes[instr.client] / total
            keys = [derive_key(instr.seed, round_, instr.client, t) for t in range(len(reply.gs))]

            def add(t: int, z: torch.Tensor, g: float) -> None:
                coef = -(p * instr.lr * g)
                add_scaled(self.x, z, coef)
                updates.append(HistoryEntry(keys[t], coef))

            prep = (prepared or {}).get(instr.client)
            if prep is not None and (prep.reply is not reply or (keep_end_states and prep.end_state is None)):
                prep = None
            if prep is None:  # replay and aggregate in one pass
                prep = self._replay(instr, reply, x_start, keep_end_states, on_z=add)
            else:
                k = self.x.numel()
                zs = prep.zs if prep.zs is not None else (rng.normal(keys[t], k, device=self.x.device)
                                                          for t in prep.applied)
                for t, z in zip(prep.applied, zs):
                    add(t, z, float(reply.gs[t]))
            outcomes.append(ClientOutcome(
                client=instr.client, steps=instr.steps, seed=instr.seed, lr=instr.lr, eps=instr.eps,
                data_offset=instr.data_offset, weight=p, gs=list(reply.gs), losses=list(reply.losses),
                skipped=len(reply.gs) - len(prep.applied), gradip=prep.gradip, cosine=prep.cosine,
                end_state=prep.end_state if keep_end_states else None,
            ))
            self.data_offset[instr.client] += instr.steps * self.cfg.batch_size
            self.synced_round[instr.client] = self.round
        self.history[round_] = updates
        self.round = round_
        return RoundOutcome(round=round_, clients=outcomes, state_crc=state_crc(self.x))

    # -- resume -----------------------------------------------------------------------------------
    def restore_round(self, round_: int, records: Sequence[dict]) -> RoundOutcome:
        """Redo a completed round from its ledger records (``--resume``): the same ``complete_round``
        that ran it, fed the recorded instructions and replies, so the state, the history, GradIP, the
        data pointers and when each client last synced come out bitwise as they did.

        Raises ``ValueError`` naming the first field that contradicts the run so far (the caller turns
        it into an error naming the ledger line)."""
        instructions, replies = [], []
        for rec in records:
            c = int(rec["client"])
            if c not in self.client_sizes:
                raise ValueError(f"client {c} is not in the partition")
            if int(rec["data_offset"]) != self.data_offset[c]:
                raise ValueError(f"client {c} data_offset {rec['data_offset']} but the rounds before leave it at {self.data_offset[c]}")
            gs = [float(g) for g in rec["gs"]]
            if len(gs) != int(rec["steps"]):
                raise ValueError(f"client {c} has {len(gs)} gs for {rec['steps']} steps")
            instructions.append(RoundInstruction(
                round=round_, client=c, steps=int(rec["steps"]), seed=int(rec["seed"]), lr=float(rec["lr"]),
                eps=float(rec["eps"]), data_offset=int(rec["data_offset"]), sync="replay", synced_round=0,
                state_round=self.round))
            replies.append(ClientReply(round=round_, client=c, gs=gs, losses=[float(v) for v in rec["losses"]],
                                       state_crc=0))
        return self.complete_round(round_, instructions, replies)
