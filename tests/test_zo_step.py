"""zo_step, apply_update and the server's replay."""

from __future__ import annotations

import math

import pytest
import torch

from meerkat_core.zo import (
    SparseCoordinates,
    apply_update,
    derive_key,
    normal,
    projected_grad,
    replay,
    update_coef,
    zo_step,
)
from meerkat_core.zo.testing import causal_lm_loss_fn, random_mask, tiny_llama

IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(11))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run_steps(coords, loss_fn, keys, lrs, eps=1e-3):
    return [zo_step(coords, loss_fn, k, lr, eps) for k, lr in zip(keys, lrs)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replay_equals_client(dtype):
    model = tiny_llama(dtype=dtype)
    coords = SparseCoordinates(model, random_mask(model, 800, seed=4))
    x0 = coords.values()
    keys = [derive_key(42, 3, 1, t) for t in range(20)]
    lrs = [1e-2 * (1 - t / 40) for t in range(20)]  # a schedule
    results = run_steps(coords, causal_lm_loss_fn(model, IDS), keys, lrs, eps=1e-2)
    assert all(r.applied for r in results)
    assert all(isinstance(r.g, float) for r in results)
    assert any(r.g != 0 for r in results)
    assert not torch.equal(coords.master, x0)
    end = replay(x0, keys, [r.g for r in results], lrs, [r.applied for r in results])
    assert torch.equal(end, coords.master)
    # piecewise replay (z redrawn per piece) gives the same bits
    assert torch.equal(replay(x0, keys, [r.g for r in results], lrs, chunk=100), coords.master)
    # a different g history diverges (a change below fp32 resolution of lr*g would not)
    gs = [r.g for r in results]
    gs[3] *= 1 + 1e-5
    assert not torch.equal(replay(x0, keys, gs, lrs), coords.master)


def test_loss_decreases_on_tiny_model():
    model = tiny_llama()
    coords = SparseCoordinates(model, random_mask(model, 2000, seed=5))
    loss = causal_lm_loss_fn(model, IDS)
    with torch.no_grad():
        first = float(loss())
    for t in range(60):
        zo_step(coords, loss, derive_key(0, 0, 0, t), 5e-2, 1e-3)
    with torch.no_grad():
        assert float(loss()) < first


def test_replay_callback_gives_gradip():
    model = tiny_llama()
    coords = SparseCoordinates(model, random_mask(model, 300, seed=6))
    x0 = coords.values()
    keys = [derive_key(1, 0, 0, t) for t in range(6)]
    results = run_steps(coords, causal_lm_loss_fn(model, IDS), keys, [1e-2] * 6)
    gbar = torch.randn(coords.k, generator=torch.Generator().manual_seed(0))
    seen = {}

    def cb(t, z, g):
        assert torch.equal(z, normal(keys[t], coords.k))
        seen[t] = g * torch.dot(gbar, z).item()

    end = replay(x0, keys, [r.g for r in results], 1e-2, callback=cb)
    assert torch.equal(end, coords.master)
    assert sorted(seen) == list(range(6))
    assert seen[2] == pytest.approx(results[2].g * torch.dot(gbar, normal(keys[2], coords.k)).item())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_skips(bad):
    model = tiny_llama(dtype=torch.bfloat16)
    coords = SparseCoordinates(model, random_mask(model, 300))
    loss = causal_lm_loss_fn(model, IDS)
    zo_step(coords, loss, derive_key(0, 0, 0, 0), 1e-2, 1e-3)
    before, x_before = snapshot(model), coords.values()
    calls = []

    def bad_loss():
        calls.append(1)
        return torch.tensor(bad) if len(calls) == 1 else loss()

    res = zo_step(coords, bad_loss, derive_key(0, 0, 0, 1), 1e-2, 1e-3)
    assert not res.applied and math.isnan(res.g)
    assert torch.equal(coords.master, x_before)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    # replay skips it whether or not the flag is given
    keys = [derive_key(0, 0, 0, 1)]
    assert torch.equal(replay(x_before, keys, [res.g], 1e-2, [res.applied]), x_before)
    assert torch.equal(replay(x_before, keys, [res.g], 1e-2), x_before)


def test_loss_fn_raising_restores_weights():
    model = tiny_llama()
    coords = SparseCoordinates(model, random_mask(model, 300))
    before = snapshot(model)

    def boom():
        raise RuntimeError("out of memory, say")

    with pytest.raises(RuntimeError):
        zo_step(coords, boom, derive_key(0, 0, 0, 0), 1e-2, 1e-3)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_full_mode_step_and_replay():
    model = tiny_llama()
    before = snapshot(model)
    coords = SparseCoordinates(model, None, z_cache_limit=5000, chunk=4096)  # z redrawn per piece
    x0 = coords.values()
    keys = [derive_key(5, 0, 0, t) for t in range(3)]
    results = run_steps(coords, causal_lm_loss_fn(model, IDS), keys, [1e-2] * 3)
    assert all(r.applied for r in results)
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    assert changed >= coords.d - 5
    end = replay(x0, keys, [r.g for r in results], 1e-2, chunk=4096)
    assert torch.equal(end, coords.master)
    assert torch.equal(replay(x0, keys, [r.g for r in results], 1e-2), coords.master)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(flat, coords.master)


def test_flatten_and_per_tensor_paths_agree():
    ends = []
    for flatten in (True, False):
        model = tiny_llama()
        coords = SparseCoordinates(model, random_mask(model, 500, seed=8), flatten=flatten)
        keys = [derive_key(2, 0, 0, t) for t in range(5)]
        res = run_steps(coords, causal_lm_loss_fn(model, IDS), keys, [1e-2] * 5)
        ends.append((coords.values(), [r.g for r in res]))
    assert torch.equal(ends[0][0], ends[1][0]) and ends[0][1] == ends[1][1]


def test_apply_update_is_two_rounded_fp32_ops():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    z = torch.randn(10_000, generator=torch.Generator().manual_seed(2))
    lr, g = 3e-3, -0.7123456789
    c = update_coef(lr, g)
    assert c == float(torch.tensor(-(lr * g), dtype=torch.float32))
    expected = (x.double() + (z.double() * c).float().double()).float()
    whole = x.clone()
    apply_update(whole, z, lr, g)
    assert torch.equal(whole, expected)
    pieces = x.clone()
    for lo in range(0, 10_000, 777):
        apply_update(pieces[lo : lo + 777], z[lo : lo + 777], lr, g)
    assert torch.equal(pieces, whole)
    with pytest.raises(ValueError):
        apply_update(x, z, 1.0, math.inf)


def test_coefficients_and_g():
    assert update_coef(1e-3, math.nan) is None
    assert update_coef(1.0, 1e300) is None  # beyond fp32
    assert update_coef(0.0, 5.0) == 0.0
    assert projected_grad(1.5, 1.0, 0.25) == 1.0
    assert math.isnan(projected_grad(math.inf, 1.0, 0.1))
    assert math.isnan(projected_grad(1e308, -1e308, 1e-3))


def test_bad_arguments():
    model = tiny_llama()
    coords = SparseCoordinates(model, random_mask(model, 10))
    with pytest.raises(ValueError):
        zo_step(coords, lambda: 0.0, 1, 1e-3, 0.0)
    with pytest.raises(ValueError):
        replay(coords.values(), [1, 2], [0.1], 1e-3)
    with pytest.raises(ValueError):
        replay(coords.values(), [1, 2], [0.1, 0.2], [1e-3])
    with pytest.raises(TypeError):
        replay(coords.values().double(), [1], [0.1], 1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_client_cpu_server_replay():
    """A client on CUDA, the server replaying on CPU: the same master bits."""
    model = tiny_llama().cuda()
    coords = SparseCoordinates(model, random_mask(model, 800, seed=4))
    x0 = coords.values().cpu()
    keys = [derive_key(7, 0, 0, t) for t in range(10)]
    results = run_steps(coords, causal_lm_loss_fn(model, IDS.cuda()), keys, [1e-2] * 10, eps=1e-2)
    assert torch.equal(replay(x0, keys, [r.g for r in results], 1e-2), coords.master.cpu())
