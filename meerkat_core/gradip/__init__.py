"""GradIP (METHOD.md sections 4-5): trajectories of a run, their statistics, the pluggable
classifier of Meerkat-vp, an independent recomputation from the ledger, and the inspect report."""

from meerkat_core.gradip.classify import (
    DEFAULT_CLASSIFIER,
    Classifier,
    RhoClassifier,
    classifier_names,
    classify_all,
    make_classifier,
    margins,
    params_from_config,
    register_classifier,
)
from meerkat_core.gradip.recompute import mask_gbar, recompute_record, recompute_records, recompute_run
from meerkat_core.gradip.stats import decay_statistics, phase_slices
from meerkat_core.gradip.trajectories import GRADIP_FILE, RunTrajectories, Trajectory, load_trajectories

__all__ = [
    "DEFAULT_CLASSIFIER",
    "GRADIP_FILE",
    "Classifier",
    "RhoClassifier",
    "RunTrajectories",
    "Trajectory",
    "classifier_names",
    "classify_all",
    "decay_statistics",
    "load_trajectories",
    "make_classifier",
    "margins",
    "mask_gbar",
    "params_from_config",
    "phase_slices",
    "recompute_record",
    "recompute_records",
    "recompute_run",
    "register_classifier",
]
