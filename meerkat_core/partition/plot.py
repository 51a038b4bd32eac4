"""Heatmap of a partition: clients x labels, coloured by each client's label proportion."""

from __future__ import annotations

import io
import os

from meerkat_core.atomic import write_bytes_atomic
from meerkat_core.partition.core import PartitionResult


def render_heatmap_png(result: PartitionResult, title: str | None = None) -> bytes:
    """PNG bytes of the heatmap: colour = share of the client's data with that label, text = count."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray([c.label_counts for c in result.clients], dtype=float)
    sizes = counts.sum(axis=1, keepdims=True)
    props = np.divide(counts, sizes, out=np.zeros_like(counts), where=sizes > 0)
    n_clients, n_labels = counts.shape
    names = result.label_names or [str(i) for i in range(n_labels)]

    width = min(2.0 + 0.9 * n_labels, 24.0)
    height = min(1.5 + 0.35 * n_clients, 40.0)
    fig, ax = plt.subplots(figsize=(max(width, 5.5), max(height, 3.0)), dpi=100)
    try:
        im = ax.imshow(props, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(range(n_labels))
        ax.set_xticklabels(names, rotation=45 if n_labels > 4 else 0, ha="right" if n_labels > 4 else "center")
        ylabels = [f"{c.id}{' *' if c.is_extreme else ''} (n={c.size})" for c in result.clients]
        ax.set_yticks(range(n_clients))
        ax.set_yticklabels(ylabels, fontsize=8 if n_clients > 20 else 9)
        ax.set_xlabel("label")
        ax.set_ylabel("client (* = single label)")
        if n_clients * n_labels <= 400:
            for i in range(n_clients):
                for j in range(n_labels):
                    ax.text(
                        j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if props[i, j] < 0.6 else "black",
                    )
        cfg = result.config
        ax.set_title(
            title
            or f"{cfg.scheme} partition: {n_clients} clients, {result.num_samples} samples\n"
            f"mean TV distance to the global label mix {result.mean_tv_distance:.3f}",
            fontsize=10,
        )
        fig.colorbar(im, ax=ax, label="share of client's data")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def write_heatmap(path: str | os.PathLike[str], png: bytes) -> None:
    """Write PNG bytes atomically."""
    write_bytes_atomic(path, png, what="--plot")
