"""Round policies: who takes part in a round and how many local steps each client runs.

Plain Meerkat samples ``clients_per_round`` clients and gives each ``local_steps``. Meerkat-vp
(``meerkat_core.fed.vp``) plugs in here: a calibration round with every client, then a smaller budget
for the clients its classifier flags. A policy's decisions go into the ledger's round records
(``on_round_complete``) and are rebuilt from them on ``--resume`` (``restore``).
"""

from __future__ import annotations

import random
from typing import Any, Protocol, Sequence

from meerkat_core.zo import derive_key


class RoundPolicy(Protocol):
    def participants(self, round_: int, clients: Sequence[int]) -> list[int]: ...

    def steps(self, round_: int, client: int) -> int: ...

    def on_round_complete(self, round_: int, outcome: Any) -> dict[str, Any]: ...

    def restore(self, round_records: dict[int, dict[str, Any]]) -> None: ...

    def warnings(self) -> list[str]: ...  # about the round just completed; shown, not written to the ledger


class UniformPolicy:
    """Sample ``clients_per_round`` clients uniformly (seeded by run seed and round); T steps each."""

    def __init__(self, seed: int, clients_per_round: int, local_steps: int) -> None:
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.local_steps = local_steps

    def participants(self, round_: int, clients: Sequence[int]) -> list[int]:
        ids = sorted(clients)
        m = min(self.clients_per_round, len(ids))
        rng = random.Random(derive_key(self.seed, round_, -2, 0))
        return sorted(rng.sample(ids, m))

    def steps(self, round_: int, client: int) -> int:
        return self.local_steps

    def on_round_complete(self, round_: int, outcome: Any) -> dict[str, Any]:
        return {}

    def restore(self, round_records: dict[int, dict[str, Any]]) -> None:
        return None

    def warnings(self) -> list[str]:
        return []
