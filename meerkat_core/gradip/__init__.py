"""GradIP (METHOD.md sections 4-5), one home for it: the per-step computation (``compute``), the
file and its columns (``file``), a run's trajectories (``trajectories``), their statistics (``stats``),
the pluggable classifier of Meerkat-vp (``classify``), an independent recomputation from the ledger
(``recompute``), and the inspect report and plot (``report``, ``plot``).

Only the light modules are re-exported here (numpy, no torch): ``meerkat --help`` lists the classifiers.
"""

from meerkat_core.gradip.classify import (
    DEFAULT_CLASSIFIER,
    Classifier,
    RhoClassifier,
    classifier_names,
    classify_all,
    make_classifier,
    margins,
    register_classifier,
)
from meerkat_core.gradip.stats import decay_statistics, phase_slices
from meerkat_core.gradip.file import COLUMNS, GRADIP_FILE
from meerkat_core.gradip.trajectories import RunTrajectories, Trajectory, load_trajectories

__all__ = [
    "COLUMNS",
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
    "phase_slices",
    "register_classifier",
]
