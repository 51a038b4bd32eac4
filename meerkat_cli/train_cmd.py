"""``meerkat train`` and ``meerkat export`` (not built yet: see the training issue)."""

from __future__ import annotations

from meerkat_cli.common import fail


def train_command() -> None:
    """Federated sparse ZO fine-tuning. NOT BUILT YET: lands with the training issue; exits non-zero."""
    raise fail("`meerkat train` is not built yet (training issue)")


def export_command() -> None:
    """Merge a run's checkpoint into an HF model directory. NOT BUILT YET; exits non-zero."""
    raise fail("`meerkat export` is not built yet (training issue)")
