"""``meerkat partition``'s configuration (``meerkat_core.api.make_partition``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from meerkat_core.config.choices import SCHEMES
from meerkat_core.config.settings import setting
from meerkat_core.errors import MeerkatInputError


@dataclass(kw_only=True)
class PartitionConfig:
    """Split a task's train split (or local files) over ``clients`` clients; write ``out``/manifest.json."""

    task: Optional[str] = setting(None, help="Registered task whose train split to partition.")
    data: List[str] = setting(default_factory=list,
                              help="Local data file (csv/jsonl/parquet) instead of --task; repeat for several.")
    label_column: str = setting("label", help="Column holding the labels.")
    text_column: str = setting("text", help="Column holding the input text.")
    clients: int = setting(help="Number of clients N.")
    scheme: str = setting("iid", choices=SCHEMES, help="How labels are spread over clients.")
    alpha: float = setting(0.5, help="Dirichlet concentration (> 0; small = skewed).")
    labels_per_client: int = setting(1, help="Pathological: labels per client K.")
    extreme_clients: int = setting(0, help="Mixed: number E of single-label clients.")
    min_size: int = setting(1, help="Minimum samples per client (>= 1).")
    self_balancing: bool = setting(False, flag="--self-balancing/--no-self-balancing",
                                   help="Dirichlet: stop filling clients above n/N.")
    seed: int = setting(0, help="Seed of every random choice.")
    out: str = setting(help="Partition directory to write (manifest.json).")
    plot: Optional[str] = setting(None, help="Write a clients x labels heatmap (PNG) here.")

    def validate(self) -> "PartitionConfig":
        """Checks that need no data (the scheme's own: ``partition.core.SchemeConfig.validate``)."""
        if self.seed < 0:
            raise MeerkatInputError(f"--seed must be >= 0, got {self.seed}")
        if (self.task is None) == (not self.data):
            raise MeerkatInputError("give exactly one of --task NAME or --data FILE [--data FILE ...]")
        if self.plot is not None and Path(self.plot).is_dir():
            raise MeerkatInputError(f"--plot {self.plot} is a directory; give a .png file path")
        return self
