"""``meerkat train``'s configuration: ``TrainConfig`` with the groups ``eval``, ``checkpoint`` and ``vp``.

Flags follow the paths (``eval.every`` -> ``--eval-every``, ``vp.rho_later`` -> ``--vp-rho-later``); a
run's ``config.json`` keeps the flat names (``eval_every``, ``vp_rho_later``), its ``config.toml``
the nested tables. ``RESUMABLE_CHANGES`` (flat names) may differ when a run is resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional

from meerkat_core.config import settings
from meerkat_core.config.choices import (
    ALGORITHMS,
    ENGINES,
    LOSSES,
    RUN_LOGS,
    SCHEDULES,
    SYNC_MODES,
    VP_CONTROLS,
    ZO_FORWARDS,
)
from meerkat_core.config.settings import group, setting
from meerkat_core.errors import MeerkatInputError

# Settings (flat names) that may differ when a run is resumed; everything else must match the run.
# The mask and partition may be given by another path (another working directory): --resume compares
# them by content (sha256 / fingerprints in the run's provenance), not by path.
RESUMABLE_CHANGES = (
    "out", "rounds", "resume", "device", "eval_every", "eval_limit", "checkpoint_every",
    "z_cache_mb", "engine", "superlink", "superlink_ca", "mask", "partition", "log",
)


def paired_argument(zo_forward: str) -> Optional[bool]:
    """``--zo-forward`` as ``SparseCoordinates(paired=...)``: auto -> None, paired -> True, two -> False."""
    return {"auto": None, "paired": True, "two": False}[zo_forward]


@dataclass(kw_only=True)
class EvalSettings:
    """When and on what the global model is evaluated during training."""

    every: int = setting(0, help="Evaluate every E rounds (0: before and after only).")
    limit: Optional[int] = setting(200, help="Test examples used by the evaluations.")
    batch_size: int = setting(16, help="Examples per forward pass of an evaluation.")


@dataclass(kw_only=True)
class CheckpointSettings:
    """When the global k-vector is written to RUN/checkpoints/."""

    every: int = setting(0, help="Checkpoint every C rounds (0: final only).")


@dataclass(kw_only=True)
class VPSettings:
    """Meerkat-vp (``--algorithm meerkat-vp``): the calibration round, the classifier, early stopping.

    ``initial_frac`` .. ``rho_quie`` are parameters of the built-in classifiers (each classifier takes
    those its params dataclass holds); ``params`` (``--vp-param KEY=VALUE``) sets any parameter of the
    chosen classifier (``meerkat_core.gradip.classify``; docs/GRADIP.md lists them with the measured
    margins)."""

    calibration_steps: int = setting(100, help="Meerkat-vp: steps per client in the calibration round.")
    stopped_steps: int = setting(1, help="Meerkat-vp: steps per round for flagged clients.")
    classifier: str = setting("loss", help="Meerkat-vp: classifier of the calibration round: loss (each client's "
                              "later-phase local loss against the round's others; abstains when unclear), population "
                              "(the same on |GradIP|), rho (the paper's thresholds), none (docs/GRADIP.md).")
    initial_frac: float = setting(0.3, help="Meerkat-vp: initial phase = this share of the first calibration steps.")
    later_frac: float = setting(0.5, help="Meerkat-vp: later phase = this share of the last calibration steps.")
    quiet_factor: float = setting(0.3, help="Meerkat-vp: quiet level sigma = this x mean |GradIP| of the initial phase.")
    rho_later: float = setting(2.0, help="Meerkat-vp: flag needs rho_later above this.")
    rho_quie: float = setting(0.5, help="Meerkat-vp: flag needs rho_quie above this.")
    control: str = setting("none", choices=VP_CONTROLS,
                           help="Meerkat-vp: none, or random (stop as many random clients as were flagged).")
    params: str = setting("", flag="--vp-param", metavar="KEY=VALUE[,KEY=VALUE...]",
                          help="Meerkat-vp: parameters of the chosen classifier, e.g. z_flag=5,gap_min=2 "
                               "(docs/GRADIP.md lists them).")

    def classifier_params(self) -> dict[str, Any]:
        """The flat settings a classifier's params are built from (``meerkat_core.gradip.classify``:
        ``make_classifier(name, settings)``; ``classifier_from_settings`` adds ``params``)."""
        return {"initial_frac": self.initial_frac, "later_frac": self.later_frac, "quiet_factor": self.quiet_factor,
                "rho_later": self.rho_later, "rho_quie": self.rho_quie}


@dataclass(kw_only=True)
class TrainConfig:
    """Everything ``meerkat train`` (and ``meerkat_core.api.train``) needs; validated before anything
    is written."""

    model: str = setting("smollm2-135m", short="-m", help="Built-in name, local HF directory, .gguf or hub id.")
    mask: str = setting(help="Mask file from `meerkat mask`, or 'all' for full-parameter ZO.")
    partition: str = setting(help="Directory written by `meerkat partition`.")
    task: str = setting("sentiment2", short="-t", help="The task the partition was made from.")
    out: str = setting(help="Run directory to create (or to continue with --resume).")
    rounds: int = setting(20, help="Federated rounds.")
    local_steps: int = setting(10, help="ZO steps per client per round (T).")
    clients_per_round: int = setting(10, help="Clients sampled per round.")
    lr: float = setting(1e-4, help="Learning rate (of round 1; see --schedule).")
    eps: float = setting(1e-3, help="Perturbation scale.")
    batch_size: int = setting(8, help="Examples per ZO step.")
    schedule: str = setting("constant", choices=SCHEDULES, help="Learning-rate schedule over rounds.")
    loss: str = setting("classification", choices=LOSSES,
                        help="classification: cross-entropy over the task's label-word scores (MeZO's "
                             "train_as_classification; multi-token words scored by their mean token log-likelihood; "
                             "learns at small budgets, docs/METHOD.md); lm: cross-entropy of the label word over the "
                             "whole vocabulary.")
    seed: int = setting(0, help="Seed of client sampling and every perturbation.")
    device: str = setting("auto", help="auto, cpu or cuda[:N].")
    dtype: str = setting("auto", help="auto (fp32 until bf16 is shown to learn like it; a resumed run keeps its own), fp32, "
                                         "bf16 or fp16.")
    zo_forward: str = setting("auto", choices=ZO_FORWARDS,
                              help="bf16/fp16 only: how a step computes L(x+eps z) and L(x-eps z). paired: one forward "
                                   "over the doubled batch, every GEMM on the halves' sum and difference (g within "
                                   "about 2% of fp32's); two: two forwards (faster, g about 11% off on SmolLM2; "
                                   "benchmarks/RESULTS.md 10.3); auto: paired wherever the model allows it.")
    max_length: int = setting(128, help="Prompt tokens kept (the end is kept).")
    sync: str = setting("auto", choices=SYNC_MODES,
                        help="How clients get the global state: replay (seeds+scalars), vector, or auto "
                             "(replay for a sparse mask, unless a client's missed history would be larger "
                             "than the k-vector; vector for --mask all).")
    algorithm: str = setting("meerkat", choices=ALGORITHMS, help="Meerkat, or Meerkat-vp (calibration + early stop).")
    z_cache_mb: int = setting(128, help="Memory (MiB) for a step's z: when k x 4 B fits, z is drawn once per step "
                                        "instead of three times (--mask all on a large model: about d x 4 B / 2^20). "
                                        "Results are the same bits.")
    trust_remote_code: bool = setting(False, help="Allow a hub model's own code to run.")
    engine: str = setting("inprocess", choices=ENGINES,
                          help="inprocess; flower: a Flower deployment (local on loopback, or --superlink); "
                               "flower-sim: Flower's simulation engine. The Flower engines need the extra: "
                               'pip install -c constraints.txt -e ".[flower]" (docs/DEPLOY_FLOWER.md).')
    superlink: Optional[str] = setting(None, in_file=False,
                                       help="--engine flower: submit to the SuperLink at HOST:PORT (on this "
                                            "machine) instead of starting a local deployment.")
    superlink_ca: Optional[str] = setting(None, in_file=False,
                                          help="--superlink: the CA certificate of its TLS (without it the "
                                               "connection is insecure).")
    log: List[str] = setting(default_factory=list, choices=RUN_LOGS,
                             help="Also log the metrics as csv (RUN/metrics.csv) or tensorboard (RUN/tensorboard/; "
                                  'pip install -c constraints.txt -e ".[tensorboard]"); repeatable.')
    resume: bool = setting(False, in_file=False, help="Continue the run in --out from its last complete round.")
    eval: EvalSettings = group(EvalSettings, help="evaluation during training")
    checkpoint: CheckpointSettings = group(CheckpointSettings, help="checkpoints")
    vp: VPSettings = group(VPSettings, help="Meerkat-vp")

    def validate(self) -> "TrainConfig":
        """Checks that need no file; raises ``MeerkatInputError`` naming the flag. (The classifier name
        is checked against its registry by ``meerkat_core.fed.training.check_config``.)"""
        vp = self.vp
        checks = [
            (self.rounds >= 1, f"--rounds {self.rounds}: must be at least 1"),
            (self.local_steps >= 1, f"--local-steps {self.local_steps}: must be at least 1"),
            (self.clients_per_round >= 1, f"--clients-per-round {self.clients_per_round}: must be at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr {self.lr}: must be a finite number > 0"),
            (math.isfinite(self.eps) and self.eps > 0, f"--eps {self.eps}: must be a finite number > 0"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1"),
            (self.eval.every >= 0, f"--eval-every {self.eval.every}: must be >= 0"),
            (self.eval.limit is None or self.eval.limit >= 1, f"--eval-limit {self.eval.limit}: must be at least 1"),
            (self.eval.batch_size >= 1, f"--eval-batch-size {self.eval.batch_size}: must be at least 1"),
            (self.checkpoint.every >= 0, f"--checkpoint-every {self.checkpoint.every}: must be >= 0"),
            (self.z_cache_mb >= 0, f"--z-cache-mb {self.z_cache_mb}: must be >= 0"),
            (vp.calibration_steps >= 2, f"--vp-calibration-steps {vp.calibration_steps}: must be at least 2"),
            (vp.stopped_steps >= 1, f"--vp-stopped-steps {vp.stopped_steps}: must be at least 1"),
            (0 < vp.initial_frac <= 1 and 0 < vp.later_frac <= 1 and vp.initial_frac + vp.later_frac <= 1,
             f"--vp-initial-frac {vp.initial_frac} / --vp-later-frac {vp.later_frac}: each in (0, 1], sum <= 1"),
            (vp.quiet_factor > 0, f"--vp-quiet-factor {vp.quiet_factor}: must be > 0"),
            (vp.rho_later > 0 and 0 <= vp.rho_quie < 1,
             f"--vp-rho-later {vp.rho_later} / --vp-rho-quie {vp.rho_quie}: need rho-later > 0, rho-quie in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MeerkatInputError(msg)
        settings.check_choices(self)
        if self.algorithm == "meerkat-vp" and self.mask == "all":
            raise MeerkatInputError("--algorithm meerkat-vp needs a sparse mask (GradIP uses the mask's "
                                    "pre-training gradient), not --mask all")
        return self

    @property
    def z_cache_limit(self) -> int:
        """The largest k (fp32 elements) whose z the client keeps for the whole step."""
        return self.z_cache_mb * (1 << 20) // 4

    @property
    def paired(self) -> Optional[bool]:
        """``SparseCoordinates``' ``paired`` argument for ``--zo-forward``."""
        return paired_argument(self.zo_forward)

    @property
    def sync_mode(self) -> str:
        """The server's sync mode. ``--sync auto``: the k-vector for ``--mask all``; for a sparse mask the
        missed history, or the k-vector for a client whose history would be larger (``ZOServer``)."""
        if self.sync != "auto":
            return self.sync
        return "vector" if self.mask == "all" else "auto"

    # -- the two saved forms
    def to_dict(self) -> dict[str, Any]:
        """The flat form (``config.json``'s "train"; the Flower job file)."""
        return settings.flat_dict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "train settings") -> "TrainConfig":
        """From the flat form (missing keys take the defaults; unknown ones are input errors)."""
        return settings.from_flat(cls, raw, where)

    def changed_settings(self, previous: "TrainConfig", ignore: Iterable[str] = ()) -> list[str]:
        """The settings (flat names, in declaration order) whose values differ from ``previous``."""
        return settings.changed(self, previous, tuple(ignore))

    def check_resumable(self, previous: "TrainConfig", where: str) -> None:
        diff = self.changed_settings(previous, RESUMABLE_CHANGES)
        if diff:
            mine, theirs = self.to_dict(), previous.to_dict()
            k = diff[0]
            raise MeerkatInputError(
                f"--resume {where}: --{k.replace('_', '-')} is {mine[k]!r} but the run used {theirs.get(k)!r}; "
                "resume with the original settings"
            )
