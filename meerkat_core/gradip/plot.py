"""PNG of GradIP trajectories: |GradIP| per step for each client, extreme and IID clients apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meerkat_core.atomic import atomic_path
from meerkat_core.gradip.report import Report
from meerkat_core.gradip.stats import phase_slices


def _smooth(a: np.ndarray, w: int) -> np.ndarray:
    if w <= 1 or a.size < w:
        return a
    b = np.where(np.isfinite(a), a, 0.0)
    n = np.isfinite(a).astype(float)
    k = np.ones(w)
    num, den = np.convolve(b, k, mode="same"), np.convolve(n, k, mode="same")
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def plot_report(report: Report, path: str | Path) -> Path:
    """Write the trajectories of ``report`` (log |GradIP|, raw and smoothed) to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    colours = {True: "#d62728", False: "#1f77b4", None: "#7f7f7f"}
    n_max = max((r.steps for r in report.rows), default=0)
    lo, hi = np.inf, 0.0
    for row in report.rows:
        a = np.asarray(row.abs_gradip, dtype=float)
        x = np.arange(a.size)
        col = colours[row.is_extreme]
        ax.plot(x, a, color=col, alpha=0.15, lw=0.8)
        sm = _smooth(a, max(1, a.size // 10))
        ls = "-" if not row.flagged else "--"
        ax.plot(x, sm, color=col, lw=1.6, ls=ls)
        pos = sm[np.isfinite(sm) & (sm > 0)]
        if pos.size:
            lo, hi = min(lo, float(pos.min())), max(hi, float(pos.max()))
        if a.size:
            ax.annotate(str(row.client), (x[-1], sm[-1]), fontsize=7, color=col, xytext=(3, 0),
                        textcoords="offset points", va="center")
    params = report.classifier["params"]
    if n_max and "initial_frac" in params:
        init, later = phase_slices(n_max, params["initial_frac"], params["later_frac"])
        ax.axvspan(init.start - 0.5, init.stop - 0.5, color="#2ca02c", alpha=0.08, lw=0)
        ax.axvspan(later.start - 0.5, later.stop - 0.5, color="#9467bd", alpha=0.08, lw=0)
    ax.set_yscale("log")
    if hi > 0 and np.isfinite(lo):  # frame the moving averages; raw spikes may leave the frame
        ax.set_ylim(lo / 4, hi * 4)
    ax.set_xlabel("local step")
    ax.set_ylabel("|GradIP| (raw faint, moving average bold)")
    ax.set_title(f"GradIP trajectories, round {report.round} ({report.algorithm}, classifier {report.classifier['name']}: "
                 f"{report.outcome})", fontsize=10)
    if report.short_calibration:
        ax.text(0.5, 0.02, f"SHORT calibration: {report.calibration_steps} steps < the {report.min_calibration_steps} "
                "the classifier needs; decision unreliable", transform=ax.transAxes, ha="center", va="bottom",
                fontsize=9, color="#b35900", bbox={"facecolor": "#fff3e0", "edgecolor": "#b35900", "lw": 0.8})
    handles = [
        Line2D([], [], color=colours[True], label="single-label (extreme) client"),
        Line2D([], [], color=colours[False], label="IID / other client"),
        Line2D([], [], color="black", ls="--", label="flagged by the classifier"),
    ]
    if any(r.is_extreme is None for r in report.rows):
        handles.append(Line2D([], [], color=colours[None], label="partition unknown"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target, what="--plot") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
