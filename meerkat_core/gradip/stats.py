"""Trajectory statistics of |GradIP| (METHOD.md section 5): phases, rho_later, rho_quie.

Phases are taken over the trajectory's steps in order: the *initial* phase is the first
``ceil(initial_frac * T)`` steps, the *later* phase the last ``ceil(later_frac * T)`` steps (each at
least one step). Skipped steps (nan) are left out of every mean and share.

- ``rho_later = mean_initial / mean_later``: a trajectory that decayed has a large ratio, one that
  keeps oscillating stays near 1.
- ``rho_quie`` = share of the later phase's steps with ``|GradIP| < sigma``,
  ``sigma = quiet_factor * mean_initial`` (scale-free: relative to the client's own start).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def phase_slices(n: int, initial_frac: float, later_frac: float) -> tuple[slice, slice]:
    """(initial, later) step ranges of a trajectory of ``n`` steps."""
    if n <= 0:
        return slice(0, 0), slice(0, 0)
    n_init = min(n, max(1, math.ceil(initial_frac * n - 1e-9)))
    n_later = min(n, max(1, math.ceil(later_frac * n - 1e-9)))
    return slice(0, n_init), slice(n - n_later, n)


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else math.nan


def decay_statistics(
    values: Sequence[float] | np.ndarray, initial_frac: float, later_frac: float, quiet_factor: float
) -> dict[str, float]:
    """Statistics of one trajectory (signed GradIP values or magnitudes; the magnitude is used)."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    init_s, later_s = phase_slices(a.size, initial_frac, later_frac)
    init, later = _finite(a[init_s]), _finite(a[later_s])
    m0, m1 = _mean(init), _mean(later)
    sigma = quiet_factor * m0 if math.isfinite(m0) else math.nan
    if not (math.isfinite(m0) and math.isfinite(m1)):
        rho_later = math.nan
    elif m1 > 0:
        rho_later = m0 / m1
    else:
        rho_later = math.inf if m0 > 0 else math.nan
    rho_quie = float(np.mean(later < sigma)) if later.size and math.isfinite(sigma) and m0 > 0 else math.nan
    return {
        "rho_later": rho_later,
        "rho_quie": rho_quie,
        "mean_initial": m0,
        "mean_later": m1,
        "sigma": sigma,
        "steps": float(a.size),
        "finite_steps": float(np.isfinite(a).sum()),
        "initial_steps": float(init_s.stop - init_s.start),
        "later_steps": float(later_s.stop - later_s.start),
    }


def later_level(values: Sequence[float] | np.ndarray, later_frac: float) -> dict[str, float]:
    """The later phase's |GradIP| level of one trajectory, on a log scale, with its standard error.

    ``log_level = log(mean |GradIP| of the later phase)``; ``log_level_se`` is the delta-method
    standard error of that log-mean (``sd / (mean sqrt(n))`` over the phase's finite steps): how much
    the level of a client would move from step noise alone. nan when undefined (no finite step, or a
    mean of exactly 0)."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    _, later_s = phase_slices(a.size, 0.0, later_frac)
    later = _finite(a[later_s])
    m = _mean(later)
    if not (math.isfinite(m) and m > 0):
        return {"mean_later": m, "log_level": math.nan, "log_level_se": math.nan, "later_steps": float(later.size)}
    se = float(later.std(ddof=1) / (m * math.sqrt(later.size))) if later.size > 1 else math.nan
    return {"mean_later": m, "log_level": math.log(m), "log_level_se": se, "later_steps": float(later.size)}


def median_mad(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 x median absolute deviation): a robust centre and a scale that equals the
    standard deviation for normal data and ignores up to half of the values being outliers."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    med = float(np.median(a))
    return med, 1.4826 * float(np.median(np.abs(a - med)))
