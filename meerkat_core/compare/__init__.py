"""Runs side by side (``meerkat report``): a table of each run's settings and results (``runs``) and a
plot of their accuracy curves against rounds and bytes (``plot``)."""

from meerkat_core.compare.runs import Comparison, CurvePoint, RunRecord, compare_runs, load_run

__all__ = ["Comparison", "CurvePoint", "RunRecord", "compare_runs", "load_run"]
