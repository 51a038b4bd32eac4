"""Federated training: replay equality, aggregation, wire sizes, the run directory and resume."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from meerkat_core.config.train import TrainConfig
from meerkat_core.fed.protocol import ClientReply, HistoryEntry, RoundInstruction
from meerkat_core.fed.simulator import build_federation, run_round
from meerkat_core.fed.state import apply_history, state_crc


def _cfg(tiny_mask: Path, tiny_partition: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="tiny-llama", mask=str(tiny_mask), partition=str(tiny_partition), task="sentiment2",
                out=str(out), rounds=3, local_steps=3, clients_per_round=3, lr=1e-2, eps=1e-3, batch_size=4,
                device="cpu", eval_limit=16)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_protocol_roundtrip_is_exact() -> None:
    instr = RoundInstruction(round=3, client=2, steps=5, seed=7, lr=1e-4, eps=1e-3, data_offset=40, sync="replay",
                             synced_round=1, history=[HistoryEntry(2**62 + 5, -1.2345678901234567e-5)],
                             state_round=2, state_crc=123)
    back = RoundInstruction.from_bytes(instr.to_bytes())
    assert back.history[0].key == 2**62 + 5 and back.history[0].coef == -1.2345678901234567e-5
    assert (back.round, back.client, back.steps, back.data_offset, back.state_crc) == (3, 2, 5, 40, 123)
    reply = ClientReply(round=3, client=2, gs=[0.1, float("nan"), -3.3e-7], losses=[1.5, 2.0, 2.5], state_crc=9)
    got = ClientReply.from_bytes(reply.to_bytes())
    assert got.gs[0] == 0.1 and math.isnan(got.gs[1]) and got.gs[2] == -3.3e-7
    # the uplink grows by 12 bytes per local step: one float64 g and one float32 loss
    def size(n: int) -> int:
        return len(ClientReply(round=3, client=2, gs=[0.1] * n, losses=[1.0] * n, state_crc=9).to_bytes())

    assert size(200) - size(100) == 100 * 12
    assert size(100) < 100 * 12 + 100  # plus a header of under 100 bytes


def test_replay_equals_client_paths_and_aggregate(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    fed = build_federation(_cfg(tiny_mask, tiny_partition, tmp_path / "r"))
    fed.client_replay = True  # clients really replay the history they are sent, as over a network
    k = fed.runtime.coords.k
    for r in (1, 2, 3):
        x_before = fed.server.x.clone()
        outcome, wire, real_end = run_round(fed, r, keep_end_states=True)
        assert len(outcome.clients) == 3
        ends = []
        for o in outcome.clients:
            # the server's virtual path ends bitwise where the client really ended
            assert torch.equal(o.end_state, real_end[o.client]), f"round {r} client {o.client}"
            assert not torch.equal(o.end_state, x_before)
            ends.append((o.weight, o.end_state))
            down, up = wire[o.client]
            assert up < 200 and down < 300 + 16 * 3 * 3 * (r - 1)  # nothing k-sized on the wire
        assert abs(sum(w for w, _ in ends) - 1.0) < 1e-12
        mean = sum(w * e.double() for w, e in ends)
        torch.testing.assert_close(fed.server.x.double(), mean, rtol=0, atol=1e-6)
        # a client that replays the full history reaches the server's state bitwise
        x = fed.clients[0]._x0.clone()
        apply_history(x, [h for rr in range(1, r + 1) for h in fed.server.history[rr]])
        assert torch.equal(x, fed.server.x) and state_crc(x) == outcome.state_crc
    assert k == fed.provenance["k"] and k < 10_000


def test_apply_history_batched_draws_are_the_same_bits() -> None:
    """The catch-up replay draws several entries' z in one pass; the state is the one of applying
    entry by entry with its own draw, whatever the grouping (one pass, a few per pass, one per pass,
    and k larger than a piece, drawn in slices)."""
    from meerkat_core.zo import derive_key, normal
    from meerkat_core.zo.update import add_scaled

    history = [HistoryEntry(derive_key(3, r, c, 0), (-1) ** c * 1e-4 * (c + 1)) for r in range(4) for c in range(9)]
    for k in (1, 3220, 5001):
        x0 = torch.linspace(-1, 1, k)
        want = x0.clone()
        for h in history:
            add_scaled(want, normal(h.key, k), h.coef)
        for chunk in (None, 3 * k + 1, k, max(1, k // 3)):
            got = apply_history(x0.clone(), history, chunk=chunk)
            assert torch.equal(got, want), (k, chunk)
    assert not torch.equal(want, x0)


def test_vector_sync_gives_same_state(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    """Vector sync, replay sync, and the simulator's shortcut of replay sync (clients adopt the
    server's state instead of replaying) give the same bits, and the shortcut sends the same bytes."""
    a = build_federation(_cfg(tiny_mask, tiny_partition, tmp_path / "a", sync="replay"))
    b = build_federation(_cfg(tiny_mask, tiny_partition, tmp_path / "b", sync="vector"))
    c = build_federation(_cfg(tiny_mask, tiny_partition, tmp_path / "c", sync="replay"))
    c.client_replay = True
    assert not a.client_replay  # the simulator's default
    for r in (1, 2, 3):
        _, wa, _ = run_round(a, r)
        _, wb, _ = run_round(b, r)
        _, wc, _ = run_round(c, r)
        assert wa == wc
    assert torch.equal(a.server.x, b.server.x) and torch.equal(a.server.x, c.server.x)
    assert sum(d for d, _ in wb.values()) > 4 * a.runtime.coords.k * len(wb)  # the vector costs 4 bytes/coordinate


def test_full_parameter_mode(tiny_partition: Path, tmp_path: Path) -> None:
    fed = build_federation(_cfg(Path("all"), tiny_partition, tmp_path / "f", local_steps=2, clients_per_round=2))
    assert fed.runtime.coords.k == fed.runtime.coords.d == 3_219_776
    outcome, _, real = run_round(fed, 1, keep_end_states=True)
    for o in outcome.clients:
        assert torch.equal(o.end_state, real[o.client])


def test_full_parameter_z_cache_draws_once_same_bits(tiny_partition: Path, tmp_path: Path, monkeypatch) -> None:
    """--z-cache-mb: with z held for the step the client draws d normals per step instead of 3 d,
    and the run is the same bits (gs, server state) as with z redrawn in pieces."""
    from meerkat_core.zo import coordinates

    drawn = [0]
    real_normal = coordinates.rng.normal

    def counting(key, count, *a, **kw):
        drawn[0] += count
        return real_normal(key, count, *a, **kw)

    monkeypatch.setattr(coordinates.rng, "normal", counting)
    runs = {}
    for mb in (0, 16):  # 0: nothing cached; 16 MiB holds tiny-llama's d = 3,219,776 fp32 values
        fed = build_federation(_cfg(Path("all"), tiny_partition, tmp_path / f"z{mb}", local_steps=2,
                                    clients_per_round=2, z_cache_mb=mb))
        coords = fed.runtime.coords
        assert coords.z_cache_limit == mb * 262_144
        drawn[0] = 0
        outcome, _, _ = run_round(fed, 1)
        steps = sum(len(o.gs) for o in outcome.clients)
        # per client step: the client draws z once (cached) or three times, the server's replay once
        assert steps == 4 and drawn[0] == ((1 if mb else 3) + 1) * coords.d * steps
        runs[mb] = ([o.gs for o in outcome.clients], fed.server.x.clone())
    assert runs[0][0] == runs[16][0]
    assert torch.equal(runs[0][1], runs[16][1])


def test_safetensors_bytes_are_reproducible_and_standard() -> None:
    from safetensors.torch import load

    from meerkat_core.st_bytes import safetensors_bytes

    t = {"b::values": torch.arange(5, dtype=torch.float32), "a": torch.tensor([[1, 2]], dtype=torch.int64),
         "e": torch.empty(0)}
    one = safetensors_bytes(t, {"z": "1", "a": "2", "m": "3"})
    two = safetensors_bytes(t, {"m": "3", "a": "2", "z": "1"})
    assert one == two
    back = load(one)
    assert all(torch.equal(back[k], t[k]) for k in t)


def test_changed_settings_and_resume_check(tmp_path: Path) -> None:
    import pytest

    from meerkat_core.errors import MeerkatInputError

    a = _cfg(Path("m"), Path("p"), tmp_path / "r")
    b = _cfg(Path("m"), Path("p"), tmp_path / "other", lr=2e-2, rounds=9, schedule="cosine")
    assert b.changed_settings(a) == ["out", "rounds", "lr", "schedule"]
    assert b.changed_settings(a, ["out", "rounds"]) == ["lr", "schedule"]
    with pytest.raises(MeerkatInputError, match=r"--resume R: --lr is 0\.02 but the run used 0\.01"):
        b.check_resumable(a, "R")
    _cfg(Path("m"), Path("p"), tmp_path / "x", rounds=9, eval_limit=8).check_resumable(a, "R")  # resumable changes
