"""PNG of runs side by side: test accuracy against rounds, and against cumulative bytes (up + down, log
scale: a sparse run's kilobytes and a full-parameter run's gigabytes fit one axis), one line per run.

The bytes axis is symmetric-log (``symlog``): linear from 0 up to the smallest positive byte count of the
runs, logarithmic above it, so the starting point (round 0, 0 bytes) sits at the axis' origin and each
run's line starts from its zero-shot accuracy as on the rounds panel."""

from __future__ import annotations

from pathlib import Path

from meerkat_core.atomic import atomic_path
from meerkat_core.compare.runs import Comparison


def bytes_linthresh(cmp: Comparison) -> float:
    """Where the bytes axis turns from linear to log: the smallest positive cumulative byte count of any
    evaluated round (1 when no run has sent anything yet)."""
    sent = [p.cum_bytes for run in cmp.runs for p in run.curve if p.cum_bytes > 0]
    return float(min(sent)) if sent else 1.0


def plot_comparison(cmp: Comparison, path: str | Path) -> Path:
    """Write the two panels of ``cmp`` to ``path`` atomically; every evaluated round, round 0 included,
    is on both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, sharey=True)
    for i, run in enumerate(cmp.runs):
        colour = f"C{i % 10}"
        label = f"{run.label} ({run.algorithm}, T={run.local_steps})"
        xs = [p.round for p in run.curve]
        ys = [p.accuracy for p in run.curve]
        by_round.plot(xs, ys, marker="o", ms=4, lw=1.6, color=colour, label=label)
        by_bytes.plot([p.cum_bytes for p in run.curve], ys, marker="o", ms=4, lw=1.6, color=colour, label=label)
        if run.best_round is not None and run.best_accuracy is not None:
            by_round.plot([run.best_round], [run.best_accuracy], marker="*", ms=11, color=colour, zorder=5)
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_round.set_xlabel("round")
    by_round.set_ylabel("test accuracy")
    by_round.set_title("accuracy against rounds (star: best)", fontsize=10)
    by_bytes.set_xscale("symlog", linthresh=bytes_linthresh(cmp), linscale=0.5)
    by_bytes.set_xlim(left=0)
    by_bytes.set_xlabel("bytes communicated so far (up + down; log scale above the first round's)")
    by_bytes.set_title("accuracy against cumulative bytes", fontsize=10)
    for ax in (by_round, by_bytes):
        ax.grid(alpha=0.3, which="both", lw=0.4)
    by_round.legend(fontsize=8, loc="best")
    ns = sorted({r.eval_n for r in cmp.runs if r.eval_n is not None})
    tasks = sorted({r.task for r in cmp.runs})
    fig.suptitle(f"{', '.join(tasks)}: test accuracy on {'/'.join(map(str, ns)) or '?'} examples", fontsize=11)
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
