"""Training configuration (validated before anything is written)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.schedule import SCHEDULES

# Fields that may differ when a run is resumed (everything else must match the original run).
RESUMABLE_CHANGES = {
    "out", "rounds", "resume", "device", "eval_every", "eval_limit", "checkpoint_every", "z_cache_mb",
}


@dataclass
class TrainConfig:
    model: str
    mask: str  # a mask file, or "all" for full-parameter ZO
    partition: str
    task: str
    out: str
    rounds: int = 20
    local_steps: int = 10
    clients_per_round: int = 10
    lr: float = 1e-4
    eps: float = 1e-3
    batch_size: int = 8
    schedule: str = "constant"
    loss: str = "lm"  # lm | classification (meerkat_core.scoring.LOSSES)
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    max_length: int = 128
    eval_every: int = 0  # 0: evaluate only before and after training
    eval_limit: int | None = 200
    eval_batch_size: int = 16
    checkpoint_every: int = 0  # 0: only the final checkpoint
    sync: str = "auto"  # replay | vector | auto (replay for a sparse mask, vector for --mask all)
    algorithm: str = "meerkat"
    vp_calibration_steps: int = 100
    vp_stopped_steps: int = 1
    vp_classifier: str = "rho"  # meerkat_core.gradip.classify registry; docs/GRADIP.md
    vp_initial_frac: float = 0.3
    vp_later_frac: float = 0.5
    vp_quiet_factor: float = 0.3
    vp_rho_later: float = 2.0
    vp_rho_quie: float = 0.5
    vp_control: str = "none"  # or "random": stop as many random clients as were flagged (ablation)
    # Memory for the client's z of the current step (MiB of fp32). When k fits, z is drawn once per step;
    # otherwise three times, in pieces (perturb +, perturb -, update). Same bits either way.
    z_cache_mb: int = 128
    trust_remote_code: bool = False
    resume: bool = False

    def validate(self) -> "TrainConfig":
        checks = [
            (self.rounds >= 1, f"--rounds {self.rounds}: must be at least 1"),
            (self.local_steps >= 1, f"--local-steps {self.local_steps}: must be at least 1"),
            (self.clients_per_round >= 1, f"--clients-per-round {self.clients_per_round}: must be at least 1"),
            (self.lr > 0, f"--lr {self.lr}: must be > 0"),
            (self.eps > 0, f"--eps {self.eps}: must be > 0"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1"),
            (self.schedule in SCHEDULES, f"--schedule {self.schedule}: expected one of {', '.join(SCHEDULES)}"),
            (self.loss in ("lm", "classification"), f"--loss {self.loss}: expected lm or classification"),
            (self.sync in ("auto", "replay", "vector"), f"--sync {self.sync}: expected auto, replay or vector"),
            (self.eval_every >= 0, f"--eval-every {self.eval_every}: must be >= 0"),
            (self.checkpoint_every >= 0, f"--checkpoint-every {self.checkpoint_every}: must be >= 0"),
            (self.z_cache_mb >= 0, f"--z-cache-mb {self.z_cache_mb}: must be >= 0"),
            (self.algorithm in ("meerkat", "meerkat-vp"), f"--algorithm {self.algorithm}: expected meerkat or meerkat-vp"),
            (self.vp_calibration_steps >= 2, f"--vp-calibration-steps {self.vp_calibration_steps}: must be at least 2"),
            (self.vp_stopped_steps >= 1, f"--vp-stopped-steps {self.vp_stopped_steps}: must be at least 1"),
            (0 < self.vp_initial_frac <= 1 and 0 < self.vp_later_frac <= 1
             and self.vp_initial_frac + self.vp_later_frac <= 1,
             f"--vp-initial-frac {self.vp_initial_frac} / --vp-later-frac {self.vp_later_frac}: each in (0, 1], sum <= 1"),
            (self.vp_quiet_factor > 0, f"--vp-quiet-factor {self.vp_quiet_factor}: must be > 0"),
            (self.vp_rho_later > 0 and 0 <= self.vp_rho_quie < 1,
             f"--vp-rho-later {self.vp_rho_later} / --vp-rho-quie {self.vp_rho_quie}: need rho-later > 0, rho-quie in [0, 1)"),
            (self.vp_control in ("none", "random"), f"--vp-control {self.vp_control}: expected none or random"),
            (self.algorithm != "meerkat-vp" or self.mask != "all",
             "--algorithm meerkat-vp needs a sparse mask (GradIP uses the mask's pre-training gradient), not --mask all"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MeerkatInputError(msg)
        from meerkat_core.gradip.classify import make_classifier

        make_classifier(self.vp_classifier)  # an unknown name is an input error
        return self

    @property
    def z_cache_limit(self) -> int:
        """The largest k (fp32 elements) whose z the client keeps for the whole step."""
        return self.z_cache_mb * (1 << 20) // 4

    @property
    def sync_mode(self) -> str:
        if self.sync != "auto":
            return self.sync
        return "vector" if self.mask == "all" else "replay"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def changed_settings(self, previous: "TrainConfig", ignore: Iterable[str] = ()) -> list[str]:
        """The settings (in field order) whose values differ from ``previous``, except ``ignore``."""
        mine, theirs, skip = self.to_dict(), previous.to_dict(), set(ignore)
        return [k for k in mine if k not in skip and mine[k] != theirs.get(k)]

    def check_resumable(self, previous: "TrainConfig", where: str) -> None:
        diff = self.changed_settings(previous, RESUMABLE_CHANGES)
        if diff:
            mine, theirs = self.to_dict(), previous.to_dict()
            k = diff[0]
            raise MeerkatInputError(
                f"--resume {where}: --{k.replace('_', '-')} is {mine[k]!r} but the run used {theirs.get(k)!r}; "
                "resume with the original settings"
            )
