"""``ZOServer.prepare``: a reply replayed while the round waits for the others aggregates to the same bits."""

from __future__ import annotations

import math

import pytest
import torch

from meerkat_core.fed import server as server_mod
from meerkat_core.fed.protocol import ClientReply
from meerkat_core.fed.server import ServerConfig, ZOServer


def _server() -> ZOServer:
    cfg = ServerConfig(seed=7, rounds=3, local_steps=3, clients_per_round=4, lr=1e-3, eps=1e-3, batch_size=2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1000, generator=g)
    gbar = torch.randn(1000, generator=g)
    return ZOServer(cfg, x0, {0: 5, 1: 9, 2: 3, 3: 7, 4: 2}, gbar=gbar)


def _replies(server: ZOServer, r: int) -> tuple[list, list[ClientReply]]:
    instrs = server.plan_round(r)
    replies = []
    for i in instrs:
        gs = [0.5 * (i.client + 1) * (-1) ** t + 0.01 * r for t in range(i.steps)]
        if i.client == instrs[0].client:
            gs[1] = float("nan")  # a step the client could not apply: skipped by both paths
        replies.append(ClientReply(round=r, client=i.client, gs=gs, losses=[1.0] * i.steps, state_crc=0))
    return instrs, replies[:-1]  # the last sampled client dropped out


def _same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("keep_z", [True, False])
def test_prepared_replies_aggregate_to_the_same_bits(keep_z: bool, monkeypatch) -> None:
    if not keep_z:  # z's too large to keep: drawn again at aggregation
        monkeypatch.setattr(server_mod, "PREPARED_Z_BYTES", 0)
    plain, ahead = _server(), _server()
    for r in (1, 2):
        instrs, replies = _replies(plain, r)
        a = plain.complete_round(r, instrs, replies)
        instrs_b, replies_b = _replies(ahead, r)
        by_client = {i.client: i for i in instrs_b}
        # replies arrive in any order; each is prepared on arrival, before the round aggregates
        prepared = {rep.client: ahead.prepare(by_client[rep.client], rep) for rep in reversed(replies_b)}
        assert all((p.zs is not None) == keep_z for p in prepared.values())
        b = ahead.complete_round(r, instrs_b, replies_b, prepared=prepared)
        assert torch.equal(plain.x, ahead.x) and a.state_crc == b.state_crc
        assert [(h.key, h.coef) for h in plain.history[r]] == [(h.key, h.coef) for h in ahead.history[r]]
        assert len(plain.history[r]) == sum(len(rep.gs) for rep in replies) - 1  # one skipped step
        for oa, ob in zip(a.clients, b.clients, strict=True):
            assert (oa.client, oa.skipped, oa.weight) == (ob.client, ob.skipped, ob.weight)
            assert _same(oa.gradip, ob.gradip) and _same(oa.cosine, ob.cosine)
        assert sum(o.skipped for o in b.clients) == 1
        assert plain.synced_round == ahead.synced_round and plain.data_offset == ahead.data_offset


def test_prepared_without_end_state_is_redone_when_end_states_are_kept() -> None:
    plain, ahead = _server(), _server()
    instrs, replies = _replies(plain, 1)
    a = plain.complete_round(1, instrs, replies, keep_end_states=True)
    prepared = {rep.client: ahead.prepare(i, rep) for i, rep in zip(instrs, replies)}
    assert all(p.end_state is None for p in prepared.values())
    b = ahead.complete_round(1, instrs, replies, keep_end_states=True, prepared=prepared)
    for oa, ob in zip(a.clients, b.clients, strict=True):
        assert ob.end_state is not None and torch.equal(oa.end_state, ob.end_state)
    assert torch.equal(plain.x, ahead.x)
