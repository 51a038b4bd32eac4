"""The counter-based Gaussian stream (meerkat_core.zo.rng)."""

from __future__ import annotations

import math

import pytest
import torch

from meerkat_core.zo import rng
from meerkat_core.zo.rng import derive_key, normal, normal_chunks

KEY = derive_key(1234, 0, 0, 0)


# Random123 known-answer vectors for Philox4x32-10: (counter words, key words, output words)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("wrap", [None, True, False])
@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected, wrap):
    out = rng.philox4x32(key[0] | (key[1] << 32), torch.tensor([ctr], dtype=torch.int64), wrap=wrap)
    assert tuple(out[0].tolist()) == expected


def test_philox_multiply_paths_agree():
    """One wrapping int64 multiply (the fast path, used where products wrap) and the 16-bit-halves
    product give the same words on random counters and keys, high words included."""
    assert rng._consts(torch.device("cpu"))[3]  # this CPU's int64 products wrap: normal() takes the fast path
    g = torch.Generator().manual_seed(7)
    words = torch.randint(0, 1 << 32, (20_000, 4), generator=g, dtype=torch.int64)
    words[:4] = torch.tensor([[0xFFFFFFFF] * 4, [0] * 4, [0x80000000] * 4, [0x7FFFFFFF] * 4])
    for key in (0, KEY, (1 << 64) - 1, 0x80000000_80000000):
        fast = rng.philox4x32(key, words, wrap=True)
        assert torch.equal(fast, rng.philox4x32(key, words, wrap=False))
        assert int(fast.min()) >= 0 and int(fast.max()) <= 0xFFFFFFFF


def test_determinism_and_dtype():
    a = normal(KEY, 1000)
    b = normal(KEY, 1000)
    assert a.dtype == torch.float32 and a.shape == (1000,)
    assert torch.equal(a, b)
    z64 = normal(KEY, 1000, dtype=torch.float64)
    assert torch.equal(z64.float(), a)
    assert torch.equal(normal(KEY, 1000, dtype=torch.bfloat16), z64.to(torch.bfloat16))
    assert normal(KEY, 0).numel() == 0


def test_offset_slicing():
    assert torch.equal(normal(KEY, 10, offset=5), normal(KEY, 20)[5:15])
    full = normal(KEY, 300)
    for off in range(0, 9):
        for n in (1, 2, 3, 4, 5, 7, 33):
            assert torch.equal(normal(KEY, n, offset=off), full[off : off + n]), (off, n)


def test_chunking_is_invisible():
    full = normal(KEY, 10_001, offset=3)
    assert torch.equal(normal(KEY, 10_001, offset=3, chunk=12), full)
    assert torch.equal(normal(KEY, 10_001, offset=3, chunk=1000), full)
    pieces = list(normal_chunks(KEY, 10_001, offset=3, chunk=4096))
    assert len(pieces) >= 3
    assert torch.equal(torch.cat([p for _, p in pieces]), full)
    assert [s for s, _ in pieces] == [0] + list(torch.cumsum(torch.tensor([p.numel() for _, p in pieces]), 0)[:-1].tolist())
    out = torch.empty(10_001, dtype=torch.float64)
    normal(KEY, 10_001, offset=3, out=out, chunk=500)
    assert torch.equal(out.float(), full)


def test_high_counters():
    """Counters beyond 2^32 (offsets beyond 2^34 draws) use the counter's high word."""
    off = (1 << 34) + 6
    z = normal(KEY, 16, offset=off)
    assert torch.equal(z[2:], normal(KEY, 14, offset=off + 2))
    assert not torch.equal(z, normal(KEY, 16, offset=6))
    assert torch.isfinite(z).all()


def test_normal_many_is_normal_per_key_bitwise():
    """Several streams in one pass equal one ``normal`` call per key, bit for bit: any count and offset
    (partial first and last blocks), keys with high words set, groups cut by ``chunk``, the
    counter's high word, float64 and bfloat16."""
    keys = [derive_key(5, r, c, 0) for r in range(3) for c in range(7)] + [0, (1 << 64) - 1, (1 << 32) + 5]
    for count, off in ((3220, 0), (3221, 3), (1, 0), (7, 2), (1000, 1001), (16, (1 << 34) + 6)):
        want = torch.stack([normal(k, count, off) for k in keys])
        for chunk in (None, 4096, 8):  # whole, a few keys per pass, one key per pass
            got = rng.normal_many(keys, count, off, chunk=chunk)
            assert got.shape == (len(keys), count) and torch.equal(got, want), (count, off, chunk)
    z64 = rng.normal_many(keys[:3], 50, dtype=torch.float64)
    assert torch.equal(z64, torch.stack([normal(k, 50, dtype=torch.float64) for k in keys[:3]]))
    assert torch.equal(rng.normal_many(keys[:2], 9, dtype=torch.bfloat16), z64[:2, :9].to(torch.bfloat16))
    assert rng.normal_many([], 10).shape == (0, 10) and rng.normal_many(keys, 0).shape == (len(keys), 0)
    with pytest.raises(ValueError):
        rng.normal_many([1, -1], 10)


def test_philox_per_column_keys_both_multiply_paths():
    """Per-column key words (``normal_many``'s layout) give each column its own key's words, on the
    wrapping-multiply path and on the 16-bit-halves path."""
    keys = (0, KEY, (1 << 64) - 1, 0x80000000_80000000)
    n = 300
    counters = torch.arange(n, dtype=torch.int64)
    for wrap in (True, False):
        a = torch.stack((counters.repeat(len(keys)), torch.zeros(len(keys) * n, dtype=torch.int64)))
        b = torch.zeros_like(a)
        words = torch.tensor([[k & rng.M32, k >> 32] for k in keys], dtype=torch.int64)
        a, b = rng._philox_rounds((words[:, 0].repeat_interleave(n), words[:, 1].repeat_interleave(n)), a, b, wrap=wrap)
        got = torch.stack((a[0], b[1], a[1], b[0]), dim=1).view(len(keys), n, 4)
        ctr = torch.stack((counters, torch.zeros_like(counters), torch.zeros_like(counters), torch.zeros_like(counters)), 1)
        for j, k in enumerate(keys):
            assert torch.equal(got[j], rng.philox4x32(k, ctr, wrap=wrap)), (wrap, k)


def test_moments():
    z = normal(KEY, 1_000_000, dtype=torch.float64)
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z**3).mean().item()) < 5 * math.sqrt(15 / n)
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96 / n)
    # Kolmogorov-Smirnov against the normal CDF (critical value at 0.1%: 1.95 / sqrt(n))
    zs = z.sort().values
    cdf = torch.special.ndtr(zs)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.95 / math.sqrt(n)
    # lag-1 autocorrelation, within and across the 4-blocks
    assert abs(torch.dot(z[1:], z[:-1]).item() / n) < 5 / math.sqrt(n)


def test_keys_independent():
    n = 200_000
    base = normal(KEY, n, dtype=torch.float64)
    for other in (KEY + 1, KEY ^ 1, derive_key(1234, 0, 0, 1), derive_key(1234, 0, 1, 0), derive_key(1235, 0, 0, 0)):
        z = normal(other, n, dtype=torch.float64)
        assert abs(torch.dot(base, z).item() / n) < 5 / math.sqrt(n)
        assert not torch.equal(base[:8], z[:8])


def test_matches_libm_box_muller():
    """The series-based transcendental functions agree with libm to ~1e-13."""
    dev = torch.device("cpu")
    a = rng._normal_blocks(KEY, 0, 100_000, dev)
    b = rng._normal_blocks_libm(KEY, 0, 100_000, dev)
    assert ((a - b).abs() / (1 + b.abs())).max().item() < 1e-12


def test_open_interval_extremes():
    w = torch.tensor([[0, 1, 2**32 - 1], [2**32 - 2, 5, 7]], dtype=torch.int64)
    r = rng._radius(w.clone())
    u = (w.double() + 0.5) * 2.0**-32
    ref = torch.sqrt(-2 * torch.log(u))
    assert torch.isfinite(r).all() and (r > 0).all()
    assert ((r - ref).abs() / ref).max().item() < 1e-12


def test_derive_key():
    k = derive_key(7, 3, 2, 1)
    assert k == derive_key(7, 3, 2, 1)
    assert 0 <= k < 2**63
    keys = {derive_key(s, r, c, t) for s in range(3) for r in range(10) for c in range(10) for t in range(30)}
    assert len(keys) == 3 * 10 * 10 * 30
    assert derive_key(-1, 0, 0, 0) != derive_key(1, 0, 0, 0)
    assert derive_key(0, 1, 2, 3) != derive_key(0, 3, 2, 1)
    with pytest.raises(ValueError):
        normal(-1, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_cuda_agree():
    for off, n in ((0, 134_515), (12_345, 1_000_003)):
        cpu = normal(KEY, n, offset=off)
        gpu = normal(KEY, n, offset=off, device="cuda").cpu()
        assert torch.allclose(gpu, cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_cuda_bitwise():
    """The construction (exact integer ops, correctly rounded float64 ops) promises equal bits."""
    assert rng._consts(torch.device("cuda"))[3]  # int64 products wrap on CUDA too: the fast path runs there
    words = torch.arange(1000).view(250, 4)
    assert torch.equal(rng.philox4x32(KEY, words.cuda()).cpu(), rng.philox4x32(KEY, words))
    for off, n in ((0, 134_515), (12_345, 1_000_003)):
        cpu = normal(KEY, n, offset=off, dtype=torch.float64)
        gpu = normal(KEY, n, offset=off, device="cuda", dtype=torch.float64).cpu()
        assert torch.equal(gpu, cpu)
