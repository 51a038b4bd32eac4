"""The choice lists of meerkat's settings, each declared once (the modules that act on a choice import
its list from here; the CLI lists them in its help and ``config.settings.check_choices`` checks them).

Registries that plugins extend (Meerkat-vp classifiers: ``meerkat_core.gradip.classify``) are not
here: their names are known only once the registry is imported.
"""

from __future__ import annotations

SCHEDULES = ("constant", "linear", "cosine")  # learning rate over rounds (meerkat_core.fed.schedule)
LOSSES = ("lm", "classification")  # client loss (meerkat_core.scoring)
SYNC_MODES = ("auto", "replay", "vector")  # how clients get the global state (meerkat_core.fed.server)
ALGORITHMS = ("meerkat", "meerkat-vp")  # round policy (meerkat_core.fed.policy, meerkat_core.fed.vp)
VP_CONTROLS = ("none", "random")  # Meerkat-vp's ablation control (meerkat_core.fed.vp)
ENGINES = ("inprocess", "flower", "flower-sim")  # who runs the rounds (meerkat_core.engines)
SCHEMES = ("iid", "dirichlet", "pathological", "mixed")  # partition schemes (meerkat_core.partition)
MASK_METHODS = ("sensitivity", "random", "magnitude")  # mask scores (meerkat_core.mask)
SPLITS = ("test", "train")  # task splits `meerkat eval` scores
ZO_FORWARDS = ("auto", "paired", "two")  # a bf16/fp16 step's two losses (meerkat_core.zo.paired, zo.step)
RUN_LOGS = ("csv", "tensorboard")  # extra metric logs `meerkat train --log` writes (meerkat_core.rundir.logs)
