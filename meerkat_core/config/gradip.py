"""``meerkat gradip inspect``'s configuration (``meerkat_core.api.inspect_gradip``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from meerkat_core.config.settings import setting


@dataclass(kw_only=True)
class InspectConfig:
    """Which trajectories of a run to show, classified how, and where to draw them."""

    run: str = setting(positional=True, help="Run directory written by `meerkat train`.")
    round: Optional[int] = setting(None, help="Round to inspect (default: the first, Meerkat-vp's calibration round).")
    client: Optional[int] = setting(None, help="Only this client.")
    classifier: Optional[str] = setting(None, help="Classify with this classifier instead of the run's.")
    plot: Optional[str] = setting(None, help="Write a PNG of the trajectories.")
