"""SharedCatchUp: clients of one process catch up from the newest global state any of them reached,
with the bits of their own full replay, and fall back to that replay whenever it cannot help."""

from __future__ import annotations

import torch

from meerkat_core.fed.catchup import SharedCatchUp
from meerkat_core.fed.protocol import HistoryEntry, RoundInstruction
from meerkat_core.fed.state import apply_history, state_crc
from meerkat_core.zo import derive_key

K = 500
X0 = torch.linspace(-0.5, 0.5, K)
# global updates of rounds 1..6: a varying number per round (clients dropped, stopped early, ...)
UPDATES = {r: [HistoryEntry(derive_key(9, r, c, 0), 1e-3 * (c + 1) * (-1) ** r) for c in range(1 + r % 3)]
           for r in range(1, 7)}


def state(r: int) -> torch.Tensor:
    return apply_history(X0.clone(), [h for rr in range(1, r + 1) for h in UPDATES[rr]])


def instr(since: int, at: int, *, crc: int | None = None, sync: str = "replay") -> RoundInstruction:
    history = [h for rr in range(since + 1, at + 1) for h in UPDATES[rr]]
    return RoundInstruction(round=at + 1, client=0, steps=1, seed=9, lr=1e-3, eps=1e-3, data_offset=0, sync=sync,
                            synced_round=since, history=history if sync == "replay" else [], state_round=at,
                            state_crc=state_crc(state(at)) if crc is None else crc)


def test_adopts_or_replays_only_the_tail_with_the_same_bits() -> None:
    shared = SharedCatchUp()
    assert shared.state_for("run", instr(0, 2)) is None  # nothing reached yet: the client replays
    shared.record("run", instr(0, 2), state(2))
    got = shared.state_for("run", instr(0, 2))  # another new client, same round: adopts
    assert got is not None and torch.equal(got, state(2))
    got[0] += 1  # a copy: the client's steps cannot touch the shared state
    assert torch.equal(shared.state_for("run", instr(0, 2)), state(2))
    # round 5, a client last synced at round 0: starts at round 2's state, replays rounds 3..5 only
    i = instr(0, 5)
    tail = len(UPDATES[3]) + len(UPDATES[4]) + len(UPDATES[5])
    assert len(i.history) - tail == len(UPDATES[1]) + len(UPDATES[2]) > 0
    got = shared.state_for("run", i)
    assert got is not None and torch.equal(got, state(5))
    shared.record("run", i, got)
    # a client at round 2 (known: n(2)) going to 6; and one at round 1, whose n(1) was never seen
    assert torch.equal(shared.state_for("run", instr(2, 6)), state(6))
    assert shared.state_for("run", instr(1, 6)) is None


def test_never_hands_out_a_state_the_server_does_not_hold() -> None:
    shared = SharedCatchUp()
    shared.record("run", instr(0, 3), state(3))
    assert shared.state_for("run", instr(0, 3, crc=12345)) is None  # crc differs: replay yourself
    assert shared.state_for("run", instr(0, 4, crc=12345)) is None
    assert shared.state_for("run", instr(0, 2)) is None  # the shared state is past the target round
    assert shared.state_for("run", instr(3, 3, sync="vector")) is None  # vector sync carries its state
    assert shared.state_for("other run", instr(0, 3)) is None  # a new run starts empty
    assert shared.state_for("run", instr(0, 3)) is None  # ... and replaced the old one


def test_a_vector_sync_teaches_the_state_but_no_update_count() -> None:
    shared = SharedCatchUp()
    shared.record("run", instr(0, 3, sync="vector"), state(3))
    assert torch.equal(shared.state_for("run", instr(0, 3)), state(3))  # same round: adopted
    assert shared.state_for("run", instr(0, 4)) is None  # n(3) unknown: where round 4's updates start is not
