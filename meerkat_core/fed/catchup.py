"""Catching up several clients of one process from the global states it already reached.

A process that hosts many clients of one run (a Ray worker of Flower's simulation engine runs every
virtual SuperNode's messages) would otherwise replay the same global updates once per client: a
client sampled at round r for the first time replays every update of rounds 1 .. r-1, at about 1 ms
per update for k = 3,220 on a CPU core. ``SharedCatchUp`` keeps, per run, the newest global state a
client of this process reached and how many global updates lead to each round it saw; the next client
adopts that state, or starts from it and replays only the updates after it.

Where updates start: the n-th update of the history a client is sent is the global update number
``n(synced_round) + n`` of the run, and ``n(state_round) = n(synced_round) + len(history)``; every
sync through this object teaches it one more ``n(round)``, starting from ``n(0) = 0``.

Nothing is taken on trust: a state found here is used only when its crc32 equals the instruction's
``state_crc`` (the server's), so a wrong guess costs a replay, never a wrong state. The bits are those
of the client's own replay: the global state of a round is one fixed sequence of ``add_scaled`` from
x0, whichever client walked it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import torch

from meerkat_core.fed.protocol import RoundInstruction
from meerkat_core.fed.state import apply_history, state_crc


@dataclass
class _RunStates:
    updates_through: dict[int, int] = field(default_factory=lambda: {0: 0})  # round -> global updates up to it
    round: int = -1  # the round of ``state`` (-1: none yet)
    state: torch.Tensor | None = None


class SharedCatchUp:
    """The newest global state of the current run, shared by the clients of one process (module doc)."""

    def __init__(self) -> None:
        self._run: Hashable = None
        self._states = _RunStates()

    def _for(self, run: Hashable) -> _RunStates:
        if run != self._run:  # one run at a time: a new run's states replace the old one's
            self._run, self._states = run, _RunStates()
        return self._states

    @torch.no_grad()
    def state_for(self, run: Hashable, instr: RoundInstruction) -> torch.Tensor | None:
        """The global state at ``instr.state_round`` (a new tensor, crc-checked), or None: replay yourself."""
        s = self._for(run)
        if instr.sync != "replay" or s.state is None or not instr.synced_round <= s.round <= instr.state_round:
            return None
        if s.round == instr.state_round:
            x = s.state.clone()
        else:
            start, here = s.updates_through.get(instr.synced_round), s.updates_through.get(s.round)
            if start is None or here is None or not 0 <= here - start <= len(instr.history):
                return None
            x = apply_history(s.state.clone(), instr.history[here - start :])
        return x if state_crc(x) == instr.state_crc else None

    def record(self, run: Hashable, instr: RoundInstruction, state: torch.Tensor) -> None:
        """A client of this process is now at ``state``, the global state of ``instr.state_round``."""
        s = self._for(run)
        if instr.sync == "replay" and instr.synced_round in s.updates_through:
            n = s.updates_through[instr.synced_round] + len(instr.history)
            if s.updates_through.setdefault(instr.state_round, n) != n:  # cannot happen in one run: start over
                self._run, self._states = None, _RunStates()
                return
        if instr.state_round > s.round:
            s.round, s.state = instr.state_round, state.detach().clone()
