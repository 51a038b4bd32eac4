"""Meerkat-vp's round policy (METHOD.md section 5): a calibration round, then early stopping.

Round 1 is the calibration round: every client takes part and runs ``calibration_steps`` local
steps; the server's GradIP trajectories of that round go through a classifier
(``meerkat_core.gradip.classify``). From round 2 on, clients are sampled exactly as plain Meerkat
samples them (``UniformPolicy``, same seed, so the two algorithms see the same participants), and a
*stopped* client runs ``stopped_steps`` local steps (default 1) instead of ``local_steps``. The
server's data pointer still moves through a stopped client's data.

``control="random"`` (the paper's ablation) stops as many clients as the classifier flagged, but
chosen at random (seeded by the run seed), so the gain of the selection can be told from the gain of
stopping. The decisions go into the ledger's round-1 record under ``"vp"``, which ``restore``
reads back on ``--resume``.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from meerkat_core.config.choices import VP_CONTROLS
from meerkat_core.fed.policy import UniformPolicy
from meerkat_core.config.train import TrainConfig
from meerkat_core.gradip.classify import (
    Classifier,
    Decision,
    classifier_from_settings,
    lm_loss_warning,
    rising_loss_warning,
)
from meerkat_core.gradip.trajectories import Trajectory
from meerkat_core.zo import derive_key

CALIBRATION_ROUND = 1


def calibration_warnings(cfg: TrainConfig) -> list[str]:
    """Lines about a Meerkat-vp run's calibration that make its decision unreliable, said before training:
    a round shorter than the classifier needs (``Classifier.min_calibration_steps``), and a classifier that
    reads the loss on ``--loss lm`` (``classify.lm_loss_warning``)."""
    if cfg.algorithm != "meerkat-vp":
        return []
    clf = classifier_from_settings(cfg.vp)
    steps = cfg.vp.calibration_steps
    out = []
    if steps < clf.min_calibration_steps:
        out.append(f"--vp-calibration-steps {steps} is shorter than the {clf.min_calibration_steps} "
                   f"steps the {clf.name} classifier needs (docs/GRADIP.md): its decision is unreliable")
    lm = lm_loss_warning(clf, cfg.loss)
    if lm:
        out.append(lm)
    return out


class VPPolicy:
    def __init__(
        self,
        seed: int,
        clients_per_round: int,
        local_steps: int,
        calibration_steps: int,
        stopped_steps: int,
        classifier: Classifier,
        control: str = "none",
    ) -> None:
        if control not in VP_CONTROLS:
            raise ValueError(f"control must be one of {VP_CONTROLS}, got {control!r}")
        self.seed = seed
        self.uniform = UniformPolicy(seed, clients_per_round, local_steps)
        self.local_steps = local_steps
        self.calibration_steps = calibration_steps
        self.stopped_steps = stopped_steps
        self.classifier = classifier
        self.control = control
        self.flagged: list[int] = []
        self.stopped: set[int] = set()
        self.decided = False
        self._warnings: list[str] = []  # about the round just completed (not in the ledger: resume compares it)

    @classmethod
    def from_config(cls, cfg: TrainConfig, client_sizes: dict[int, int] | None = None) -> "VPPolicy":
        vp = cfg.vp
        return cls(
            seed=cfg.seed, clients_per_round=cfg.clients_per_round, local_steps=cfg.local_steps,
            calibration_steps=vp.calibration_steps, stopped_steps=vp.stopped_steps,
            classifier=classifier_from_settings(vp), control=vp.control,
        )

    # -- RoundPolicy
    def participants(self, round_: int, clients: Sequence[int]) -> list[int]:
        if round_ == CALIBRATION_ROUND:
            return sorted(clients)
        return self.uniform.participants(round_, clients)

    def steps(self, round_: int, client: int) -> int:
        if round_ == CALIBRATION_ROUND:
            return self.calibration_steps
        return self.stopped_steps if client in self.stopped else self.local_steps

    def on_round_complete(self, round_: int, outcome: Any) -> dict[str, Any]:
        if round_ != CALIBRATION_ROUND:
            stopped = sorted(o.client for o in outcome.clients if o.client in self.stopped)
            return {"vp_stopped": stopped}
        trajs = {
            o.client: Trajectory.from_lists(round_, o.client, o.gradip, o.gs, o.cosine, o.losses)
            for o in outcome.clients
        }
        decision = self.classifier.classify(trajs)
        self.flagged = list(decision.flagged)
        self.stopped = set(self.choose_stopped(self.flagged, sorted(trajs)))
        self.decided = True
        loss = rising_loss_warning(trajs)
        self._warnings = [f"Meerkat-vp: {loss}"] if loss else []
        return {"vp": self.decisions(decision)}

    def restore(self, round_records: dict[int, dict[str, Any]]) -> None:
        rec = round_records.get(CALIBRATION_ROUND, {}).get("vp")
        if rec is None:
            return
        self.flagged = [int(c) for c in rec["flagged"]]
        self.stopped = {int(c) for c in rec["stopped"]}
        self.decided = True

    def warnings(self) -> list[str]:
        """After the calibration round: ``rising_loss_warning``'s line when it fires (then none until the next)."""
        out, self._warnings = self._warnings, []
        return out

    # -- helpers
    def choose_stopped(self, flagged: list[int], clients: list[int]) -> list[int]:
        if self.control == "none":
            return sorted(flagged)
        rng = random.Random(derive_key(self.seed, CALIBRATION_ROUND, -3, 0))
        return sorted(rng.sample(sorted(clients), min(len(flagged), len(clients))))

    def decisions(self, decision: Decision) -> dict[str, Any]:
        """The ledger's round-1 record: the classifier's decision (``Decision.to_json``: outcome, reason,
        per-client statistics and margins, the calibration length it needs) plus what the policy did."""
        return {
            **decision.to_json(),
            "control": self.control,
            "calibration_steps": self.calibration_steps,
            "stopped_steps": self.stopped_steps,
            "flagged": list(self.flagged),
            "stopped": sorted(self.stopped),
            "warning": decision.warning(),
        }
