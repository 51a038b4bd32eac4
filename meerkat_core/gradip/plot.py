"""PNG of a run's trajectories: the classified round step by step (the signal its classifier reads, with the
round's reference levels, and |GradIP| beside it when that is another signal), and each client's |GradIP|
across every round it took part in; single-label (extreme) and other clients in two colours."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from meerkat_core.atomic import atomic_path
from meerkat_core.gradip.classify import SIGNAL_LABELS
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


COLOURS = {True: "#d62728", False: "#1f77b4", None: "#7f7f7f"}  # single-label, other, partition unknown


def _series(row: Any, signal: str) -> np.ndarray:
    return np.asarray(row.loss if signal == "loss" else row.abs_gradip, dtype=float)


def _reference_lines(ax: Any, report: Report, later: slice) -> None:
    """On the panel of the signal a population classifier reads: the rest's later-phase level (the
    round's centre) and the level a client must fall below to be flagged (centre / drop_min), over
    the later phase."""
    pop, params = report.population, report.classifier["params"]
    if "centre" not in pop or later.stop <= later.start:
        return
    centre = math.exp(pop["centre"])
    xs = [later.start - 0.5, later.stop - 0.5]
    ax.plot(xs, [centre, centre], color="black", lw=1.0, ls=":", label="_")
    ax.annotate("the others' later level", (xs[0], centre), fontsize=7, xytext=(2, 3), textcoords="offset points")
    drop = params.get("drop_min")
    if drop:
        ax.plot(xs, [centre / drop, centre / drop], color="#b35900", lw=1.0, ls=":")
        ax.annotate(f"flag level ({drop:g}x lower)", (xs[0], centre / drop), fontsize=7, color="#b35900",
                    xytext=(2, -9), textcoords="offset points")


def _round_panel(ax: Any, report: Report, signal: str) -> None:
    """The classified round: each client's ``signal`` per local step, raw and smoothed, phases shaded;
    on the signal the classifier reads, its reference levels too."""
    n_max = max((r.steps for r in report.rows), default=0)
    lo, hi = np.inf, 0.0
    for row in report.rows:
        a = _series(row, signal)
        x = np.arange(a.size)
        col = COLOURS[row.is_extreme]
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
        if signal == report.signal:
            _reference_lines(ax, report, later)
    ax.set_yscale("log")
    if hi > 0 and np.isfinite(lo):  # frame the moving averages; raw spikes may leave the frame
        ax.set_ylim(lo / 4, hi * 4)
    ax.set_xlabel(f"local step of round {report.round}")
    name = SIGNAL_LABELS[signal]
    read = " (the classifier's signal)" if signal == report.signal and report.signal != "gradip" else ""
    ax.set_ylabel(f"{name}{read}: raw faint, moving average bold")
    ax.set_title(f"round {report.round}, classified ({report.algorithm}, classifier {report.classifier['name']}: "
                 f"{report.outcome}): {name}", fontsize=10)


def _banners(ax: Any, report: Report) -> None:
    banners = []
    if report.short_calibration:
        banners.append(f"SHORT: {report.calibration_steps} steps < the {report.min_calibration_steps} the "
                       "classifier needs;\nits flags are not to be trusted")
    if report.loss_warning:
        banners.append("LOSS ROSE for a third of the clients or more: training diverges at this lr;\nthe decay read here is not there")
    if report.lm_warning:
        banners.append("--loss lm: the classifier's loss thresholds were set on --loss classification;\n"
                       "single-label clients stand out less here")
    if banners:
        ax.text(0.5, 0.02, "\n".join(banners), transform=ax.transAxes, ha="center",
                va="bottom", fontsize=9, color="#b35900",
                bbox={"facecolor": "#fff3e0", "edgecolor": "#b35900", "lw": 0.8})


def _history_panel(ax: Any, report: Report) -> None:
    """Every round each client took part in: its steps spread over [r-1, r) (raw, faint) and the
    round's mean |GradIP| at r - 1/2 (bold; broken over the rounds it sat out)."""
    for row in report.rows:
        h = row.history
        col = COLOURS[row.is_extreme]
        a = np.asarray(h.abs_gradip, dtype=float)
        xs = np.concatenate([(r - 1) + (np.arange(n) + 0.5) / n for r, n in zip(h.rounds, h.steps)]) if h.rounds else a
        ax.plot(xs, a, ".", color=col, alpha=0.2, ms=2.5)
        mx, my = [], []
        for i, (r, m) in enumerate(zip(h.rounds, h.round_means)):
            if i and r != h.rounds[i - 1] + 1:
                mx.append(np.nan)
                my.append(np.nan)
            mx.append(r - 0.5)
            my.append(m)
        ax.plot(mx, my, marker="o", color=col, lw=1.4, ms=3, ls="--" if row.flagged else "-")
        if h.rounds:
            ax.annotate(str(row.client), (mx[-1], my[-1]), fontsize=7, color=col, xytext=(3, 0),
                        textcoords="offset points", va="center")
    ax.axvspan(report.round - 1, report.round, color="#ffbf00", alpha=0.10, lw=0)
    ax.set_yscale("log")
    last = max(report.rounds)
    ax.set_xlim(0, last)
    every = max(1, math.ceil(last / 20))
    ax.set_xticks([r - 0.5 for r in range(1, last + 1, every)], [str(r) for r in range(1, last + 1, every)])
    ax.set_xlabel("round (its local steps spread across it; shaded: the classified round)")
    ax.set_ylabel("|GradIP| (steps faint, round mean bold)")
    ax.set_title("each client across every round it took part in", fontsize=10)


def panel_signals(report: Report) -> list[str]:
    """The classified round's panels, the classifier's own signal first: ``["loss", "gradip"]`` for a
    classifier that reads the loss, ``["gradip"]`` otherwise."""
    return [report.signal] + (["gradip"] if report.signal != "gradip" else [])


def plot_report(report: Report, path: str | Path) -> Path:
    """Write ``report`` to ``path`` atomically: the classified round's trajectories (log scale, raw and
    smoothed) of the signal the classifier reads and, when that is not |GradIP|, of |GradIP| beside it;
    and, when the run has more than one round, each client's |GradIP| history across its rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    signals = panel_signals(report)
    wide = len(report.rounds) > 1
    n = len(signals) + (1 if wide else 0)
    fig, axes = plt.subplots(1, n, figsize=(7.5 * n if n > 1 else 9, 5), dpi=110, squeeze=False)
    for ax, signal in zip(axes[0], signals):
        _round_panel(ax, report, signal)
    _banners(axes[0][0], report)
    if wide:
        _history_panel(axes[0][-1], report)
    handles = [
        Line2D([], [], color=COLOURS[True], label="single-label (extreme) client"),
        Line2D([], [], color=COLOURS[False], label="IID / other client"),
        Line2D([], [], color="black", ls="--", label="flagged by the classifier"),
    ]
    if any(r.is_extreme is None for r in report.rows):
        handles.append(Line2D([], [], color=COLOURS[None], label="partition unknown"))
    axes[0][0].legend(handles=handles, fontsize=8, loc="upper right")
    for ax in axes[0]:
        ax.grid(alpha=0.3, which="both", lw=0.4)
    what = " and ".join(SIGNAL_LABELS[s] for s in reversed(signals))
    fig.suptitle(f"{what} trajectories of {Path(report.run).name}", fontsize=11)
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target, what="--plot") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
