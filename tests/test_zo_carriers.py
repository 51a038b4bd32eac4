"""Low-precision carriers (zo/carriers.py): a bf16/fp16 model's forward sees x +- eps z, replay stays bitwise."""

from __future__ import annotations

import statistics

import pytest
import torch

from meerkat_core.models.loading import cast_parameters
from meerkat_core.zo import SparseCoordinates, derive_key, replay, zo_step
from meerkat_core.zo.testing import causal_lm_loss_fn, random_mask, tiny_llama

IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(11))
KEYS = [derive_key(1, 0, 0, t) for t in range(32)]
LOW = [torch.bfloat16, torch.float16]


def low_model(dtype: torch.dtype) -> torch.nn.Module:
    return cast_parameters(tiny_llama(), dtype)


def carried_close(coords: SparseCoordinates, want: torch.Tensor, dtype: torch.dtype) -> None:
    """The model computes with ``want``: exactly on fp32 carriers; on corrected linear layers as base
    ``round(master)`` + one low-precision correction ``want - base`` (to 2^-8 of itself, or to the
    subnormal spacing 6e-8 of fp16 below 6e-5), summed in fp32."""
    got = coords.model_values()
    fi = torch.finfo(dtype)
    base = coords.master.to(dtype).float()
    bound = (want - base).abs() * 2.0**-8 + fi.smallest_normal * fi.eps / 2 + want.abs() * 2.0**-23
    assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())


def projected(model, coords, key, eps):
    loss = causal_lm_loss_fn(model, IDS)
    with torch.inference_mode():
        coords.perturb_key(key, eps)
        lp = float(loss())
        coords.perturb_key(key, -eps)
        lm = float(loss())
        coords.restore()
    return (lp - lm) / (2 * eps)


@pytest.mark.parametrize("dtype", LOW)
def test_carriers_hold_master_and_leave_other_weights(dtype):
    model = low_model(dtype)
    mask = random_mask(model, 700, seed=1)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    coords = SparseCoordinates(model, mask)
    info = coords.carriers.summary()
    assert info["fp32_tensors"] >= 2 and info["corrected_linears"] >= 10 and info["rounded_k"] == 0
    # index ops: the fp32 buffer, the low-precision buffer (bases, written on restore only), the corrections
    assert coords.n_segments == 3
    x0 = coords.values()
    assert torch.equal(x0, torch.cat([before[s.name].reshape(-1)[s.indices] for s in coords.spans]))
    for t in range(5):
        key = derive_key(0, 0, 0, t)
        coords.perturb_key(key, 1e-3)
        carried_close(coords, x0 + 1e-3 * coords.z_for(key), dtype)
        coords.restore()
        carried_close(coords, x0, dtype)
    for t in range(10):
        coords.update_key(derive_key(0, 1, 0, t), 1e-2, 0.5)
    carried_close(coords, coords.master, dtype)
    assert not torch.equal(coords.master, x0)
    # the rounded-weights path would lose most of these perturbations; the carriers keep them
    key = derive_key(0, 2, 0, 0)
    coords.perturb_key(key, 1e-4)
    assert float((coords.model_values() - coords.master).abs().min()) > 0
    coords.restore()
    # unmasked weights keep their values (fp32 carriers hold them exactly)
    for name, p in model.named_parameters():
        flat = torch.ones(p.numel(), dtype=torch.bool)
        if name in mask:
            flat[mask[name]] = False
        assert torch.equal(p.detach().float().reshape(-1)[flat], before[name].reshape(-1)[flat]), name


def test_carriers_forward_is_closer_to_fp32():
    """At x0 the carried bf16 model (fp32 residual stream, fp32 logits) is nearer the fp32 model at the
    same weights than the plain bf16 model, and runs every layer in bf16 still."""
    ref_model = cast_parameters(low_model(torch.bfloat16), torch.float32)
    with torch.no_grad():
        ref = ref_model(input_ids=IDS).logits
    plain = low_model(torch.bfloat16)
    carried = low_model(torch.bfloat16)
    mask = random_mask(plain, 700, seed=1)
    SparseCoordinates(carried, mask)
    with torch.no_grad():
        out_plain = plain(input_ids=IDS).logits.float()
        out_carried = carried(input_ids=IDS).logits
    assert out_carried.dtype == torch.float32
    assert (out_carried - ref).abs().mean() < 0.5 * (out_plain - ref).abs().mean()
    linear = carried.model.layers[0].mlp.down_proj
    assert linear.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype,eps,tol", [(torch.bfloat16, 1e-3, 0.10), (torch.float16, 1e-3, 0.02)])
def test_low_precision_estimate_agrees_with_fp32(dtype, eps, tol):
    """The projected gradient g in bf16/fp16 against the fp32 model's g, 32 fixed keys: median relative
    error <= tol with carriers (measured 0.074 bf16, 0.010 fp16); rounded writes are worse (0.13, 0.07).
    On this tiny random model the bf16 error left is the rounding of activations, not of the weights."""
    m32 = tiny_llama()
    mask = random_mask(m32, 800, seed=4)
    c32 = SparseCoordinates(m32, mask)
    ref = [projected(m32, c32, k, 1e-3) for k in KEYS]

    def median_error(carriers: bool) -> float:
        model = low_model(dtype)
        coords = SparseCoordinates(model, mask, carriers=carriers)
        gs = [projected(model, coords, k, eps) for k in KEYS]
        return statistics.median(abs(g - r) / abs(r) for g, r in zip(gs, ref))

    carried, rounded = median_error(True), median_error(False)
    assert carried <= tol
    assert rounded >= 1.5 * carried


@pytest.mark.parametrize("paired", [False, True], ids=["two-forwards", "paired"])
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_replay_is_bitwise(dtype, paired):
    """Steps with carriers, two forwards or one paired forward (zo/paired.py): the server's replay from
    the g values ends on the client's master bit for bit, and the same steps again give the same g."""
    model = low_model(dtype)
    coords = SparseCoordinates(model, random_mask(model, 800, seed=4), paired=paired)
    assert coords.carriers is not None and (coords.paired is not None) == paired
    x0 = coords.values()
    keys = [derive_key(42, 3, 1, t) for t in range(12)]
    results = [zo_step(coords, causal_lm_loss_fn(model, IDS), k, 1e-2, 1e-3) for k in keys]
    assert all(r.applied for r in results)
    end = replay(x0, keys, [r.g for r in results], 1e-2)
    assert torch.equal(end, coords.master)
    carried_close(coords, coords.master, dtype)
    coords.set_values(x0)
    again = [zo_step(coords, causal_lm_loss_fn(model, IDS), k, 1e-2, 1e-3) for k in keys]
    assert [r.g for r in again] == [r.g for r in results]


def test_unflatten_keeps_carriers_working():
    model = low_model(torch.bfloat16)
    mask = random_mask(model, 300, seed=2)
    coords = SparseCoordinates(model, mask)
    coords.update_key(derive_key(0, 0, 0, 0), 0.1, 1.0)
    coords.unflatten()
    coords.perturb_key(derive_key(0, 0, 0, 1), 1e-3)
    coords.restore()
    carried_close(coords, coords.master, torch.bfloat16)


def test_fp32_model_and_full_mode_have_no_carriers():
    assert SparseCoordinates(tiny_llama(), random_mask(tiny_llama(), 50)).carriers is None
    assert SparseCoordinates(low_model(torch.bfloat16), None).carriers is None  # k = d: rounded writes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_client_cpu_server_replay_and_estimate():
    """bf16 with carriers on CUDA: the server's CPU replay equals the client's master, and g agrees
    with the fp32 g on CUDA about as well as on CPU."""
    model = low_model(torch.bfloat16).cuda()
    mask = random_mask(model, 800, seed=4)
    coords = SparseCoordinates(model, mask)
    assert coords.carriers is not None
    x0 = coords.values().cpu()
    ids = IDS.cuda()
    keys = [derive_key(7, 0, 0, t) for t in range(10)]
    results = [zo_step(coords, causal_lm_loss_fn(model, ids), k, 1e-2, 1e-3) for k in keys]
    assert torch.equal(replay(x0, keys, [r.g for r in results], 1e-2), coords.master.cpu())
    m32 = tiny_llama().cuda()
    c32 = SparseCoordinates(m32, mask)
    fresh = low_model(torch.bfloat16).cuda()
    cb = SparseCoordinates(fresh, mask)

    def g_on(model_, coords_, key):
        loss = causal_lm_loss_fn(model_, ids)
        with torch.inference_mode():
            coords_.perturb_key(key, 1e-3)
            lp = float(loss())
            coords_.perturb_key(key, -1e-3)
            lm = float(loss())
            coords_.restore()
        return (lp - lm) / 2e-3

    rel = [abs(g_on(fresh, cb, k) - g_on(m32, c32, k)) / abs(g_on(m32, c32, k)) for k in KEYS]
    assert statistics.median(rel) <= 0.15


@pytest.mark.parametrize("dtype", LOW)
def test_addmm_adds_the_correction_before_rounding(dtype):
    """The corrected linear layers rely on it: C.addmm_(A, B) rounds C + A @ B once (C enters the fp32
    accumulator), so a correction far below the output's ulp still shifts the outputs by C on average;
    in place it gives the same bits as torch.addmm(C, A, B)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen).to(dtype)
    b = (torch.randn(256, 512, generator=gen) / 16).to(dtype)
    plain = torch.mm(a, b).float()
    for c in (1e-3, -3e-4):
        out_of_place = torch.addmm(torch.full((256, 512), c, dtype=dtype), a, b)
        shifted = torch.full((256, 512), c, dtype=dtype).addmm_(a, b)
        assert torch.equal(shifted, out_of_place)
        shifted = shifted.float()
        assert (shifted != plain).float().mean() > 0.05  # a second rounding would erase most of them
        assert float((shifted - plain).mean()) == pytest.approx(torch.tensor(c, dtype=dtype).item(), rel=0.05)
