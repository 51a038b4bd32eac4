"""GradIP (METHOD.md sections 4-5), one home for it: the per-step computation (``compute``), the
file and its columns (``file``), a run's trajectories (``trajectories``), their statistics (``stats``),
the registry of Meerkat-vp's classifiers (``classify``; built in: ``loss``, the default, and
``population`` in ``population``; ``rho``, the paper's rule, and ``none`` in ``rho``), an independent recomputation from
the ledger (``recompute``), and the inspect report and plot (``report``, ``plot``).

Only the light modules are re-exported here (numpy, no torch): ``meerkat --help`` lists the classifiers.
Importing this package registers the built-in classifiers.
"""

from meerkat_core.gradip.classify import (
    DEFAULT_CLASSIFIER,
    Classifier,
    Decision,
    PerClientClassifier,
    build_params,
    classifier_from_settings,
    classifier_names,
    classifier_params_type,
    make_classifier,
    margin,
    parse_vp_params,
    register_classifier,
)
from meerkat_core.gradip.file import COLUMNS, GRADIP_FILE
from meerkat_core.gradip.population import LossClassifier, LossParams, PopulationClassifier, PopulationParams
from meerkat_core.gradip.rho import DecayParams, NeverClassifier, RhoClassifier, RhoParams
from meerkat_core.gradip.stats import decay_statistics, later_level, median_mad, phase_slices
from meerkat_core.gradip.trajectories import RunTrajectories, Trajectory, load_trajectories

__all__ = [
    "COLUMNS",
    "DEFAULT_CLASSIFIER",
    "GRADIP_FILE",
    "Classifier",
    "DecayParams",
    "Decision",
    "LossClassifier",
    "LossParams",
    "NeverClassifier",
    "PerClientClassifier",
    "PopulationClassifier",
    "PopulationParams",
    "RhoClassifier",
    "RhoParams",
    "RunTrajectories",
    "Trajectory",
    "build_params",
    "classifier_from_settings",
    "classifier_names",
    "classifier_params_type",
    "decay_statistics",
    "later_level",
    "load_trajectories",
    "make_classifier",
    "margin",
    "median_mad",
    "parse_vp_params",
    "phase_slices",
    "register_classifier",
]
