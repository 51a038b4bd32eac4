"""A federated client: syncs to the global state, runs its local ZO steps, returns scalars.

Clients in the in-process simulator share ONE model (and one ``SparseCoordinates``); a client's own
state is only its synchronised k-vector, so switching clients is an O(k) copy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from meerkat_core.encoding import EncodedSet, candidate_batch, label_batch
from meerkat_core.errors import MeerkatError
from meerkat_core.fed.protocol import ClientReply, RoundInstruction
from meerkat_core.fed.state import apply_history, state_crc
from meerkat_core.scoring import (
    classification_loss,
    label_loss,
    multi_token_classification_loss,
    paired_classification_loss,
    paired_label_loss,
    paired_multi_token_classification_loss,
)
from meerkat_core.zo import SparseCoordinates, StepLoss, derive_key, zo_step


def data_order(seed: int, client: int, n: int, epoch: int) -> list[int]:
    """The client's data order for one pass (epoch): a permutation seeded by (seed, client, epoch)."""
    order = list(range(n))
    random.Random(derive_key(seed, -1, client, epoch)).shuffle(order)
    return order


def batch_indices(seed: int, client: int, n: int, offset: int, batch_size: int) -> list[int]:
    """Indices of the batch that starts at stream position ``offset`` of the client's data stream.

    The stream is the concatenation of per-epoch permutations; a batch may straddle two epochs.
    Knowing ``offset`` (which the server sends) is enough: the client keeps no data cursor.
    """
    out: list[int] = []
    pos = offset
    while len(out) < batch_size:
        epoch, i = divmod(pos, n)
        order = data_order(seed, client, n, epoch)
        take = min(batch_size - len(out), n - i)
        out.extend(order[i : i + take])
        pos += take
    return out


@dataclass
class ClientRuntime:
    """What all simulated clients share: the one model, its coordinates and the pad token."""

    model: Any
    coords: SparseCoordinates
    pad_id: int
    batch_size: int
    loss: str = "classification"  # over the label words' scores; "lm": CE of the label word over the vocabulary

    def loss_fn(self, data: EncodedSet, indices: list[int]) -> StepLoss:
        """The step's loss (its inputs built once here): two forwards, or one paired forward (zo/paired.py)."""
        device = self.coords.device
        m = self.model
        if self.loss == "classification" and not data.label_words.single_token:
            cand = candidate_batch(data, indices, self.pad_id).to(device)
            labels = torch.tensor([data.labels[i] for i in indices], device=device)
            c = len(data.label_words.token_ids)
            return StepLoss(lambda: multi_token_classification_loss(m, cand, labels, c),
                            lambda: paired_multi_token_classification_loss(m, cand.doubled(), labels, c))
        batch = label_batch(data, indices, self.pad_id).to(device)
        if self.loss == "classification":
            ids = data.label_words.first_ids
            return StepLoss(lambda: classification_loss(m, batch, ids),
                            lambda: paired_classification_loss(m, batch.doubled(), ids))
        return StepLoss(lambda: label_loss(m, batch), lambda: paired_label_loss(m, batch.doubled()))


class ZOClient:
    """One federated client. ``data`` is its encoded shard of the task's train split."""

    def __init__(self, client_id: int, data: EncodedSet, x0: torch.Tensor) -> None:
        self.client_id = client_id
        self.data = data
        self._x0 = x0  # the base model's values at the masked coordinates (every client has them)
        self.synced_round = 0  # 0: the initial state x0
        self._state: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return len(self.data)

    def sync_state(self) -> tuple[int, torch.Tensor | None]:
        """(the round the client is synchronised to, its k-vector; None = still x0), to persist."""
        return self.synced_round, self._state

    def restore_sync_state(self, synced_round: int, state: torch.Tensor | None) -> None:
        """Undo ``sync_state`` in a fresh process (a Flower ClientApp runs each message anew)."""
        self.synced_round = synced_round
        self._state = None if state is None else state.to(self._x0.device, torch.float32).clone()

    def _sync(self, instr: RoundInstruction, known_state: torch.Tensor | None = None) -> torch.Tensor:
        if instr.sync == "replay" and known_state is not None:
            # in-process shortcut: the global state the history leads to, handed over (crc-checked)
            x = known_state.detach().to(self._x0.device, torch.float32).clone()
        elif instr.sync == "vector":
            x = torch.as_tensor(instr.vector, dtype=torch.float32).to(self._x0.device).clone()
        else:
            if instr.synced_round != self.synced_round:
                raise MeerkatError(
                    f"client {self.client_id}: history starts at round {instr.synced_round} but the client is at "
                    f"round {self.synced_round}"
                )
            x = (self._state if self._state is not None else self._x0).clone()
            apply_history(x, instr.history)
        crc = state_crc(x)
        if crc != instr.state_crc:
            raise MeerkatError(f"client {self.client_id}: state after sync does not match the server's (crc)")
        self._state, self.synced_round = x.clone(), instr.state_round
        return x

    def run_round(
        self, instr: RoundInstruction, rt: ClientRuntime, known_state: torch.Tensor | None = None
    ) -> tuple[ClientReply, torch.Tensor]:
        """Sync, run ``instr.steps`` ZO steps on the shared model; return the reply and the end state.

        ``known_state``: in replay mode, the global state the instruction's history leads to, when the
        caller already holds it (the in-process simulator); the client then skips replaying the history
        (O(k) per missed update) and adopts it, still checked against the instruction's crc.
        """
        x = self._sync(instr, known_state)
        rt.coords.set_values(x)
        gs: list[float] = []
        losses: list[float] = []
        n = self.num_examples
        for t in range(instr.steps):
            idx = batch_indices(instr.seed, self.client_id, n, instr.data_offset + t * rt.batch_size, rt.batch_size)
            key = derive_key(instr.seed, instr.round, self.client_id, t)
            res = zo_step(rt.coords, rt.loss_fn(self.data, idx), key, instr.lr, instr.eps)
            gs.append(res.g)
            losses.append(0.5 * (res.loss_plus + res.loss_minus))
        reply = ClientReply(round=instr.round, client=self.client_id, gs=gs, losses=losses, state_crc=state_crc(x))
        return reply, rt.coords.values()
