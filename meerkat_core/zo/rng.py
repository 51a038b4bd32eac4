"""Counter-based Gaussian stream, bitwise identical on CPU and CUDA.

``normal(key, count, offset)`` returns ``z[offset : offset + count]`` of an infinite N(0, 1) stream
selected by a 64-bit ``key`` (``derive_key`` makes 63-bit keys from (run seed, round, client, step)).
Element ``i`` of the stream depends only on ``(key, i)``: any slice can be drawn on its own (chunked
generation of huge vectors, a server replaying one client step), and the result does not depend on
the chunking, the thread count or the device.

Why our own generator: no library gives one. ``torch.Generator`` streams differ between CPU and CUDA
(and between torch versions), and numpy's ``Philox`` bit generator runs on the CPU only; the server,
every client and a resumed run must draw the same z bit for bit on whatever device each has.

Construction
------------
* Uniform bits: Philox4x32-10 (Salmon et al., SC'11; the generator behind cuRAND and torch's CUDA
  RNG). Counter ``c = i // 4`` as words (c lo32, c hi32, 0, 0), key words (key lo32, key hi32); one
  block gives four 32-bit words. Words are held as unsigned 32-bit values in int64 tensors. A 32x32-bit
  product is one int64 multiply where the device's int64 products wrap mod 2^64 (checked once per
  device), else it is formed from the 16-bit halves of the constant so that every intermediate stays
  below 2^50; both give the same words. Checked against the Random123 known-answer vectors.
* Gaussians: Box-Muller in float64, z[4c:4c+4] = (r0 cos t0, r0 sin t0, r1 cos t1, r1 sin t1),
  r_j = sqrt(-2 ln u(w_2j)), t_j = 2 pi u(w_2j+1), u(w) = (w + 0.5) / 2^32 in the open interval
  (0, 1). ln, sin and cos are evaluated with short series from correctly rounded operations only
  (+ - * / sqrt frexp), each its own kernel, instead of libm (whose results differ by an ulp between
  CPU vector/scalar code, MKL builds and CUDA). Accuracy vs exact: < 2e-14 relative in r, < 2e-13
  absolute in z. The float64 value is then rounded to the requested dtype.

Cost: about 150 elementwise kernels over count/2 elements (int64 / float64), about 40 ns per draw
on one CPU core (Philox ~12 ns, Box-Muller the rest): a few ms for 134.5k draws; on a GPU the time is kernel launches (~1 ms) up to ~10^7 draws. On a shared
CPU, libgomp's active waiting (the default) makes such kernel sequences 10-100x slower; run with
``OMP_WAIT_POLICY=PASSIVE`` or fewer torch threads there.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

__all__ = [
    "CHUNK_CPU",
    "CHUNK_GPU",
    "default_chunk",
    "derive_key",
    "normal",
    "normal_chunks",
    "normal_many",
    "philox4x32",
    "splitmix64",
]

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
KEY_MASK = (1 << 63) - 1
# Draws per generated piece for large counts. Temporaries are ~100 bytes per draw of a piece, so
# 2^18 (CPU: ~26 MiB, cache friendly) and 2^24 (GPU: fewer kernel launches, ~1.6 GiB).
CHUNK_CPU = 1 << 18
CHUNK_GPU = 1 << 24


def default_chunk(device: torch.device | str | None) -> int:
    """Piece size used when ``chunk`` is not given: small on CPU, large on accelerators."""
    return CHUNK_CPU if device is None or torch.device(device).type == "cpu" else CHUNK_GPU


_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_ROUNDS = 10
_TWO_PI = 2.0 * math.pi
_INV_2_32 = 2.0**-32


# ----------------------------------------------------------------------------------------------
# keys
def splitmix64(x: int) -> int:
    """The splitmix64 output function of state ``x`` (pure Python, exact mod 2^64)."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def derive_key(run_seed: int, round: int, client: int, step: int) -> int:
    """A 63-bit stream key for one ZO step: splitmix64 chained over the tuple.

    Every argument is taken mod 2^64 (negative ids are allowed). Distinct tuples give independent
    looking keys; the same tuple always gives the same key, on every machine.
    """
    h = 0x6D65657216B6174  # domain tag ("meerkat"-ish)
    for v in (run_seed, round, client, step):
        h = splitmix64(h ^ (int(v) & M64))
    return h & KEY_MASK


# ----------------------------------------------------------------------------------------------
# Philox4x32-10 on int64 tensors
_CONSTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]] = {}


def _wraps(m: torch.Tensor) -> bool:
    """Whether int64 multiplication on ``m``'s device wraps mod 2^64 (two's complement), checked on the
    Philox multipliers times words whose products overflow int64. It does on every CPU and CUDA build
    seen, but C++ leaves signed overflow undefined, so the fast path is used only where this holds."""
    words = [0xFFFFFFFF, 0x89ABCDEF, 0x80000001, 1]
    got = (m * torch.tensor([words, words], dtype=torch.int64, device=m.device)).tolist()
    want = [[((mult * w + (1 << 63)) & M64) - (1 << 63) for w in words] for mult in (_PHILOX_M0, _PHILOX_M1)]
    return got == want


def _consts(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Per device: the two Philox multipliers as a (2, 1) int64 tensor, their 16-bit halves (lo, hi),
    and whether int64 products wrap there (then one multiply gives hi and lo of M * x)."""
    c = _CONSTS.get(device)
    if c is None:
        with torch.inference_mode(False), torch.no_grad():
            m = torch.tensor([[_PHILOX_M0], [_PHILOX_M1]], dtype=torch.int64, device=device)
            c = (m, m & 0xFFFF, m >> 16, _wraps(m))
        _CONSTS[device] = c
    return c


def _philox_rounds(
    key: int | tuple[torch.Tensor, torch.Tensor], a: torch.Tensor, b: torch.Tensor, *, wrap: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Philox4x32-10 rounds in place on int64 tensors of shape (2, n) holding 32-bit words.

    ``a`` holds (x0, x2) and ``b`` holds (x3, x1) (b is kept row-swapped, which saves a copy per
    round). Returns the final (a, b) in the same layout; the inputs' storage is reused.
    Per round: hi, lo of M * x, then x0' = hi1 ^ x1 ^ k0, x1' = lo1, x2' = hi0 ^ x3 ^ k1, x3' = lo0.
    M * x (< 2^64) comes from one int64 multiply where products wrap mod 2^64 (``_wraps``; half the
    kernels), else from the 16-bit halves of M (every intermediate < 2^50). ``wrap`` forces a path
    (tests); both give the same words. ``key``: one 64-bit key, or its words (k0, k1) as int64 tensors of
    one key per column (several streams in one pass, ``normal_many``).
    """
    m, m_lo, m_hi, wraps = _consts(a.device)
    if wrap is None:
        wrap = wraps
    if isinstance(key, tuple):
        k0, k1 = key
    else:
        k0 = key & M32
        k1 = (key >> 32) & M32
    p = torch.empty_like(a)
    s = torch.empty_like(a)
    t = None if wrap else torch.empty_like(a)
    for _ in range(_ROUNDS):
        if wrap:
            torch.mul(a, m, out=p)  # M * x mod 2^64, as int64
            torch.bitwise_right_shift(p, 32, out=s).bitwise_and_(M32)  # hi = (hi0, hi1)
            s.bitwise_xor_(b)  # (hi0 ^ x3, hi1 ^ x1)
            torch.bitwise_xor(s[1], k0, out=a[0])
            torch.bitwise_xor(s[0], k1, out=a[1])
            b, p = p.bitwise_and_(M32), b  # lo = (lo0, lo1) = (x3', x1'): the new b
        else:
            torch.mul(a, m_lo, out=p)  # < 2^48
            torch.mul(a, m_hi, out=t)  # < 2^48
            torch.bitwise_right_shift(p, 16, out=s)
            t.add_(s)  # (M * x) >> 16, < 2^49
            torch.bitwise_right_shift(t, 16, out=s)  # hi = (hi0, hi1)
            s.bitwise_xor_(b)  # (hi0 ^ x3, hi1 ^ x1)
            torch.bitwise_xor(s[1], k0, out=a[0])
            torch.bitwise_xor(s[0], k1, out=a[1])
            # lo = ((t & 0xFFFF) << 16) | (p & 0xFFFF) = (lo0, lo1) = (x3', x1'): the new b
            t.bitwise_and_(0xFFFF).bitwise_left_shift_(16).bitwise_or_(p.bitwise_and_(0xFFFF))
            b, t = t, b
        k0 = (k0 + _PHILOX_W0) & M32
        k1 = (k1 + _PHILOX_W1) & M32
    return a, b


def _philox_counters(key: int | tuple[int, ...], c0: int, c1: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Philox of counters c in [c0, c1) as (c lo32, c hi32, 0, 0); returns (a, b) as in _philox_rounds.

    ``key`` a tuple of keys: the counters [c0, c1) once per key, key after key (columns j*n .. j*n+n-1
    belong to key j), each column under its own key's words: the same words as one call per key.
    """
    n = c1 - c0
    reps = len(key) if isinstance(key, tuple) else 1
    a = torch.empty((2, reps * n), dtype=torch.int64, device=device)
    b = torch.zeros((2, reps * n), dtype=torch.int64, device=device)
    torch.arange(c0, c1, dtype=torch.int64, device=device, out=a[0, :n])
    if reps > 1:
        a[0].view(reps, n)[1:].copy_(a[0, :n])
    if (c1 - 1) >> 32:
        torch.bitwise_right_shift(a[0], 32, out=b[1])
        a[0].bitwise_and_(M32)
    a[1].zero_()
    if not isinstance(key, tuple):
        return _philox_rounds(key, a, b)
    words = torch.tensor([[k & M32, (k >> 32) & M32] for k in key], dtype=torch.int64, device=device)
    k0 = words[:, 0].repeat_interleave(n)
    k1 = words[:, 1].repeat_interleave(n)
    return _philox_rounds((k0, k1), a, b)


def philox4x32(key: int, counters: torch.Tensor, *, wrap: bool | None = None) -> torch.Tensor:
    """Philox4x32-10 words of 128-bit counters given as rows (x0, x1, x2, x3) of 32-bit words.

    ``counters``: int64, shape (n, 4), values in [0, 2^32); ``key``: 64-bit (k0 = low word).
    Returns int64 (n, 4). For known-answer tests; the stream uses :func:`normal`. ``wrap`` forces
    one of the two multiply paths (see ``_philox_rounds``).
    """
    c = counters.to(torch.int64).reshape(-1, 4)
    a = torch.stack((c[:, 0], c[:, 2])).contiguous()
    b = torch.stack((c[:, 3], c[:, 1])).contiguous()
    a, b = _philox_rounds(int(key) & M64, a, b, wrap=wrap)
    return torch.stack((a[0], b[1], a[1], b[0]), dim=1)


# ----------------------------------------------------------------------------------------------
# Gaussians
# Box-Muller from basic IEEE operations only (+, -, *, /, sqrt, frexp, exact integer ops): every
# one of them is correctly rounded on every CPU and GPU, and torch runs each as its own kernel (no
# contraction into FMA), so the float64 values - and their float32 casts - are bitwise the same on
# every device, thread count and chunking. libm's log/cos/sin differ by an ulp across platforms.
_SQRT_HALF = math.sqrt(0.5)
_NEG_2LN2 = -2.0 * math.log(2.0)
# log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| <= 0.1716: 2 s (1 + s^2/3 + ... + s^14/15); rel err < 4e-14
_LOG_C = [1 / 15, 1 / 13, 1 / 11, 1 / 9, 1 / 7, 1 / 5, 1 / 3]
# sin/cos on [0, pi/2]: Taylor to x^17 / x^18; abs err < 5e-14
_SIN_C = [1 / math.factorial(n) * (-1) ** (n // 2) for n in (17, 15, 13, 11, 9, 7, 5, 3)]
_COS_C = [1 / math.factorial(n) * (-1) ** (n // 2) for n in (18, 16, 14, 12, 10, 8, 6, 4, 2)]
_M30 = (1 << 30) - 1
_PHI_SCALE = (math.pi / 2) * 2.0**-30


def _horner(x2: torch.Tensor, coefs: list[float]) -> torch.Tensor:
    """1 + c[-1] x2 + c[-2] x2^2 + ... (coefs from the highest power), as separate mul/add kernels."""
    p = x2 * coefs[0]
    for c in coefs[1:]:
        p.add_(c).mul_(x2)
    return p.add_(1.0)


def _radius(w: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 ln u), u = (w + 0.5) / 2^32 = (2w + 1) 2^-33; consumes the int64 tensor ``w``."""
    v = w.mul_(2).add_(1).to(torch.float64)  # exact, < 2^33
    m, e = torch.frexp(v)  # v = m 2^e, m in [0.5, 1)
    small = (m < _SQRT_HALF).to(torch.int32)
    m.mul_(small + 1)  # m in [0.707, 1.415): no cancellation in ln u = (e - small - 33) ln 2 + ln m
    s = (m - 1.0).div_(m.add_(1.0))
    p = _horner(s * s, _LOG_C)
    big = e.sub_(small).sub_(33).to(torch.float64).mul_(_NEG_2LN2)  # -2 (e - small - 33) ln 2
    return big.add_(s.mul_(p).mul_(-4.0)).sqrt_()  # -2 ln u = big - 4 s p


def _normal_blocks(key: int | tuple[int, ...], c0: int, c1: int, device: torch.device) -> torch.Tensor:
    """float64 normals z[4*c0 : 4*c1], shape (4 * (c1 - c0),); for a tuple of keys, each key's in turn
    (shape (len(key) * 4 * (c1 - c0),): every operation below is elementwise, so the same bits).

    Counter c gives words (w0, w1, w2, w3); z[4c : 4c+4] = (r0 cos t0, r0 sin t0, r1 cos t1, r1 sin t1)
    with r_j = sqrt(-2 ln u(w_2j)), t_j = 2 pi u(w_2j+1), u(w) = (w + 0.5) / 2^32.
    The angle's top two bits give its quadrant q; with phi in (0, pi/2) (reflected in odd
    quadrants), (cos t, sin t) = (+-cos phi, +-sin phi): no table lookups, no selects.
    """
    a, b = _philox_counters(key, c0, c1, device)  # a = (w0, w2), b = (w3, w1)
    n = a.shape[1]
    r = _radius(a)
    tw = b.flip(0)  # (w1, w3): angle words
    q = tw >> 30
    odd = q & 1
    f = tw.bitwise_and_(_M30).bitwise_xor_(odd.mul_(_M30))  # odd quadrants: phi -> pi/2 - phi
    phi = f.to(torch.float64).add_(0.5).mul_(_PHI_SCALE)
    x2 = phi * phi
    sin = _horner(x2, _SIN_C).mul_(phi)
    cos = _horner(x2, _COS_C)
    s_neg = q >> 1  # quadrants 2, 3: sin < 0
    c_neg = q.bitwise_xor_(s_neg).bitwise_and_(1)  # quadrants 1, 2: cos < 0
    out = torch.empty((n, 2, 2), dtype=torch.float64, device=device)
    torch.mul(cos, r.mul(c_neg.mul_(-2).add_(1)), out=out[:, :, 0].T)
    torch.mul(sin, r.mul_(s_neg.mul_(-2).add_(1)), out=out[:, :, 1].T)
    return out.view(-1)


def _normal_blocks_libm(key: int, c0: int, c1: int, device: torch.device) -> torch.Tensor:
    """Reference: the same stream through libm log/cos/sin (tests compare against it)."""
    n = c1 - c0
    a, b = _philox_counters(key, c0, c1, device)
    u = a.to(torch.float64).add_(0.5).mul_(_INV_2_32)
    r = u.log_().mul_(-2.0).sqrt_()
    th = b.flip(0).to(torch.float64).add_(0.5).mul_(_INV_2_32 * _TWO_PI)
    out = torch.empty((n, 2, 2), dtype=torch.float64, device=device)
    out[:, :, 0] = (r * torch.cos(th)).T
    out[:, :, 1] = (r * torch.sin(th)).T
    return out.view(-1)


def _check(key: int, count: int, offset: int) -> None:
    if count < 0 or offset < 0:
        raise ValueError(f"count and offset must be >= 0, got count={count}, offset={offset}")
    if not 0 <= key < (1 << 64):
        raise ValueError(f"key must be an integer in [0, 2^64), got {key}")


def _blocks(offset: int, count: int, chunk: int) -> Iterator[tuple[int, int, int, int]]:
    """Cover stream positions [offset, offset + count) with counter ranges of <= chunk draws.

    Yields (c0, c1, lo, hi): positions 4*c0 + lo .. 4*c0 + hi of counters [c0, c1) are wanted.
    """
    per = max(1, chunk // 4)
    pos, end = offset, offset + count
    while pos < end:
        c0 = pos // 4
        c1 = min(-(-end // 4), c0 + per)
        hi = min(end, 4 * c1) - 4 * c0
        yield c0, c1, pos - 4 * c0, hi
        pos = 4 * c0 + hi


def normal_chunks(
    key: int,
    count: int,
    offset: int = 0,
    *,
    chunk: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, z[offset+start : offset+start+n])`` pieces covering ``count`` draws.

    ``start`` is relative to ``offset``; pieces hold at most ``chunk`` draws (about), and
    concatenated they equal ``normal(key, count, offset)`` bitwise.
    """
    key = int(key)
    _check(key, count, offset)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    for c0, c1, lo, hi in _blocks(offset, count, chunk or default_chunk(dev)):
        z = _normal_blocks(key, c0, c1, dev)[lo:hi]
        yield 4 * c0 + lo - offset, z.to(dtype) if dtype != torch.float64 else z.contiguous()


def normal(
    key: int,
    count: int,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    chunk: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``z[offset : offset + count]`` of the N(0, 1) stream keyed by ``key`` (0 <= key < 2^64).

    Element ``offset + i`` depends only on (key, offset + i): slices of one stream agree bitwise,
    whatever ``chunk``. Large counts are generated ``chunk`` draws at a time, so temporaries stay
    bounded (about 80 bytes per draw of a chunk). ``out`` (1-D, ``count`` long, any float dtype)
    receives the values instead of a new tensor; its dtype and device then win.
    """
    key = int(key)
    _check(key, count, offset)
    if out is not None:
        if out.dim() != 1 or out.numel() != count:
            raise ValueError(f"out must be 1-D with {count} elements, got shape {tuple(out.shape)}")
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        out = torch.empty(count, dtype=dtype, device=dev)
    for c0, c1, lo, hi in _blocks(offset, count, chunk or default_chunk(out.device)):
        start = 4 * c0 + lo - offset
        out[start : start + hi - lo].copy_(_normal_blocks(key, c0, c1, out.device)[lo:hi])
    return out


def normal_many(
    keys: Sequence[int],
    count: int,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """``torch.stack([normal(key, count, offset) for key in keys])``, bitwise, in fewer kernels.

    For short streams a draw costs far less than the ~150 kernel launches of one ``normal`` call
    (k = 3,220 takes about 1 ms on a CPU core, nearly all launches): here the keys share the launches,
    as many keys per pass as fit in ``chunk`` draws. A stream longer than ``chunk`` is drawn key by key.
    Shape (len(keys), count).
    """
    keys = tuple(int(k) for k in keys)
    for k in keys:
        _check(k, count, offset)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty((len(keys), count), dtype=dtype, device=dev)
    piece = chunk or default_chunk(dev)
    c0, c1 = offset // 4, -(-(offset + count) // 4)
    per = max(1, piece // max(1, 4 * (c1 - c0)))
    if count == 0 or not keys:
        return out
    if per == 1:
        for j, k in enumerate(keys):
            normal(k, count, offset, chunk=piece, out=out[j])
        return out
    lo = offset - 4 * c0
    for j in range(0, len(keys), per):
        group = keys[j : j + per]
        z = _normal_blocks(group, c0, c1, dev).view(len(group), 4 * (c1 - c0))
        out[j : j + len(group)].copy_(z[:, lo : lo + count])
    return out
